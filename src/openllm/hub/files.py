"""The files of a folder that is about to be uploaded, never leaving the folder.

A symbolic link whose target is a regular file inside the folder is uploaded as that file's content (the
repository gets a regular file, as the Hugging Face hub does); a link that leads outside the folder, a dangling
link and a linked folder are refused, so that an upload can never carry ``/etc/passwd`` or a key file into a
repository because someone left a link in a data folder. ``.git`` folders are skipped; other things that are
not regular files (sockets, pipes, devices) are skipped too."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import UnsafeUpload

__all__ = ["folder_files"]

_SKIP_DIRS = {".git"}


def folder_files(folder: str | Path, *, exclude: Callable[[str], bool] | None = None) -> list[tuple[str, Path]]:
    """``(path in repo, file to read)`` for every file under ``folder``, sorted by path; the file to read is the
    link's target for an inside link. ``exclude(relative_path)`` leaves a file or a whole folder out before it is
    looked at. Raise :class:`UnsafeUpload` naming the first link that leaves the folder."""
    top = Path(folder)
    root = top.resolve()
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            rel = (here / d).relative_to(top).as_posix()
            if d in _SKIP_DIRS or (exclude is not None and exclude(rel)):
                continue
            if (here / d).is_symlink():  # os.walk lists a linked folder among the folders but never enters it
                raise UnsafeUpload(
                    f"refusing to upload {top}: {rel} is a link to a folder "
                    f"({os.readlink(here / d)}); uploads never follow linked folders (copy the "
                    f"files in, or remove the link)"
                )
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = here / name
            rel = full.relative_to(top).as_posix()
            if exclude is not None and exclude(rel):
                continue
            if full.is_symlink():
                target = Path(os.path.realpath(full))
                if not target.is_relative_to(root):
                    raise UnsafeUpload(
                        f"refusing to upload {top}: {rel} is a link to {os.readlink(full)}, outside "
                        f"the folder; uploads never follow links out of the folder (copy the file "
                        f"in, or remove the link)"
                    )
                if not target.is_file():
                    raise UnsafeUpload(
                        f"refusing to upload {top}: {rel} is a link to {os.readlink(full)}, which is "
                        f"not a file in the folder (a dangling link?); remove the link"
                    )
                out.append((rel, target))
            elif full.is_file():
                out.append((rel, full))
    out.sort(key=lambda e: e[0])
    return out
