"""Content hashes: one sha256 for files and bytes, used by checksums in reports, cards, shards and the sync."""

from __future__ import annotations

import hashlib
import os

__all__ = ["sha256_file", "sha256_bytes"]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
