"""Dynamic int8 quantization for CPU inference.

Two routes, same idea (weights stored as int8 with a per-row scale, activations quantized on the fly):

- :func:`quantize_int8` — PyTorch's ``quantize_dynamic`` on every ``nn.Linear`` (attention, MLP, output head);
  the embedding and the norms stay fp32. The result is still our ``Transformer``, so ``openllm.generate``
  works on it unchanged.
- :func:`quantize_onnx_int8` — onnxruntime's ``quantize_dynamic`` on an ONNX export (MatMul weights to int8).

``benchmarks/int8.py`` measures the speed-up and the change in validation loss.
"""
from __future__ import annotations

import copy
from pathlib import Path

__all__ = ["quantize_int8", "quantize_onnx_int8", "int8_engine"]


def int8_engine() -> str:
    """The quantized kernel backend to use on this CPU (fbgemm on x86 with AVX2, else qnnpack/onednn)."""
    import torch

    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "onednn", "qnnpack"):
        if name in engines:
            return name
    return engines[0]


def quantize_int8(model, *, inplace: bool = False):
    """An int8 dynamically-quantized copy of ``model`` (CPU only; fp32 embedding and norms)."""
    import warnings

    import torch
    import torch.nn as nn

    if next(model.parameters()).device.type != "cpu":
        raise ValueError("dynamic int8 quantization runs on the CPU: load the model with device='cpu'")
    torch.backends.quantized.engine = int8_engine()
    target = model if inplace else copy.deepcopy(model)
    target = target.float().eval()
    if hasattr(target, "drop_decode_copies"):
        target.drop_decode_copies()  # fp32 copies the quantized layers no longer need
    if target.cfg.tie_embeddings:
        # the head shares the embedding matrix; give it its own copy so quantizing the head leaves the
        # (fp32) embedding lookup exact
        target.lm_head.weight = nn.Parameter(target.tok_embeddings.weight.detach().clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_onnx_int8(folder: str | Path, *, which: str = "with_past") -> Path:
    """Write ``<graph>.int8.onnx`` beside an ONNX export's graph (``with_past`` or ``forward``); returns it."""
    import json

    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    meta = json.loads((folder / "onnx_config.json").read_text(encoding="utf-8"))
    src = folder / meta["files"][which]
    dst = src.with_name(src.stem + ".int8.onnx")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return dst
