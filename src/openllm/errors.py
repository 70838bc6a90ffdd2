"""The project's error types. User errors (bad input, missing files, bad configs) are printed by the CLI as
one line; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import errno

__all__ = ["OpenLLMError", "ConfigError", "is_user_error", "is_disk_full", "DISK_FULL_HINT"]

# a full disk, a full quota, or a file-size limit (ulimit -f): the user can fix each by making room
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "File too large")
DISK_FULL_HINT = "free some space (or raise the file-size limit) and run the same command again"


class OpenLLMError(Exception):
    """Base class for errors caused by input the user can fix. The message says what and how."""


class ConfigError(OpenLLMError, ValueError):
    """A config file or override is invalid; the message names the field and the allowed values."""


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for lack of room. Libraries written in Rust or C++ (safetensors, sentencepiece) raise
    their own types, so their messages are read too."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    return any(words in str(exc) for words in _DISK_FULL_WORDS)


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (OpenLLMError, FileNotFoundError, FileExistsError)) or is_disk_full(exc)
