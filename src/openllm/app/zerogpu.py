"""ZeroGPU: on a Space whose hardware is ZeroGPU, a GPU exists only inside functions decorated with
``@spaces.GPU``, for the ``duration`` each call asks for. The app's GPU work goes through here:

- chat, generation and evaluation run inside a decorated call whose duration is computed from the work
  (:func:`generation_seconds`, :func:`evaluation_seconds`);
- training runs in the app's process (a job process would have no GPU) in **time-boxed chunks**
  (:func:`train_in_chunks`): each chunk is one decorated call that starts the run or resumes it from its latest
  checkpoint, trains until its budget (the call's duration less a margin for setup and the closing save) and
  saves. Resuming is exact (the checkpoint holds the weights, the optimizer, every RNG and the data position),
  so a run trained in many chunks has the losses of the same run trained in one go. No ``torch.compile`` there
  (ZeroGPU's guidance: its compile time would be paid again in every call).

ZeroGPU is detected as the ``spaces`` package detects it (``SPACES_ZERO_GPU``, read by ``spaces.config``).
Elsewhere ``spaces.GPU`` returns the function unchanged, so the same code runs on a CPU or a GPU machine;
``OPENLLM_ZEROGPU=1`` turns the chunked training on anyway (with ``OPENLLM_ZEROGPU_CHUNK_S`` and
``OPENLLM_ZEROGPU_MARGIN_S``), which is how it is tested.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import OpenLLMError

__all__ = [
    "ZERO_GPU_ENV",
    "FORCE_ENV",
    "CHUNK_ENV",
    "MARGIN_ENV",
    "ChunkPolicy",
    "on_zerogpu",
    "prepare",
    "chunk_policy",
    "gpu_call",
    "gpu_stream",
    "generation_seconds",
    "evaluation_seconds",
    "train_in_chunks",
]

ZERO_GPU_ENV = "SPACES_ZERO_GPU"  # what the spaces package reads (spaces/config.py)
FORCE_ENV = "OPENLLM_ZEROGPU"
CHUNK_ENV = "OPENLLM_ZEROGPU_CHUNK_S"
MARGIN_ENV = "OPENLLM_ZEROGPU_MARGIN_S"
DEFAULT_CHUNK_S = 120.0
DEFAULT_MARGIN_S = 25.0
# ZeroGPU's own default duration; longer calls wait longer in its queue, so short work asks for little
MIN_CALL_S = 60
MAX_CALL_S = 300
# allowances for one call, not measurements: loading the model onto the GPU, then each token generated (a
# small model on a ZeroGPU slice decodes far faster than this) and each evaluation task
LOAD_S = 15.0
TOKEN_S = 0.05
TASK_S = 30.0
# chunks in a row that trained no step before the run is refused as unable to progress
MAX_STALLED = 3


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "t", "true", "yes", "on")


def on_zerogpu() -> bool:
    """Whether this process runs on ZeroGPU hardware, by the ``spaces`` package's own reading of the
    environment. SPACES_ZERO_GPU set without the package installed is a broken Space: a one-line error."""
    try:
        from spaces.config import Config
    except ImportError as exc:
        if _truthy(os.environ.get(ZERO_GPU_ENV)):
            raise OpenLLMError(
                "this Space runs on ZeroGPU (SPACES_ZERO_GPU is set) but the 'spaces' package is not installed: "
                "add spaces to requirements.txt (openllm space build does)"
            ) from exc
        return False
    return bool(Config.zero_gpu)


@dataclass(frozen=True)
class ChunkPolicy:
    """How training is cut on ZeroGPU: each chunk asks for ``duration_s`` of GPU and trains for
    ``duration_s - margin_s`` (the margin: setting up or resuming, and the save that ends the chunk)."""

    duration_s: float = DEFAULT_CHUNK_S
    margin_s: float = DEFAULT_MARGIN_S

    @property
    def budget_s(self) -> float:
        return self.duration_s - self.margin_s

    @property
    def hard_s(self) -> float:
        """A chunk whose setup ran long stops here even before it trained, so that its save still fits."""
        return self.duration_s - self.margin_s / 2


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise OpenLLMError(f"{name}={raw!r} is not a number of seconds: give a positive number, e.g. {default:g}")
    return value


def chunk_policy(env: Mapping[str, str] | None = None) -> ChunkPolicy | None:
    """The chunking of training: on ZeroGPU (or with OPENLLM_ZEROGPU=1), else None (a job process trains)."""
    env = os.environ if env is None else env
    # spaces reads SPACES_ZERO_GPU: without it there is no ZeroGPU, and no need to import spaces to say so
    zero = ZERO_GPU_ENV in env and on_zerogpu()
    if not (_truthy(env.get(FORCE_ENV)) or zero):
        return None
    policy = ChunkPolicy(_seconds(env, CHUNK_ENV, DEFAULT_CHUNK_S), _seconds(env, MARGIN_ENV, DEFAULT_MARGIN_S))
    if policy.budget_s <= 0:
        raise OpenLLMError(
            f"{CHUNK_ENV} ({policy.duration_s:g} s) must be longer than {MARGIN_ENV} ({policy.margin_s:g} s): "
            "each chunk trains for the difference"
        )
    return policy


# --- GPU calls -------------------------------------------------------------------------------------------------
# The decorated functions are module-level trampolines (ZeroGPU pickles a call's arguments to the worker that
# holds the GPU, so the function to run travels by name); the first argument is the duration the call asks
# for, which spaces reads through the ``duration`` callable.


def _duration(seconds: float, *args: Any, **kwargs: Any) -> int:
    return int(math.ceil(seconds))


def _to_gpu(args: tuple) -> None:
    """A loaded model passed in goes to the GPU that exists inside the call (none elsewhere: left as it is)."""
    import torch

    if not torch.cuda.is_available():
        return
    for arg in args:
        model = getattr(arg, "model", None)
        if isinstance(model, torch.nn.Module):
            model.to("cuda")


def _run_call(seconds: float, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    _to_gpu(args)
    return fn(*args, **kwargs)


def _run_stream(seconds: float, fn: Callable[..., Iterator[Any]], args: tuple, kwargs: dict) -> Iterator[Any]:
    _to_gpu(args)
    yield from fn(*args, **kwargs)


def _decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
    import spaces  # the app's requirement (openllm[app]), so the Space's requirements.txt carries it

    return spaces.GPU(fn, duration=_duration)


_decorated: dict[str, Callable[..., Any]] = {}


def _gpu(fn: Callable[..., Any]) -> Callable[..., Any]:
    # decorated once, on first use (spaces keeps its own registry of decorated functions)
    key = fn.__name__
    if key not in _decorated:
        _decorated[key] = _decorate(fn)
    return _decorated[key]


def prepare() -> bool:
    """On ZeroGPU, decorate the app's GPU functions now, before the server starts: spaces reports the decorated
    functions when Gradio launches. Returns whether it did."""
    if ZERO_GPU_ENV not in os.environ or not on_zerogpu():
        return False
    for fn in (_run_call, _run_stream, _train_chunk):
        _gpu(fn)
    return True


def gpu_call(seconds: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` inside a ``@spaces.GPU`` call asking for ``seconds`` (clamped to ZeroGPU's
    range); off ZeroGPU, a plain call."""
    return _gpu(_run_call)(_clamp(seconds), fn, args, kwargs)


def gpu_stream(seconds: float, fn: Callable[..., Iterator[Any]], *args: Any, **kwargs: Any) -> Iterator[Any]:
    """As :func:`gpu_call` for a generator (a streamed reply)."""
    return _gpu(_run_stream)(_clamp(seconds), fn, args, kwargs)


def _clamp(seconds: float) -> float:
    return float(min(MAX_CALL_S, max(MIN_CALL_S, math.ceil(seconds))))


def generation_seconds(max_new_tokens: int, n: int = 1) -> float:
    """The GPU time a reply of up to ``max_new_tokens`` tokens (``n`` of them) asks for."""
    return LOAD_S + TOKEN_S * max(1, int(max_new_tokens)) * max(1, int(n))


def evaluation_seconds(tasks: int = 0, limit: int | None = None, val_tokens: int | None = None) -> float:
    """The GPU time an evaluation asks for: the val split (by its token count where known) and each task."""
    per_task = TASK_S if limit is None else min(TASK_S, 1.0 + limit * 0.05)
    val = 10.0 if val_tokens is None else 5.0 + val_tokens / 50_000  # a forward pass over 50k tokens a second
    return LOAD_S + val + per_task * max(0, int(tasks))


# --- training in chunks ------------------------------------------------------------------------------------------


def _train_chunk(seconds: float, call: dict[str, Any], budget_s: float, hard_s: float) -> dict[str, Any]:
    """One GPU call of a chunked run: ``call["kind"]`` (train or finetune) with ``call["kwargs"]``, stopped
    (a checkpoint, state stopped) once training has run ``budget_s`` from the call's start, at ``hard_s``
    whatever it did, or when a stop is asked (the run's stop-request file: this may be another process)."""
    run = Path(call["run_dir"])
    start_wall, start = time.time(), time.monotonic()
    stop, done = threading.Event(), threading.Event()

    def training_began() -> bool:
        status = rundir.read_status(run)
        return status.get("state") == rundir.TRAINING and float(status.get("updated_unix") or 0) >= start_wall

    def watch() -> None:
        while not done.wait(0.05):
            spent = time.monotonic() - start
            asked = (run / rundir.STOP_REQUEST).exists()
            if asked or spent >= hard_s or (spent >= budget_s and training_began()):
                stop.set()
                return

    log_path = call.get("log")

    def say(msg: str) -> None:
        if log_path:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(msg + "\n")

    watcher = threading.Thread(target=watch, name="openllm-zerogpu-budget", daemon=True)
    watcher.start()
    try:
        kwargs = dict(call["kwargs"], stop_event=stop, progress=False, log=say)
        if call["kind"] == "finetune":
            from ..finetune import finetune

            result = finetune(**kwargs, overrides={"train": {"compile": False}})
        else:
            from ..train import train

            result = train(**kwargs, compile=False)
    finally:
        done.set()
        watcher.join()
    return {"state": result.state, "step": result.step}


def train_in_chunks(
    run_dir: str | os.PathLike,
    kind: str,
    fresh: dict[str, Any] | None,
    resume: dict[str, Any],
    policy: ChunkPolicy,
    *,
    log: str | os.PathLike | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the run in GPU calls of ``policy.duration_s`` until it finishes (or diverges), or a stop is asked
    (``rundir.request_stop``: the chunk saves and stops, and no other follows). ``fresh``: the keyword
    arguments of the call that starts the run (train/finetune), used until a first checkpoint exists;
    ``resume``: those of the calls that continue it. Returns the last chunk's ``{"state", "step"}``."""
    run = Path(run_dir)
    chunk = _gpu(_train_chunk)
    last = _saved_step(run)
    stalled = 0
    n = 0
    while True:
        first = fresh is not None and rundir.latest_checkpoint(run) is None
        call = {
            "run_dir": str(run),
            "kind": kind,
            "kwargs": fresh if first else resume,
            "log": str(log) if log else None,
        }
        n += 1
        out = chunk(policy.duration_s, call, policy.budget_s, policy.hard_s)
        if out["state"] != rundir.STOPPED:
            return out
        if (run / rundir.STOP_REQUEST).exists():
            # a stop that reached a chunk while it set up ends it before a step: the run stays at its checkpoint
            saved = _saved_step(run)
            if saved > int(rundir.read_status(run).get("step") or 0):
                rundir.move(run, rundir.STOPPED, step=saved)
            return {"state": rundir.STOPPED, "step": max(saved, int(out["step"]))}
        step = _saved_step(run)
        stalled = stalled + 1 if step <= last else 0
        if stalled >= MAX_STALLED:
            raise OpenLLMError(
                f"{MAX_STALLED} ZeroGPU chunks of {policy.duration_s:g} s in a row trained no step (setting up takes "
                f"longer than the chunk): raise {CHUNK_ENV}, or {MARGIN_ENV} if the save does not fit"
            )
        last = step
        say(f"== chunk {n} saved step {step}; the next chunk resumes from it")


def _saved_step(run: Path) -> int:
    latest = rundir.latest_checkpoint(run)
    return (rundir.step_of(latest) or 0) if latest is not None else -1
