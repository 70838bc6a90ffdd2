"""Validation of what users name: repo ids (``owner/name``), repo types, revisions, paths inside a repo and
model references (``owner/name@version``). Checked before any I/O so that a bad name can never become a path
outside the hub or an option to git."""

from __future__ import annotations

import re

from .errors import InvalidRepoId

__all__ = [
    "REPO_TYPES",
    "validate_repo_id",
    "validate_repo_type",
    "validate_revision",
    "validate_tag",
    "validate_version",
    "validate_path_in_repo",
    "parse_model_ref",
    "RESERVED_TAGS",
    "SYNC_TAG_PREFIX",
]

REPO_TYPES = ("model", "dataset", "space")
# Hugging Face's rule for each half of a repo id: letters, digits, '-', '_', '.', at most 96 characters,
# not starting or ending with '-' or '.', no '--' or '..'.
_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")
_EXAMPLE = "e.g. alice/tiny-shakespeare"
_TAG_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
# Names git itself gives a meaning: a tag called HEAD or main makes every `git rev-parse main` ambiguous (git
# warns on each call); compared case-insensitively because on a case-insensitive file system `head` is HEAD.
RESERVED_TAGS = ("HEAD", "main", "master")
_SPECIAL_HEAD = re.compile(r"^[A-Za-z_]+_HEAD$", re.I)  # FETCH_HEAD, ORIG_HEAD, MERGE_HEAD, ...
# the Space sync's own tags (openllm.space.state.TAG_RE): a version of that name would pass for a sync record
SYNC_TAG_PREFIX = "sync-"
_VERSION_HELP = "use letters, digits, '.', '_' and '-', e.g. 7k or v2"


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else f"{type(value).__name__} {value!r}"


def validate_repo_id(repo_id: object) -> str:
    """Return ``repo_id`` if it is ``owner/name``; raise :class:`InvalidRepoId` saying what is wrong."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidRepoId(f"invalid repo id {_show(repo_id)}: expected OWNER/NAME, {_EXAMPLE}")
    if _CONTROL.search(repo_id):
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: control characters are not allowed; use OWNER/NAME")
    if repo_id.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", repo_id):
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: absolute paths are not repo ids; use OWNER/NAME, {_EXAMPLE}")
    if "\\" in repo_id:
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: backslashes are not allowed; use OWNER/NAME")
    parts = repo_id.split("/")
    if any(p in ("..", ".") for p in parts):
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: '.' and '..' are not allowed; use OWNER/NAME")
    if len(parts) != 2:
        raise InvalidRepoId(f"invalid repo id {repo_id!r}: expected exactly one '/', as in OWNER/NAME, {_EXAMPLE}")
    for label, part in zip(("owner", "name"), parts):
        if not _PART.match(part) or "--" in part or ".." in part or part.lower().endswith(".git"):
            raise InvalidRepoId(
                f"invalid repo id {repo_id!r}: the {label} {part!r} must be 1-96 letters, digits, '-', '_' or "
                f"'.', start with a letter or digit, and not contain '--' or '..' or end in '.git'"
            )
    return repo_id


def validate_repo_type(repo_type: object) -> str:
    if repo_type not in REPO_TYPES:
        raise InvalidRepoId(f"invalid repo type {_show(repo_type)}: choose one of {', '.join(REPO_TYPES)}")
    return repo_type  # type: ignore[return-value]


def validate_revision(revision: object) -> str:
    """A branch, tag or commit id; never something git could read as an option or a path outside refs."""
    if (
        not isinstance(revision, str)
        or not _REF.match(revision)
        or ".." in revision
        or "//" in revision
        or revision.endswith(("/", ".lock", "."))
        or "@{" in revision
    ):
        raise InvalidRepoId(f"invalid revision {_show(revision)}: use a version like 7k, a branch, or a commit id")
    return revision


def validate_tag(tag: object) -> str:
    """A tag (version) name, checked before any I/O: 1-200 of letters, digits, '.', '_', '-' (no '/': one
    flat namespace), not starting with '-' or '.', and nothing ``git check-ref-format`` refuses ('..', a
    trailing '.' or '.lock'); names git gives a meaning (HEAD, main, master, FETCH_HEAD, ...) are reserved."""
    if not isinstance(tag, str) or not tag:
        raise InvalidRepoId(f"invalid version {_show(tag)}: {_VERSION_HELP}")
    if _CONTROL.search(tag):
        raise InvalidRepoId(f"invalid version {tag!r}: control characters are not allowed; {_VERSION_HELP}")
    if tag.startswith("-"):
        raise InvalidRepoId(
            f"invalid version {tag!r}: it must not start with '-' (git would read it as an option); {_VERSION_HELP}"
        )
    if "/" in tag:
        raise InvalidRepoId(
            f"invalid version {tag!r}: '/' is not allowed in a version name (refs/... included); {_VERSION_HELP}"
        )
    if not _TAG_CHARS.match(tag) or len(tag) > 200:
        raise InvalidRepoId(f"invalid version {tag!r}: {_VERSION_HELP} (at most 200 characters)")
    if tag.startswith(".") or tag.endswith((".", ".lock")) or ".." in tag:
        raise InvalidRepoId(
            f"invalid version {tag!r}: git refuses names that start or end with '.', end with "
            f"'.lock' or contain '..'; {_VERSION_HELP}"
        )
    if tag.lower() in {r.lower() for r in RESERVED_TAGS} or _SPECIAL_HEAD.match(tag):
        raise InvalidRepoId(
            f"invalid version {tag!r}: the name is reserved by git (HEAD, main, master, *_HEAD); "
            f"choose another, e.g. 7k or v2"
        )
    return tag


def validate_version(version: object) -> str:
    """A version a user names for a model or dataset: :func:`validate_tag`, and not ``sync-*`` (the prefix of
    the Space sync's own tags)."""
    tag = validate_tag(version)
    if tag.lower().startswith(SYNC_TAG_PREFIX):
        raise InvalidRepoId(
            f"invalid version {tag!r}: names starting with {SYNC_TAG_PREFIX!r} are reserved "
            f"for the Space sync's tags; choose another, e.g. 7k or v2"
        )
    return tag


def validate_path_in_repo(path: object) -> str:
    """A relative POSIX path inside a repository (no traversal, no '.git', no control characters)."""
    if not isinstance(path, str) or not path or _CONTROL.search(path) or "\\" in path:
        raise InvalidRepoId(f"invalid path in repo {_show(path)}: use a relative path like weights/model.bin")
    if path.startswith("/"):
        raise InvalidRepoId(f"invalid path in repo {path!r}: absolute paths are not allowed")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidRepoId(f"invalid path in repo {path!r}: empty, '.' and '..' components are not allowed")
    if any(p.lower() == ".git" for p in parts):
        raise InvalidRepoId(f"invalid path in repo {path!r}: '.git' is reserved")
    return path


def parse_model_ref(ref: object) -> tuple[str, str | None]:
    """``owner/name@version`` -> ``(owner/name, version)``; ``owner/name`` -> ``(owner/name, None)``."""
    if not isinstance(ref, str):
        raise InvalidRepoId(f"invalid model reference {_show(ref)}: expected OWNER/NAME@VERSION")
    repo_id, sep, version = ref.partition("@")
    validate_repo_id(repo_id)
    if sep:
        if not version:
            raise InvalidRepoId(
                f"invalid model reference {ref!r}: nothing after '@'; use OWNER/NAME@VERSION, e.g. {repo_id}@7k"
            )
        validate_revision(version)
        return repo_id, version
    return repo_id, None
