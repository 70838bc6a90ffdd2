"""Atomic file writes and JSON reads: a foundation any module may use, whatever the file is for.

Atomic writes: a reader sees the old content or the complete new content, never a part. Files go through a
temporary sibling, ``fsync`` and ``os.replace``; folders are built in a hidden sibling and renamed into place.

JSON reads come in two kinds: :func:`read_json` for files that may be missing or damaged without harm (a
status, a cache: ``{}`` then), :func:`load_json` for files the caller needs (a user error naming the file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import OpenLLMError

__all__ = [
    "is_temporary",
    "parse_json",
    "read_json",
    "load_json",
    "read_jsonl",
    "write_json_atomic",
    "write_text_atomic",
    "write_bytes_atomic",
    "atomic_file",
    "atomic_output_dir",
    "make_dirs",
    "fsync_dir",
    "fsync_file",
]


# --- reads ---------------------------------------------------------------------------------------------------


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of this module's in-flight temporaries (an atomic write's
    ``.NAME.PID.tmp``, an atomic folder's ``.NAME.tmp-PID``): renamed into place or removed soon, never a
    result to copy anywhere."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name)


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with every way text can fail to parse raised as :class:`ValueError`: nesting deeper
    than the interpreter's recursion limit raises RecursionError in ``json``, which is not about a bug."""
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError) or "digits" not in str(exc):
            raise
        # Python's int conversion limit: its message advises an interpreter setting, not a fix to the file
        raise ValueError("a number has more than 4,300 digits") from exc


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; ``{}`` when the file is missing, unreadable or not an object."""
    try:
        data = parse_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_json(path: str | os.PathLike, *, what: str = "") -> dict[str, Any]:
    """A JSON object from a file the caller needs: a missing, unreadable, non-UTF-8, invalid or non-object
    file is a user error naming the file."""
    path = Path(path)
    label = f"{path}" + (f" ({what})" if what else "")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise OpenLLMError(f"{label} is missing") from exc
    except UnicodeDecodeError as exc:
        raise OpenLLMError(f"{label} is not UTF-8 text: the file is damaged; restore or regenerate it") from exc
    except OSError as exc:
        raise OpenLLMError(f"{label} cannot be read: {exc.strerror or exc}") from exc
    try:
        data = parse_json(text)
    except ValueError as exc:
        raise OpenLLMError(f"{label} is not valid JSON ({exc}): the file is damaged; restore or regenerate it") from exc
    if not isinstance(data, dict):
        raise OpenLLMError(f"{label}: expected a JSON object, found {type(data).__name__}")
    return data


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a ``.jsonl`` file; a line being written or cut by a kill (not valid JSON) is skipped."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = parse_json(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except OSError:
        pass
    return out


# --- atomic writes --------------------------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def follow_umask(path: str | os.PathLike, *, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it (0666/0777 less the umask): writers that
    make private files (safetensors' ``save_file``, ``mkstemp``, ``mkdtemp``: 0600/0700) would otherwise leave a
    folder whose config others can read but whose weights they cannot."""
    mask = os.umask(0o022)  # the only way to read the umask is to set it
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success it is flushed, synced and renamed onto
    ``path``; on error it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """JSON (indented, UTF-8 kept as is, a final newline) through :func:`atomic_file`."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` whose failures are one-line user errors: a file in the way, no permission, a read-only
    file system."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise OpenLLMError(f"{folder}: {parent} is a file, not a folder; choose another path")
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpenLLMError(f"cannot create {folder} ({exc.strerror or exc}); choose a folder you can write to") from exc
    return folder


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, *, owned_marker: str) -> Iterator[Path]:
    """Build an output folder in a hidden sibling and move it into place only when complete.

    An existing ``out_dir`` is replaced only when it is empty or an earlier output of the same kind (it holds
    ``owned_marker``); anything else is refused so that a typo in ``--out`` cannot delete a user's folder.
    On error the partial folder is removed and ``out_dir`` is left as it was.
    """
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise OpenLLMError(f"--out {out} exists and is not a folder; choose another path")
        if any(out.iterdir()) and not (out / owned_marker).exists():
            raise OpenLLMError(
                f"--out {out} exists and is not an earlier output (no {owned_marker}); choose an empty or new folder"
            )
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    make_dirs(out.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise OpenLLMError(
            f"--out {out}: cannot write in {out.parent} ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
