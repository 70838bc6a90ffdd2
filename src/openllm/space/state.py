"""Content hashes, and the sync state recorded after each sync.

The state of a Space (one JSON file per hub and Space under the cache folder) holds every sync made from
here: its number, the Space commit it made, its tag, and the sha256 of every file it put there. The tags
on the Space (``sync-<n>-<hash>``) are the shared truth: a machine without the state file (a fresh CI
runner) rebuilds it from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fsio import write_text_atomic
from ..hashing import sha256_bytes, sha256_file

__all__ = [
    "sha256_bytes",
    "sha256_file",
    "tree_hashes",
    "tree_digest",
    "SyncRecord",
    "SyncState",
    "state_path",
    "cache_dir",
    "TAG_RE",
    "tag_name",
]

TAG_RE = re.compile(r"^sync-(\d+)-([0-9a-f]{8,64})$")


def tree_hashes(root: str | os.PathLike, skip: Iterable[str] = (".git",)) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root``."""
    root = Path(root)
    skip = set(skip)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for f in filenames:
            p = Path(dirpath, f)
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return dict(sorted(out.items()))


def tree_digest(files: dict[str, str]) -> str:
    """One hash for a whole tree: changes when any path or content does."""
    return sha256_bytes("".join(f"{p}\0{h}\n" for p, h in sorted(files.items())).encode())


def tag_name(n: int, files: dict[str, str]) -> str:
    return f"sync-{n}-{tree_digest(files)[:12]}"


def cache_dir() -> Path:
    """OPENLLM_CACHE, else ~/.cache/openllm."""
    env = os.environ.get("OPENLLM_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "openllm"


@dataclass
class SyncRecord:
    """One sync: what it pushed and where it left the Space."""

    n: int
    commit: str  # the Space commit the sync made (or restored)
    tag: str
    files: dict[str, str]  # Space path -> sha256 of what we put there
    time: float = field(default_factory=time.time)
    source_commit: str = ""  # the main repository's commit it was built from, when known
    kind: str = "sync"  # sync | rollback | auto-rollback
    uploaded: int = 0
    deleted: int = 0

    @property
    def id(self) -> str:
        return self.tag


@dataclass
class SyncState:
    """Every sync of one Space made from here, oldest first; ``pending``: the sync whose push is under way (saved
    before the push, cleared with its record after it), so a sync killed after its push landed leaves a state
    the next run settles (:meth:`openllm.space.sync.Syncer.settle_pending`)."""

    hub: str
    space: str
    history: list[SyncRecord] = field(default_factory=list)
    pending: SyncRecord | None = None

    @property
    def last(self) -> SyncRecord | None:
        return self.history[-1] if self.history else None

    def find(self, sync_id: str) -> SyncRecord | None:
        """By tag (``sync-3-…``), by number (``3``) or by commit prefix."""
        for rec in reversed(self.history):
            if sync_id in (rec.tag, str(rec.n)) or (len(sync_id) >= 7 and rec.commit.startswith(sync_id)):
                return rec
        return None

    def next_n(self) -> int:
        return (max((r.n for r in self.history), default=0)) + 1

    # ---- persistence
    @classmethod
    def load(cls, path: Path, hub: str, space: str) -> SyncState:
        if not path.is_file():
            return cls(hub=hub, space=space)
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            hub=data.get("hub", hub),
            space=data.get("space", space),
            history=[SyncRecord(**r) for r in data.get("history", [])],
            pending=SyncRecord(**data["pending"]) if data.get("pending") else None,
        )

    def save(self, path: Path) -> None:
        """Atomically: a crash leaves the old state or the new one, never half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"hub": self.hub, "space": self.space, "history": [asdict(r) for r in self.history]}
        if self.pending is not None:
            data["pending"] = asdict(self.pending)
        write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def state_path(hub_key: str, space: str) -> Path:
    """Where the state of ``space`` on the hub identified by ``hub_key`` lives."""
    safe_hub = re.sub(r"[^A-Za-z0-9._-]+", "_", hub_key).strip("_")[:80] or "hub"
    key = hashlib.sha256(hub_key.encode()).hexdigest()[:8]
    owner, _, name = space.partition("/")
    return cache_dir() / "space-sync" / f"{safe_hub}-{key}" / owner / f"{name}.json"
