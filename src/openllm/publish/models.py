"""Publish a run or an export as one immutable model version: ``push_model(SOURCE, repo_id=...)``.

A pushed version is ONE commit whose tree is exactly: the Hugging Face export (``config.json``,
``model.safetensors``, ``generation_config.json``, tokenizer files), ``openllm.json`` (our full config),
``README.md`` (the model card), ``loss.png`` and ``evaluation.json`` when the run has them; the version is an
annotated tag on that commit, pushed together with it (:meth:`openllm.hub.Hub.upload_version`: on the local
hub one atomic push, so a refused or interrupted push leaves the repo as it was). An export folder that holds
a link out of itself is refused (:func:`openllm.hub.folder_files`). Reading versions back is
:mod:`openllm.hub.models`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import InputNotFound, OpenLLMError
from ..hub import REPLACE_ALL, RepositoryNotFound, RevisionExists, UnsupportedOperation, folder_files, get_hub
from ..hub.ids import validate_repo_id, validate_version
from ..hub.versions import version_for_step
from ..loading import detect_kind, load
from ..scratch import scratch_dir
from .cards import model_card
from .facts import collect_facts, without_local_paths

__all__ = ["push_model", "PushResult"]

_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@dataclass
class PushResult:
    repo_id: str
    version: str
    commit: str
    step: int | None
    files: list[str]
    hub: str
    weights_sha256: str | None = None  # of the pushed model.safetensors (Hugging Face names): checkable in the repo


def _kind(src: Path) -> str:
    """What ``src`` holds (:func:`openllm.loading.detect_kind`: run | checkpoint | native | hf), refusing what
    cannot be pushed with a message saying what to do."""
    if not src.exists():
        raise InputNotFound(f"{src} does not exist; give a run folder or an export folder", path=src)
    if not src.is_dir():
        raise OpenLLMError(f"{src} is not a folder; give a run folder (openllm train --out) or an export folder")
    kind = detect_kind(src)
    if kind == "run" and rundir.latest_checkpoint(src) is None:
        raise OpenLLMError(f"{src} has no checkpoint yet; train longer (or lower --save-every) and push again")
    if kind == "hf" and not any((src / w).is_file() for w in _HF_WEIGHTS):
        raise OpenLLMError(
            f"{src} has no weights (model.safetensors); export it again with `openllm export RUN --format hf --out DIR`"
        )
    return kind


def _hf_files(src: Path) -> list[tuple[str, Path]]:
    """The files of a Hugging Face folder to push: all but hidden top-level entries and its old card; a link
    out of the folder refuses the push (UnsafeUpload)."""
    top = lambda rel: rel.split("/", 1)[0]
    return folder_files(src, exclude=lambda rel: top(rel).startswith(".") or rel == "README.md")


def _stage(src: Path, kind: str, staging: Path) -> None:
    """Write the Hugging Face export of ``src`` into ``staging``: a Hugging Face folder is copied as it is
    (without its card; links inside it as their target's content), anything else is loaded and exported."""
    if kind == "hf":
        for rel, path in _hf_files(src):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / rel)
        return
    from ..export.hf import export_hf  # torch and transformers load only when a model is exported

    export_hf(load(src, device="cpu"), staging)  # an export is written from the CPU


def push_model(
    source: str | Path,
    *,
    repo_id: str,
    version: str | None = None,
    force: bool = False,
    hub: Any = None,
    license: str | None = None,
    language: str = "en",
    datasets: list[str] | None = None,
    commit_message: str | None = None,
    progress: bool = False,
    private: bool = False,
) -> PushResult:
    """Push a run (its latest checkpoint) or an export folder to ``repo_id`` as version ``version`` (default:
    the step in thousands, e.g. ``7k``). An existing version is refused unless ``force``; the commit and the
    version land together or not at all. ``private``: a new repo is created private (Hugging Face only)."""
    validate_repo_id(repo_id)
    if version is not None:
        validate_version(version)
    h = get_hub(hub)
    src = Path(source).expanduser()
    kind = _kind(src)
    if kind == "hf":
        _hf_files(src)  # a link out of the folder: refused before the hub is touched
    facts = collect_facts(src, count_params=False)  # cheap: refuse a taken version before any export work
    if version is None:
        if facts.step is None:
            raise OpenLLMError(f"{src} does not say which training step it holds; name the version with --version")
        version = version_for_step(facts.step)
    validate_version(version)

    exists = h.repo_exists(repo_id=repo_id, repo_type="model")
    if exists and version in h.list_refs(repo_id=repo_id, repo_type="model").tags and not force:
        raise RevisionExists(
            f"{repo_id} already has version {version}; versions are immutable: choose another "
            f"--version, or replace it with --force"
        )
    if not exists:
        try:
            h.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True, private=private)
        except UnsupportedOperation as exc:
            raise RepositoryNotFound(
                f"model repo {repo_id} does not exist on {h.describe()} and cannot be created "
                f"from here; create it on the server first"
            ) from exc

    facts = collect_facts(src)
    # a copy of the model: the one a killed push leaves is removed by the next push
    with scratch_dir("openllm-push-") as tmp:
        staging = tmp / "model"
        staging.mkdir()
        _say(progress, f"exporting {src} ({kind}) ...")
        _stage(src, kind, staging)
        if facts.loss_image is not None:
            shutil.copy2(facts.loss_image, staging / "loss.png")
        elif facts.metrics and not (staging / "loss.png").exists():
            _plot(facts.metrics, staging / "loss.png", title=f"{repo_id} {version}")
        if facts.evaluation:
            public = without_local_paths(facts.evaluation)
            (staging / rundir.EVALUATION).write_text(json.dumps(public, indent=2) + "\n", encoding="utf-8")
        if facts.config and not (staging / "openllm.json").exists():
            (staging / "openllm.json").write_text(
                json.dumps({"format": "openllm", **facts.config}, indent=2) + "\n", encoding="utf-8"
            )
        card = model_card(
            facts,
            repo_id=repo_id,
            version=version,
            license=license,
            language=language,
            datasets=datasets,
            image_name="loss.png" if (staging / "loss.png").exists() else None,
            hub_name=getattr(h, "name", "local"),
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
        files = sorted(str(p.relative_to(staging).as_posix()) for p in staging.rglob("*") if p.is_file())
        from ..hashing import sha256_file

        weights = staging / "model.safetensors"
        weights_sha256 = sha256_file(weights) if weights.is_file() else None
        step_txt = f" (step {facts.step})" if facts.step is not None else ""
        size = sum((staging / f).stat().st_size for f in files)
        _say(progress, f"uploading {len(files)} files ({size / 1e6:.1f} MB) to {repo_id} on {h.describe()} ...")
        try:
            commit = h.upload_version(
                repo_id=repo_id,
                folder_path=staging,
                repo_type="model",
                tag=version,
                tag_message=f"version {version}{step_txt}",
                replace_tag=force,
                delete_patterns=REPLACE_ALL,
                commit_message=commit_message or f"Version {version}{step_txt}",
            )
        except RevisionExists as exc:
            raise RevisionExists(
                f"{repo_id} got version {version} from someone else while uploading (nothing of "
                f"this push was kept); versions are immutable: choose another --version, or "
                f"replace it with --force"
            ) from exc
    return PushResult(
        repo_id=repo_id,
        version=version,
        commit=commit,
        step=facts.step,
        files=files,
        hub=h.describe(),
        weights_sha256=weights_sha256,
    )


def _plot(metrics: list[dict], out: Path, *, title: str) -> None:
    try:
        from ..metrics import plot_loss

        plot_loss(metrics, out, title=title)
    except Exception:  # no plot is better than no push; the card then has no image
        out.unlink(missing_ok=True)


def _say(progress: bool, text: str) -> None:
    if progress:
        import sys

        print(text, file=sys.stderr, flush=True)
