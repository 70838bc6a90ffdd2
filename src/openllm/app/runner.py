"""Starting, stopping, continuing and watching training in the app's workspace: at most one at a time.

Who trains a run is whoever holds its run lock (:class:`openllm.rundir.RunLock`): the app's job process
(:mod:`job`), ``openllm train`` started from a terminal, or torchrun's rank 0. The app reads the real state from
the lock and ``status.json`` (:func:`openllm.rundir.run_state`), so a run started elsewhere shows live, can be
stopped from here (SIGTERM to the lock holder's PID), and blocks a second Start while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import ConfigError, TrainConfig
from ..errors import OpenLLMError
from ..fsio import read_json, write_json_atomic
from ..rundir import read_status
from .forms import TrainRequest
from .workspace import Workspace, WorkspaceError

__all__ = ["Runner", "RunnerError", "RunStatus", "run_status", "PKG", "child_env"]

PKG = __name__.split(".")[0]
_PKG_PARENT = str(Path(__file__).resolve().parent.parent.parent)
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "ACCESS_KEY")
# the module the app's job runs as: its run lock's command names it, which is how a run is known as the app's
JOB_MODULE = f"{PKG}.app.job"
# the workspace's file that makes "nothing trains -> launch" one step (see Runner._claim)
CLAIM_FILE = ".app-launch.lock"


class RunnerError(OpenLLMError):
    """Start, Stop, Continue or Delete cannot do what was asked (a run is already going, nothing to stop, ...)."""


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
    """What the UI shows about a run: :func:`openllm.rundir.run_state` plus where its log is."""

    name: str
    state: str  # one of rundir.STATES, or "new"
    phase: str | None
    step: int
    max_steps: int | None
    error: str | None
    warning: str | None
    holder: dict[str, Any] | None
    log: Path | None  # the log to show (None: the process writes none the app can read)
    external: bool  # trained by a process the app did not start (a terminal, torchrun)

    @property
    def active(self) -> bool:
        return self.holder is not None or self.state == rundir.QUEUED

    @property
    def alive(self) -> bool:
        return self.holder is not None

    @property
    def pid(self) -> int | None:
        pid = (self.holder or {}).get("pid")
        return pid if isinstance(pid, int) else None


def run_status(ws: Workspace, name: str) -> RunStatus:
    """The state of run ``name`` (see :func:`openllm.rundir.run_state`) and its log."""
    run_dir = ws.run_dir(name)
    st = rundir.run_state(run_dir)
    job_log = ws.job_dir(name) / "log.txt"
    holder = st.holder
    # a lock taken but not yet written (no command for an instant) is nobody's yet, not a stranger's
    command = str((holder or {}).get("command") or "")
    # the job names its module; one started by an earlier version recorded "-m __main__", but its job folder
    ours = f"-m {JOB_MODULE} " in f"{command} " or command.endswith(f" {ws.job_dir(name)}")
    external = bool(command) and not ours
    log: Path | None = job_log if job_log.is_file() else None
    if holder is not None:
        given = holder.get("log")
        log = Path(given) if given and Path(given).is_file() else (None if external else log)
    return RunStatus(
        name=name,
        state=st.state,
        phase=st.phase,
        step=st.step,
        max_steps=st.max_steps,
        error=st.error,
        warning=st.warning,
        holder=holder,
        log=log,
        external=external,
    )


def _claimed(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` runs holding the workspace's launch claim (:meth:`Runner._claim`)."""

    @functools.wraps(method)
    def wrapper(self: Runner, *args: Any, **kwargs: Any) -> Any:
        with self._claim():
            return method(self, *args, **kwargs)

    return wrapper


class Runner:
    """Starts at most one training in a workspace, continues ended runs, stops or deletes the run it is told."""

    def __init__(self, workspace: Workspace, *, chunks: Any = "auto") -> None:
        """``chunks``: a :class:`openllm.app.zerogpu.ChunkPolicy` to train inside this process in ZeroGPU
        chunks, None for a job process, "auto" (default): chunks on ZeroGPU (or OPENLLM_ZEROGPU=1)."""
        self.ws = workspace
        self._proc: subprocess.Popen | None = None
        self._proc_run: str | None = None
        self._thread: threading.Thread | None = None
        self._claim_lock = threading.Lock()
        if chunks == "auto":
            from .zerogpu import chunk_policy

            chunks = chunk_policy()
        self.chunks = chunks

    @contextlib.contextmanager
    def _claim(self) -> Iterator[None]:
        """Check-and-launch as one step. Gradio runs several handlers at once and two apps may share a
        workspace: between "nothing trains" and the job's ``queued`` record another Start would see nothing
        either. An flock on the workspace's claim file serialises them across processes (and across threads:
        each open is its own lock), the thread lock keeps this process's handlers from spinning on it."""
        with self._claim_lock:
            fd = os.open(self.ws.root / CLAIM_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # drops the flock

    # --- state ---------------------------------------------------------------------------------------------

    def active(self) -> tuple[str, int | None] | None:
        """(run name, PID) of the training that runs now in the workspace, whoever started it, if any."""
        if self._proc is not None and self._proc.poll() is not None:
            self._reaped(self._proc, self._proc_run)
            self._proc = self._proc_run = None
        queued = None
        for name in self.ws.run_names():
            run_dir = self.ws.run_dir(name)
            holder = rundir.lock_holder(run_dir)
            if holder is not None:
                return name, holder.get("pid")
            if (
                queued is None
                and read_status(run_dir).get("state") == rundir.QUEUED
                and rundir.run_state(run_dir).state == rundir.QUEUED
            ):
                queued = name  # a job was started (maybe by an earlier app) and has not taken the lock yet
        if self._proc is not None:  # started, not holding the lock yet (Python is still importing)
            return self._proc_run, self._proc.pid  # type: ignore[return-value]
        if self._thread is not None and self._thread.is_alive():  # the in-process job, before its lock
            return self._proc_run, os.getpid()  # type: ignore[return-value]
        return (queued, None) if queued else None

    def _reaped(self, proc: subprocess.Popen, name: str | None) -> None:
        """A job that ended before it could record anything (killed while starting) is stopped or failed,
        not queued forever."""
        if not name:
            return
        run_dir = self.ws.run_dir(name)
        status = read_status(run_dir)
        if status.get("state") == rundir.QUEUED:
            state = rundir.STOPPED if proc.returncode and proc.returncode < 0 else rundir.FAILED
            rundir.move(
                run_dir,
                state,
                pid=None,
                error=None if state == rundir.STOPPED else "the job ended before it started; see the log",
            )

    def status(self, name: str) -> RunStatus:
        return run_status(self.ws, name)

    def log_path(self, name: str) -> Path:
        return self.ws.job_dir(name) / "log.txt"

    def _refuse_while_active(self) -> None:
        active = self.active()
        if active is not None:
            name, pid = active
            st = self.status(name)
            who = " (started outside the app" + (f", PID {pid})" if pid else ")") if st.external else ""
            raise RunnerError(
                f"run {name!r} is still training{who}: stop it (or wait for it to finish) before starting another"
            )

    # --- start / continue / stop / delete -----------------------------------------------------------------

    @_claimed
    def start(self, request: TrainRequest) -> str:
        """Start a job for ``request``; returns the run's name. Refuses while any training runs."""
        self._refuse_while_active()
        name = request.run_name
        run_dir, job_dir = self.ws.run_dir(name), self.ws.job_dir(name)
        if run_dir.exists() and any(run_dir.iterdir()):
            st = self.status(name)
            hint = (
                "delete it in the Models tab to reuse the name, or choose another run name"
                if st.state in (rundir.FAILED, rundir.DIVERGED, "new")
                else "continue it in the Models tab, or choose another run name"
            )
            raise RunnerError(f"a run called {name!r} already exists ({st.state}): {hint}")
        inputs = self._inputs(request, job_dir)
        shutil.rmtree(job_dir, ignore_errors=True)  # left by a deleted run of the same name
        job_dir.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        request.config.save(job_dir / "config.json")
        spec = {
            "run_dir": str(run_dir),
            "inputs": inputs,
            "vocab_size": request.vocab_size,
            "max_steps": request.config.train.max_steps,
            "field": request.field,
        }
        write_json_atomic(job_dir / "job.json", spec)
        return self._launch(name, job_dir, request.config.train.max_steps)

    def restartable(self, name: str) -> bool:
        """Whether ``name`` ended before its first checkpoint (stopped while its data was prepared) with the
        app's record of how it was started: continuing it starts it again from scratch, with those settings."""
        run_dir = self.ws.run_dir(name)
        if rundir.latest_checkpoint(run_dir) is not None:
            return False
        spec = self._job_spec(name)
        fresh = "finetune" in spec or "inputs" in spec
        return fresh and not spec.get("continue") and isinstance(spec.get("max_steps"), int)

    def _job_spec(self, name: str) -> dict[str, Any]:
        return read_json(self.ws.job_dir(name) / "job.json")

    @_claimed
    def continue_run(self, name: str, more_steps: int) -> int:
        """Continue an ended run from its latest checkpoint for ``more_steps`` more steps (an exact resume, as
        ``openllm train --out RUN --max-steps N`` does); returns the new total. A run stopped before its first
        checkpoint (while its data was prepared) starts again from scratch with its own settings and steps."""
        self._refuse_while_active()
        run_dir = self.ws.run_dir(name)
        st = self.status(name)
        if st.state not in (rundir.STOPPED, rundir.FINISHED, rundir.FAILED, rundir.DIVERGED):
            raise RunnerError(f"run {name!r} is {st.state}: only a stopped or finished run can be continued")
        ckpt = rundir.latest_checkpoint(run_dir)
        if ckpt is None and self.restartable(name):
            job_dir = self.ws.job_dir(name)
            shutil.rmtree(job_dir / "data", ignore_errors=True)  # half-prepared: made again from the inputs
            total = int(self._job_spec(name)["max_steps"])
            self._launch(name, job_dir, total)
            return total
        if ckpt is None:
            raise RunnerError(f"run {name!r} has no checkpoint to continue from: start a new run instead")
        if int(more_steps) < 1:
            raise RunnerError("More steps: must be at least 1")
        total = int(rundir.step_of(ckpt) or 0) + int(more_steps)
        job_dir = self.ws.job_dir(name)
        job_dir.mkdir(parents=True, exist_ok=True)
        spec = {"run_dir": str(run_dir), "continue": True, "max_steps": total}
        write_json_atomic(job_dir / "job.json", spec)
        self._launch(name, job_dir, total)
        return total

    @_claimed
    def finetune(
        self,
        base: str,
        name: str,
        data: str | Path,
        val: str | Path | None = None,
        *,
        lora: bool = False,
        max_steps: int | None = None,
    ) -> str:
        """Fine-tune the ended run ``base`` on the conversations in ``data`` (and held-out ``val``) into a new
        run ``name``, in a job process as training runs (``openllm finetune BASE --data F [--val V] --out
        RUN [--lora] [--max-steps N]``); returns ``name``. The files are checked first and copied into the
        workspace (the run records them, and continuing it needs them again)."""
        from ..finetune import SFT_DEFAULTS
        from .chat import check_conversations

        self._refuse_while_active()
        base_dir = self.ws.run_dir(base)
        st = self.status(base)
        if st.state not in (rundir.STOPPED, rundir.FINISHED) or not rundir.checkpoint_steps(base_dir):
            raise RunnerError(
                f"run {base!r} is {'not started' if st.state == 'new' else st.state}: only a "
                "finished or stopped run with a checkpoint can be fine-tuned"
            )
        run_dir, job_dir = self.ws.run_dir(name), self.ws.job_dir(name)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunnerError(
                f"a run called {name!r} already exists ({self.status(name).state}): choose "
                "another name for the fine-tuned run"
            )
        steps = int(max_steps) if max_steps else int(SFT_DEFAULTS["max_steps"])
        try:
            TrainConfig(max_steps=steps).validate()  # the config's rule for a run's length, before any file is copied
        except ConfigError as exc:
            raise RunnerError(f"Steps: {exc.reason}") from exc
        files = {}
        for key, src in (("data", data), ("val", val)):
            if not src:
                continue
            check_conversations(src, "Conversations" if key == "data" else "Held-out conversations")
            src = Path(src)
            if self.ws.contains(src):
                files[key] = str(src.resolve())  # already in the workspace (the synthetic set)
                continue
            dest_dir = self.ws.corpora_dir / "conversations" / "uploads"
            dest_dir.mkdir(parents=True, exist_ok=True)
            clean = "".join(c if c.isalnum() or c in "._-" else "_" for c in src.name)[-100:] or "chats.jsonl"
            dest = dest_dir / f"{name}-{key}-{clean}"
            shutil.copyfile(src, dest)
            files[key] = str(dest)
        if "data" not in files:
            raise RunnerError("Conversations: upload a .jsonl file of conversations, or use the synthetic verse set")
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "run_dir": str(run_dir),
            "max_steps": steps,
            "finetune": {
                "base": str(base_dir.resolve()),
                "data": files["data"],
                "val": files.get("val"),
                "lora": bool(lora),
            },
        }
        write_json_atomic(job_dir / "job.json", spec)
        return self._launch(name, job_dir, steps)

    def _launch(self, name: str, job_dir: Path, max_steps: int) -> str:
        run_dir = self.ws.run_dir(name)
        rundir.move(run_dir, rundir.QUEUED, phase="queued", error=None, max_steps=max_steps, pid=None)
        if self.chunks is not None:  # ZeroGPU: only this process can ask for the GPU
            from .job import run_here

            self._thread = threading.Thread(
                target=run_here, args=(job_dir, self.chunks), name=f"openllm-job-{name}", daemon=True
            )
            self._thread.start()
            self._proc_run = name
            return name
        with open(job_dir / "log.txt", "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", f"{PKG}.app.job", str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=str(self.ws.root),
                start_new_session=True,
            )
        self._proc_run = name
        return name

    def _inputs(self, request: TrainRequest, job_dir: Path) -> list[str]:
        """The prepare-data inputs for the request's corpus; uploads are copied into the workspace first."""
        if request.corpus_kind == "embedded":
            return []
        if request.corpus_kind == "workspace":
            try:
                path = self.ws.resolve(request.corpus_path or "", must_exist=True)
            except WorkspaceError as exc:
                raise RunnerError(f"Corpus path: {exc}") from exc
            if path.is_dir():  # a folder is read recursively: a symlink in it must not lead out either
                for p in path.rglob("*"):
                    if not self.ws.contains(p):
                        raise RunnerError(
                            f"Corpus path: {self.ws.relative(p.parent)}/{p.name} leads outside the "
                            "app's workspace; remove that link or copy the file in"
                        )
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

    def stop(self, name: str | None = None, timeout: float = 0.0) -> str:
        """Ask run ``name`` to stop (SIGTERM to its lock holder: the trainer saves a checkpoint and exits),
        whoever started it; returns its name. The app always names the run the user is looking at, so a Stop
        never reaches another run; no name: the training that runs now. With ``timeout`` > 0, wait that long."""
        if name is not None:
            st = self.status(name)
            if not st.active:
                raise RunnerError(f"run {name!r} is not training ({st.state}): there is nothing to stop")
        else:
            active = self.active()
            if active is None:
                raise RunnerError("no training is running")
            name = active[0]
        try:
            rundir.request_stop(self.ws.run_dir(name))
        except OpenLLMError as exc:
            # our job has not taken the lock yet: stop the process itself
            if self._proc is not None and self._proc_run == name:
                self._proc.terminate()
            else:
                raise RunnerError(f"run {name!r} has not started training yet; stop it again in a moment") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.status(name).active:
            time.sleep(0.2)
        return name

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the active training to end; True when none is running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active() is None:
                return True
            time.sleep(0.2)
        return self.active() is None

    @_claimed
    def delete(self, name: str) -> None:
        """Delete an ended run (stopped, finished, failed, diverged, or never started): its folder and the app's
        job folder, so its name can be used again. An active run is refused; the UI asks for a confirmation."""
        st = self.status(name)
        if st.active:
            raise RunnerError(f"run {name!r} is {st.state}: stop it before deleting it")
        run_dir = self.ws.run_dir(name)
        if not self.ws.contains(run_dir):
            raise RunnerError(f"run {name!r} is not in the workspace")
        # holding the run's lock while deleting: a terminal that resumes it right now is refused, not emptied
        try:
            lock = rundir.RunLock(run_dir, command=f"delete {name}").acquire()
        except OpenLLMError as exc:
            raise RunnerError(f"run {name!r} is training: stop it before deleting it") from exc
        try:
            shutil.rmtree(self.ws.job_dir(name), ignore_errors=True)
            for p in run_dir.iterdir():
                if p.name != rundir.LOCK:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        finally:
            lock.release()
        with contextlib.suppress(OSError):
            run_dir.rmdir()
