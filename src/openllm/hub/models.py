"""Model repositories read as versions: list a repo's versions, pull one into a folder, and
``download_model("owner/name@version")`` (a cached folder) for ``openllm.load``.

A version is an annotated tag on one commit (see :mod:`openllm.publish.models` for what a pushed version
holds); versions named after the training step (``7k``) sort by step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OpenLLMError
from .base import Hub
from .errors import RevisionNotFound
from .factory import get_hub
from .ids import parse_model_ref, validate_repo_id
from .versions import sort_versions, step_of_version

__all__ = ["model_versions", "pull_model", "download_model", "list_models", "VersionInfo", "latest_version"]


@dataclass
class VersionInfo:
    name: str
    commit: str
    step: int | None
    date: str
    message: str


def model_versions(repo_id: str, *, hub: Any = None) -> list[VersionInfo]:
    """The versions of a model repo, oldest first (by step when all are step-based)."""
    validate_repo_id(repo_id)
    h = get_hub(hub)
    tags = h.list_refs(repo_id=repo_id, repo_type="model").tags
    details: dict[str, dict] = {}
    if hasattr(h, "tag_info"):
        details = h.tag_info(repo_id=repo_id, repo_type="model")
    order = sort_versions(list(tags), {k: v.get("date", "") for k, v in details.items()})
    return [
        VersionInfo(
            name=n,
            commit=tags[n],
            step=step_of_version(n),
            date=details.get(n, {}).get("date", ""),
            message=details.get(n, {}).get("message", ""),
        )
        for n in order
    ]


def latest_version(repo_id: str, *, hub: Any = None) -> str:
    versions = model_versions(repo_id, hub=hub)
    if not versions:
        raise RevisionNotFound(
            f"model repo {repo_id} has no versions yet; push one with `openllm hub push RUN --repo {repo_id}`"
        )
    return versions[-1].name


def _resolve_ref(ref: str, hub: Any) -> tuple[Hub, str, str]:
    repo_id, version = parse_model_ref(ref)
    h = get_hub(hub)
    if version is None:
        version = latest_version(repo_id, hub=h)
    return h, repo_id, version


def pull_model(ref: str, *, out: str | Path, hub: Any = None) -> Path:
    """Download ``owner/name@version`` (or the latest version) into ``out``."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OpenLLMError(f"--out {out} is a file; give a new or empty folder")
    if out.exists() and any(out.iterdir()):
        raise OpenLLMError(f"{out} is not empty; choose a new --out folder")
    h, repo_id, version = _resolve_ref(ref, hub)
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
