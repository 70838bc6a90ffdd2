"""Optional fused training kernels, switched on per run (``train.fused_loss``, ``train.fused_ops``).

- ``fused_loss = "chunked"``: :class:`ChunkedLinearCrossEntropy`, the output head and the cross-entropy in
  row chunks, in plain PyTorch. The full (tokens x vocab) logits never exist, in fp32 or otherwise: each chunk's
  logits live only while its loss and its gradients (with respect to the hidden states and the head) are
  computed, during the forward pass. Runs anywhere, CPU included.
- ``fused_loss = "liger"``: Liger Kernel's Triton ``LigerFusedLinearCrossEntropyFunction`` (same idea).
- ``fused_ops = True``: Liger Kernel's Triton RMSNorm and SiLU-times-up kernels in place of the eager ones.

Liger paths need CUDA and the ``liger-kernel`` package; :func:`apply_kernels` refuses them elsewhere with a
one-line error. Nothing here changes the weights or their names: a model trained with any of these exports
exactly as one trained without.
"""

from __future__ import annotations

import types

import torch
import torch.nn as nn

from .errors import OpenLLMError

try:  # optional, CUDA only (pip install liger-kernel): the Triton kernels behind train.fused_loss=liger / fused_ops
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
except ImportError:
    LigerFusedLinearCrossEntropyFunction = LigerRMSNormFunction = LigerSiLUMulFunction = None

__all__ = ["ChunkedLinearCrossEntropy", "chunked_linear_cross_entropy", "liger_linear_cross_entropy", "apply_kernels"]


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T`` against ``target`` (rows equal to ``ignore_index`` are left out),
    computed ``chunk`` rows at a time in ``dtype``, with the log-sum-exp in fp32. The gradients are formed in
    the forward pass, so nothing of vocabulary width is kept for the backward."""

    @staticmethod
    def forward(ctx, x, weight, target, ignore_index: int, chunk: int, dtype):
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            valid = target != ignore_index
            n_valid = valid.sum().clamp(min=1).to(torch.float32)
            safe = torch.where(valid, target, torch.zeros_like(target))
            loss = torch.zeros((), dtype=torch.float32, device=x.device)
            need = ctx.needs_input_grad
            gx = torch.empty_like(x) if need[0] else None
            gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need[1] else None
            for s in range(0, x.shape[0], chunk):
                xs, ts, vs = xc[s : s + chunk], safe[s : s + chunk], valid[s : s + chunk]
                logits = (xs @ wc.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, ts[:, None]).squeeze(1)
                loss = loss + ((lse - picked) * vs).sum()
                if gx is None and gw is None:
                    continue
                # d(mean loss)/d(logits) = (softmax - one_hot) / n_valid on the rows that count
                g = (logits - lse[:, None]).exp_()
                g.scatter_add_(1, ts[:, None], torch.full_like(picked[:, None], -1.0))
                g.mul_((vs.to(torch.float32) / n_valid)[:, None])
                g = g.to(dtype)
                if gx is not None:
                    gx[s : s + chunk] = (g @ wc).to(x.dtype)
                if gw is not None:
                    gw.add_((g.t() @ xs).float())
            ctx.save_for_backward(gx if gx is not None else torch.empty(0), gw if gw is not None else torch.empty(0))
            ctx.weight_dtype = weight.dtype
            return loss / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        gx, gw = ctx.saved_tensors
        need = ctx.needs_input_grad
        return (
            gx * grad_out if need[0] else None,
            (gw * grad_out).to(ctx.weight_dtype) if need[1] else None,
            None,
            None,
            None,
            None,
        )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def chunked_linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int = -100, chunk: int = 4096
) -> torch.Tensor:
    """``F.cross_entropy((x @ weight.T).float(), target)`` without the full logits; ``x`` is (..., H)."""
    x2 = x.reshape(-1, x.shape[-1])
    return ChunkedLinearCrossEntropy.apply(x2, weight, target.reshape(-1), ignore_index, chunk, _compute_dtype(x))


# torch.compile cannot trace Liger's kernels (their host code reads tensors and passes dtypes where FakeTensors
# go): they run eagerly between compiled graphs
@torch.compiler.disable
def liger_linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """The same loss through Liger Kernel's fused Triton implementation (CUDA)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = LigerFusedLinearCrossEntropyFunction.apply(x2, weight, target.reshape(-1), None, None, ignore_index)
    return out[0] if isinstance(out, tuple) else out


@torch.compiler.disable
def _liger_rms_forward(self, x):
    if not self.training or not torch.is_grad_enabled() or x.device.type != "cuda":
        return type(self).forward(self, x)
    return LigerRMSNormFunction.apply(x, self.weight, self.eps, 0.0, "llama", False)


@torch.compiler.disable
def _liger_silu_mul(gate, up):
    return LigerSiLUMulFunction.apply(gate, up)


def _liger_swiglu_forward(self, x):
    if not self.training or not torch.is_grad_enabled() or x.device.type != "cuda":
        return type(self).forward(self, x)
    gate, up = self.w13(x).split(self.d_ff, dim=-1)
    return self.w2(_liger_silu_mul(gate, up))


def apply_kernels(
    model: nn.Module, fused_loss: str = "off", fused_ops: bool = False, device: torch.device | str = "cpu"
) -> nn.Module:
    """Switch ``model`` (a :class:`openllm.model.Transformer`) to the fused paths asked for, in place.

    The loss hook is ``model.loss_fn`` (used by ``Transformer.forward`` when it computes a loss without
    returning logits); RMSNorm and SwiGLU get their ``forward`` replaced on the instances, so the eager paths
    (inference, export, CPU) stay as they were."""
    device = torch.device(device)
    needs_liger = fused_loss == "liger" or fused_ops
    if needs_liger:
        if device.type != "cuda":
            raise OpenLLMError(
                f"train.fused_loss=liger and train.fused_ops need a CUDA GPU (this run is on "
                f"{device.type}): use train.fused_loss=chunked, or leave them off"
            )
        if LigerSiLUMulFunction is None:
            raise OpenLLMError(
                "train.fused_loss=liger / train.fused_ops need the liger-kernel package: "
                "pip install liger-kernel, or leave them off"
            )
    # torch's stubs type Module.__setattr__ as taking tensors and modules only; a module takes any attribute
    if fused_loss == "chunked":
        model.loss_fn = chunked_linear_cross_entropy  # type: ignore[assignment]
    elif fused_loss == "liger":
        model.loss_fn = liger_linear_cross_entropy  # type: ignore[assignment]
    else:
        model.loss_fn = None  # type: ignore[assignment]
    if fused_ops:
        from .model import RMSNorm, SwiGLU

        for m in model.modules():
            if isinstance(m, RMSNorm):  # this instance's forward becomes the fused kernel's
                m.forward = types.MethodType(_liger_rms_forward, m)  # type: ignore[method-assign]
            elif isinstance(m, SwiGLU):
                m.forward = types.MethodType(_liger_swiglu_forward, m)  # type: ignore[method-assign]
    return model
