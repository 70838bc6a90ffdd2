"""Starting, stopping and watching the one training job the app runs at a time.

A job is a separate process of the same package (:mod:`job`), so a crash in training never takes the web app
down and the app can be restarted while a run continues: the job's pid is kept in ``jobs/active.json``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OpenLLMError
from ..rundir import read_json, read_status, write_json_atomic, write_status
from .forms import TrainRequest
from .workspace import Workspace, WorkspaceError

__all__ = ["Runner", "RunnerError", "RunStatus", "run_status", "PKG", "child_env"]

PKG = __name__.split(".")[0]
_PKG_PARENT = str(Path(__file__).resolve().parent.parent.parent)
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "ACCESS_KEY")


class RunnerError(OpenLLMError):
    """Start or Stop cannot do what was asked (a run is already going, nothing to stop, ...)."""


def child_env() -> dict[str, str]:
    """The environment for training processes: ours without credentials (training never needs them, and
    whatever a child prints ends up in a log the UI shows)."""
    env = {k: v for k, v in os.environ.items() if not any(w in k.upper() for w in _SECRET_WORDS)}
    env["PYTHONPATH"] = os.pathsep.join([_PKG_PARENT, *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


@dataclass
class RunStatus:
    """What the UI shows about a run: status.json, corrected by what the runner knows about the process."""

    name: str
    state: str  # running | finished | stopped | failed | not started
    phase: str | None
    step: int
    max_steps: int | None
    error: str | None
    alive: bool

    @property
    def active(self) -> bool:
        return self.state == "running" and self.alive


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        import psutil

        p = psutil.Process(int(pid))
        return p.status() != psutil.STATUS_ZOMBIE
    except Exception:
        return False


def run_status(ws: Workspace, name: str, *, alive: bool | None = None) -> RunStatus:
    """The status of run ``name`` from its status.json; a run whose process is gone while status.json still
    says running is reported as failed."""
    status = read_status(ws.run_dir(name))
    state = status.get("state") or "not started"
    if alive is None:
        alive = _pid_alive(status.get("pid"))
    error = status.get("error")
    if state == "running" and not alive:
        state, error = "failed", error or "the training process ended without finishing (crashed or killed)"
    step = status.get("step")
    max_steps = status.get("max_steps")
    return RunStatus(name=name, state=state, phase=status.get("phase"), step=int(step or 0),
                     max_steps=int(max_steps) if max_steps else None, error=error, alive=bool(alive))


class Runner:
    """Starts at most one training job in a workspace and stops it gracefully."""

    def __init__(self, workspace: Workspace) -> None:
        self.ws = workspace
        self._proc: subprocess.Popen | None = None
        self._active_file = workspace.jobs_dir / "active.json"

    # --- state ---------------------------------------------------------------------------------------------

    def active(self) -> tuple[str, int] | None:
        """(run name, job pid) of the job that is running now, if any."""
        if self._proc is not None and self._proc.poll() is not None:
            self._reaped(self._proc)
            self._proc = None
        info = read_json(self._active_file)
        name, pid = info.get("run"), info.get("pid")
        if not name or not pid:
            return None
        if self._proc is not None and self._proc.pid == pid:
            return name, pid
        if _pid_alive(pid) and self._is_our_job(pid):
            return name, pid
        return None

    def _reaped(self, proc: subprocess.Popen) -> None:
        """A job killed by our SIGTERM before it could record anything (it was still starting) is stopped,
        not failed."""
        info = read_json(self._active_file)
        if info.get("pid") != proc.pid or proc.returncode != -signal.SIGTERM:
            return
        run_dir = self.ws.run_dir(info["run"])
        status = read_status(run_dir)
        if status.get("state") == "running":
            write_status(run_dir, {**status, "state": "stopped", "phase": "stopped while starting", "pid": None})

    @staticmethod
    def _is_our_job(pid: int) -> bool:
        try:
            import psutil

            return any(".app.job" in part for part in psutil.Process(pid).cmdline())
        except Exception:
            return False

    def status(self, name: str) -> RunStatus:
        active = self.active()
        alive = True if active and active[0] == name else None  # None: judge by status.json's pid
        return run_status(self.ws, name, alive=alive)

    def log_path(self, name: str) -> Path:
        return self.ws.job_dir(name) / "log.txt"

    # --- start / stop --------------------------------------------------------------------------------------

    def start(self, request: TrainRequest) -> str:
        """Start a job for ``request``; returns the run's name. Refuses while another job runs."""
        active = self.active()
        if active is not None:
            raise RunnerError(f"run {active[0]!r} is still training: stop it (or wait for it to finish) before "
                              "starting another")
        name = request.run_name
        run_dir, job_dir = self.ws.run_dir(name), self.ws.job_dir(name)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunnerError(f"a run called {name!r} already exists in the workspace: choose another run name")
        inputs = self._inputs(request, job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        request.config.save(job_dir / "config.json")
        spec = {"run_dir": str(run_dir), "inputs": inputs, "vocab_size": request.vocab_size,
                "max_steps": request.config.train.max_steps}
        write_json_atomic(job_dir / "job.json", spec)
        write_status(run_dir, dict(state="running", phase="starting", error=None, step=0,
                                   max_steps=request.config.train.max_steps, pid=None))
        log = open(job_dir / "log.txt", "ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", f"{PKG}.app.job", str(job_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                cwd=str(self.ws.root), start_new_session=True,
            )
        finally:
            log.close()
        write_json_atomic(self._active_file, {"run": name, "pid": self._proc.pid, "started": time.time()})
        return name

    def _inputs(self, request: TrainRequest, job_dir: Path) -> list[str]:
        """The prepare-data inputs for the request's corpus; uploads are copied into the workspace first."""
        if request.corpus_kind == "embedded":
            return []
        if request.corpus_kind == "workspace":
            try:
                path = self.ws.resolve(request.corpus_path or "", must_exist=True)
            except WorkspaceError as exc:
                raise RunnerError(f"Corpus path: {exc}") from None
            if path.is_dir():  # a folder is read recursively: a symlink in it must not lead out either
                for p in path.rglob("*"):
                    if not self.ws.contains(p):
                        raise RunnerError(f"Corpus path: {self.ws.relative(p.parent)}/{p.name} leads outside the "
                                          "app's workspace; remove that link or copy the file in")
            return [str(path)]
        if request.corpus_kind == "upload":
            src = Path(request.corpus_path or "")
            if not src.is_file():
                raise RunnerError("Upload: the uploaded file is gone; upload it again")
            name = "".join(c if c.isalnum() or c in "._-" else "_" for c in src.name)[-100:] or "upload.txt"
            dest_dir = self.ws.corpora_dir / "uploads"
            dest_dir.mkdir(exist_ok=True)
            dest = dest_dir / f"{request.run_name}-{name}"
            shutil.copyfile(src, dest)
            return [str(dest)]
        raise RunnerError(f"unknown corpus kind {request.corpus_kind!r}")

    def stop(self, timeout: float = 0.0) -> str:
        """Ask the running job to stop (SIGTERM: the trainer saves a checkpoint and exits); returns its name.
        With ``timeout`` > 0, wait that long for it to end."""
        active = self.active()
        if active is None:
            raise RunnerError("no training is running")
        name, pid = active
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return name
        if timeout > 0:
            self.wait(timeout)
        return name

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the active job to end; True when none is running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active() is None:
                return True
            time.sleep(0.2)
        return self.active() is None
