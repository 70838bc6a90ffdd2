"""Multi-process training through PyTorch's own engines, started by ``torchrun``.

- DDP (default): every rank holds the whole model; gradients are averaged once per optimizer step
  (``no_sync`` during gradient accumulation, so there is no redundant all-reduce).
- FSDP2 (``train.distributed = "fsdp"``): ``torch.distributed.fsdp.fully_shard`` on every block and on the
  root; parameters, gradients and optimizer state are sharded across ranks.

Backend: nccl on GPUs, gloo on CPU. One process is the plain single-device path, nothing initialised.
Several nodes (``torchrun --nnodes N`` with c10d rendezvous, or ``srun torchrun`` under Slurm) are the same
path: a process's device is chosen by its LOCAL_RANK on its node, everything else by its global RANK; global
rank 0 alone writes the run folder, which every node must see (a shared filesystem), since every rank reads
the checkpoint it resumes from.
Checkpoints always hold *full* (unsharded) state dicts keyed by parameter name, so a run saved with FSDP on
8 GPUs resumes in one process and the other way round.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.distributed as dist
import torch.nn as nn

from .device import resolve_device

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistInfo",
    "init_distributed",
    "shutdown",
    "wrap_model",
    "no_grad_sync",
    "all_reduce",
    "gather_objects",
    "first_error",
    "differing",
    "any_rank",
    "full_state",
    "full_model_state",
    "FullOptimizerState",
    "load_full_state",
]


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    mode: str = "single"  # single | ddp | fsdp
    local_world_size: int = 1  # processes on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def nodes(self) -> int:
        """Nodes the run spans (torchrun starts the same number of processes on each)."""
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _pick_device(requested: str | None, local_rank: int) -> torch.device:
    dev = torch.device(resolve_device(requested))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def init_distributed(device: str | None = None, mode: str = "ddp") -> DistInfo:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE) and start the process group when there is
    more than one process; pick the device (:func:`openllm.device.resolve_device`; a CUDA device without an
    index becomes ``cuda:LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # the device index on this node, not RANK
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(device=dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(minutes=30)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistInfo(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        device=dev,
        backend=backend,
        mode=mode,
        local_world_size=local_world,
    )


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """DDP or FSDP2 around ``model`` (already on ``info.device``); unchanged for a single process."""
    if not info.enabled:
        return model
    if info.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model, "layers", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


@contextlib.contextmanager
def no_grad_sync(model: nn.Module, info: DistInfo, sync: bool) -> Iterator[None]:
    """Inside, backward() does not reduce gradients across ranks unless ``sync`` (the last micro-step)."""
    # the model is the one wrap_model() returned: fully_shard's FSDPModule under FSDP, else DDP
    if not info.enabled or sync:
        if info.mode == "fsdp" and info.enabled:
            cast("FSDPModule", model).set_requires_gradient_sync(True)
        yield
        return
    if info.mode == "fsdp":
        cast("FSDPModule", model).set_requires_gradient_sync(False)
        yield
        return
    with cast("DistributedDataParallel", model).no_sync():
        yield


def all_reduce(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def first_error(message: str | None, info: DistInfo) -> str | None:
    """The error message of the lowest rank that has one, or None when no rank has: a collective every rank
    must call. A check that fails on one rank only (rank 0's run lock, one rank's memory) thereby ends every
    rank with the same message, instead of leaving the others waiting in their next collective."""
    if not info.enabled:
        return message
    return next((m for m in gather_objects(message, info) if m), None)


def differing(value: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``value`` when they are not all equal, else None: a collective every rank must call. What
    every process must agree on (the checkpoint it resumes from, on nodes that may not share a filesystem)."""
    if not info.enabled:
        return None
    values = gather_objects(value, info)
    return values if any(v != values[0] for v in values) else None


def any_rank(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` is true on any rank (a collective every rank must call)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    all_reduce(t, info, op="max")
    return bool(t.item() > 0)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state dicts on CPU, keyed by parameter name. A collective under
    FSDP: every rank must call it."""
    return full_model_state(model), FullOptimizerState(model, optimizer).state_dict()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict on CPU. A collective under FSDP: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return cast(dict[str, torch.Tensor], state)  # full_state_dict: every value is a plain tensor


class FullOptimizerState:
    """An optimizer (AdamW or :class:`openllm.optim.MuonAdamW`) as a checkpoint component: its state keyed by
    parameter name and full (unsharded), on CPU, so a checkpoint saved by N ranks under DDP or FSDP2 resumes
    in any number of processes. Both methods are collectives under FSDP: every rank must call them."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, self.optimizer, options=opts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # torch copies a per-parameter state of another shape without a word, and the fused AdamW step then
        # reads past it (a segfault): refuse it here, naming the parameter
        params = dict(self.model.named_parameters())
        per_param = state.get("state") if isinstance(state, dict) else None
        for name, values in (per_param or {}).items():
            param = params.get(name)
            if param is None or not isinstance(values, dict):
                continue
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"{name}'s {key} has shape {tuple(value.shape)}, the parameter {tuple(param.shape)}"
                    )
        load_full_state(self.model, self.optimizer, None, state)


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict | None, optim_sd: dict | None
) -> None:
    """Inverse of :func:`full_state` (every rank passes the full dicts it read from the checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, strict=False)
    if model_sd is not None:
        set_model_state_dict(model, model_sd, options=opts)
    if optimizer is not None and optim_sd is not None:
        set_optimizer_state_dict(model, optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))
