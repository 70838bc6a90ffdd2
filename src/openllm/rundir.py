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
from pathlib import Path
from typing import Any, Iterator

from .errors import OpenLLMError

__all__ = [
    "CONFIG", "STATUS", "METRICS", "EVALUATION", "CHECKPOINTS", "BEST", "LOSS_PNG", "TOKENIZER", "TMP_PREFIX",
    "WEIGHTS", "OPTIMIZER", "STATE",
    "is_run", "step_name", "checkpoint_dir", "step_of", "is_complete", "list_checkpoints", "checkpoint_steps",
    "latest_checkpoint", "require_latest_checkpoint", "clean_temporary",
    "read_best", "write_best", "read_status", "write_status", "read_metrics", "read_jsonl", "read_evaluation",
    "write_evaluation", "read_json", "load_json",
    "write_json_atomic", "write_text_atomic", "write_bytes_atomic", "atomic_file", "atomic_output_dir",
    "fsync_dir", "fsync_file",
]

CONFIG = "config.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
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
    """A training run's folder: it has ``checkpoints/``, or a ``config.json`` holding a full Config."""
    path = Path(path)
    if (path / CHECKPOINTS).is_dir():
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
        raise OpenLLMError(f"run {run_dir} has no checkpoint yet (nothing complete in "
                           f"{Path(run_dir) / CHECKPOINTS}): train it longer or wait for the first save")
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
    write_json_atomic(Path(run_dir) / CHECKPOINTS / BEST, {
        "step": step, "val_loss": val_loss, "checkpoint": step_name(step),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })


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
        raise OpenLLMError(f"{label} is not valid JSON ({exc}): the file is damaged; restore or regenerate "
                           f"it") from None
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
    return [r for r in read_jsonl(Path(run_dir) / METRICS)
            if isinstance(r.get("step"), (int, float)) and not isinstance(r.get("step"), bool)]


def read_evaluation(run_dir: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(run_dir) / EVALUATION)


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
                f"--out {out} exists and is not an earlier output (no {owned_marker}); "
                "choose an empty or new folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
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
