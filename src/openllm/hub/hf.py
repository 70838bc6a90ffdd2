"""HfHub: the hub interface over ``huggingface_hub.HfApi``. A thin adapter: each method is one HfApi call
(revert: a download and an upload) plus the mapping of its errors to ours. No logic of its own; everything
above the interface is shared with (and tested on) the LocalHub.

The token comes from ``token=``, else from Trusted Publishers when ``HF_OIDC_RESOURCE`` is set (a CI job's
short-lived OIDC id token exchanged by huggingface_hub for a Hugging Face token scoped to that repository:
no stored secret), else from ``HF_TOKEN``. Every write first checks it: missing -> AuthError, and
the hub's ``whoami`` rejecting it -> AuthError, before anything is uploaded."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputNotFound
from .base import CommitInfo, CommitOperation, CommitOperationAdd, CommitOperationDelete, GitRefs, Hub
from .errors import (
    AuthError,
    ConflictError,
    EntryNotFound,
    HubError,
    HubUnavailable,
    RepositoryExists,
    RepositoryNotFound,
    RevisionExists,
    RevisionNotFound,
)
from .files import folder_files
from .ids import validate_repo_id, validate_repo_type, validate_revision, validate_tag

__all__ = ["HfHub"]

_TOKEN_HELP = "set HF_TOKEN to a Hugging Face token with write access (https://huggingface.co/settings/tokens)"


class HfHub(Hub):
    """The Hugging Face hub. ``api`` defaults to ``huggingface_hub.HfApi()``."""

    name = "hf"

    def __init__(self, *, token: str | None = None, api: Any = None) -> None:
        self.token = token if token is not None else (_oidc_token() or os.environ.get("HF_TOKEN") or None)
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi()
        self.api = api
        self._user: str | None = None

    def describe(self) -> str:
        return "the Hugging Face hub"

    # --- token --------------------------------------------------------------------------------------------

    def whoami(self) -> str:
        """The token's user name; AuthError when there is no token or the hub rejects it."""
        if self._user is None:
            if not self.token:
                raise AuthError(f"no Hugging Face token: {_TOKEN_HELP}")
            with _mapped("whoami"):
                info = self.api.whoami(token=self.token)
            self._user = info.get("name") or ""
        return self._user

    def _write_token(self) -> str:
        self.whoami()
        return self.token  # type: ignore[return-value]

    # --- repositories -------------------------------------------------------------------------------------

    def create_repo(
        self, *, repo_id: str, repo_type: str = "model", exist_ok: bool = False, private: bool = False
    ) -> str:
        _check(repo_id, repo_type)
        token = self._write_token()
        extra: dict[str, Any] = {"space_sdk": "gradio"} if repo_type == "space" else {}
        if private:
            extra["private"] = True
        with _mapped(repo_id):
            return str(self.api.create_repo(repo_id, repo_type=repo_type, exist_ok=exist_ok, token=token, **extra))

    def repo_exists(self, *, repo_id: str, repo_type: str = "model") -> bool:
        _check(repo_id, repo_type)
        with _mapped(repo_id):
            return bool(self.api.repo_exists(repo_id, repo_type=repo_type, token=self.token))

    def list_repos(self, *, repo_type: str = "model") -> list[str]:
        validate_repo_type(repo_type)
        author = self.whoami()
        lister = getattr(
            self.api, {"model": "list_models", "dataset": "list_datasets", "space": "list_spaces"}[repo_type]
        )
        with _mapped(author):
            return sorted(r.id for r in lister(author=author, token=self.token))

    # --- writes -------------------------------------------------------------------------------------------

    def upload_folder(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        repo_type: str = "model",
        commit_message: str | None = None,
        delete_patterns: str | Sequence[str] | None = None,
        parent_commit: str | None = None,
    ) -> str:
        _check(repo_id, repo_type)
        if not Path(folder_path).is_dir():
            raise InputNotFound(f"cannot upload {folder_path}: not a folder", path=folder_path)
        folder_files(folder_path)  # huggingface_hub reads through links: refuse one out of the folder first
        token = self._write_token()
        with _mapped(repo_id):
            info = self.api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder_path),
                repo_type=repo_type,
                commit_message=commit_message or f"Upload {Path(folder_path).name}",
                delete_patterns=delete_patterns,
                parent_commit=parent_commit,
                token=token,
            )
        return info.oid

    def create_commit(
        self,
        *,
        repo_id: str,
        operations: Iterable[CommitOperation],
        commit_message: str,
        repo_type: str = "model",
        parent_commit: str | None = None,
    ) -> str:
        from huggingface_hub import CommitOperationAdd as HfAdd
        from huggingface_hub import CommitOperationDelete as HfDelete

        _check(repo_id, repo_type)
        hf_ops: list[HfAdd | HfDelete] = []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                src = op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes) else str(op.path_or_fileobj)
                hf_ops.append(HfAdd(path_in_repo=op.path_in_repo, path_or_fileobj=src))
            elif isinstance(op, CommitOperationDelete):
                hf_ops.append(HfDelete(path_in_repo=op.path_in_repo))
            else:
                raise TypeError(f"unknown commit operation {op!r}")
        token = self._write_token()
        with _mapped(repo_id):
            info = self.api.create_commit(
                repo_id,
                hf_ops,
                commit_message=commit_message,
                repo_type=repo_type,
                parent_commit=parent_commit,
                token=token,
            )
        return info.oid

    def create_tag(
        self,
        *,
        repo_id: str,
        tag: str,
        revision: str | None = None,
        message: str | None = None,
        repo_type: str = "model",
        exist_ok: bool = False,
    ) -> None:
        _check(repo_id, repo_type)
        validate_tag(tag)
        token = self._write_token()
        with _mapped(repo_id, tag=tag):
            self.api.create_tag(
                repo_id,
                tag=tag,
                tag_message=message,
                revision=revision,
                repo_type=repo_type,
                exist_ok=exist_ok,
                token=token,
            )

    def delete_tag(self, *, repo_id: str, tag: str, repo_type: str = "model") -> None:
        _check(repo_id, repo_type)
        validate_tag(tag)
        token = self._write_token()
        with _mapped(repo_id, tag=tag):
            self.api.delete_tag(repo_id, tag=tag, repo_type=repo_type, token=token)

    def revert(
        self, *, repo_id: str, to_revision: str, repo_type: str = "model", commit_message: str | None = None
    ) -> str:
        _check(repo_id, repo_type)
        validate_revision(to_revision)
        self._write_token()
        with tempfile.TemporaryDirectory(prefix="openllm-revert-") as tmp:
            folder = self.download(repo_id=repo_id, repo_type=repo_type, revision=to_revision, local_dir=tmp)
            return self.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type=repo_type,
                commit_message=commit_message or f"Revert to {to_revision}",
                delete_patterns="*",
            )

    # --- reads --------------------------------------------------------------------------------------------

    def list_refs(self, *, repo_id: str, repo_type: str = "model") -> GitRefs:
        _check(repo_id, repo_type)
        with _mapped(repo_id):
            refs = self.api.list_repo_refs(repo_id, repo_type=repo_type, token=self.token)
        return GitRefs(
            branches={b.name: b.target_commit for b in refs.branches}, tags={t.name: t.target_commit for t in refs.tags}
        )

    def list_commits(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> list[CommitInfo]:
        _check(repo_id, repo_type)
        with _mapped(repo_id, revision=revision):
            commits = self.api.list_repo_commits(repo_id, repo_type=repo_type, revision=revision, token=self.token)
        return [
            CommitInfo(
                commit_id=c.commit_id,
                title=c.title,
                message=c.message or "",
                authors=list(c.authors),
                created_at=c.created_at,
            )
            for c in commits
        ]

    def list_files(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> list[str]:
        _check(repo_id, repo_type)
        with _mapped(repo_id, revision=revision):
            return sorted(self.api.list_repo_files(repo_id, repo_type=repo_type, revision=revision, token=self.token))

    def download(
        self,
        *,
        repo_id: str,
        repo_type: str = "model",
        revision: str | None = None,
        local_dir: str | Path | None = None,
        paths: Sequence[str] | None = None,
    ) -> Path:
        _check(repo_id, repo_type)
        only = {"allow_patterns": list(paths)} if paths is not None else {}
        with _mapped(repo_id, revision=revision):
            path = self.api.snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                local_dir=str(local_dir) if local_dir is not None else None,
                token=self.token,
                **only,
            )
        return Path(path)


def _oidc_token() -> str | None:
    """The Trusted Publishers token when ``HF_OIDC_RESOURCE`` asks for one (huggingface_hub mints the CI's OIDC
    id token and exchanges it at the hub's /oauth/token), else None. A failed exchange is an AuthError: opting in
    is explicit, so it never falls back silently to another token."""
    if not os.environ.get("HF_OIDC_RESOURCE"):
        return None
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as exc:  # huggingface_hub's OIDCError (no id token here), or the hub refusing the exchange
        raise AuthError(
            f"Trusted Publishers: no Hugging Face token for HF_OIDC_RESOURCE={os.environ['HF_OIDC_RESOURCE']} "
            f"({exc}); give the workflow `permissions: id-token: write` and add it as a trusted publisher of that "
            "repository, or unset HF_OIDC_RESOURCE and set HF_TOKEN"
        ) from exc


def _check(repo_id: str, repo_type: str) -> None:
    validate_repo_id(repo_id)
    validate_repo_type(repo_type)


@contextlib.contextmanager
def _mapped(what: str, *, revision: str | None = None, tag: str | None = None) -> Iterator[None]:
    """huggingface_hub's and the HTTP client's exceptions -> ours, raised from theirs, with what the server said
    (status, request id, message) as fields: the one-line message for the user, the rest for ``--debug``."""
    from huggingface_hub import errors as hf

    repo_id = what if "/" in what else None
    try:
        yield
    except hf.HfHubHTTPError as exc:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        fields: dict[str, Any] = {
            "repo_id": repo_id,
            "revision": tag or revision,
            "status_code": status,
            "request_id": getattr(exc, "request_id", None),
            "server_message": getattr(exc, "server_message", None),
        }
        raise _http_error(exc, what, status, revision=revision, tag=tag, fields=fields) from exc
    except (hf.EntryNotFoundError, hf.RemoteEntryNotFoundError) as exc:  # not HTTP errors in every release
        raise EntryNotFound(f"{what}: {exc}", repo_id=repo_id, revision=tag or revision) from exc
    except hf.OfflineModeIsEnabled as exc:
        raise HubUnavailable(
            "the Hugging Face hub is off (HF_HUB_OFFLINE=1); unset it to reach the hub", repo_id=repo_id
        ) from exc
    except OSError as exc:  # connection refused/reset, DNS
        raise HubUnavailable(f"cannot reach the Hugging Face hub ({exc}); try again later", repo_id=repo_id) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise HubUnavailable(
                f"cannot reach the Hugging Face hub ({type(exc).__name__}: {exc}); try again later", repo_id=repo_id
            ) from exc
        raise


def _http_error(
    exc: Exception, what: str, status: int | None, *, revision: str | None, tag: str | None, fields: dict[str, Any]
) -> HubError:
    """The typed error for an answer of the Hugging Face hub (the caller raises it from ``exc``)."""
    from huggingface_hub import errors as hf

    if isinstance(exc, hf.GatedRepoError):
        return AuthError(
            f"{what} is gated on the Hugging Face hub: accept its terms with the token's account", **fields
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return RepositoryNotFound(
            f"no repository {what} on the Hugging Face hub (or the token cannot see it)", **fields
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return RevisionNotFound(f"{what} has no revision {revision or tag!r} on the Hugging Face hub", **fields)
    if isinstance(exc, (hf.EntryNotFoundError, hf.RemoteEntryNotFoundError)):
        return EntryNotFound(f"{what}: {exc}", **fields)
    if status in (401, 403):
        return AuthError(f"the Hugging Face hub rejected the token ({status}); {_TOKEN_HELP}", **fields)
    if status == 409:
        if tag is not None:
            return RevisionExists(f"{what} already has version {tag!r} on the Hugging Face hub", **fields)
        return RepositoryExists(f"{what} already exists on the Hugging Face hub", **fields)
    if status == 412:
        return ConflictError(f"{what} moved on the Hugging Face hub (parent commit is not the head)", **fields)
    if status is None or status == 429 or status >= 500:
        return HubUnavailable(f"the Hugging Face hub is unavailable ({status or exc}); try again later", **fields)
    return HubError(f"the Hugging Face hub refused the request for {what}: {exc}", **fields)
