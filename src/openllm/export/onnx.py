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

import numpy as np

from ..errors import OpenLLMError, require

__all__ = ["export_onnx", "OnnxRunner", "MODEL_FILE", "past_names"]

MODEL_FILE = "model.onnx"  # Optimum's ONNX_WEIGHTS_NAME
OPSET = 18


def _wrappers(model):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from ..model import apply_rope

    class WithPast(nn.Module):
        """The model's forward written out with explicit past keys/values (no cache object), so that the
        graph has plain tensor inputs and outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past: list):
            m = self.model
            B, T = input_ids.shape
            P = past[0].shape[2]
            cos = m.rope_cos[position_ids][:, None]
            sin = m.rope_sin[position_ids][:, None]
            q_pos = torch.arange(T, device=input_ids.device) + P
            k_pos = torch.arange(P + T, device=input_ids.device)
            causal = k_pos[None, :] <= q_pos[:, None]  # (T, P+T)
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
            # a padding query would see no key at all (NaN): let it see itself, as the model does
            mask = mask | (k_pos[None, :] == q_pos[:, None])[None, None]
            x = m.tok_embeddings(input_ids)
            present = []
            for i, layer in enumerate(m.layers):
                a = layer.attn
                h = layer.attn_norm(x)
                q, k, v = a.wqkv(h).split(
                    [a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim, a.n_kv_heads * a.head_dim], dim=-1
                )
                q = q.view(B, T, a.n_heads, a.head_dim).transpose(1, 2)
                k = k.view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
                v = v.view(B, T, a.n_kv_heads, a.head_dim).transpose(1, 2)
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
                k = torch.cat([past[2 * i], k], dim=2)
                v = torch.cat([past[2 * i + 1], v], dim=2)
                present += [k, v]
                if a.n_kv_heads != a.n_heads:
                    rep = a.n_heads // a.n_kv_heads
                    k = k.repeat_interleave(rep, dim=1)
                    v = v.repeat_interleave(rep, dim=1)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                x = x + a.wo(y.transpose(1, 2).reshape(B, T, -1))
                x = x + layer.mlp(layer.mlp_norm(x))
            return (m.lm_head(m.norm(x)), *present)

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
        dims: dict[str, object] = {}

        def dim(name: str, lo: int):
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=lo, max={"batch": 1024}.get(name, max_len))
            return dims[name]

        shapes = {}
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
        stop_tokens: Sequence[int] = (),
        pad_id: int = 0,
        seed: int | None = None,
    ) -> list[list[int]]:
        m = self.meta
        B, longest = len(prompts), max(len(p) for p in prompts)
        if longest + max_new_tokens > m["max_seq_len"]:
            raise OpenLLMError(
                f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                f"{m['max_seq_len']} tokens"
            )
        ids = np.full((B, longest), pad_id, dtype=np.int64)
        mask = np.zeros((B, longest), dtype=np.int64)
        for b, p in enumerate(prompts):
            ids[b, longest - len(p) :] = p
            mask[b, longest - len(p) :] = 1
        pos = np.clip(mask.cumsum(-1) - 1, 0, None)
        past = self.empty_past(B)
        rng = np.random.default_rng(seed)
        stops, done = set(stop_tokens), [False] * B
        outs: list[list[int]] = [[] for _ in range(B)]
        step_ids = ids
        for _ in range(max_new_tokens):
            res = self.past.run(
                None,
                {"input_ids": step_ids, "attention_mask": mask, "position_ids": pos[:, -step_ids.shape[1] :], **past},
            )
            logits = res[0][:, -1].astype(np.float64)
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                z = logits / temperature
                p = np.exp(z - z.max(-1, keepdims=True))
                p /= p.sum(-1, keepdims=True)
                nxt = np.array([rng.choice(p.shape[-1], p=row) for row in p])
            for b in range(B):
                if not done[b]:
                    outs[b].append(int(nxt[b]))
                    done[b] = int(nxt[b]) in stops
            if all(done):
                break
            past = dict(zip(past, res[1:]))
            step_ids = nxt[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
            pos = np.concatenate([pos, pos[:, -1:] + 1], axis=1)
        return outs
