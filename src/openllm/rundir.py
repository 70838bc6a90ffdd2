"""The one owner of a run folder's layout, and of atomic file writes.

A run folder (``openllm train --out RUN``)::

    RUN/config.json                       the full Config the run was started with
    RUN/tokenizer/                        a copy of the tokenizer the data was made with
    RUN/status.json                       state, error, step, max_steps, pid, times (read by the web app)
    RUN/metrics.jsonl                     one JSON object a line: step, loss, lr, ... and val_loss on eval steps
    RUN/evaluation.json                   the latest ``openllm evaluate`` of this run (read by the model card)
    RUN/loss.png, RUN/tb/                 the loss curve and TensorBoard logs
    RUN/checkpoints/step_NNNNNNNN/        model.safetensors, optimizer.pt, state.json (written last)
    RUN/checkpoints/best.json             which step had the best in-training val loss

Every module that reads or writes one of these asks this module: checkpoint naming and completeness, the
latest and best checkpoint, status, metrics, evaluation. Nothing here imports torch.

Atomic writes: a reader sees the old content or the complete new content, never a part. Files go through a
temporary sibling, ``fsync`` and ``os.replace``; folders are built in a hidden sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OpenLLMError

__all__ = [
    "CONFIG",
    "STATUS",
    "METRICS",
    "EVALUATION",
    "EVALUATIONS",
    "CHECKPOINTS",
    "BEST",
    "LOSS_PNG",
    "TOKENIZER",
    "TMP_PREFIX",
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
    "write_status",
    "read_metrics",
    "read_jsonl",
    "read_evaluation",
    "read_other_evaluations",
    "write_evaluation",
    "read_json",
    "load_json",
    "write_json_atomic",
    "write_text_atomic",
    "write_bytes_atomic",
    "atomic_file",
    "atomic_output_dir",
    "make_dirs",
    "fsync_dir",
    "fsync_file",
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
    "divergence",
    "RunState",
    "run_state",
]

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
EVALUATIONS = "evaluations"  # other evaluations (a text file's), one JSON file each
CHECKPOINTS = "checkpoints"
BEST = "best.json"
LOSS_PNG = "loss.png"
TOKENIZER = "tokenizer"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "state.json"
TMP_PREFIX = ".tmp-"

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
            f"{Path(run_dir) / CHECKPOINTS}): train it longer or wait for the first save"
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
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


# --- status, metrics, evaluation ------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; ``{}`` when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_json(path: str | os.PathLike, *, what: str = "") -> dict[str, Any]:
    """A JSON object from a file the caller needs: a missing, unreadable, non-UTF-8, invalid or non-object
    file is a user error naming the file."""
    path = Path(path)
    label = f"{path}" + (f" ({what})" if what else "")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OpenLLMError(f"{label} is missing") from None
    except UnicodeDecodeError:
        raise OpenLLMError(f"{label} is not UTF-8 text: the file is damaged; restore or regenerate it") from None
    except OSError as exc:
        raise OpenLLMError(f"{label} cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OpenLLMError(
            f"{label} is not valid JSON ({exc}): the file is damaged; restore or regenerate it"
        ) from None
    if not isinstance(data, dict):
        raise OpenLLMError(f"{label}: expected a JSON object, found {type(data).__name__}")
    return data


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/status.json`` (``{}`` when absent): state, error, step, max_steps, pid, times."""
    return read_json(Path(run_dir) / STATUS)


def write_status(run_dir: str | os.PathLike, status: dict[str, Any]) -> None:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / STATUS, status)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a ``.jsonl`` file; a line being written or cut by a kill (not valid JSON) is skipped."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except OSError:
        pass
    return out


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


# --- atomic writes --------------------------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; on success it is flushed, synced and renamed onto
    ``path``; on error it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """JSON (indented, UTF-8 kept as is, a final newline) through :func:`atomic_file`."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def make_dirs(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` whose failures are one-line user errors: a file in the way, no permission, a read-only
    file system."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists() and not parent.is_dir():
            raise OpenLLMError(f"{folder}: {parent} is a file, not a folder; choose another path")
        if parent.exists():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpenLLMError(
            f"cannot create {folder} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
    return folder


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
                f"--out {out} exists and is not an earlier output (no {owned_marker}); choose an empty or new folder"
            )
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    make_dirs(out.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise OpenLLMError(
            f"--out {out}: cannot write in {out.parent} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
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
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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
        f"lock, checkpoints and metrics there; train into a writable folder (--out)"
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
            raise _read_only_error(self.run_dir, exc) from None
        deadline = time.monotonic() + _LOCK_SETTLE_S
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise _read_only_error(self.run_dir, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_lock_fd(fd)
                os.close(fd)
                if holder.get("pid") or time.monotonic() >= deadline:
                    raise OpenLLMError(_held_message(self.run_dir, holder)) from None
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
            raise _read_only_error(self.run_dir, exc) from None
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
    with state ``stopped``); returns its PID. Raises OpenLLMError when nothing holds the lock."""
    import signal

    holder = lock_holder(run_dir)
    pid = holder.get("pid") if holder else None
    if not isinstance(pid, int) or pid <= 0:
        raise OpenLLMError(f"nothing is training run {Path(run_dir).name}: there is nothing to stop")
    with contextlib.suppress(OSError):
        write_json_atomic(Path(run_dir) / STOP_REQUEST, {"pid": pid, "time": time.time()})
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise OpenLLMError(f"run {Path(run_dir).name} is trained by PID {pid}, which this user may not stop") from None
    return pid


# The states a run goes through. ``status.json`` records what the training process last said; run_state()
# corrects it with the lock (a process that died cannot say so) and the metrics (divergence).
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


def check_transition(old: str, new: str) -> str:
    """``new`` when a run may go from ``old`` to it; otherwise an OpenLLMError naming both."""
    if new not in STATES:
        raise OpenLLMError(f"unknown run state {new!r}; one of {', '.join(STATES)}")
    if new not in TRANSITIONS.get(old, frozenset()):
        raise OpenLLMError(f"a run cannot go from {old} to {new}")
    return new


def _recorded_state(status: dict[str, Any]) -> str:
    """status.json's state in the state machine's words (the trainer writes ``running`` while it trains)."""
    state = status.get("state")
    if state in STATES:
        return state
    if state == "running":
        phase = str(status.get("phase") or "")
        if phase in ("", "training"):
            return TRAINING
        return QUEUED if phase in ("starting", "queued") else PREPARING
    return NEW


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
    import math

    losses = [
        r.get("loss")
        for r in metrics
        if isinstance(r.get("loss"), (int, float)) and not isinstance(r.get("loss"), bool)
    ]
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
    recorded: str = NEW  # what status.json says, in the state machine's words

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
    recorded = _recorded_state(status)
    state, error, warning = recorded, status.get("error"), None
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
        warning = divergence(read_metrics(run), vocab if isinstance(vocab, int) else None, cfg)
        nan_error = re.search(r"training diverged|\b(loss|gradient norm) -?(nan|inf)\b", str(error))
        if warning is None and state in (FAILED, DIVERGED) and nan_error:
            warning = divergence([{"loss": float("nan")}], None, cfg)
        if warning and (state != STOPPED or "NaN" in warning):
            state, error = DIVERGED, None
        elif state == STOPPED:
            warning = None  # stopped early: a loss still near its start is no divergence
    return RunState(
        state=state,
        holder=holder,
        step=step,
        max_steps=max_steps,
        phase=status.get("phase"),
        error=error,
        warning=warning,
        recorded=recorded,
    )


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None
