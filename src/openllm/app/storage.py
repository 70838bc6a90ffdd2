"""Nothing lost on restart: where the app's workspace lives and how it outlives the machine.

A Space's own disk is wiped when it restarts or is rebuilt. The workspace survives in one of two ways:

- **a mounted volume**: ``OPENLLM_WORKSPACE=/data`` (a bucket or repository the Space mounts there) puts the
  workspace on it; nothing else is needed.
- **a mirror**: the durable part of the workspace (``runs/``, ``jobs/``, ``corpora/``: every run, its metrics
  and checkpoints, the prepared data a Continue trains on, the uploaded corpora) is copied into a dataset
  repository on a hub (``OPENLLM_WORKSPACE_REPO=OWNER/NAME``, on ``OPENLLM_WORKSPACE_HUB``: ``local`` by default,
  ``hf`` for Hugging Face) after each checkpoint, each change of a run's state (a stop, an end) and when the app
  stops; when the app starts on an empty workspace, the repository is copied back. On a Space without a volume
  the mirror is on by default, into ``SPACE_ID-workspace``; locally it is on only when asked.

What is not mirrored is what can be made again or is only passing through: ``models/`` (hub downloads),
``exports/``, ``downloads/``, the run lock and the temporary folders of checkpoints being written. Mirroring
goes through the hub interface (:mod:`openllm.hub`), one commit per change, only the files that changed.

A run that was training when the machine went away shows as ``stopped``, phase ``interrupted``, at its latest
checkpoint (:func:`openllm.rundir.interrupt`); Continue resumes it exactly.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import OpenLLMError
from ..fsio import is_temporary, read_json, write_json_atomic
from ..hub import CommitOperationAdd, CommitOperationDelete, Hub, HubError, get_hub, validate_repo_id
from ..scratch import scratch_dir
from .workspace import Workspace, default_workspace

__all__ = [
    "WORKSPACE_ENV",
    "REPO_ENV",
    "HUB_ENV",
    "DURABLE",
    "StorageConfig",
    "storage_config",
    "WorkspaceMirror",
    "open_storage",
    "Storage",
]

WORKSPACE_ENV = "OPENLLM_WORKSPACE"
REPO_ENV = "OPENLLM_WORKSPACE_REPO"
HUB_ENV = "OPENLLM_WORKSPACE_HUB"
DURABLE = ("runs", "jobs", "corpora")  # the workspace's folders that a restart must not lose
REPO_TYPE = "dataset"
STATE_FILE = ".openllm-mirror.json"  # what was mirrored last (path -> size, mtime): only changes are uploaded
_RESTORE_PREFIX = ".openllm-restore-"
_OFF = ("", "0", "off", "none", "false", "no")
# the job's log grows with every progress line; it goes with the next save, state change or stop
_LIVE_JOB_FILES = ("log.txt",)
# how long the app, told to stop, waits for the training it runs to save and stop before the last mirror
STOP_WAIT_S = 60.0
_VANISHED_TRIES = 5  # passes in a row that may find a file gone before the mirror gives up until its next round


class _Vanished(Exception):
    """A file of the pass was removed while it was uploaded."""


@dataclass(frozen=True)
class StorageConfig:
    """Where the workspace is, and the hub repository it is mirrored to (``repo`` None: no mirror)."""

    workspace: Path
    repo: str | None
    hub: str
    volume: bool  # the workspace is on a mounted volume (OPENLLM_WORKSPACE)
    space: bool  # running as a Hugging Face Space (SPACE_ID)


def storage_config(
    workspace: str | os.PathLike | None = None,
    *,
    repo: str | None = None,
    hub: str | None = None,
    env: dict[str, str] | None = None,
) -> StorageConfig:
    """The storage the app uses: ``workspace`` (else OPENLLM_WORKSPACE, OPENLLM_APP_WORKSPACE,
    ./openllm-workspace), the mirror ``repo`` (else OPENLLM_WORKSPACE_REPO; on a Space with no volume,
    ``SPACE_ID-workspace``; ``off`` turns it off) on ``hub`` (else OPENLLM_WORKSPACE_HUB, else ``local``)."""
    env = dict(os.environ) if env is None else env
    space_id = (env.get("SPACE_ID") or "").strip()
    volume = bool((env.get(WORKSPACE_ENV) or "").strip()) and workspace is None
    root = Path(workspace) if workspace is not None else default_workspace(env)
    chosen = repo if repo is not None else env.get(REPO_ENV)
    if chosen is None and space_id and not volume:
        chosen = f"{space_id}-workspace"
    name = (chosen or "").strip()
    if name.lower() in _OFF:
        name = ""
    if name:
        try:
            validate_repo_id(name)
        except HubError as exc:
            raise OpenLLMError(
                f"the workspace mirror {name!r} is not a repository id ({exc}): set {REPO_ENV} to OWNER/NAME, or off"
            ) from exc
    return StorageConfig(
        workspace=root,
        repo=name or None,
        hub=(hub or env.get(HUB_ENV) or "local").strip() or "local",
        volume=volume,
        space=bool(space_id),
    )


def _say(msg: str) -> None:
    print(f"workspace: {msg}", file=sys.stderr, flush=True)


class WorkspaceMirror:
    """The durable part of a workspace kept in a hub repository: :meth:`restore` copies it back into an empty
    workspace, :meth:`sync` commits what changed, :meth:`start` syncs in a thread whenever a checkpoint is
    saved, a run changes state or the durable files change otherwise (not for every logged step)."""

    def __init__(
        self,
        ws: Workspace,
        hub: Hub,
        repo_id: str,
        *,
        interval: float = 2.0,
        say: Callable[[str], None] = _say,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.repo_id = validate_repo_id(repo_id)
        self.interval = interval
        self.say = say
        self.last_error: str | None = None
        self.commits = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: Any = None  # the signature of the last successful sync
        state = read_json(self.ws.root / STATE_FILE)
        files = state.get("files") if state.get("repo") == self.where() else None
        self._uploaded: dict[str, list[int]] = files if isinstance(files, dict) else {}

    def where(self) -> str:
        return f"{self.hub.describe()}:{REPO_TYPE}s/{self.repo_id}"

    # --- what is durable ------------------------------------------------------------------------------------

    def _excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        if parts[0] not in DURABLE:
            return True
        name = parts[-1]
        if name in rundir.LOCK_FILES or name.endswith(".openllm-part"):
            return True
        # a file being written, or anything inside a folder being written (a checkpoint, the job's tokenizer)
        if any(p.startswith(rundir.TMP_PREFIX) or is_temporary(p) for p in parts):
            return True
        # a link out of the workspace is the user's own file, not the workspace's: never copied anywhere (nor
        # a linked folder, which uploads never follow)
        full = self.ws.root / rel
        return full.is_symlink() and (full.is_dir() or not self.ws.contains(full))

    def files(self) -> dict[str, tuple[int, int]]:
        """Every durable file: path in the workspace -> (size, mtime in ns)."""
        from ..hub import folder_files

        out = {}
        for rel, src in folder_files(self.ws.root, exclude=self._excluded):
            try:
                st = src.stat()
            except FileNotFoundError:  # removed meanwhile (an older checkpoint rotated out)
                continue
            out[rel] = (st.st_size, st.st_mtime_ns)
        return out

    def _signature(self, files: dict[str, tuple[int, int]]) -> Any:
        """What makes a sync worth doing: the files, except those a training rewrites at every step, and
        each run's recorded state."""
        steady = set()
        for rel, st in files.items():
            parts = rel.split("/")
            if parts[0] == "runs" and len(parts) > 2 and parts[2] in rundir.LIVE_FILES:
                continue
            if parts[0] == "jobs" and len(parts) == 3 and parts[2] in _LIVE_JOB_FILES:
                continue
            steady.add((rel, st))
        states = tuple(
            (name, rundir.read_status(self.ws.run_dir(name)).get("state")) for name in sorted(self.ws.run_names())
        )
        return frozenset(steady), states

    # --- restore ------------------------------------------------------------------------------------------

    def _empty(self) -> bool:
        for top in DURABLE:
            folder = self.ws.root / top
            if folder.is_dir() and any(folder.iterdir()):
                return False
        return True

    def restore(self) -> int:
        """When the workspace holds nothing durable and the repository has files: copy them in; returns how
        many (0: nothing restored). Downloaded beside the workspace's folders first, then moved in, so a
        restore cut short leaves no half-copied run (the next start removes its leftovers and tries again)."""
        if not self._empty():
            return 0
        if not self.hub.repo_exists(repo_id=self.repo_id, repo_type=REPO_TYPE):
            return 0
        wanted = [f for f in self.hub.list_files(repo_id=self.repo_id, repo_type=REPO_TYPE) if not self._excluded(f)]
        if not wanted:
            return 0
        self.say(f"restoring {len(wanted)} files from {self.where()}")
        with scratch_dir(_RESTORE_PREFIX, self.ws.root) as tmp:
            self.hub.download(repo_id=self.repo_id, repo_type=REPO_TYPE, local_dir=tmp, paths=wanted)
            for top in DURABLE:
                src = tmp / top
                if not src.is_dir():
                    continue
                (self.ws.root / top).mkdir(exist_ok=True)
                for child in sorted(src.iterdir()):
                    os.replace(child, self.ws.root / top / child.name)
        files = self.files()
        self._record(files)
        self._seen = self._signature(files)
        return len(wanted)

    # --- sync -----------------------------------------------------------------------------------------------

    def _record(self, files: dict[str, tuple[int, int]]) -> None:
        self._uploaded = {rel: list(st) for rel, st in files.items()}
        write_json_atomic(self.ws.root / STATE_FILE, {"repo": self.where(), "files": self._uploaded})

    def sync(self, reason: str = "workspace changed") -> str | None:
        """Commit the durable files that changed since the last sync and delete those that are gone, as one
        commit; returns its id, or None when nothing changed. Hub errors propagate (the thread retries)."""
        with self._lock:
            for attempt in range(_VANISHED_TRIES):
                try:
                    return self._sync_once(reason)
                except _Vanished as exc:
                    if attempt == _VANISHED_TRIES - 1:
                        raise HubError("the workspace kept changing under the mirror; it tries again") from exc
        return None

    def _sync_once(self, reason: str) -> str | None:
        """One pass of :meth:`sync` (under its lock); :class:`_Vanished` when a file went during the upload."""
        files = self.files()
        signature = self._signature(files)
        if self.hub.repo_exists(repo_id=self.repo_id, repo_type=REPO_TYPE):
            remote = set(self.hub.list_files(repo_id=self.repo_id, repo_type=REPO_TYPE))
        else:
            # private where the hub has accounts: the workspace holds the user's corpora
            self.hub.create_repo(
                repo_id=self.repo_id, repo_type=REPO_TYPE, exist_ok=True, private=self.hub.name == "hf"
            )
            remote = set()
        adds = [rel for rel, st in files.items() if rel not in remote or self._uploaded.get(rel) != list(st)]
        deletes = sorted(rel for rel in remote if rel not in files and not self._excluded(rel))
        commit = None
        if adds or deletes:
            ops: list[CommitOperationAdd | CommitOperationDelete] = [
                CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(self.ws.root / rel)) for rel in adds
            ]
            ops += [CommitOperationDelete(path_in_repo=rel) for rel in deletes]
            try:
                commit = self.hub.create_commit(
                    repo_id=self.repo_id,
                    repo_type=REPO_TYPE,
                    operations=ops,
                    commit_message=f"{reason}: {len(adds)} files written, {len(deletes)} removed",
                )
            except Exception as exc:
                # a file listed a moment ago is gone (a training rotated an old checkpoint out while it was
                # read): look again at once rather than fail the whole pass
                if any(not (self.ws.root / rel).exists() for rel in adds):
                    raise _Vanished(str(exc)) from exc
                raise
            self.commits += 1
        self._record(files)
        self._seen = signature
        self.last_error = None
        return commit

    def poll(self) -> str | None:
        """Sync when something worth keeping changed since the last sync (a checkpoint, a state, a corpus)."""
        files = self.files()
        if self._signature(files) == self._seen:
            return None
        return self.sync("checkpoint or run state")

    # --- the thread -------------------------------------------------------------------------------------------

    def start(self) -> WorkspaceMirror:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="openllm-workspace-mirror", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except (OpenLLMError, OSError) as exc:  # the hub is away, a file rotated out while read: next time
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if message != self.last_error:
                    self.say(f"mirroring to {self.where()} failed ({message}); retrying")
                self.last_error = message

    def close(self, *, final: bool = True) -> None:
        """Stop the thread; with ``final``, sync once more (the app is stopping)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        if final:
            self.sync("the app stopped")


@dataclass
class Storage:
    """The storage :func:`open_storage` set up: the workspace and its mirror (None: none)."""

    config: StorageConfig
    workspace: Workspace
    mirror: WorkspaceMirror | None
    restored: int = 0
    interrupted: tuple[str, ...] = ()

    @property
    def persistent(self) -> bool:
        return self.config.volume or self.mirror is not None

    def close(self, *, stop_training: bool = True) -> None:
        """The app is stopping: the training it runs saves a checkpoint and stops (the machine may go with
        the app), then the mirror syncs one last time."""
        if self.mirror is None:
            return
        if stop_training:
            _stop_active(self.workspace)
        try:
            self.mirror.close(final=True)
        except (OpenLLMError, OSError) as exc:
            _say(f"the last mirror to {self.mirror.where()} failed: {exc}")


def _stop_active(ws: Workspace, wait: float = STOP_WAIT_S) -> None:
    held = []
    for name in ws.run_names():
        run = ws.run_dir(name)
        if rundir.lock_holder(run) is not None:
            try:
                rundir.request_stop(run)
                held.append(run)
            except OpenLLMError:
                pass
    deadline = time.monotonic() + wait
    while held and time.monotonic() < deadline:
        held = [run for run in held if rundir.lock_holder(run) is not None]
        time.sleep(0.2)


def open_storage(
    workspace: str | os.PathLike | None = None,
    *,
    repo: str | None = None,
    hub: str | Hub | None = None,
    interval: float = 2.0,
    env: dict[str, str] | None = None,
) -> Storage:
    """Set up the app's storage before the app is built: the workspace, restored from its mirror when it is
    empty; runs the last machine was training marked interrupted (only where the workspace is kept: locally
    without a volume or a mirror nothing changes). The mirror's thread is not started: call
    ``storage.mirror.start()`` once the app serves."""
    cfg = storage_config(workspace, repo=repo, hub=hub if isinstance(hub, str) else None, env=env)
    ws = Workspace(cfg.workspace)
    mirror = None
    restored = 0
    if cfg.repo:
        mirror = WorkspaceMirror(ws, hub if isinstance(hub, Hub) else get_hub(cfg.hub), cfg.repo, interval=interval)
        restored = mirror.restore()
    elif cfg.space and not cfg.volume:
        _say(
            f"the workspace {ws.root} is on the Space's own disk, which a restart wipes: set {WORKSPACE_ENV} to a "
            f"mounted volume, or {REPO_ENV} to a repository to mirror it to"
        )
    interrupted: list[str] = []
    if cfg.volume or mirror is not None:
        why = "interrupted: the app stopped while it trained (a restart?); Continue resumes from its last checkpoint"
        interrupted = [name for name in ws.run_names() if rundir.interrupt(ws.run_dir(name), why)]
    st = Storage(config=cfg, workspace=ws, mirror=mirror, restored=restored, interrupted=tuple(interrupted))
    if restored:
        _say(f"restored {restored} files ({len(ws.run_names())} runs) from {mirror.where() if mirror else ''}")
    return st
