"""Temporary folders that outlive no one: ``scratch_dir(prefix, dir)``.

A process killed with SIGKILL runs no ``finally``: its temporary folders (a staged export, a copy of the model
being pushed, a git workspace) stay on disk, one set per kill. Each scratch folder therefore holds an owner
file locked with ``flock`` for as long as the folder is in use; the kernel drops the lock when the owner dies,
however it dies. Making a new scratch folder first removes the folders of the same prefix whose lock is free:
the next run cleans up after a killed one, and never touches a folder that a live process is still writing.
Imports nothing from the package: any module may use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["scratch_dir", "clean_stale", "release", "OWNER"]

OWNER = ".openllm-owner"
# a folder without an owner file is one that mkdtemp made a moment ago (its owner is about to lock it), or one
# whose owner released it just before renaming it into place; only one this old is left over for good
_UNOWNED_GRACE_S = 600.0
_MKDTEMP = re.compile(r"[a-z0-9_]{8}")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; folders are still removed by a clean exit
    fcntl = None  # type: ignore[assignment]


def clean_stale(prefix: str, dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the scratch folders named ``prefix*`` in ``dir`` (default: the system's temporary folder) whose
    owner is dead; return them."""
    if fcntl is None:
        return []
    base = Path(dir if dir is not None else tempfile.gettempdir())
    removed = []
    try:
        # mkdtemp's names only (8 letters, digits or '_' after the prefix): never another tool's folder
        entries = [p for p in base.iterdir() if p.name.startswith(prefix) and _MKDTEMP.fullmatch(p.name[len(prefix) :])]
    except OSError:
        return []
    for path in entries:
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path / OWNER, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > _UNOWNED_GRACE_S:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            continue
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its owner is alive
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def scratch_dir(prefix: str, dir: str | os.PathLike | None = None, *, clean: bool = True) -> Iterator[Path]:
    """A new temporary folder ``DIR/PREFIX…`` (mode 0700, as :func:`tempfile.mkdtemp` makes it), removed on exit,
    and removed by the next call with the same prefix if this process is killed. Call :func:`release` before
    renaming the folder into place (its owner file must not go with it)."""
    if clean:
        clean_stale(prefix, dir)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    fd = None
    try:
        if fcntl is not None:
            # locked under another name, then renamed: a cleaner never finds an owner file that is not locked yet
            fd = os.open(path / (OWNER + ".new"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(path / (OWNER + ".new"), path / OWNER)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def release(path: str | os.PathLike) -> None:
    """Take the owner file out of a scratch folder that is about to become a real one (renamed into place).
    The lock stays held until the context exits; a cleaner meanwhile sees a fresh folder with no owner file and
    leaves it (see ``_UNOWNED_GRACE_S``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(path) / OWNER)
