"""Typed hub errors. Every one is an :class:`~openllm.errors.OpenLLMError`: the CLI prints its one-line
message and exits 2. Callers that retry (the Space sync) catch :class:`HubUnavailable` only.

Like huggingface_hub's ``HfHubHTTPError``, each carries what a caller needs beside its message (keyword-only,
each may be None): the ``repo_id``, ``repo_type`` and ``revision`` asked for and, when a server answered, its
HTTP ``status_code``, ``request_id`` and ``server_message``; the library's own exception is the ``__cause__``."""

from __future__ import annotations

import os

from ..errors import OpenLLMError
from ..redact import redact

__all__ = [
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
]


class HubError(OpenLLMError):
    """Base class of everything the hub raises on purpose. Messages name hubs by URL, and a URL may carry a
    token: every message is masked (:func:`openllm.redact.redact`) however it was built."""

    def __init__(
        self,
        *args: object,
        repo_id: str | None = None,
        repo_type: str | None = None,
        revision: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        server_message: str | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args), path=path)
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.revision = revision
        self.status_code = status_code
        self.request_id = request_id
        self.server_message = redact(server_message) if server_message is not None else None


class InvalidRepoId(HubError, ValueError):
    """A repo id, repo type, revision or path in a repo is malformed (checked before any I/O)."""


class RepositoryNotFound(HubError):
    """The repository does not exist on this hub."""


class RevisionNotFound(HubError):
    """The branch, tag (version) or commit does not exist in the repository."""


class EntryNotFound(HubError):
    """A file asked for (e.g. by a delete operation) is not in the repository."""


class AuthError(HubError):
    """No credentials, or credentials the hub rejected. Retrying does not help."""


class HubUnavailable(HubError):
    """The hub could not be reached or broke off (refused, reset, timed out, 5xx). Safe to retry."""


class ConflictError(HubError):
    """The repository moved under us (``parent_commit`` is no longer the head) or a write kept losing races."""


class RepositoryExists(ConflictError):
    """``create_repo`` without ``exist_ok`` on a repository that already exists."""


class RevisionExists(ConflictError):
    """A tag (version) that already exists; versions are immutable unless forced."""


class UnsupportedOperation(HubError):
    """The operation is not available on this kind of hub (e.g. creating a repo over git's protocols)."""


class UnsafeUpload(HubError):
    """A folder to upload holds a link that leads outside it (or a linked folder, or a dangling link)."""
