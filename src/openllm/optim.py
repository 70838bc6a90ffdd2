"""Optimizers (AdamW, or Muon for the blocks' matrices plus AdamW for the rest) and the learning-rate
schedules (warmup + cosine, warmup-stable-decay, constant).

AdamW weight decay applies to the matrices of every matmul (attention, MLP and the output head, which is the
token embedding when the two are tied). It does not apply to RMSNorm gains or biases (scale parameters, which
decay would pull towards zero rather than regularise), nor to an *untied* input embedding (a lookup table
whose rows only get gradient when their token appears: decay would shrink rare tokens' rows every step).

``train.optimizer = "muon"``: PyTorch's own ``torch.optim.Muon`` (Newton-Schulz orthogonalised Nesterov
momentum, Keller Jordan's coefficients and shape scaling) updates the hidden matrices, the attention and MLP
weights of every block; AdamW as above updates the embeddings, the output head and the norms. Two
refinements on top of ``torch.optim.Muon``'s own step, both needed by this model's layout:

- the fused projections (``wqkv``, ``w13``) are orthogonalised part by part (q, k, v; gate, up), as the
  separate matrices of the exported Llama would be;
- under FSDP2 a matrix is a DTensor sharded by rows: its update is gathered to the full matrix,
  orthogonalised whole (on every rank, identically), and each rank keeps its own rows.

:class:`MuonAdamW` holds both as one ``torch.optim.Optimizer`` (one ``param_groups`` list, one ``state``),
so checkpoints, ``torch.distributed.checkpoint``'s full state dicts and exact resume work unchanged. Each
group carries ``lr_scale``: its learning rate is ``lr_scale`` times the schedule's (:func:`set_lr`).
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from typing import Any

import torch
import torch.nn as nn

from .config import TrainConfig

__all__ = [
    "param_groups",
    "muon_param_names",
    "build_optimizer",
    "set_lr",
    "lr_at",
    "LRSchedule",
    "Muon",
    "MuonAdamW",
]


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] | None = None) -> list[dict]:
    """Two groups: ``decay`` (matmul weights) and ``no_decay`` (norms, biases, untied input embedding).
    Parameters whose ``id`` is in ``exclude`` are left out (Muon takes them)."""
    exclude = exclude or set()
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():  # shared (tied) tensors are listed once
        if not p.requires_grad or id(p) in seen or id(p) in exclude:
            continue
        seen.add(id(p))
        if p.dim() >= 2 and (id(p) in linear_ids or id(p) not in embedding_ids):
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def _muon_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor, list[int]]]:
    """(name, weight, row split) of every matmul inside the blocks: attention's wqkv and wo, the MLP's w13
    and w2. The split gives the row counts of the fused parts (q, k, v; gate, up), [rows] if not fused."""
    out: list[tuple[str, torch.Tensor, list[int]]] = []
    for block_name, block in model.named_children():
        if block_name != "layers":
            continue
        for name, mod in block.named_modules():
            if not isinstance(mod, nn.Linear) or not mod.weight.requires_grad:
                continue
            rows = mod.weight.shape[0]
            split = [rows]
            leaf = name.rsplit(".", 1)[-1]
            # the module holding the matmul, read by its attributes (model.Attention, model.SwiGLU)
            parent: Any = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
            if leaf == "wqkv" and hasattr(parent, "n_kv_heads"):
                hd = parent.head_dim
                split = [parent.n_heads * hd, parent.n_kv_heads * hd, parent.n_kv_heads * hd]
            elif leaf == "w13" and hasattr(parent, "d_ff"):
                split = [parent.d_ff, parent.d_ff]
            out.append((f"layers.{name}.weight", mod.weight, split))
    return out


def muon_param_names(model: nn.Module) -> list[str]:
    """Names of the parameters ``train.optimizer = "muon"`` gives to Muon (the rest go to AdamW)."""
    return [name for name, _, _ in _muon_matrices(model)]


def _zeropower_batched(x: torch.Tensor, coeffs: tuple[float, float, float], steps: int, eps: float) -> torch.Tensor:
    """``torch.optim._muon._zeropower_via_newtonschulz`` on a stack of same-shaped matrices (n, rows, cols):
    the same arithmetic (bf16, Frobenius normalisation, quintic iteration with ``coeffs``, wide orientation),
    one batched matmul per stage instead of one small matmul per matrix."""
    a, b, c = coeffs
    y = x.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        y = y.mT
    y = y / y.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.mT
        y = torch.baddbmm(y, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    return y.mT if tall else y


_COMPILED: dict = {}


def _batched_ns(device: torch.device):
    """:func:`_zeropower_batched`, compiled on CUDA (its small matmuls' neighbours fuse, fewer launches)."""
    if device.type != "cuda":
        return _zeropower_batched
    if "ns" not in _COMPILED:
        _COMPILED["ns"] = torch.compile(_zeropower_batched, dynamic=False)
    return _COMPILED["ns"]


class Muon(torch.optim.Muon):
    """``torch.optim.Muon`` (its hyperparameters, state and update rule) whose step orthogonalises each fused
    matrix part by part (``splits``: parameter -> row counts), gathers FSDP2-sharded (DTensor) matrices before
    orthogonalising them, and runs the Newton-Schulz iteration on all same-shaped parts at once."""

    def __init__(self, params, *, splits: dict | None = None, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.splits = splits or {}

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            todo = []  # (param, its update, its parts)
            by_shape: dict = {}  # (shape, device) -> [(index in todo, part number, part)]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - mom)
                update = grad.lerp(buf, mom) if group["nesterov"] else buf
                full = update.full_tensor() if hasattr(update, "full_tensor") else update
                parts = list(full.split(self.splits.get(p, [full.shape[0]]), dim=0))
                for j, part in enumerate(parts):
                    by_shape.setdefault((tuple(part.shape), part.device), []).append((len(todo), j, part))
                todo.append((p, update, parts))
            for (shape, device), items in by_shape.items():
                stacked = torch.stack([part for _, _, part in items])
                ortho = _batched_ns(device)(stacked, group["ns_coefficients"], group["ns_steps"], group["eps"])
                # the shape scaling of each part, relative to the lr applied below
                ortho = ortho * _adjust_lr(1.0, group["adjust_lr_fn"], torch.Size(shape))
                for (i, j, _), o in zip(items, ortho.unbind(0)):
                    todo[i][2][j] = o
            for p, update, parts in todo:
                ortho = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
                if hasattr(update, "full_tensor"):
                    from torch.distributed.tensor import DTensor, Replicate

                    # every rank holds the same full update: keeping its own rows needs no communication
                    ortho = DTensor.from_local(
                        ortho, update.device_mesh, [Replicate()] * update.device_mesh.ndim, run_check=False
                    ).redistribute(update.device_mesh, update.placements)
                p.mul_(1 - lr * wd)
                p.add_(ortho.to(p.dtype), alpha=-lr)
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices and AdamW for the rest, as one optimizer.

    ``param_groups`` is Muon's groups followed by AdamW's (the same dicts), and both share this object's
    ``state``, so ``state_dict``/``load_state_dict`` (and the distributed checkpoint helpers that call them)
    see one ordinary optimizer."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, {})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups = self.param_groups[:n]
        self.adamw.param_groups = self.param_groups[n:]
        self.muon.state = self.state
        self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if not isinstance(self.state, defaultdict):
            self.state = defaultdict(dict, self.state)
        self._share()


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | str) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups` (fused where the build supports it for this device), or, for
    ``cfg.optimizer == "muon"``, :class:`MuonAdamW`. Every group has ``lr_scale`` (see :func:`set_lr`)."""
    device = torch.device(device)
    kwargs: dict[str, Any] = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and _fused_ok(model, device):
        kwargs["fused"] = True
    if cfg.optimizer != "muon":
        groups = param_groups(model, cfg.weight_decay)
        for g in groups:
            g["lr_scale"] = 1.0
        return torch.optim.AdamW(groups, **kwargs)
    matrices = _muon_matrices(model)
    groups = param_groups(model, cfg.weight_decay, exclude={id(p) for _, p, _ in matrices})
    for g in groups:
        g["lr_scale"] = 1.0
    adamw = torch.optim.AdamW(groups, **kwargs)
    muon = Muon(
        [{"params": [p for _, p, _ in matrices], "name": "muon", "lr_scale": cfg.muon_lr / cfg.lr}],
        lr=cfg.muon_lr,
        momentum=cfg.muon_momentum,
        weight_decay=cfg.muon_weight_decay,
        nesterov=True,
        splits={p: split for _, p, split in matrices if len(split) > 1},
    )
    return MuonAdamW(muon, adamw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr`` times its ``lr_scale`` (1 where a group has none)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


class LRSchedule:
    """The learning-rate schedule as a checkpoint component: :meth:`step` sets the learning rate of the next
    update (:func:`lr_at` through :func:`set_lr`) and counts it. Its state is that count; the curve comes from
    the config, so a resumed run given a new ``max_steps`` follows the new curve from where it stopped."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> None:
        self.optimizer, self.cfg = optimizer, cfg
        self.steps = 0  # updates scheduled so far

    def step(self) -> float:
        """Set every group's learning rate for update number ``steps`` (0-based) and return the schedule's."""
        lr = lr_at(self.steps, self.cfg)
        set_lr(self.optimizer, lr)
        self.steps += 1
        return lr

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])


def _fused_ok(model: nn.Module, device: torch.device) -> bool:
    if device.type not in ("cuda", "cpu", "xpu", "mps"):
        return False
    # fused AdamW needs every parameter as a plain float tensor of one device (DTensors from FSDP2 are fine)
    return all(p.is_floating_point() for p in model.parameters())


def lr_at(step: int, cfg: TrainConfig, max_steps: int | None = None) -> float:
    """Learning rate for optimizer update number ``step`` (0-based).

    - warmup: linear from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` updates;
    - ``cosine``: then half a cosine from ``lr`` down to ``min_lr`` at ``max_steps``;
    - ``wsd`` (warmup-stable-decay): ``lr`` until the last ``decay_fraction`` of the run, then linear to
      ``min_lr``;
    - ``constant``: ``lr`` after warmup.

    Muon's groups follow the same curve scaled by ``muon_lr / lr`` (:func:`set_lr`).
    """
    total = max_steps or cfg.max_steps
    lr = cfg.lr
    min_lr = cfg.min_lr if cfg.min_lr is not None else lr / 10
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "wsd":
        decay_steps = int(round(cfg.decay_fraction * total))
        decay_start = total - decay_steps
        if step < decay_start or decay_steps == 0:
            return lr
        frac = min(1.0, (step - decay_start + 1) / decay_steps)
        return lr + frac * (min_lr - lr)
    # cosine
    span = max(1, total - cfg.warmup_steps)
    frac = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (lr - min_lr)
