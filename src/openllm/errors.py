"""The project's error types. User errors (bad input, missing files, bad configs) are printed by the CLI as
one line; anything else is a bug and keeps its traceback.

As huggingface_hub's errors do, each carries what a caller needs as attributes, given as keyword-only arguments
(``path``; a hub error's ``repo_id``, ``request_id``, ``server_message``), and the exception it was raised from
as its ``__cause__`` (``raise ConfigError(...) from exc``): the CLI prints the one-line message, and with
``--debug`` the fields and the whole chain.

What is not a user error is a bug: an internal invariant that does not hold, or an ``OSError`` (a missing file,
a refused permission) about a path that the user did not name. The CLI writes those to a crash log and exits 1."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "OpenLLMError",
    "ConfigError",
    "InputNotFound",
    "InputExists",
    "MissingExtra",
    "EXTRAS",
    "require",
    "missing_extra",
    "user_message",
    "is_user_error",
    "names_input",
    "is_disk_full",
    "disk_full_reason",
    "DISK_FULL_HINT",
]

# a full disk, a full quota, or a file-size limit (ulimit -f): the user can fix each by making room
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")
DISK_FULL_HINT = "free some space (or raise the file-size limit) and run the same command again"


class OpenLLMError(Exception):
    """Base class for errors caused by input the user can fix. The message says what and how; ``path`` is the
    file or folder the error is about, when there is one. Subclasses add their own fields (keyword-only, each
    with a default, so that an error still pickles: ``BaseException`` restores ``__dict__``)."""

    path: Path | None

    def __init__(self, *args: object, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(*args)
        self.path = Path(path) if path is not None else None

    def details(self) -> dict[str, Any]:
        """The fields that are set, by name (what ``openllm --debug`` prints above the traceback)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and v is not None}


class ConfigError(OpenLLMError, ValueError):
    """A config file or override is invalid; the message names the field and the allowed values. One line,
    whatever the user typed (a key with a newline in it stays on the line).

    ``key`` is the setting at fault (``train.lr``) when one is, and ``reason`` the message without the key's name
    ("must be greater than 0, got 0"), so that a form can show it beside the field's own label."""

    def __init__(self, message: str, *, key: str | None = None, reason: str | None = None) -> None:
        super().__init__(" ".join(str(message).replace("\n", "\\n").split()))
        self.key = key
        self.reason = " ".join(str(reason if reason is not None else message).replace("\n", "\\n").split())


class InputNotFound(OpenLLMError, FileNotFoundError):
    """A file or folder the user named (or one that a folder the user named must hold) does not exist. Still a
    ``FileNotFoundError`` for callers that catch that; ``path`` says which (``filename`` stays None: set, it
    would turn the message into ``[Errno None] None: path``)."""


class InputExists(OpenLLMError, FileExistsError):
    """An output the user named already exists (or is not empty) and is not to be overwritten."""


# ImportError types its own ``path`` (the module's file) as a str, ours is a Path: on this error both are None
class MissingExtra(OpenLLMError, ImportError):  # type: ignore[misc]
    """An optional dependency is not installed; the message names the ``pip install`` that adds it."""


# top-level module -> the pyproject extra that installs it (pyproject.toml's [project.optional-dependencies])
EXTRAS = {
    "gradio": "app",
    "psutil": "app",
    "fastapi": "serve",
    "uvicorn": "serve",
    "pydantic": "serve",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "gguf": "export",
    "transformers": "export",
    "lm_eval": "eval",
    "trackio": "track",
    "wandb": "track",
    "datatrove": "data",
    "ray": "ray",
}


# the extras pyproject.toml's ``all`` gathers (tests/test_errors.py checks the two agree): the hint offers
# 'openllm[all]' only for these
IN_ALL = ("app", "serve", "export", "eval", "finetune")


def _message(module: str, extra: str, what: str | None) -> str:
    need = f"{what} needs {module}" if what else f"{module} is needed here"
    also = " (or 'openllm[all]')" if extra in IN_ALL else ""
    return f"{need}, which is not installed: pip install 'openllm[{extra}]'{also}"


def require(module: str, extra: str | None = None, *, what: str | None = None) -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported; call it right before importing an
    optional dependency (the import itself stays a plain ``import`` statement)."""
    import importlib.util

    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra(_message(top, extra or EXTRAS.get(top, "all"), what))


def missing_extra(exc: BaseException) -> MissingExtra | None:
    """The :class:`MissingExtra` that a ``ModuleNotFoundError`` of an optional dependency means, else None."""
    if isinstance(exc, MissingExtra):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in EXTRAS:
            return MissingExtra(_message(top, EXTRAS[top], None))
    return None


def user_message(exc: BaseException) -> str:
    """What the CLI prints for a user error: the exception's text, or the pip install a missing extra needs."""
    extra = missing_extra(exc)
    return str(extra if extra is not None else exc)


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for lack of room, wherever the errno surfaces: the exception itself, or one it was raised
    from or while handling (torch.save's writer raises "unexpected pos …" with the OSError only as its
    context). Libraries written in Rust or C++ (safetensors, sentencepiece) raise their own types, so their
    messages are read too."""
    return disk_full_reason(exc) is not None


def disk_full_reason(exc: BaseException) -> str | None:
    """The words of the full-disk failure in ``exc``'s chain ("No space left on device"), for a message that
    names the cause rather than a library's wrapper of it; None when the chain holds none."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _DISK_FULL:
            return cur.strerror or os.strerror(cur.errno)
        text = " ".join(str(cur).split())
        if any(words in text for words in _DISK_FULL_WORDS):
            return text
        cur = cur.__cause__ or cur.__context__
    return None


def is_user_error(exc: BaseException, *, inputs: Iterable[str | os.PathLike[str]] | None = None) -> bool:
    """An error the user can fix: one of ours (:class:`OpenLLMError`), a full disk, a missing optional
    dependency, or an ``OSError`` about a path the user gave. ``inputs`` are the paths (or all the arguments) the
    user gave: an ``OSError`` about one of them, or about a file inside one, is the user's; any other (a cache
    file, a module's own data, a file that the code itself just wrote) is a bug. Without ``inputs`` (callers that
    do not know them) a missing or existing file counts as the user's, as it always did."""
    if isinstance(exc, OpenLLMError) or is_disk_full(exc) or missing_extra(exc) is not None:
        return True
    if not isinstance(exc, OSError):
        return False
    if inputs is None:
        return isinstance(exc, (FileNotFoundError, FileExistsError))
    return names_input(exc, inputs)


def names_input(exc: OSError, inputs: Iterable[str | os.PathLike[str]]) -> bool:
    """``exc`` is about one of ``inputs`` or about something inside one (``filename`` or ``filename2``, both
    made absolute from the current folder, as written and with links resolved: code that resolves a path the
    user gave still names it). Arguments that are no paths (``--max-steps``, ``8``) match nothing."""
    names = [n for n in (exc.filename, exc.filename2) if isinstance(n, (str, os.PathLike)) and str(n)]
    if not names:
        return False
    given: set[Path] = set()
    for arg in inputs:
        text = os.fspath(arg)
        if isinstance(text, str) and text and "\0" not in text:
            given.update(_forms(text.partition("=")[2] or text if text.startswith("-") else text))
    given = {g for g in given if g != Path(g.anchor)}  # "/" holds everything: no input folder
    for name in names:
        for path in _forms(os.fspath(name)):
            if path in given or any(parent in given for parent in path.parents):
                return True
    return False


def _forms(path: str | bytes) -> set[Path]:
    """A path made absolute, as written and with its links resolved (``realpath`` does not need it to exist)."""
    text = os.fsdecode(path)
    try:
        return {Path(os.path.abspath(text)), Path(os.path.realpath(text))}
    except (OSError, ValueError):  # a link loop, a name the OS refuses
        return {Path(os.path.abspath(text))}
