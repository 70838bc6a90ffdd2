"""Checkpoints of a run folder: ``RUN/checkpoints/step_NNNNNNNN/{model.safetensors, optimizer.pt, state.json}``.

A checkpoint is written into a hidden temporary folder next to its final place, every file flushed to disk,
and then renamed into place: a reader (or a resumed run) sees a complete checkpoint or none, so a kill in the
middle of a write leaves the previous checkpoint untouched. ``state.json`` is written last.

``model.safetensors`` holds our parameter names (``Transformer.state_dict()``); with tied embeddings the
output head is the token embedding and only ``tok_embeddings.weight`` is stored. ``optimizer.pt`` is
``torch.save({"optimizer": ..., "scaler": ...})`` and is read with ``weights_only=True``.

``state.json`` records the size and sha256 of the other two files (``files``): :func:`verify_checkpoint` checks
them and names the damaged file, and a resumed run falls back to the newest intact checkpoint
(:func:`latest_intact_checkpoint`).

A training run's checkpoint is the dict of its components (:class:`Checkpointer`): each gives and takes a
``state_dict``, and the Checkpointer puts the model's into ``model.safetensors``, the optimizer's, the loss
scaler's (and LoRA adapters') into ``optimizer.pt`` and every other one into ``state.json``, the layout
checkpoints have always had.

Where checkpoints live, which are complete and which is the latest or best is :mod:`rundir`'s to say; this
module writes and reads what is inside one.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch

from . import rundir
from .errors import DISK_FULL_HINT, OpenLLMError, disk_full_reason, is_disk_full
from .fsio import follow_umask, fsync_dir, fsync_file, load_json
from .hashing import sha256_file

__all__ = [
    "CheckpointDamaged",
    "save_checkpoint",
    "verify_checkpoint",
    "latest_intact_checkpoint",
    "load_state",
    "load_optimizer_state",
    "model_state_dict",
    "load_model_weights",
    "read_safetensors",
    "rng_state",
    "set_rng_state",
    "RNGState",
    "Stateful",
    "ModelWeights",
    "Checkpointer",
]


class CheckpointDamaged(OpenLLMError):
    """A checkpoint's file is missing, truncated or altered since it was written."""


# --- model weights ------------------------------------------------------------------------------------------


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our parameter names -> contiguous CPU tensors; a tied output head is left out (it is the embedding)."""
    sd = model.state_dict()
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or altered file is :class:`CheckpointDamaged`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointDamaged(
            f"{path} cannot be read ({' '.join(str(exc).split())[:120]}): the file is "
            f"damaged; restore it or use an earlier checkpoint"
        ) from exc


def load_model_weights(model: torch.nn.Module, source: str | Path) -> torch.nn.Module:
    """Load ``model.safetensors`` (a file, or a checkpoint/export folder holding one) into ``model``."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise OpenLLMError(f"no model weights at {path}")
    sd = read_safetensors(path)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = getattr(getattr(model, "cfg", None), "tie_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise OpenLLMError(f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


# --- RNG ----------------------------------------------------------------------------------------------------


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())


def rng_state() -> dict[str, Any]:
    """Every random generator training touches, JSON-serialisable."""
    py = random.getstate()
    # the legacy form, a tuple (numpy types the call as returning that or a dict)
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    state: dict[str, Any] = {
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


class RNGState:
    """Every random generator training touches, as a checkpoint component. Ranks draw differently (dropout),
    so the state is the list of every rank's :func:`rng_state`, collected by ``gather`` (a collective under
    torchrun, e.g. :func:`openllm.distributed.gather_objects`); a run resumed with another number of ranks
    gives every rank the first one."""

    def __init__(self, rank: int = 0, world_size: int = 1, gather: Callable[[Any], list] | None = None) -> None:
        self.rank, self.world_size = rank, world_size
        self.gather = gather or (lambda state: [state])

    def state_dict(self) -> list[dict[str, Any]]:
        return self.gather(rng_state())

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        if states:
            set_rng_state(states[self.rank] if len(states) == self.world_size else states[0])


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

    root = Path(run_dir) / rundir.CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = rundir.checkpoint_dir(run_dir, step)
    tmp = root / f"{rundir.TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(model_state, str(tmp / rundir.WEIGHTS), metadata={"format": "pt", "step": str(step)})
        follow_umask(tmp / rundir.WEIGHTS)  # safetensors writes it private, unlike every other file of the run
        # through a Python file: torch's own writer loses the errno of a full disk ("unexpected pos"); ours
        # raises OSError(ENOSPC), which torch keeps as the context of its error (errors.is_disk_full reads it)
        with open(tmp / rundir.OPTIMIZER, "wb") as f:
            torch.save(optimizer_state, f)
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            for name in (rundir.WEIGHTS, rundir.OPTIMIZER)
        }
        with open(tmp / rundir.STATE, "w", encoding="utf-8") as f:  # last: its presence marks a complete write
            json.dump({**state, "step": step, "files": files}, f, indent=2)
            f.write("\n")
        for name in (rundir.WEIGHTS, rundir.OPTIMIZER, rundir.STATE):
            fsync_file(tmp / name)
        fsync_dir(tmp)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(exc):
            raise
        previous = rundir.latest_checkpoint(run_dir)
        raise OpenLLMError(
            f"could not write checkpoint step {step} in {root} ({disk_full_reason(exc)}); "
            + (f"the previous checkpoint {previous.name} is intact; " if previous else "no checkpoint was kept; ")
            + DISK_FULL_HINT
            + " (it resumes from the last checkpoint)"
        ) from exc
    if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
        old = root / f"{rundir.TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(root)
    if keep_last:
        ckpts = rundir.list_checkpoints(run_dir)
        keep = set(ckpts[-keep_last:])
        for p in ckpts:
            if p not in keep and rundir.step_of(p) not in (protect or set()):
                shutil.rmtree(p, ignore_errors=True)
    return final


def load_state(ckpt: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint; a missing or damaged one is :class:`CheckpointDamaged` naming it."""
    path = Path(ckpt) / rundir.STATE
    if not path.is_file():
        raise OpenLLMError(f"{ckpt} is not a checkpoint (no state.json)")
    try:
        state = load_json(path, what="checkpoint state")
    except OpenLLMError as exc:
        raise CheckpointDamaged(str(exc)) from exc
    if not isinstance(state.get("step"), int) or isinstance(state.get("step"), bool):
        raise CheckpointDamaged(
            f"{path}: 'step' must be an integer, found {state.get('step')!r}: the file is "
            f"damaged; resume from an earlier checkpoint"
        )
    return state


def verify_checkpoint(ckpt: str | Path, *, optimizer: bool = True) -> dict[str, Any]:
    """Check a checkpoint's files against the sizes and checksums its ``state.json`` recorded; returns the
    state. Checkpoints written before checksums existed are checked for presence only."""
    ckpt = Path(ckpt)
    state = load_state(ckpt)
    names = [rundir.WEIGHTS] + ([rundir.OPTIMIZER] if optimizer else [])
    recorded = state.get("files")
    if not isinstance(recorded, dict):
        recorded = {}
    for name in names:
        path = ckpt / name
        if not path.is_file():
            raise CheckpointDamaged(
                f"{path} is missing: the checkpoint is incomplete; resume from an earlier "
                f"checkpoint or start the run again"
            )
        want = recorded.get(name)
        if not isinstance(want, dict):
            continue
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointDamaged(
                f"{path} is damaged ({size:,} bytes, {want.get('bytes'):,} were written); "
                f"resume from an earlier checkpoint"
            )
        if sha256_file(path) != want.get("sha256"):
            raise CheckpointDamaged(
                f"{path} is damaged (its sha256 differs from the one written); resume from an earlier checkpoint"
            )
    return state


def latest_intact_checkpoint(run_dir: str | Path, *, warn: Any = None) -> Path | None:
    """The newest checkpoint whose files verify; each damaged newer one is reported through ``warn(message)``."""
    for ckpt in reversed(rundir.list_checkpoints(run_dir)):
        try:
            verify_checkpoint(ckpt)
        except CheckpointDamaged as exc:
            if warn is not None:
                warn(f"skipping {ckpt.name}: {exc}")
            continue
        return ckpt
    return None


def load_optimizer_state(ckpt: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``optimizer.pt`` read with ``weights_only=True``; a damaged file is :class:`CheckpointDamaged`."""
    path = Path(ckpt) / rundir.OPTIMIZER
    if not path.is_file():
        raise CheckpointDamaged(
            f"{path} is missing: this checkpoint cannot be resumed (its weights can still "
            f"be exported or evaluated); resume from an earlier checkpoint"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        raise CheckpointDamaged(
            f"{path} cannot be read ({type(exc).__name__}): the file is damaged; resume from an earlier checkpoint"
        ) from exc


# --- a checkpoint as the dict of its components -------------------------------------------------------------


class Stateful(Protocol):
    """A checkpoint component: it gives its state and takes it back (torch's ``state_dict`` convention)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class ModelWeights:
    """A model's weights as the checkpoint's ``model`` component (``model.safetensors``): the full state dict
    (a collective under FSDP2), without a tied output head, as contiguous CPU tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        from .distributed import full_model_state

        sd = full_model_state(self.model)
        if getattr(getattr(self.model, "cfg", None), "tie_embeddings", False):
            sd.pop("lm_head.weight", None)
        return {k: v.contiguous() for k, v in sd.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from .distributed import load_full_state

        load_full_state(self.model, None, state, None)


# Where each component's state is written: tensors into optimizer.pt (read back with weights_only=True), the
# model into model.safetensors, everything else into state.json under its own name, except PROGRESS, whose keys
# (step, tokens_seen, best_val_loss, ...) sit at state.json's top level, where every reader has found them.
TENSOR_PARTS = frozenset({"optimizer", "scaler", "lora"})
MODEL = "model"
PROGRESS = "progress"


class Checkpointer:
    """A run's checkpoints as the dict of its components (``name -> Stateful``), after torchtitan's
    ``CheckpointManager``: :meth:`save` asks every component for its ``state_dict()`` and writes them with
    :func:`save_checkpoint`; :meth:`load` gives each its part back. Only ``writer`` (rank 0) writes, but every
    rank calls :meth:`save`, since gathering a sharded optimizer or every rank's RNG is a collective."""

    def __init__(
        self,
        run_dir: str | Path,
        components: Mapping[str, Stateful],
        *,
        writer: bool = True,
        keep_last: int | None = None,
    ) -> None:
        self.run_dir, self.components = Path(run_dir), dict(components)
        self.writer, self.keep_last = writer, keep_last
        self.step: int | None = None  # of the checkpoint last saved or loaded
        self.last: Path | None = None  # the checkpoint last written (by the writer)

    def save(self, step: int, facts: Mapping[str, Any], *, protect: set[int] | None = None) -> Path | None:
        """Checkpoint ``step``: every component's state, plus ``facts`` (what ``state.json`` records about the
        run: config, data, time...). Returns its folder (None on ranks that do not write)."""
        parts = {name: c.state_dict() for name, c in self.components.items()}
        self.step = step
        if not self.writer:
            return None
        weights = parts.pop(MODEL)
        # an empty state (the scaler of a run without fp16) is written as None, as it always was
        tensors = {name: parts.pop(name) or None for name in list(parts) if name in TENSOR_PARTS}
        state = {**parts.pop(PROGRESS, {}), **parts, **facts}
        self.last = save_checkpoint(
            self.run_dir, step, weights, tensors, state, keep_last=self.keep_last, protect=protect or set()
        )
        return self.last

    def load(self, ckpt: str | Path, state: Mapping[str, Any] | None = None) -> None:
        """Give every component but the model its part of checkpoint ``ckpt`` (``state``: its state.json, when
        already read). The model's weights are loaded where it is built, before it is moved, compiled and
        wrapped. A part saved empty (None) leaves its component as built; a missing part is an error."""
        state = dict(state) if state is not None else load_state(ckpt)
        wanted = [name for name in self.components if name != MODEL]
        tensors = load_optimizer_state(ckpt) if any(n in TENSOR_PARTS for n in wanted) else {}
        parts = {**_upgrade(state), **tensors, PROGRESS: state}
        for name in wanted:
            if name not in parts:
                raise CheckpointDamaged(
                    f"{ckpt} holds no {name!r} state, which this run needs: resume it the way it was started, "
                    f"or from another checkpoint"
                )
            if parts[name] is not None:
                try:
                    self.components[name].load_state_dict(parts[name])
                except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
                    # a part whose file is intact but was written for another model or run (torch raises these)
                    raise CheckpointDamaged(
                        f"{ckpt}: its {name!r} state does not fit this run ({type(exc).__name__}: "
                        f"{_first_line(exc)}): resume from another checkpoint, or train into another --out folder"
                    ) from exc
        self.step = int(state["step"])


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """``state.json`` of a checkpoint written before the schedule had a state of its own: it had scheduled
    ``step`` updates."""
    if "scheduler" not in state:
        state = {**state, "scheduler": {"steps": int(state["step"])}}
    return state
