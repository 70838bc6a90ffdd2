"""The app's workspace: one folder that holds everything the web UI may read or write.

Every path that comes from the browser goes through :meth:`Workspace.resolve`, which resolves ``..`` and
symlinks first and then refuses anything that lands outside the workspace. Names of runs and models go through
:func:`check_name`. Layout::

    WORKSPACE/
      runs/NAME/      training runs (the folder ``openllm train --out`` writes)
      jobs/NAME/      what the app keeps per run: job.json, log.txt, the prepared data and tokenizer
      corpora/        text the user put there or uploaded through the app
      models/         hub versions downloaded through the app
      exports/        exports made in the app's Export tab
      downloads/      archives the app offers for download
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ..errors import OpenLLMError

__all__ = ["Workspace", "WorkspaceError", "check_name", "default_workspace"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class WorkspaceError(OpenLLMError):
    """A path or name from the UI is not acceptable (outside the workspace, missing, badly formed)."""


def check_name(name: str, what: str = "name") -> str:
    """A run or model name: letters, digits, '.', '_' and '-', starting with a letter or digit, at most 64."""
    name = (name or "").strip()
    if not name:
        raise WorkspaceError(f"{what} is required")
    if not _NAME.match(name) or name in {".", ".."} or ".." in name:
        raise WorkspaceError(
            f"{what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' (at most 64 characters, "
            "starting with a letter or digit)"
        )
    return name


def default_workspace(env: Mapping[str, str] | None = None) -> Path:
    """OPENLLM_WORKSPACE (e.g. a volume a Space mounts at /data), else OPENLLM_APP_WORKSPACE, else
    ./openllm-workspace in the current directory (``env``: os.environ)."""
    env = os.environ if env is None else env
    given = env.get("OPENLLM_WORKSPACE") or env.get("OPENLLM_APP_WORKSPACE")
    return Path(given) if given else Path.cwd() / "openllm-workspace"


class Workspace:
    """A sandboxed folder. Create it with the folder's path; the folder and its subfolders are made."""

    SUBDIRS = ("runs", "jobs", "corpora", "models", "exports", "downloads")

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.root = root.resolve()
            for sub in self.SUBDIRS:
                (self.root / sub).mkdir(exist_ok=True)
        except OSError as exc:  # a file there (or above), a read-only or pseudo filesystem
            made = f"cannot be made ({exc.strerror or exc})"
            why = "is not a folder" if root.exists() and not root.is_dir() else made
            raise WorkspaceError(
                f"the workspace {root} {why}: give --workspace (or OPENLLM_WORKSPACE) a folder the app can create "
                f"and write"
            ) from exc

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def corpora_dir(self) -> Path:
        return self.root / "corpora"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    def contains(self, path: str | os.PathLike) -> bool:
        """True when ``path``, with symlinks and '..' resolved, is the workspace or inside it."""
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError):  # symlink loops
            return False
        return resolved == self.root or self.root in resolved.parents

    def resolve(self, user_path: str, *, must_exist: bool = True, kind: str | None = None) -> Path:
        """The real path of ``user_path`` (relative to the workspace, or absolute but inside it).

        Raises WorkspaceError when it is empty, leaves the workspace (through '..', an absolute path or a
        symlink), does not exist (with ``must_exist``), or is not a ``kind`` ('file' or 'dir').
        """
        text = (user_path or "").strip()
        if not text:
            raise WorkspaceError("a path is required")
        if any(ord(c) < 32 for c in text):
            raise WorkspaceError("the path contains control characters")
        p = Path(text).expanduser() if text.startswith("~") else Path(text)
        if not p.is_absolute():
            p = self.root / p
        try:
            resolved = p.resolve()
        except (OSError, RuntimeError) as exc:
            raise WorkspaceError(f"{text!r} cannot be resolved (a symlink loop?)") from exc
        if not (resolved == self.root or self.root in resolved.parents):
            raise WorkspaceError(
                f"{text!r} is outside the app's workspace ({self.root}); only files inside it can be used: "
                "copy the file into the workspace or upload it"
            )
        if must_exist and not resolved.exists():
            raise WorkspaceError(f"{text!r} does not exist in the workspace ({self.root})")
        if kind == "file" and resolved.exists() and not resolved.is_file():
            raise WorkspaceError(f"{text!r} is not a file")
        if kind == "dir" and resolved.exists() and not resolved.is_dir():
            raise WorkspaceError(f"{text!r} is not a folder")
        return resolved

    def relative(self, path: str | os.PathLike) -> str:
        """How the UI shows a workspace path: relative to the workspace root."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(self.root)) or "."
        except ValueError as exc:  # pragma: no cover - callers only pass workspace paths
            raise WorkspaceError(f"{p} is outside the workspace") from exc

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / check_name(name, "run name")

    def job_dir(self, name: str) -> Path:
        return self.jobs_dir / check_name(name, "run name")

    def run_names(self) -> list[str]:
        """Runs in the workspace, newest first."""
        runs = [p for p in self.runs_dir.iterdir() if p.is_dir() and _NAME.match(p.name) and self.contains(p)]
        runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.name for p in runs]

    def model_names(self) -> list[str]:
        """Models downloaded into the workspace (models/NAME), newest first."""
        models = [p for p in self.models_dir.iterdir() if p.is_dir() and _NAME.match(p.name) and self.contains(p)]
        models.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        return [p.name for p in models]

    def corpus_files(self) -> list[str]:
        """Text files under corpora/ (relative paths), for the corpus picker."""
        out = []
        for p in sorted(self.corpora_dir.rglob("*")):
            if p.is_file() and self.contains(p) and p.suffix.lower() in {".txt", ".jsonl", ".json", ".parquet", ".md"}:
                out.append(self.relative(p))
        return out

    def unique_name(self, stem: str, parent: Path) -> str:
        """``stem``, or ``stem-2``, ``stem-3``... whichever does not exist under ``parent`` yet."""
        stem = check_name(stem)
        if not (parent / stem).exists():
            return stem
        i = 2
        while (parent / f"{stem}-{i}").exists():
            i += 1
        return f"{stem}-{i}"
