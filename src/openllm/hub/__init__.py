"""Model, dataset and Space repositories on a hub: the local git hub (default) or Hugging Face.

One keyword-only interface (:class:`Hub`, modelled on ``huggingface_hub.HfApi``), two implementations
(:class:`LocalHub`, :class:`~openllm.hub.hf.HfHub`), typed errors, and on top of it: model versions
(:func:`push_model`, :func:`model_versions`, :func:`pull_model`, :func:`download_model`) and dataset uploads
(:func:`upload_dataset`). See docs/hub.md.
"""
from __future__ import annotations

from typing import Any

from .base import CommitInfo, CommitOperation, CommitOperationAdd, CommitOperationDelete, GitRefs, Hub
from .errors import (AuthError, ConflictError, EntryNotFound, HubError, HubUnavailable, InvalidRepoId,
                     RepositoryExists, RepositoryNotFound, RevisionExists, RevisionNotFound, UnsupportedOperation)
from .factory import HUB_HELP, get_hub
from .ids import parse_model_ref, validate_repo_id
from .local import LocalHub, cache_root, default_hub_root
from .versions import step_of_version, version_for_step

__all__ = [
    "Hub", "LocalHub", "HfHub", "get_hub", "HUB_HELP", "CommitOperationAdd", "CommitOperationDelete",
    "CommitOperation", "CommitInfo", "GitRefs",
    "HubError", "InvalidRepoId", "RepositoryNotFound", "RepositoryExists", "RevisionNotFound", "RevisionExists",
    "EntryNotFound", "AuthError", "HubUnavailable", "ConflictError", "UnsupportedOperation",
    "validate_repo_id", "parse_model_ref", "version_for_step", "step_of_version", "default_hub_root", "cache_root",
    "push_model", "model_versions", "pull_model", "download_model", "list_models", "latest_version",
    "upload_dataset",
]

_LAZY = {  # import-light: torch and huggingface_hub load only when used
    "HfHub": ".hf", "push_model": ".models", "model_versions": ".models", "pull_model": ".models",
    "download_model": ".models", "list_models": ".models", "latest_version": ".models",
    "upload_dataset": ".datasets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
