"""AdamW with weight-decay groups, and the learning-rate schedules (warmup + cosine, warmup-stable-decay,
constant).

Weight decay applies to the matrices of every matmul (attention, MLP and the output head, which is the token
embedding when the two are tied). It does not apply to RMSNorm gains or biases (scale parameters, which decay
would pull towards zero rather than regularise), nor to an *untied* input embedding (a lookup table whose
rows only get gradient when their token appears: decay would shrink rare tokens' rows every step).
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn

from .config import TrainConfig

__all__ = ["param_groups", "build_optimizer", "lr_at"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``decay`` (matmul weights) and ``no_decay`` (norms, biases, untied input embedding)."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():  # shared (tied) tensors are listed once
        if not p.requires_grad or id(p) in seen:
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


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device | str) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`, fused where the build supports it for this device."""
    device = torch.device(device)
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and _fused_ok(model, device):
        kwargs["fused"] = True
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), **kwargs)


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
