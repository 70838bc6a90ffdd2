"""The hub interface: what every hub (local git, Hugging Face) implements, modelled on
``huggingface_hub.HfApi`` and keyword-only. Everything above this interface (model push, dataset upload,
the Space sync, the app) is written once against it."""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import RevisionExists, RevisionNotFound
from .ids import validate_path_in_repo, validate_tag

__all__ = [
    "Hub",
    "CommitOperationAdd",
    "CommitOperationDelete",
    "CommitOperation",
    "GitRefs",
    "CommitInfo",
    "REPLACE_ALL",
]


@dataclass(frozen=True)
class CommitOperationAdd:
    """Add or overwrite ``path_in_repo`` with a local file or with bytes (as in huggingface_hub)."""

    path_in_repo: str
    path_or_fileobj: str | Path | bytes

    def __post_init__(self) -> None:
        validate_path_in_repo(self.path_in_repo)
        if not isinstance(self.path_or_fileobj, (str, Path, bytes)):
            raise TypeError("path_or_fileobj must be a path or bytes")


@dataclass(frozen=True)
class CommitOperationDelete:
    """Delete a file, or a folder when ``path_in_repo`` ends with '/' (as in huggingface_hub)."""

    path_in_repo: str

    def __post_init__(self) -> None:
        validate_path_in_repo(self.path_in_repo.rstrip("/"))

    @property
    def is_folder(self) -> bool:
        return self.path_in_repo.endswith("/")


CommitOperation = CommitOperationAdd | CommitOperationDelete


def _all_but(name: str) -> list[str]:
    """fnmatch patterns matching every path except ``name`` (fnmatch has no negation): a path differs from
    ``name`` at its first differing character, or is longer."""
    esc = lambda t: re.sub(r"([*?\[])", r"[\1]", t)
    return [f"{esc(name[:i])}[!{name[i]}]*" for i in range(len(name))] + [f"{esc(name)}?*"]


# ``delete_patterns`` that make an upload replace every file of the repo except ``.gitattributes`` (the
# Hugging Face hub's large-file rules). Evaluated against the head at commit time, so a concurrent push
# cannot leave its files in our version's tree.
REPLACE_ALL = _all_but(".gitattributes")


@dataclass
class GitRefs:
    """Branches and tags of a repository: name -> commit id (tags peeled to the commit they mark)."""

    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class CommitInfo:
    """One commit, newest first in :meth:`Hub.list_commits`."""

    commit_id: str
    title: str
    message: str = ""
    authors: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    parents: list[str] = field(default_factory=list)


class Hub(abc.ABC):
    """A place that holds model, dataset and Space repositories. All arguments are keyword-only.

    Errors are typed (openllm.hub.errors): RepositoryNotFound, RevisionNotFound, AuthError, HubUnavailable
    (safe to retry), ConflictError, InvalidRepoId.
    """

    name: str = "hub"

    @abc.abstractmethod
    def create_repo(
        self, *, repo_id: str, repo_type: str = "model", exist_ok: bool = False, private: bool = False
    ) -> str:
        """Create an empty repository; return its URL (or path). Existing + ``exist_ok=False``: RepositoryExists.
        ``private``: visible to its owner only, on hubs that have accounts (else UnsupportedOperation); an
        existing repository keeps its visibility."""

    @abc.abstractmethod
    def repo_exists(self, *, repo_id: str, repo_type: str = "model") -> bool: ...

    @abc.abstractmethod
    def list_repos(self, *, repo_type: str = "model") -> list[str]:
        """Repo ids of that type on this hub (the local hub: all; Hugging Face: the token's owner's)."""

    @abc.abstractmethod
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
        """Upload every file under ``folder_path`` as ONE commit; delete repo files matching
        ``delete_patterns`` (fnmatch, e.g. ``"*"`` = make the repo exactly the folder) that the folder does not
        hold. Return the commit id (the unchanged head if nothing changed)."""

    @abc.abstractmethod
    def create_commit(
        self,
        *,
        repo_id: str,
        operations: Iterable[CommitOperation],
        commit_message: str,
        repo_type: str = "model",
        parent_commit: str | None = None,
    ) -> str:
        """Apply the operations as one commit on ``main``; ConflictError if ``parent_commit`` is given and the
        head is elsewhere. Return the commit id."""

    @abc.abstractmethod
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
        """Annotated tag on ``revision`` (default: head of main). Existing tag: RevisionExists unless exist_ok."""

    def upload_version(
        self,
        *,
        repo_id: str,
        folder_path: str | Path,
        tag: str,
        repo_type: str = "model",
        commit_message: str | None = None,
        tag_message: str | None = None,
        delete_patterns: str | Sequence[str] | None = None,
        replace_tag: bool = False,
    ) -> str:
        """Upload the folder as one commit on main (as :meth:`upload_folder`) and tag that commit ``tag``.
        An existing tag: RevisionExists unless ``replace_tag`` (then the tag moves to the new commit).
        Return the commit id.

        This generic version makes two calls (commit, then tag), so a tag taken by someone else between the
        two leaves the commit on main. The local git hub overrides it with one atomic push of the branch and
        the tag together: a refused or interrupted version changes nothing."""
        validate_tag(tag)
        if not replace_tag and tag in self.list_refs(repo_id=repo_id, repo_type=repo_type).tags:
            raise RevisionExists(f"{repo_type} repo {repo_id} already has version {tag!r}; versions are immutable")
        commit = self.upload_folder(
            repo_id=repo_id,
            folder_path=folder_path,
            repo_type=repo_type,
            commit_message=commit_message,
            delete_patterns=delete_patterns,
        )
        if replace_tag:
            try:
                self.delete_tag(repo_id=repo_id, tag=tag, repo_type=repo_type)
            except RevisionNotFound:
                pass
        self.create_tag(repo_id=repo_id, tag=tag, revision=commit, message=tag_message, repo_type=repo_type)
        return commit

    @abc.abstractmethod
    def delete_tag(self, *, repo_id: str, tag: str, repo_type: str = "model") -> None: ...

    @abc.abstractmethod
    def list_refs(self, *, repo_id: str, repo_type: str = "model") -> GitRefs: ...

    @abc.abstractmethod
    def list_commits(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> list[CommitInfo]:
        """History of ``revision`` (default main), newest first."""

    @abc.abstractmethod
    def list_files(self, *, repo_id: str, repo_type: str = "model", revision: str | None = None) -> list[str]: ...

    @abc.abstractmethod
    def download(
        self,
        *,
        repo_id: str,
        repo_type: str = "model",
        revision: str | None = None,
        local_dir: str | Path | None = None,
        paths: Sequence[str] | None = None,
    ) -> Path:
        """Files of ``revision`` in a local folder (checksums verified); return the folder. ``paths``: only
        those files (those the revision lacks are simply absent)."""

    @abc.abstractmethod
    def revert(
        self, *, repo_id: str, to_revision: str, repo_type: str = "model", commit_message: str | None = None
    ) -> str:
        """A NEW commit on main whose tree is ``to_revision``'s (history is kept). Return its id."""

    def describe(self) -> str:
        """Where this hub is, for messages."""
        return self.name
