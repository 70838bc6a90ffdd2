"""Checkpoints of a run folder: ``RUN/checkpoints/step_NNNNNNNN/{model.safetensors, optimizer.pt, state.json}``.

A checkpoint is written into a hidden temporary folder next to its final place, every file flushed to disk,
and then renamed into place: a reader (or a resumed run) sees a complete checkpoint or none, so a kill in the
middle of a write leaves the previous checkpoint untouched. ``state.json`` is written last.

``model.safetensors`` holds our parameter names (``Transformer.state_dict()``); with tied embeddings the
output head is the token embedding and only ``tok_embeddings.weight`` is stored. ``optimizer.pt`` is
``torch.save({"optimizer": ..., "scaler": ...})`` and is read with ``weights_only=True``.
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DISK_FULL_HINT, OpenLLMError, is_disk_full

__all__ = [
    "CHECKPOINTS",
    "checkpoint_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_state",
    "load_optimizer_state",
    "model_state_dict",
    "load_model_weights",
    "rng_state",
    "set_rng_state",
    "write_json_atomic",
    "read_best",
    "write_best",
]

CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted writes are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


# --- atomic files -------------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- model weights ------------------------------------------------------------------------------------------

def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our parameter names -> contiguous CPU tensors; a tied output head is left out (it is the embedding)."""
    sd = model.state_dict()
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def load_model_weights(model: torch.nn.Module, source: str | Path) -> torch.nn.Module:
    """Load ``model.safetensors`` (a file, or a checkpoint/export folder holding one) into ``model``."""
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise OpenLLMError(f"no model weights at {path}")
    sd = load_file(str(path))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = getattr(getattr(model, "cfg", None), "tie_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise OpenLLMError(
            f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model


# --- RNG ----------------------------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, JSON-serialisable."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        states = [_unb64(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# --- save / load --------------------------------------------------------------------------------------------

def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    *,
    keep_last: int | None = None,
    protect: set[int] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; then delete the oldest beyond ``keep_last`` (never a step in
    ``protect``, e.g. the best one)."""
    from safetensors.torch import save_file

    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
        torch.save(optimizer_state, tmp / "optimizer.pt")
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            json.dump({**state, "step": step}, f, indent=2)
            f.write("\n")
        for name in ("model.safetensors", "optimizer.pt", "state.json"):
            _fsync_file(tmp / name)
        _fsync_dir(tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(exc):
            raise
        previous = latest_checkpoint(run_dir)
        raise OpenLLMError(
            f"could not write checkpoint step {step} in {root} ({' '.join(str(exc).split())}); "
            + (f"the previous checkpoint {previous.name} is intact; " if previous else "no checkpoint was kept; ")
            + DISK_FULL_HINT + " (it resumes from the last checkpoint)"
        ) from exc
    if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
        old = root / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    if keep_last:
        ckpts = list_checkpoints(run_dir)
        keep = set(ckpts[-keep_last:])
        for p in ckpts:
            if p not in keep and int(p.name[5:]) not in (protect or set()):
                shutil.rmtree(p, ignore_errors=True)
    return final


def clean_temporary(run_dir: str | Path) -> list[Path]:
    """Remove the temporary folders that interrupted checkpoint writes left behind."""
    root = Path(run_dir) / CHECKPOINTS
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def load_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / "state.json"
    if not path.is_file():
        raise OpenLLMError(f"{ckpt} is not a checkpoint (no state.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_optimizer_state(ckpt: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    return torch.load(Path(ckpt) / "optimizer.pt", map_location=map_location, weights_only=True)


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / CHECKPOINTS / "best.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_best(run_dir: str | Path, step: int, val_loss: float) -> None:
    write_json_atomic(Path(run_dir) / CHECKPOINTS / "best.json", {
        "step": step,
        "val_loss": val_loss,
        "checkpoint": f"step_{step:08d}",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
