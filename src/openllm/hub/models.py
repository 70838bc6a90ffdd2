"""Model repositories: push a run or an export as one immutable version, list versions, pull one, and
``download_model("owner/name@version")`` for ``openllm.load``.

A pushed version is ONE commit whose tree is exactly: the Hugging Face export (``config.json``,
``model.safetensors``, ``generation_config.json``, tokenizer files), ``openllm.json`` (our full config),
``README.md`` (the model card), ``loss.png`` and ``evaluation.json`` when the run has them; the version is an
annotated tag on that commit."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OpenLLMError
from .base import Hub
from .errors import RepositoryNotFound, RevisionExists, RevisionNotFound, UnsupportedOperation
from .factory import get_hub
from .facts import collect_facts
from .ids import parse_model_ref, validate_repo_id, validate_tag
from .versions import sort_versions, step_of_version, version_for_step

__all__ = ["push_model", "model_versions", "pull_model", "download_model", "list_models", "PushResult",
           "VersionInfo", "latest_version"]

_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@dataclass
class PushResult:
    repo_id: str
    version: str
    commit: str
    step: int | None
    files: list[str]
    hub: str


@dataclass
class VersionInfo:
    name: str
    commit: str
    step: int | None
    date: str
    message: str


def _kind(src: Path) -> str:
    """run | hf | native, or a clear error."""
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; give a run folder or an export folder")
    if not src.is_dir():
        raise OpenLLMError(f"{src} is not a folder; give a run folder (openllm train --out) or an export folder")
    if (src / "checkpoints").is_dir():
        if not any((p / "model.safetensors").is_file() for p in (src / "checkpoints").glob("step_*")):
            raise OpenLLMError(f"{src} has no checkpoint yet; train longer (or lower --save-every) and push again")
        return "run"
    cfg = {}
    if (src / "config.json").is_file():
        try:
            cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
        except ValueError:
            raise OpenLLMError(f"{src}/config.json is not valid JSON") from None
    if cfg.get("format") == "openllm":
        return "native"
    if cfg.get("model_type") == "llama" and any((src / w).is_file() for w in _HF_WEIGHTS):
        return "hf"
    raise OpenLLMError(f"{src} is neither a run folder (checkpoints/) nor an export (config.json + weights); "
                       f"export it with `openllm export RUN --format hf --out DIR`")


def _stage(src: Path, kind: str, staging: Path) -> None:
    """The Hugging Face export of ``src`` in ``staging`` (the export engineer's library does the work)."""
    if kind == "hf":
        for p in src.iterdir():
            if p.name.startswith(".") or p.name == "README.md":
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, staging / p.name)
        return
    from ..export.hf import export_hf
    from ..loading import load

    export_hf(load(src), staging)


def push_model(source: str | Path, *, repo_id: str, version: str | None = None, force: bool = False,
               hub: Any = None, license: str = "gpl-3.0", language: str = "en",
               datasets: list[str] | None = None, commit_message: str | None = None,
               progress: bool = False) -> PushResult:
    """Push a run (its latest checkpoint) or an export folder to ``repo_id`` as version ``version`` (default:
    the step in thousands, e.g. ``7k``). An existing version is refused unless ``force``."""
    from .cards import model_card

    validate_repo_id(repo_id)
    h = get_hub(hub)
    src = Path(source).expanduser()
    kind = _kind(src)
    facts = collect_facts(src, count_params=False)  # cheap: refuse a taken version before any export work
    if version is None:
        if facts.step is None:
            raise OpenLLMError(f"{src} does not say which training step it holds; name the version with --version")
        version = version_for_step(facts.step)
    validate_tag(version)

    exists = h.repo_exists(repo_id=repo_id, repo_type="model")
    if exists and version in h.list_refs(repo_id=repo_id, repo_type="model").tags and not force:
        raise RevisionExists(f"{repo_id} already has version {version}; versions are immutable: choose another "
                             f"--version, or replace it with --force")
    if not exists:
        try:
            h.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
        except UnsupportedOperation:
            raise RepositoryNotFound(f"model repo {repo_id} does not exist on {h.describe()} and cannot be created "
                                     f"from here; create it on the server first") from None

    facts = collect_facts(src)
    with tempfile.TemporaryDirectory(prefix="openllm-push-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        _say(progress, f"exporting {src} ({kind}) ...")
        _stage(src, kind, staging)
        if facts.loss_image is not None:
            shutil.copy2(facts.loss_image, staging / "loss.png")
        elif facts.metrics and not (staging / "loss.png").exists():
            _plot(facts.metrics, staging / "loss.png", title=f"{repo_id} {version}")
        if facts.evaluation:
            (staging / "evaluation.json").write_text(json.dumps(facts.evaluation, indent=2) + "\n", encoding="utf-8")
        if facts.config and not (staging / "openllm.json").exists():
            (staging / "openllm.json").write_text(json.dumps({"format": "openllm", **facts.config}, indent=2) + "\n",
                                                  encoding="utf-8")
        card = model_card(facts, repo_id=repo_id, version=version, license=license, language=language,
                          datasets=datasets, image_name="loss.png" if (staging / "loss.png").exists() else None,
                          hub_name=getattr(h, "name", "local"))
        (staging / "README.md").write_text(card, encoding="utf-8")
        files = sorted(str(p.relative_to(staging).as_posix()) for p in staging.rglob("*") if p.is_file())
        step_txt = f" (step {facts.step})" if facts.step is not None else ""
        size = sum((staging / f).stat().st_size for f in files)
        _say(progress, f"uploading {len(files)} files ({size / 1e6:.1f} MB) to {repo_id} on {h.describe()} ...")
        commit = h.upload_folder(repo_id=repo_id, folder_path=staging, repo_type="model",
                                 delete_patterns=REPLACE_ALL,
                                 commit_message=commit_message or f"Version {version}{step_txt}")
    message = f"version {version}{step_txt}"
    try:
        h.create_tag(repo_id=repo_id, tag=version, revision=commit, message=message, repo_type="model")
    except RevisionExists:
        if not force:
            raise RevisionExists(f"{repo_id} got version {version} from someone else while uploading; versions are "
                                 f"immutable: choose another --version, or replace it with --force") from None
        h.delete_tag(repo_id=repo_id, tag=version, repo_type="model")
        h.create_tag(repo_id=repo_id, tag=version, revision=commit, message=message, repo_type="model")
    return PushResult(repo_id=repo_id, version=version, commit=commit, step=facts.step, files=files,
                      hub=h.describe())


def _all_but(name: str) -> list[str]:
    """fnmatch patterns matching every path except ``name`` (fnmatch has no negation): a path differs from
    ``name`` at its first differing character, or is longer."""
    esc = lambda t: re.sub(r"([*?\[])", r"[\1]", t)  # noqa: E731
    return [f"{esc(name[:i])}[!{name[i]}]*" for i in range(len(name))] + [f"{esc(name)}?*"]


# ``delete_patterns`` that make an upload replace every file of the repo except ``.gitattributes`` (the
# Hugging Face hub's large-file rules). Evaluated against the head at commit time, so a concurrent push
# cannot leave its files in our version's tree.
REPLACE_ALL = _all_but(".gitattributes")


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


def model_versions(repo_id: str, *, hub: Any = None) -> list[VersionInfo]:
    """The versions of a model repo, oldest first (by step when all are step-based)."""
    validate_repo_id(repo_id)
    h = get_hub(hub)
    tags = h.list_refs(repo_id=repo_id, repo_type="model").tags
    details: dict[str, dict] = {}
    if hasattr(h, "tag_info"):
        details = h.tag_info(repo_id=repo_id, repo_type="model")
    order = sort_versions(list(tags), {k: v.get("date", "") for k, v in details.items()})
    return [VersionInfo(name=n, commit=tags[n], step=step_of_version(n), date=details.get(n, {}).get("date", ""),
                        message=details.get(n, {}).get("message", "")) for n in order]


def latest_version(repo_id: str, *, hub: Any = None) -> str:
    versions = model_versions(repo_id, hub=hub)
    if not versions:
        raise RevisionNotFound(f"model repo {repo_id} has no versions yet; push one with "
                               f"`openllm hub push RUN --repo {repo_id}`")
    return versions[-1].name


def _resolve_ref(ref: str, hub: Any) -> tuple[Hub, str, str]:
    repo_id, version = parse_model_ref(ref)
    h = get_hub(hub)
    if version is None:
        version = latest_version(repo_id, hub=h)
    return h, repo_id, version


def pull_model(ref: str, *, out: str | Path, hub: Any = None) -> Path:
    """Download ``owner/name@version`` (or the latest version) into ``out``."""
    h, repo_id, version = _resolve_ref(ref, hub)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder")
    return h.download(repo_id=repo_id, repo_type="model", revision=version, local_dir=out)


def download_model(ref: str, *, hub: Any = None) -> Path:
    """``owner/name@version`` (``owner/name`` = latest version) -> a local folder, cached by commit under
    ``$OPENLLM_CACHE`` (default ``~/.cache/openllm``). What ``openllm.load`` calls for hub references."""
    h, repo_id, version = _resolve_ref(ref, hub)
    return h.download(repo_id=repo_id, repo_type="model", revision=version)


def list_models(*, hub: Any = None) -> list[tuple[str, list[str]]]:
    """(repo id, versions oldest first) of every model repo on the hub."""
    h = get_hub(hub)
    out = []
    for repo_id in h.list_repos(repo_type="model"):
        out.append((repo_id, [v.name for v in model_versions(repo_id, hub=h)]))
    return out
