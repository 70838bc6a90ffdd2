"""ONNX export in Hugging Face Optimum's layout, for onnxruntime and ``optimum``'s ``ORTModelForCausalLM``.

One graph, so the weights are stored once:

- ``model.onnx``: the decoder with past key values, under the name and with the inputs Optimum loads by
  default. Inputs ``input_ids`` (batch, new), ``attention_mask`` (batch, past + new; 1 = real token,
  0 = left padding), ``position_ids`` (batch, new) and, per layer, ``past_key_values.N.key`` / ``.value``
  (batch, kv_heads, past, head_dim); outputs ``logits`` (batch, new, vocab) and ``present.N.key`` / ``.value``
  (past + new). Past length 0 is the prompt pass (and the plain forward pass: scoring, evaluation). Models
  whose weights exceed protobuf's 2 GB keep them beside the graph (``model.onnx_data``).
- ``config.json`` (a Llama config, so Optimum and transformers know the model type), ``generation_config.json``
  and the tokenizer files, as in the Hugging Face export;
- ``onnx_config.json``: shapes, the graph's file name and our full config, for :class:`OnnxRunner`.

:class:`OnnxRunner` is the greedy/sampling loop over the graph (tests and benchmarks use it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OpenLLMError, require

__all__ = ["export_onnx", "OnnxRunner", "MODEL_FILE", "past_names"]

MODEL_FILE = "model.onnx"  # Optimum's ONNX_WEIGHTS_NAME
OPSET = 18


def _wrappers(model):
    import torch.nn as nn

    from ..kvcache import PastCache

    class WithPast(nn.Module):
        """The model's one forward with its keys/values as plain tensors in and out (a
        :class:`openllm.kvcache.PastCache`), so that the graph has plain tensor inputs and outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past: list):
            cache = PastCache(past, attention_mask, position_ids)
            logits = self.model(input_ids, cache=cache)
            return (logits, *cache.present)

    return WithPast().eval()


def past_names(n_layers: int) -> tuple[list[str], list[str]]:
    ins, outs = [], []
    for i in range(n_layers):
        ins += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outs += [f"present.{i}.key", f"present.{i}.value"]
    return ins, outs


def export_onnx(loaded, out: Path) -> Path:
    """Write ``model.onnx``, ``config.json``, ``generation_config.json``, ``onnx_config.json`` and the tokenizer
    files (see the module docstring)."""
    require("onnx", "export", what="ONNX export")
    import torch

    from ..hf_compat import llama_config_dict
    from .hf import generation_config, special_ids
    from .shared import write_tokenizer_files

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = loaded.model.float().to("cpu").eval()
    c = model.cfg
    with_past = _wrappers(model)
    B, T, P = 2, 5, 3
    # weights above ~1.8 GB cannot live inside one protobuf: keep them beside the graph then
    external = sum(p.numel() for p in model.parameters()) * 4 > 1.8e9
    ids = torch.randint(0, c.vocab_size, (B, T))
    past = [torch.randn(B, c.n_kv_heads, P, c.head_dim) for _ in range(2 * c.n_layers)]
    mask = torch.ones(B, P + T, dtype=torch.long)
    pos = torch.arange(P, P + T)[None].expand(B, T).contiguous()
    in_names, out_names = past_names(c.n_layers)
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        **{n: {0: "batch", 2: "past_sequence"} for n in in_names},
        **{n: {0: "batch", 2: "total_sequence"} for n in out_names},
    }
    _export(
        with_past,
        (ids, mask, pos, past),
        out / MODEL_FILE,
        ["input_ids", "attention_mask", "position_ids", *in_names],
        ["logits", *out_names],
        axes,
        external,
        c.max_seq_len,
    )

    ids_ = special_ids(loaded)
    _write_json(out / "config.json", {**llama_config_dict(c, **ids_), "use_cache": True})
    _write_json(out / "generation_config.json", generation_config(loaded))
    meta = {
        "format": "onnx",
        "opset": OPSET,
        "n_layers": c.n_layers,
        "n_kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_seq_len": c.max_seq_len,
        "files": {"model": MODEL_FILE},
        "eos_token_id": getattr(loaded.tokenizer, "eos_id", None),
        "config": loaded.config.to_dict(),
    }
    _write_json(out / "onnx_config.json", meta)
    write_tokenizer_files(loaded, out)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _export(
    module, args, path: Path, inputs: list[str], outputs: list[str], axes: dict, external: bool, max_len: int
) -> None:
    """The TorchScript exporter first (seconds; tracing suffices since the graph has no data-dependent
    branches), torch.export's exporter when that one is gone or fails (much slower, same graph)."""
    import torch

    with torch.no_grad(), _quiet():
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                # folding would store a transposed second copy of a tied embedding;
                # onnxruntime folds the transposes in memory when it loads the graph
                do_constant_folding=False,
            )
            return
        except Exception:
            if path.exists():
                path.unlink()
        require("onnxscript", "export", what="ONNX export with torch.export's exporter")
        dims: dict[str, object] = {}

        def dim(name: str, lo: int):
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=lo, max={"batch": 1024}.get(name, max_len))
            return dims[name]

        shapes: dict[str, Any] = {}
        for n in inputs:
            spec = {k: dim(v, 0 if v == "past_sequence" else 1) for k, v in axes.get(n, {}).items()}
            shapes[n] = spec
        if len(args) > 1:  # the past list is one argument of the module
            shapes = {
                "input_ids": shapes["input_ids"],
                "attention_mask": shapes["attention_mask"],
                "position_ids": shapes["position_ids"],
                "past": [shapes[n] for n in inputs[3:]],
            }
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            external_data=external,
            dynamo=True,
        )


class _quiet:
    """torch.onnx prints progress lines; an export is one step of ours, so keep its chatter out."""

    def __enter__(self):
        import contextlib
        import io
        import warnings

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        import logging

        # torch.onnx logs a warning per missing torchvision op; none of them matter here
        log = logging.getLogger("torch.onnx")
        self._level = log.level
        log.setLevel(logging.ERROR)
        self._stack.callback(log.setLevel, self._level)
        return self

    def __exit__(self, *exc):
        return self._stack.__exit__(*exc)


class OnnxRunner:
    """onnxruntime sessions over an ONNX export: ``logits(ids)`` and ``generate(prompts, ...)`` (greedy when
    ``temperature == 0``; ragged prompts are left-padded, positions count real tokens only, as ours)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        file: str | None = None,
    ):
        require("onnxruntime", "export", what="running an ONNX export")
        import onnxruntime as ort

        folder = Path(folder)
        meta_file = folder / "onnx_config.json"
        if not meta_file.is_file():
            raise OpenLLMError(f"{folder} is not an ONNX export (no onnx_config.json)")
        self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
        files = self.meta.get("files", {})
        name = file or files.get("model") or files.get("with_past")  # "with_past": exports before one graph
        if not name or not (folder / name).is_file():
            raise OpenLLMError(
                f"{folder} has no ONNX graph {name!r}: export it again with `openllm export SOURCE --format onnx`"
            )
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = list(providers or ["CPUExecutionProvider"])
        self.folder = folder
        # the one onnxruntime session (``past``: the graph takes and returns past key values)
        self.session = self.past = ort.InferenceSession(str(folder / name), opts, providers=providers)

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        m = self.meta
        return {
            name: np.zeros((batch, m["n_kv_heads"], 0, m["head_dim"]), dtype=np.float32)
            for name in past_names(m["n_layers"])[0]
        }

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits of a batch of full sequences (the prompt pass with an empty past)."""
        ids = np.asarray(ids, dtype=np.int64)
        B, T = ids.shape
        feed = {
            "input_ids": ids,
            "attention_mask": np.ones((B, T), np.int64),
            "position_ids": np.tile(np.arange(T, dtype=np.int64), (B, 1)),
            **self.empty_past(B),
        }
        return self.past.run(["logits"], feed)[0]

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] = (),
        pad_id: int = 0,
        seed: int | None = None,
    ) -> list[list[int]]:
        """New tokens for each prompt, through ``openllm.generate``'s one decode loop and sampler: the same
        tokens as our model gives (greedy, and seeded sampling up to onnxruntime's rounding)."""
        import torch

        from ..generate import decode
        from ..sampling import SamplingParams

        m = self.meta
        params = SamplingParams(
            max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens
        )
        past = self.empty_past(len(prompts))

        def step(ids, mask, positions):
            nonlocal past
            feed = {
                "input_ids": ids.numpy(),
                "attention_mask": mask.numpy().astype(np.int64),
                "position_ids": positions.numpy(),
                **past,
            }
            res = self.past.run(None, feed)
            past = dict(zip(past, res[1:]))
            return torch.from_numpy(res[0][:, -1])

        outs: list[list[int]] = [[] for _ in prompts]
        try:
            for tokens in decode(
                step, prompts, params, vocab_size=m["vocab_size"], context=m["max_seq_len"], pad_id=pad_id
            ):
                for b, t in enumerate(tokens):
                    if t is not None:
                        outs[b].append(t)
        except ValueError as exc:
            raise OpenLLMError(str(exc)) from exc
        return outs
