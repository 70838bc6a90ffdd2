"""Corpus preparation: read raw text, clean it, drop and deduplicate documents, split train/val, report.

(The reading/cleaning pipeline follows; this part holds the output helpers shared with ``shards``.)
"""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import OpenLLMError

TRAIN_FILE, VAL_FILE, REPORT_JSON, REPORT_MD = "train.jsonl", "val.jsonl", "report.json", "report.md"


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
                f"--out {out} exists and is not an earlier output (no {owned_marker}); "
                "choose an empty or new folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
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


def sha256_file(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
