"""Dataset repositories: ``upload_dataset(PATH, repo_id=...)`` uploads a file or a folder (raw text, a prepared
corpus with report.json, or tokenized shards with meta.json) as one commit with a dataset card and a
``SHA256SUMS`` file. What ``openllm data upload`` and ``scripts/upload_training_data.py`` call.

A folder that holds a link out of itself (or a linked folder, or a dangling link) is refused before the hub is
touched; a link to a file inside the folder is uploaded as that file's content (:func:`openllm.hub.folder_files`).
A PATH that is itself a link is followed: the user named it. With a version, the commit and the tag land in one
atomic push on the local hub: a version that exists (or is taken meanwhile) leaves the repo as it was."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputNotFound, OpenLLMError
from ..hashing import sha256_file
from ..hub import REPLACE_ALL, RepositoryNotFound, RevisionExists, UnsupportedOperation, folder_files, get_hub
from ..hub.ids import validate_repo_id, validate_version
from ..scratch import scratch_dir
from .cards import dataset_card

__all__ = ["upload_dataset", "dataset_stats", "DatasetUpload"]

_GENERATED = ("README.md", "SHA256SUMS")


@dataclass
class DatasetUpload:
    repo_id: str
    commit: str
    files: list[str]
    stats: dict[str, Any]
    version: str | None
    hub: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _count_lines(path: Path) -> tuple[int, int]:
    """(lines, non-empty lines) without reading the file into memory."""
    lines = nonempty = 0
    with open(path, "rb") as f:
        for line in f:
            lines += 1
            nonempty += bool(line.strip())
    return lines, nonempty


def dataset_stats(root: Path, files: list[str]) -> dict[str, Any]:
    """Documents and tokens from what the data pipeline wrote (meta.json, report.json), else counted:
    a .jsonl line is a document; a .txt file is counted in lines."""
    stats: dict[str, Any] = {}
    meta = _read_json(root / "meta.json") if root.is_dir() else {}
    if meta.get("splits"):
        meta_splits = {
            k: {"documents": v.get("documents"), "tokens": v.get("tokens")}
            for k, v in meta["splits"].items()
            if isinstance(v, dict)
        }
        stats["splits"] = meta_splits
        stats["tokens"] = sum(int(v["tokens"] or 0) for v in meta_splits.values())
        stats["documents"] = sum(int(v["documents"] or 0) for v in meta_splits.values())
        if isinstance(meta.get("vocab_size"), int):
            stats["vocab_size"] = meta["vocab_size"]
        return stats
    base = root if root.is_dir() else root.parent
    docs = lines = 0
    splits: dict[str, dict[str, int]] = {}
    for rel in files:
        p = base / rel
        if p.suffix == ".jsonl":
            _, n = _count_lines(p)
            docs += n
            if p.stem in ("train", "val", "validation", "test"):
                splits[p.stem] = {"documents": n}
        elif p.suffix in (".txt", ".md") and p.name not in ("report.md",):
            n, _ = _count_lines(p)
            lines += n
    if docs:
        stats["documents"] = docs
    if splits:
        stats["splits"] = splits
    if lines:
        stats["lines"] = lines
    return stats


def _source_name(src: Any) -> str:
    """A source as the card shows it: the file name (never this machine's absolute path), kind, checksum."""
    if not isinstance(src, dict):
        return str(src)
    name = str(src.get("name") or src.get("path") or "?")
    if Path(name).is_absolute():
        name = Path(name).name
    extra = [str(src["kind"])] if src.get("kind") else []
    if isinstance(src.get("sha256"), str):
        extra.append(f"sha256 {src['sha256'][:16]}")
    return f"{name} ({', '.join(extra)})" if extra else name


def upload_dataset(
    path: str | Path,
    *,
    repo_id: str,
    hub: Any = None,
    license: str = "other",
    language: str = "en",
    source: str | None = None,
    version: str | None = None,
    commit_message: str | None = None,
    progress: bool = False,
) -> DatasetUpload:
    """Upload ``path`` (a file or a folder) to the dataset repo ``repo_id`` (created when missing) as one
    commit whose tree is exactly the data + README.md (dataset card) + SHA256SUMS; tag it ``version``."""
    validate_repo_id(repo_id)
    if version is not None:
        validate_version(version)
    src = Path(path).expanduser()
    if not src.exists():
        raise InputNotFound(f"{src} does not exist; give a data file or folder", path=src)
    if src.is_dir():
        sources = {rel: p for rel, p in folder_files(src) if rel not in _GENERATED}
    else:
        sources = {src.name: src}
    files = sorted(sources)
    if not files:
        raise OpenLLMError(f"{src} holds no files to upload")
    checksums: dict[str, dict[str, Any]] = {
        f: {"sha256": sha256_file(sources[f]), "bytes": sources[f].stat().st_size} for f in files
    }
    stats = dataset_stats(src, files)
    report = _read_json(src / "report.json") if src.is_dir() else {}
    report_md = (
        (src / "report.md").read_text(encoding="utf-8") if src.is_dir() and (src / "report.md").is_file() else None
    )
    if source is None:
        meta = _read_json(src / "meta.json") if src.is_dir() else {}
        srcs = report.get("sources") or meta.get("prepared_from")
        if isinstance(srcs, list) and srcs:
            source = ", ".join(_source_name(s) for s in srcs[:10])
        else:
            source = str(src.name)

    h = get_hub(hub)
    taken = (
        f"dataset repo {repo_id} already has version {version}; versions are immutable: upload under another --version"
    )
    if not h.repo_exists(repo_id=repo_id, repo_type="dataset"):
        try:
            h.create_repo(repo_id=repo_id, repo_type="dataset", exist_ok=True)
        except UnsupportedOperation as exc:
            raise RepositoryNotFound(
                f"dataset repo {repo_id} does not exist on {h.describe()} and cannot be "
                f"created from here; create it on the server first"
            ) from exc
    elif version is not None and version in h.list_refs(repo_id=repo_id, repo_type="dataset").tags:
        raise RevisionExists(taken)
    with scratch_dir("openllm-data-") as tmp:  # one left by a killed upload goes at the next upload
        staging = tmp / "data"
        staging.mkdir()
        for f in files:  # hard links where possible: no copy of big shards
            dst = staging / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                dst.hardlink_to(sources[f])
            except OSError:
                shutil.copy2(sources[f], dst)
        (staging / "SHA256SUMS").write_text(
            "".join(f"{c['sha256']}  {f}\n" for f, c in sorted(checksums.items())), encoding="utf-8"
        )
        card = dataset_card(
            repo_id=repo_id,
            files=checksums,
            stats=stats,
            license=license,
            language=language,
            source=source,
            report_md=report_md,
            report=report or None,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
        if progress:
            import sys

            print(
                f"uploading {len(files)} files ({sum(c['bytes'] for c in checksums.values()):,} bytes) "
                f"to {repo_id} on {h.describe()} ...",
                file=sys.stderr,
                flush=True,
            )
        message = commit_message or f"Upload {src.name}"
        if version is None:
            commit = h.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                repo_type="dataset",
                delete_patterns=REPLACE_ALL,
                commit_message=message,
            )
        else:
            try:
                commit = h.upload_version(
                    repo_id=repo_id,
                    folder_path=staging,
                    repo_type="dataset",
                    tag=version,
                    tag_message=f"dataset version {version}",
                    delete_patterns=REPLACE_ALL,
                    commit_message=message,
                )
            except RevisionExists as exc:
                raise RevisionExists(
                    taken + " (it was taken while uploading; nothing of this upload was kept)"
                ) from exc
    return DatasetUpload(
        repo_id=repo_id, commit=commit, files=files + list(_GENERATED), stats=stats, version=version, hub=h.describe()
    )
