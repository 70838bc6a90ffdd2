"""The project's error types. User errors (bad input, missing files, bad configs) are printed by the CLI as
one line; anything else is a bug and keeps its traceback."""
from __future__ import annotations

from .config import ConfigError

__all__ = ["OpenLLMError", "ConfigError", "is_user_error"]


class OpenLLMError(Exception):
    """Base class for errors caused by input the user can fix. The message says what and how."""


def is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, (OpenLLMError, ConfigError, FileNotFoundError, FileExistsError))
