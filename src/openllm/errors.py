"""The project's error types. User errors (bad input, missing files, bad configs) are printed by the CLI as
one line; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno

__all__ = [
    "OpenLLMError",
    "ConfigError",
    "MissingExtra",
    "EXTRAS",
    "require",
    "missing_extra",
    "user_message",
    "is_user_error",
    "is_disk_full",
    "DISK_FULL_HINT",
]

# a full disk, a full quota, or a file-size limit (ulimit -f): the user can fix each by making room
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")
DISK_FULL_HINT = "free some space (or raise the file-size limit) and run the same command again"


class OpenLLMError(Exception):
    """Base class for errors caused by input the user can fix. The message says what and how."""


class ConfigError(OpenLLMError, ValueError):
    """A config file or override is invalid; the message names the field and the allowed values. One line,
    whatever the user typed (a key with a newline in it stays on the line).

    ``key`` is the setting at fault (``train.lr``) when one is, and ``reason`` the message without the key's name
    ("must be greater than 0, got 0"), so that a form can show it beside the field's own label."""

    def __init__(self, message: str, *, key: str | None = None, reason: str | None = None) -> None:
        super().__init__(" ".join(str(message).replace("\n", "\\n").split()))
        self.key = key
        self.reason = " ".join(str(reason if reason is not None else message).replace("\n", "\\n").split())


class MissingExtra(OpenLLMError, ImportError):
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
}


def _message(module: str, extra: str, what: str | None) -> str:
    need = f"{what} needs {module}" if what else f"{module} is needed here"
    return f"{need}, which is not installed: pip install 'openllm[{extra}]' (or 'openllm[all]')"


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
    """A write failed for lack of room. Libraries written in Rust or C++ (safetensors, sentencepiece) raise
    their own types, so their messages are read too."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    return any(words in str(exc) for words in _DISK_FULL_WORDS)


def is_user_error(exc: BaseException) -> bool:
    return (
        isinstance(exc, (OpenLLMError, FileNotFoundError, FileExistsError))
        or is_disk_full(exc)
        or missing_extra(exc) is not None
    )
