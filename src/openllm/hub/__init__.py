"""Model, dataset and Space repositories on a hub: the local git hub (default) or Hugging Face. Transport only.

One keyword-only interface (:class:`Hub`, modelled on ``huggingface_hub.HfApi``), two implementations
(:class:`LocalHub`, :class:`~openllm.hub.hf.HfHub`), typed errors, repo ids and version names, and reading
model versions (:func:`model_versions`, :func:`pull_model`, :func:`download_model`). Turning a run into a
version (staging, facts, cards) is :mod:`openllm.publish`. See docs/hub.md.
"""

from __future__ import annotations

from typing import Any

from .base import REPLACE_ALL, CommitInfo, CommitOperation, CommitOperationAdd, CommitOperationDelete, GitRefs, Hub
from .errors import (
    AuthError,
    ConflictError,
    EntryNotFound,
    HubError,
    HubUnavailable,
    InvalidRepoId,
    RepositoryExists,
    RepositoryNotFound,
    RevisionExists,
    RevisionNotFound,
    UnsafeUpload,
    UnsupportedOperation,
)
from .factory import HUB_HELP, get_hub
from .files import folder_files
from .ids import parse_model_ref, validate_repo_id, validate_tag, validate_version
from .local import LocalHub, cache_root, default_hub_root
from .models import VersionInfo, download_model, latest_version, list_models, model_versions, pull_model
from .versions import step_of_version, version_for_step

__all__ = [
    "Hub",
    "LocalHub",
    "HfHub",
    "get_hub",
    "HUB_HELP",
    "CommitOperationAdd",
    "CommitOperationDelete",
    "CommitOperation",
    "CommitInfo",
    "GitRefs",
    "REPLACE_ALL",
    "HubError",
    "InvalidRepoId",
    "RepositoryNotFound",
    "RepositoryExists",
    "RevisionNotFound",
    "RevisionExists",
    "EntryNotFound",
    "AuthError",
    "HubUnavailable",
    "ConflictError",
    "UnsupportedOperation",
    "UnsafeUpload",
    "folder_files",
    "validate_repo_id",
    "validate_tag",
    "validate_version",
    "parse_model_ref",
    "version_for_step",
    "step_of_version",
    "default_hub_root",
    "cache_root",
    "model_versions",
    "pull_model",
    "download_model",
    "list_models",
    "latest_version",
    "VersionInfo",
]


def __getattr__(name: str) -> Any:
    if name == "HfHub":  # huggingface_hub loads only when the Hugging Face backend is used
        from .hf import HfHub

        return HfHub
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
