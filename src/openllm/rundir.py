"""The one owner of a run folder: its layout, its checkpoints, the run lock and the run's state.

A run folder (``openllm train --out RUN``)::

    RUN/config.json                       the full Config the run was started with
    RUN/tokenizer/                        a copy of the tokenizer the data was made with
    RUN/status.json                       state, phase, step, max_steps, pid, times, error, diverged, warning
    RUN/metrics.jsonl                     one JSON object a line: step, loss, lr, ... and val_loss on eval steps
    RUN/evaluation.json                   the latest ``openllm evaluate`` of this run (read by the model card)
    RUN/loss.png, RUN/tb/                 the loss curve and TensorBoard logs
    RUN/checkpoints/step_NNNNNNNN/        model.safetensors, optimizer.pt, state.json (written last)
    RUN/checkpoints/best.json             which step had the best in-training val loss

Every module that reads or writes one of these asks this module: checkpoint naming and completeness, the
latest and best checkpoint, status, metrics, evaluation. Nothing here imports torch. Writing a file
atomically is :mod:`fsio`'s (anything may use it); ``status.json`` has one writer here, :func:`move`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OpenLLMError
from .fsio import read_json, read_jsonl, write_json_atomic

__all__ = [
    "CONFIG",
    "STATUS",
    "METRICS",
    "EVALUATION",
    "EVALUATIONS",
    "CHECKPOINTS",
    "BEST",
    "LOSS_PNG",
    "TB",
    "TOKENIZER",
    "TMP_PREFIX",
    "LIVE_FILES",
    "WEIGHTS",
    "OPTIMIZER",
    "STATE",
    "is_run",
    "step_name",
    "checkpoint_dir",
    "step_of",
    "is_complete",
    "list_checkpoints",
    "checkpoint_steps",
    "latest_checkpoint",
    "require_latest_checkpoint",
    "clean_temporary",
    "read_best",
    "write_best",
    "read_status",
    "move",
    "read_metrics",
    "read_evaluation",
    "read_other_evaluations",
    "write_evaluation",
    "LOCK",
    "STOP_REQUEST",
    "LOCK_FILES",
    "RunLock",
    "lock_holder",
    "request_stop",
    "STATES",
    "ACTIVE_STATES",
    "END_STATES",
    "TRANSITIONS",
    "check_transition",
    "InvalidTransition",
    "recorded_state",
    "divergence",
    "divergence_fields",
    "NON_FINITE",
    "ABOVE_UNIFORM",
    "RunState",
    "run_state",
    "INTERRUPTED",
    "interrupt",
]

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
EVALUATIONS = "evaluations"  # other evaluations (a text file's), one JSON file each
CHECKPOINTS = "checkpoints"
BEST = "best.json"
LOSS_PNG = "loss.png"
TB = "tb"  # TensorBoard logs
TOKENIZER = "tokenizer"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
TMP_PREFIX = ".tmp-"
# what a training rewrites at every logged step (the rest of a run folder changes at saves, ends and evaluations)
LIVE_FILES = (STATUS, METRICS, TB)

# written as 8 digits (sorts by name); read with any number of digits
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- what a run folder is ----------------------------------------------------------------------------------


def is_run(path: str | os.PathLike) -> bool:
    """A training run's folder: it has ``checkpoints/``, a ``status.json`` or ``metrics.jsonl`` (a run that has
    not saved yet), or a ``config.json`` holding a full Config."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir() or (path / STATUS).is_file() or (path / METRICS).is_file():
        return True
    cfg = read_json(path / CONFIG)
    return isinstance(cfg.get("model"), dict) and isinstance(cfg.get("train"), dict) and "format" not in cfg


# --- checkpoints ---------------------------------------------------------------------------------------------


def step_name(step: int) -> str:
    return f"step_{int(step):08d}"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / step_name(step)


def step_of(path: str | os.PathLike) -> int | None:
    """The step of a checkpoint folder from its name (``step_00000400`` -> 400), or None."""
    m = _STEP_DIR.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete(ckpt: str | os.PathLike) -> bool:
    """A checkpoint is complete when it has its weights and its ``state.json`` (the file written last)."""
    ckpt = Path(ckpt)
    return step_of(ckpt) is not None and (ckpt / WEIGHTS).is_file() and (ckpt / STATE).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted writes are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if p.is_dir() and is_complete(p)]
    return [p for _, p in sorted(found)]


def checkpoint_steps(run_dir: str | os.PathLike) -> list[int]:
    return [step_of(p) for p in list_checkpoints(run_dir)]  # type: ignore[misc]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def require_latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The latest complete checkpoint, or a user error saying there is none yet."""
    found = latest_checkpoint(run_dir)
    if found is None:
        raise OpenLLMError(
            f"run {run_dir} has no checkpoint yet (nothing complete in "
            f"{Path(run_dir) / CHECKPOINTS}): train it longer or wait for the first save",
            path=run_dir,
        )
    return found


def clean_temporary(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary folders that interrupted checkpoint writes left behind."""
    root = Path(run_dir) / CHECKPOINTS
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def read_best(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``checkpoints/best.json``: the step with the best in-training val loss, or None."""
    data = read_json(Path(run_dir) / CHECKPOINTS / BEST)
    return data or None


def write_best(run_dir: str | os.PathLike, step: int, val_loss: float) -> None:
    write_json_atomic(
        Path(run_dir) / CHECKPOINTS / BEST,
        {
            "step": step,
            "val_loss": val_loss,
            "checkpoint": step_name(step),
            "time": _now(),
        },
    )


# --- status, metrics, evaluation ------------------------------------------------------------------------------


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/status.json`` (``{}`` when absent): state, error, step, max_steps, pid, times."""
    return read_json(Path(run_dir) / STATUS)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` that carry a step, in file order (``[]`` when there is none)."""
    return [
        r
        for r in read_jsonl(Path(run_dir) / METRICS)
        if isinstance(r.get("step"), (int, float)) and not isinstance(r.get("step"), bool)
    ]


def read_evaluation(run_dir: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(run_dir) / EVALUATION)


def read_other_evaluations(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluations kept beside ``evaluation.json`` (``evaluations/*.json``), by file name."""
    folder = Path(run_dir) / EVALUATIONS
    return [d for p in sorted(folder.glob("*.json")) if (d := read_json(p))] if folder.is_dir() else []


def write_evaluation(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    path = Path(run_dir) / EVALUATION
    write_json_atomic(path, results)
    return path


# A run trained on another machine (a Hugging Face Job): which job trains it, where it pushes, and what the app
# last saw of it. status.json stays the trainer's (on the job's machine); this record is the app's.
REMOTE_JOB = "remote-job.json"


def read_remote_job(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/remote-job.json`` (``{}`` for a run trained here)."""
    return read_json(Path(run_dir) / REMOTE_JOB)


def write_remote_job(run_dir: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """``fields`` merged into the run's remote-job record (written atomically); returns the record."""
    run = Path(run_dir)
    record = {**read_remote_job(run), **fields, "updated_unix": time.time()}
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run / REMOTE_JOB, record)
    return record


# --- the run lock and the run's state -------------------------------------------------------------------------
# One training at a time per run folder, whoever starts it (the CLI, the app, torchrun's rank 0): the trainer
# holds an OS-level lock (flock) on RUN/.lock for as long as it runs, and writes its PID, start time, host and
# command into that file. The kernel drops the lock when the process ends, however it ends, so a file left by
# kill -9 is recognised as stale (its flock is free) and cleared.

LOCK = ".lock"
STOP_REQUEST = ".stop-requested"
LOCK_FILES = (LOCK, STOP_REQUEST)

# a process that opened the lock file just before us may hold it for a moment before it writes its PID
_LOCK_SETTLE_S = 0.5
_held: dict[str, RunLock] = {}  # lock path -> the lock this process holds (acquire is re-entrant per process)


def _lock_info(command: str | None = None, log: str | os.PathLike | None = None) -> dict[str, Any]:
    import socket
    import sys

    from .redact import redact

    info: dict[str, Any] = {
        "pid": os.getpid(),
        "started": _now(),
        "started_unix": time.time(),
        "host": socket.gethostname(),
        # the lock file is world-readable: a token in a --hub URL must not be recorded there
        "command": redact(command if command is not None else " ".join(sys.argv)),
    }
    if log is None:
        log = _stdout_file()
    if log is not None:
        info["log"] = str(log)
    return info


def _stdout_file() -> str | None:
    """The regular file this process's stderr (else stdout) goes to, if any: ``openllm train ... > x.log 2>&1``
    leaves a log the app can show."""
    for fd in (2, 1):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if path.startswith("/") and os.path.isfile(path):
            return path
    return None


def _read_only_error(run: Path, exc: OSError) -> OpenLLMError:
    return OpenLLMError(
        f"run folder {run} is not writable ({exc.strerror or exc}): training needs to write its "
        f"lock, checkpoints and metrics there; train into a writable folder (--out)",
        path=run,
    )


class RunLock:
    """The lock a training process holds on its run folder (``RUN/.lock``, flock, non-blocking).

    ``acquire()`` raises :class:`OpenLLMError` naming the PID that holds it; re-acquiring in the process that
    holds it is allowed (the app's job holds the lock while it prepares data, then the trainer in the same
    process takes it again). Use as a context manager or call ``release()``."""

    def __init__(
        self, run_dir: str | os.PathLike, *, command: str | None = None, log: str | os.PathLike | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.command = command
        self.log = log
        self._fd: int | None = None
        self._outer: RunLock | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._outer is not None

    def acquire(self) -> RunLock:
        import fcntl

        key = str(self.path.absolute())
        outer = _held.get(key)
        if outer is not None:
            self._outer = outer
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _read_only_error(self.run_dir, exc) from exc
        deadline = time.monotonic() + _LOCK_SETTLE_S
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise _read_only_error(self.run_dir, exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                holder = _read_lock_fd(fd)
                os.close(fd)
                if holder.get("pid") or time.monotonic() >= deadline:
                    raise OpenLLMError(_held_message(self.run_dir, holder), path=self.run_dir) from exc
                time.sleep(0.05)
                continue
            # the file may have been removed (released, or cleared as stale) between open and flock: then this
            # lock is on a dead inode and a newer file may be locked by someone else; start over
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        try:
            data = (json.dumps(_lock_info(self.command, self.log)) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise _read_only_error(self.run_dir, exc) from exc
        self._fd = fd
        _held[key] = self
        with contextlib.suppress(OSError):
            (self.run_dir / STOP_REQUEST).unlink()  # a stop asked of an earlier process is not for this one
        return self

    def release(self) -> None:
        if self._outer is not None:
            self._outer = None
            return
        if self._fd is None:
            return
        _held.pop(str(self.path.absolute()), None)
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked, so nobody sees an unlocked file with our PID in it
        os.close(self._fd)  # drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_lock_fd(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _held_message(run: Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "?")
    where = f" on {holder['host']}" if holder.get("host") else ""
    since = f" since {holder['started']}" if holder.get("started") else ""
    return (
        f"run {run} is already being trained by PID {pid}{where}{since}: stop it first (Stop in the app, or "
        f"kill -TERM {pid}) or wait until it ends"
    )


def lock_holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The live holder of the run's lock ({pid, started, host, command, log?}), or None when nobody holds it.
    A lock file whose lock is free (its process died, e.g. by kill -9) is stale and is removed."""
    import fcntl

    path = Path(run_dir) / LOCK
    held = _held.get(str(path.absolute()))
    if held is not None and held._fd is not None:
        return _read_lock_fd(held._fd)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            # a shared lock only probes: a trainer's exclusive acquire fails for that instant (and retries)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _read_lock_fd(fd)
            return info or {"pid": None}
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                path.unlink()  # stale: its process is gone
        return None
    finally:
        os.close(fd)


def request_stop(run_dir: str | os.PathLike) -> int:
    """Ask the process that holds the run's lock to stop (SIGTERM: the trainer saves a checkpoint and ends
    with state ``stopped``; the request is also left in ``RUN/.stop-requested``, which is all a run trained by
    this very process gets); returns its PID. Raises OpenLLMError when nothing holds the lock."""
    import signal

    holder = lock_holder(run_dir)
    pid = holder.get("pid") if holder else None
    if not isinstance(pid, int) or pid <= 0:
        raise OpenLLMError(f"nothing is training run {Path(run_dir).name}: there is nothing to stop", path=run_dir)
    with contextlib.suppress(OSError):
        write_json_atomic(Path(run_dir) / STOP_REQUEST, {"pid": pid, "time": time.time()})
    if pid == os.getpid():
        return pid  # trained in this process (the app's ZeroGPU chunks): they watch the request file, no signal
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise OpenLLMError(
            f"run {Path(run_dir).name} is trained by PID {pid}, which this user may not stop", path=run_dir
        ) from exc
    return pid


# The states a run goes through: the one vocabulary of status.json, the app and the CLI. ``status.json`` records
# what the process that owns the run last said (through move()); run_state() corrects it with the lock (a process
# that died cannot say so) and the metrics (divergence).
QUEUED, PREPARING, TRAINING, STOPPING = "queued", "preparing", "training", "stopping"
STOPPED, FINISHED, FAILED, DIVERGED = "stopped", "finished", "failed", "diverged"
STATES = (QUEUED, PREPARING, TRAINING, STOPPING, STOPPED, FINISHED, FAILED, DIVERGED)
ACTIVE_STATES = (QUEUED, PREPARING, TRAINING, STOPPING)
END_STATES = (STOPPED, FINISHED, FAILED, DIVERGED)
NEW = "new"  # a run folder with no status yet
TRANSITIONS: dict[str, frozenset[str]] = {
    NEW: frozenset({QUEUED, PREPARING, TRAINING, FAILED}),
    QUEUED: frozenset({PREPARING, TRAINING, STOPPED, FAILED}),
    PREPARING: frozenset({TRAINING, STOPPING, STOPPED, FAILED}),
    TRAINING: frozenset({STOPPING, STOPPED, FINISHED, FAILED, DIVERGED}),
    STOPPING: frozenset({STOPPED, FINISHED, FAILED, DIVERGED}),
    # an ended run can be continued from its latest checkpoint (or retried)
    **{s: frozenset({QUEUED, PREPARING, TRAINING}) for s in END_STATES},
}


class InvalidTransition(RuntimeError):
    """A move the state machine does not allow: a bug in the code that moved the run, not a user error.
    ``old`` and ``new`` are the two states."""

    def __init__(self, *args: object, old: str | None = None, new: str | None = None) -> None:
        super().__init__(*args)
        self.old, self.new = old, new


def check_transition(old: str, new: str) -> str:
    """``new`` when a run may go from ``old`` to it; otherwise :class:`InvalidTransition` naming both."""
    if new not in STATES:
        raise InvalidTransition(f"unknown run state {new!r}; one of {', '.join(STATES)}", old=old, new=new)
    if new not in TRANSITIONS.get(old, frozenset()):
        raise InvalidTransition(f"a run cannot go from {old} to {new}", old=old, new=new)
    return new


def recorded_state(status: dict[str, Any]) -> str:
    """status.json's state (``new`` when it has none). Runs written before the one vocabulary said ``running``
    with a ``phase`` for queued, preparing and training: they read in today's words."""
    state = status.get("state")
    if state in STATES:
        return state
    if state == "running":
        phase = str(status.get("phase") or "")
        if phase in ("", "training"):
            return TRAINING
        return QUEUED if phase in ("starting", "queued") else PREPARING
    return NEW


# what a new attempt at a run (queued or started again after an end) keeps of the last one's record
_CARRIED = ("step", "max_steps")
# how a run diverged (status.json's ``diverged.cause``)
NON_FINITE, ABOVE_UNIFORM = "non_finite", "above_uniform"


def move(run_dir: str | os.PathLike, state: str, **fields: Any) -> dict[str, Any]:
    """The one writer of ``RUN/status.json``: the run goes to ``state``, ``fields`` are merged into its record,
    which is written atomically (and returned). Staying in the same state only updates the fields; any other
    move must be one of :data:`TRANSITIONS` (else :class:`InvalidTransition`: a bug).

    The process that moves a run into an active state other than ``queued`` (the app's, with no PID) owns it:
    its ``pid`` is recorded unless given. Such a state recorded by another process is a process that died
    without recording its end: the move starts from ``failed``. Leaving an end state (or a
    run with no status) starts a new attempt, whose record keeps only ``step`` and ``max_steps`` and gets a new
    ``started``. ``phase`` (what an active run is doing) lasts until the state changes. Failure and divergence
    are fields, never text to parse: ``error`` (one line) and ``error_type`` (the exception's class);
    ``diverged`` ({step, loss, cause}: :data:`NON_FINITE` or :data:`ABOVE_UNIFORM`) and ``warning`` (the
    divergence rule's advice)."""
    run = Path(run_dir)
    old = read_status(run)
    current = recorded_state(old)
    if current in ACTIVE_STATES and current != QUEUED and old.get("pid") != os.getpid():
        # a dead owner's run failed, unless this move says it was cut off from outside (:func:`interrupt`)
        current = STOPPED if state == STOPPED and fields.get(INTERRUPTED) else FAILED
    record = dict(old)
    if state != current:
        check_transition(current, state)
        record.pop("phase", None)
        if current not in ACTIVE_STATES:
            record = {k: old[k] for k in _CARRIED if k in old}
            record["started"] = _now()
    if state in ACTIVE_STATES and state != QUEUED:
        fields.setdefault("pid", os.getpid())
    record.update(fields)
    record.update(state=state, updated=_now(), updated_unix=time.time())
    run.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run / STATUS, record)
    return record


INTERRUPTED = "interrupted"  # status.json's phase and flag for a run cut off by its machine going away


def interrupt(run_dir: str | os.PathLike, why: str) -> bool:
    """A run whose status.json says it is active but that no process holds, when the machine it trained on
    went away (a Space restarted, the app and its job were killed with it): it ends ``stopped`` at its latest
    checkpoint, phase ``interrupted`` and ``reason`` ``why``, so Continue resumes it exactly. Returns whether
    the run was such a run. A run still held, or queued a moment ago (its job may be starting), is left alone;
    so is one already ended. Without a checkpoint it is ``stopped`` all the same: Continue starts it again."""
    run = Path(run_dir)
    status = read_status(run)
    recorded = recorded_state(status)
    if recorded not in ACTIVE_STATES or lock_holder(run) is not None:
        return False
    if recorded == QUEUED and time.time() - float(status.get("updated_unix") or 0) < QUEUE_TIMEOUT_S:
        return False
    latest = latest_checkpoint(run)
    move(
        run,
        STOPPED,
        phase=INTERRUPTED,
        reason=why,
        error=None,
        pid=None,
        step=step_of(latest) if latest is not None else 0,
        checkpoint=str(latest) if latest is not None else None,
        **{INTERRUPTED: True},
    )
    return True


def _now() -> str:
    """UTC, to the second: the times status.json, best.json and the lock file record."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# nats above ln(vocab_size): a tiny model on uniform random tokens ends within about 0.03 of it
DIVERGENCE_MARGIN = 0.1


def divergence(
    metrics: list[dict[str, Any]], vocab_size: int | None, config: dict[str, Any] | None = None
) -> str | None:
    """Why a run diverged, as a warning that says what to change, or None when it did not.

    Diverged: a NaN/inf training loss, or a loss that ends above ln(vocab_size) -- worse than guessing every
    token uniformly -- by more than :data:`DIVERGENCE_MARGIN` over its last logged steps (at least 3 of them).
    The margin keeps a healthy run on data that is close to uniform (where ln(vocab_size) is about the best
    loss there is) from counting as diverged for its noise."""
    losses = _losses(metrics)
    train = (config or {}).get("train") or {}
    lr, clip = train.get("lr"), train.get("grad_clip")
    advice = "lower the learning rate" + (f" (e.g. to {lr / 10:g})" if isinstance(lr, (int, float)) else "")
    if not clip:
        advice += " and turn on gradient clipping (e.g. 1.0)"
    if any(not math.isfinite(x) for x in losses):
        return f"the loss became NaN/inf: training diverged; {advice}"
    if not vocab_size or len(losses) < 3:
        return None
    uniform = math.log(vocab_size)
    tail = losses[-3:]
    if min(tail) > uniform + DIVERGENCE_MARGIN:
        return (
            f"the loss ended at {tail[-1]:.2f}, worse than guessing uniformly over {vocab_size} tokens "
            f"(ln {vocab_size} = {uniform:.2f}): training diverged; {advice}"
        )
    return None


def _losses(metrics: list[dict[str, Any]]) -> list[float]:
    return [
        r["loss"] for r in metrics if isinstance(r.get("loss"), (int, float)) and not isinstance(r.get("loss"), bool)
    ]


def divergence_fields(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """status.json's ``diverged`` for a run that :func:`divergence` calls diverged from its metrics: the last
    logged step, its loss (None when not finite: JSON has no NaN) and the cause."""
    losses = _losses(metrics)
    last = losses[-1] if losses else None
    return {
        "step": int(metrics[-1]["step"]) if metrics else None,
        "loss": last if last is not None and math.isfinite(last) else None,
        "cause": NON_FINITE if any(not math.isfinite(x) for x in losses) else ABOVE_UNIFORM,
    }


@dataclass
class RunState:
    """A run's state as run_state() reconciles it; ``holder`` is the live lock holder (None when none)."""

    state: str
    holder: dict[str, Any] | None
    step: int
    max_steps: int | None
    phase: str | None = None
    error: str | None = None
    warning: str | None = None
    recorded: str = NEW  # what status.json says
    error_type: str | None = None  # the class of the exception that failed the run, when one did
    diverged: dict[str, Any] | None = None  # {step, loss, cause} of a diverged run

    @property
    def pid(self) -> int | None:
        pid = (self.holder or {}).get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def active(self) -> bool:
        """A process holds the run: Start/Continue must wait, Stop can act."""
        return self.holder is not None


# a run queued by the app whose process has not taken the lock after this long never started
QUEUE_TIMEOUT_S = 60.0


def run_state(run_dir: str | os.PathLike) -> RunState:
    """The run's state from status.json, reconciled with the lock (status says training while nobody holds
    the lock: the process died -> failed, or stopped when a stop had been asked) and the metrics (a run that
    ended with a NaN or above-uniform loss is diverged)."""
    run = Path(run_dir)
    status = read_status(run)
    holder = lock_holder(run)
    recorded = recorded_state(status)
    state, error, warning, diverged = recorded, status.get("error"), None, None
    step = int(status.get("step") or 0)
    max_steps = int(status["max_steps"]) if status.get("max_steps") else None
    stop_asked = (run / STOP_REQUEST).exists()
    if holder is not None:
        if recorded in END_STATES or recorded == NEW:
            state = PREPARING  # a process took the run (e.g. a CLI resume) and has not begun training yet
        if stop_asked and read_json(run / STOP_REQUEST).get("pid") == holder.get("pid"):
            state = STOPPING
        error = None if state != recorded else error
    elif recorded in ACTIVE_STATES:
        updated = status.get("updated_unix") or _mtime(run / STATUS)
        if recorded == QUEUED and updated and time.time() - updated < QUEUE_TIMEOUT_S:
            state = QUEUED
        elif stop_asked or recorded == STOPPING:
            state, error = STOPPED, None
        else:
            pid = status.get("pid")
            state = FAILED
            error = error or (
                f"the training process{f' (PID {pid})' if pid else ''} ended without recording "
                "an end: it crashed or was killed; continue it from its latest checkpoint"
            )
    if state in (FINISHED, STOPPED, FAILED, DIVERGED):
        cfg = read_json(run / CONFIG)
        vocab = (cfg.get("model") or {}).get("vocab_size")
        metrics = read_metrics(run)
        warning = divergence(metrics, vocab if isinstance(vocab, int) else None, cfg)
        if warning:
            diverged = divergence_fields(metrics)
        if state == recorded == DIVERGED:  # the trainer's own record: it saw the NaN it did not log
            warning = status.get("warning") or warning
            recorded_fields = status.get("diverged")
            diverged = recorded_fields if isinstance(recorded_fields, dict) else diverged
        if warning and (state != STOPPED or (diverged or {}).get("cause") == NON_FINITE):
            state, error = DIVERGED, None
        elif state == STOPPED:
            warning = diverged = None  # stopped early: a loss still near its start is no divergence
    return RunState(
        state=state,
        holder=holder,
        step=step,
        max_steps=max_steps,
        phase=status.get("phase"),
        error=error,
        warning=warning,
        recorded=recorded,
        error_type=status.get("error_type") if error is not None and error == status.get("error") else None,
        diverged=diverged if state == DIVERGED else None,
    )


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
