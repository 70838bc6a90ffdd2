"""The training job the app starts: ``python -m openllm.app.job JOB_DIR`` (``training.app.job`` in the Space).

A separate process of the same package, so a crash in training never takes the web app down. It runs the
library's pipeline in order: prepare the corpus -> train the tokenizer -> tokenize -> train; or, for a run being
continued, only train (an exact resume from the latest checkpoint to the new total); for a fine-tune, only
:func:`openllm.finetune.finetune` (what ``openllm finetune BASE --data F --out RUN`` runs). The job holds the run's lock
(:class:`openllm.rundir.RunLock`, with JOB_DIR/log.txt as its log) from its first moment to its end, so
nothing else trains the run meanwhile. Until training starts, this process moves the run's ``status.json``
(:func:`openllm.rundir.move`: state ``preparing`` with a ``phase``); from then on the trainer does. SIGTERM
during training is the trainer's graceful stop (a checkpoint, state ``stopped``); during data preparation it
ends the job with state ``stopped``. A failure is recorded as state ``failed`` with its one-line message and the
exception's class (``error``, ``error_type``).

JOB_DIR/job.json (written by :mod:`runner`)::

    {"run_dir": ..., "inputs": [...], "vocab_size": N, "max_steps": N, "field": "text"}  (+ JOB_DIR/config.json)
    {"run_dir": ..., "continue": true, "max_steps": N}     (a fine-tuned run continues as a fine-tune)
    {"run_dir": ..., "max_steps": N, "finetune": {"base": RUN, "data": F, "val": V or null, "lora": bool}}
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..rundir import (
    ACTIVE_STATES,
    FAILED,
    NEW,
    PREPARING,
    STOP_REQUEST,
    STOPPED,
    RunLock,
    move,
    read_status,
    recorded_state,
)

if TYPE_CHECKING:
    from .zerogpu import ChunkPolicy


class _Stopped(Exception):
    """SIGTERM arrived while the data was being prepared."""


_stop = threading.Event()
_raise_on_term = True


def _on_term(signum, frame) -> None:
    _stop.set()
    if _raise_on_term:
        raise _Stopped()


def _prepare(inputs: list[str], out: Path, field: str) -> None:
    from ..prepare import prepare_corpus

    prepare_corpus(inputs or None, out, field=field)


def _tokenizer(prepared: Path, out: Path, vocab_size: int) -> None:
    from ..tokenizer import train_tokenizer

    train_tokenizer(prepared, out, vocab_size=vocab_size)


def _tokenize(prepared: Path, tok: Path, out: Path) -> None:
    from ..shards import tokenize_corpus

    tokenize_corpus(prepared, tok, out, workers=1)


def _named_paths(spec: dict, run_dir: Path) -> list[str | Path]:
    """The run folder and every string of the job's spec (its corpus inputs, a fine-tune's base and data): the
    paths the user gave, as argv is the CLI's (an OSError about another path is a bug: ``is_user_error``)."""
    out: list[str | Path] = [run_dir]
    stack: list[Any] = [spec]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return out


def main(job_dir_arg: str) -> int:
    job_dir = Path(job_dir_arg)
    spec = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    signal.signal(signal.SIGTERM, _on_term)
    try:
        # run as ``-m``, __name__ is "__main__": the spec's name is the module's, which the app recognises as its own
        module = __spec__.name if __spec__ is not None else __name__
        lock = RunLock(run_dir, command=f"{sys.executable} -m {module} {job_dir}", log=job_dir / "log.txt")
        lock.acquire()
    except _Stopped:
        return 0
    except Exception as exc:
        print(f"error: {exc}", flush=True)
        return 1
    try:
        return _run(job_dir, spec, run_dir)
    finally:
        lock.release()


def run_here(job_dir_arg: str | os.PathLike, chunks: ChunkPolicy) -> int:
    """The job in this process, its training in ZeroGPU chunks (:mod:`zerogpu`): on ZeroGPU only the app's
    process can ask for the GPU. No signals here (a thread of the app): a stop is the run's stop-request file
    (:func:`openllm.rundir.request_stop`), seen between the preparation phases and by each chunk. What a
    job process would print goes to JOB_DIR/log.txt."""
    job_dir = Path(job_dir_arg)
    spec = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    log = job_dir / "log.txt"

    def say(msg: str) -> None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(msg + "\n")

    try:
        # the command a job process records: the app knows the run as its own by it
        module = __spec__.name if __spec__ is not None else __name__
        lock = RunLock(run_dir, command=f"{sys.executable} -m {module} {job_dir}", log=log).acquire()
    except Exception as exc:
        say(f"error: {exc}")
        return 1
    try:
        return _run(job_dir, spec, run_dir, chunks=chunks, say=say)
    finally:
        lock.release()


def _say(msg: str) -> None:
    print(msg, flush=True)


def _run(
    job_dir: Path, spec: dict, run_dir: Path, *, chunks: ChunkPolicy | None = None, say: Callable[[str], None] = _say
) -> int:
    global _raise_on_term
    max_steps = int(spec["max_steps"])
    data = job_dir / "data"
    prepared, tok, shards = data / "prepared", data / "tokenizer", data / "tokens"
    inputs = list(spec.get("inputs") or [])
    given = Path(inputs[0]) if len(inputs) == 1 and Path(inputs[0]).is_dir() else None
    phases = [
        ("preparing the corpus", lambda: _prepare(inputs, prepared, spec.get("field") or "text")),
        ("training the tokenizer", lambda: _tokenizer(prepared, tok, int(spec["vocab_size"]))),
        ("tokenizing", lambda: _tokenize(prepared, tok, shards)),
    ]
    vocab_from_data = False
    resuming = bool(spec.get("continue"))
    if resuming or spec.get("finetune"):
        phases = []
    elif given is not None and (given / "meta.json").is_file():
        # already tokenized (openllm tokenize --out): train on it as it is, with its vocabulary
        phases, shards, vocab_from_data = [], given, True
    elif given is not None and (given / "train.jsonl").is_file() and (given / "val.jsonl").is_file():
        prepared = given  # already prepared (openllm prepare-data --out)
        phases = phases[1:]
    phase = "starting"

    def stop_asked() -> bool:  # a signal (job process), or the stop-request file (in the app's process)
        return _stop.is_set() or (chunks is not None and (run_dir / STOP_REQUEST).exists())

    try:
        for phase, fn in phases:
            if stop_asked():
                raise _Stopped()
            move(run_dir, PREPARING, phase=phase, pid=os.getpid(), max_steps=max_steps, error=None)
            say(f"== {phase}")
            fn()
        phase = "training"
        _raise_on_term = False  # from here SIGTERM only asks the trainer to stop (checkpoint first)
        if stop_asked():
            raise _Stopped()
        move(run_dir, PREPARING, phase="starting training", pid=os.getpid(), max_steps=max_steps, error=None)
        say(f"== {'continuing to step ' + str(max_steps) if resuming else 'training'}")
        ft: dict[str, Any] = spec.get("finetune") or {}
        kind = "finetune" if ft or (resuming and _finetuned(run_dir)) else "train"
        # the call that continues the run from its latest checkpoint (a fine-tune's records its base and data)
        again: dict[str, Any] = dict(out_dir=str(run_dir), resume=True, max_steps=max_steps)
        if kind == "finetune":
            again.update(model=None, data=None)
        else:
            again.update(config=None)
        fresh: dict[str, Any] | None = None
        if kind == "finetune" and not resuming:
            fresh = dict(
                model=ft["base"],
                data=ft["data"],
                out_dir=str(run_dir),
                val_data=ft.get("val"),
                lora=bool(ft.get("lora")) or None,
                max_steps=max_steps,
            )
        elif not resuming:
            config = str(job_dir / "config.json")
            fresh = dict(config=config, data_dir=str(shards), out_dir=str(run_dir), vocab_from_data=vocab_from_data)
        if chunks is not None:
            from .zerogpu import train_in_chunks

            train_in_chunks(run_dir, kind, fresh, again, chunks, log=job_dir / "log.txt", say=say)
        elif kind == "finetune":
            from ..finetune import finetune

            finetune(**(fresh or again), stop_event=_stop, progress=True)
        else:
            from ..train import train

            train(**(fresh or again), stop_event=_stop, progress=True)
        return 0
    except _Stopped:
        say(f"stopped while {phase}")
        move(run_dir, STOPPED, phase=f"stopped while {phase}", pid=None)
        return 0
    except BaseException as exc:
        from ..errors import is_user_error

        msg = str(exc) or type(exc).__name__
        if not is_user_error(exc, inputs=_named_paths(spec, run_dir)):
            say(traceback.format_exc().rstrip())
            msg = f"{type(exc).__name__}: {msg}"
        say(f"error: {msg}")
        from .corpus_check import app_words

        msg = app_words(msg)
        # an end the trainer recorded (failed with its error, diverged with its warning) is the better record
        if recorded_state(read_status(run_dir)) in (*ACTIVE_STATES, NEW):
            move(
                run_dir,
                FAILED,
                phase=f"failed while {phase}",
                error=f"{phase}: {msg}" if phase != "training" else msg,
                error_type=type(exc).__name__,
                pid=None,
            )
        return 1


def _finetuned(run_dir: Path) -> bool:
    from ..finetune import finetune_record

    return finetune_record(run_dir) is not None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
