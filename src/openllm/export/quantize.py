"""Dynamic int8 quantization for CPU inference.

Two routes, same idea (weights stored as int8 with a per-row scale, activations quantized on the fly):

- :func:`quantize_int8` — PyTorch's ``quantize_dynamic`` on every ``nn.Linear`` (attention, MLP, output head);
  the embedding and the norms stay fp32. The result is still our ``Transformer``, so ``openllm.generate``
  works on it unchanged.
- :func:`quantize_onnx_int8` — onnxruntime's ``quantize_dynamic`` on an ONNX export's ``model.onnx`` (MatMul
  weights to int8).

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
    if target.cfg.tie_embeddings:
        # the head shares the embedding matrix; give it its own copy so quantizing the head leaves the
        # (fp32) embedding lookup exact
        target.lm_head.weight = nn.Parameter(target.tok_embeddings.weight.detach().clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(target, {nn.Linear}, dtype=torch.qint8, inplace=True)


def quantize_onnx_int8(folder: str | Path, *, which: str = "model") -> Path:
    """Write ``model.int8.onnx`` beside an ONNX export's graph; returns it. (``which`` names the graph in
    ``onnx_config.json``'s ``files``; exports made before the single graph also had ``forward``/``with_past``.)"""
    import json

    from ..errors import require

    require("onnxruntime", "export", what="ONNX int8 quantization")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(folder)
    files = json.loads((folder / "onnx_config.json").read_text(encoding="utf-8"))["files"]
    src = folder / (files.get(which) or files.get("model") or files[which])
    dst = src.with_name(src.stem + ".int8.onnx")
    # the export keeps each weight once, behind Transpose nodes (a tied embedding feeds both Gather and the
    # head); quantize_dynamic only sees MatMuls whose weight is a constant, so fold the transposes first
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        folded = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        quantize_dynamic(str(folded), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    return dst
