"""GGUF export: a plain llama-architecture file for llama.cpp (and everything built on it), tokenizer
included, in f32, f16 or q8_0.

What ``convert_hf_to_gguf.py`` does for a Llama with a SentencePiece tokenizer, done from our weights:

- tensors renamed to llama.cpp's names (``token_embd``, ``blk.N.attn_q`` ... ``output_norm``, ``output``; the
  output matrix is left out when tied: llama.cpp then reuses ``token_embd``);
- q and k rows permuted per head: our RoPE (like Hugging Face's) rotates the two halves of a head
  (``rotate_half``) while llama.cpp's LLAMA rope type rotates adjacent pairs, so row ``j < D/2`` of a head goes to
  ``2j`` and row ``D/2 + j`` to ``2j + 1`` (``LlamaModel.permute`` in convert_hf_to_gguf);
- norms (1-D) stay f32; matrices become f16 or q8_0 (a row not a multiple of 32 falls back to f16, as there);
- the vocabulary as ``tokenizer.ggml.model = llama`` (SentencePiece): pieces, scores and token types from
  ``tokenizer.model``, special ids, and ``add_space_prefix = false`` since we train without a dummy prefix;
- metadata: ``general.name`` (a fine-tune's marked as one, with its base), ``general.license``,
  ``general.source.url`` (when given), ``llama.context_length``
  and ``tokenizer.chat_template`` (:data:`openllm.tokenizer.CHAT_TEMPLATE`, so llama.cpp formats chats as
  transformers and our server do instead of falling back to Llama-2 ``[INST]`` tags).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import OpenLLMError, require
from .shared import finetune_summary

__all__ = ["export_gguf", "gguf_tensors", "permute_qk", "gguf_vocab", "GGUF_FILE", "check_source_url"]

GGUF_FILE = "model-{dtype}.gguf"


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's ``permute``: rotate-half layout -> llama.cpp's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """Every tensor of the GGUF file, float32, in llama.cpp's names and layout (before quantization)."""
    from ..hf_compat import to_hf_state_dict

    cfg = model.cfg
    hf = {k: v.detach().to("cpu").float().numpy() for k, v in to_hf_state_dict(model.state_dict(), cfg).items()}
    out = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = hf["lm_head.weight"]
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        out.update(
            {
                f"blk.{i}.attn_norm.weight": hf[p + "input_layernorm.weight"],
                f"blk.{i}.attn_q.weight": permute_qk(hf[p + "self_attn.q_proj.weight"], cfg.n_heads),
                f"blk.{i}.attn_k.weight": permute_qk(hf[p + "self_attn.k_proj.weight"], cfg.n_kv_heads),
                f"blk.{i}.attn_v.weight": hf[p + "self_attn.v_proj.weight"],
                f"blk.{i}.attn_output.weight": hf[p + "self_attn.o_proj.weight"],
                f"blk.{i}.ffn_norm.weight": hf[p + "post_attention_layernorm.weight"],
                f"blk.{i}.ffn_gate.weight": hf[p + "mlp.gate_proj.weight"],
                f"blk.{i}.ffn_up.weight": hf[p + "mlp.up_proj.weight"],
                f"blk.{i}.ffn_down.weight": hf[p + "mlp.down_proj.weight"],
            }
        )
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def tensor_type(name: str, arr: np.ndarray, dtype: str):
    """The GGML type a tensor is stored as for a file of ``dtype`` (f32 | f16 | q8_0)."""
    from gguf import GGMLQuantizationType as Q

    if dtype == "f32" or arr.ndim <= 1 or name.endswith("_norm.weight"):
        return Q.F32
    if dtype == "f16":
        return Q.F16
    return Q.Q8_0 if arr.shape[-1] % 32 == 0 else Q.F16  # q8_0 blocks hold 32 values of a row


def encode_tensor(arr: np.ndarray, qtype) -> np.ndarray:
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if qtype == Q.F32:
        return arr.astype(np.float32)
    if qtype == Q.F16:
        return arr.astype(np.float16)
    return quantize(arr, qtype)


def gguf_vocab(tokenizer, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and token types of a SentencePiece tokenizer, padded to the model's vocab size."""
    from gguf import TokenType

    from ..tokenizer import sentencepiece_pb2

    proto = sentencepiece_pb2().ModelProto()
    proto.ParseFromString(Path(tokenizer.model_path).read_bytes())
    # SentencePiece's piece types and GGUF's token types share their numbers (NORMAL=1 ... BYTE=6)
    tokens = [p.piece.encode("utf-8") for p in proto.pieces]
    scores = [float(p.score) for p in proto.pieces]
    types = [int(TokenType(p.type)) for p in proto.pieces]
    if len(tokens) > vocab_size:
        raise OpenLLMError(f"tokenizer has {len(tokens)} pieces but the model only {vocab_size} embeddings")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(TokenType.UNUSED))
    return tokens, scores, types


def check_source_url(text: str | None) -> None:
    """Refuse a ``general.source.url`` that is not an http(s) URL (a hub reference ``OWNER/NAME@VERSION``
    names no hub, so no reader can open it)."""
    from urllib.parse import urlparse

    parts = urlparse(text or "")
    if text is not None and not (parts.scheme in ("http", "https") and parts.netloc):
        raise OpenLLMError(f"source URL {text!r} is not a URL: give an https:// address or leave it out")


def _add_identity(w, loaded, *, license: str | None, source_url: str | None) -> None:
    """The ``general.*`` keys naming the model, as convert_hf_to_gguf writes them. A fine-tune is
    ``<base>-chat`` (``general.basename`` + ``general.finetune``, llama.cpp's naming) with its base under
    ``general.base_model.0.*``, not the base's own name. ``other`` comes with ``general.license.name``.
    ``general.source.url`` only for a real URL: a hub reference (``OWNER/NAME@VERSION``) does not say which hub
    it is on, so it is left out rather than written as an address nobody can open."""
    name = loaded.config.name
    finetune = finetune_summary(loaded)
    if finetune is None:
        w.add_name(name)
    else:
        base = finetune["base"]
        basename = str(base.get("name") or name)
        w.add_name(f"{basename}-chat")
        w.add_basename(basename)
        w.add_finetune("chat")
        w.add_base_model_count(1)
        w.add_base_model_name(0, basename)
        ref = str(base.get("hub_ref") or "")
        version = ref.partition("@")[2] or (str(base["step"]) if isinstance(base.get("step"), int) else "")
        if version:
            w.add_base_model_version(0, version)
        if ref:
            w.add_base_model_description(0, f"openllm hub reference {ref}")
    w.add_license(license or "other")
    if (license or "other") == "other":
        w.add_license_name("unknown")
    if source_url is not None:
        w.add_source_url(source_url)


def export_gguf(
    loaded, out: Path, *, dtype: str = "f16", license: str | None = None, source_url: str | None = None
) -> Path:
    """Write ``out/model-<dtype>.gguf``. ``license`` is the weights' license (``general.license``, default
    ``other``, named ``unknown``: see the model card); ``source_url``, an http(s) address, goes into
    ``general.source.url``."""
    require("gguf", "export", what="GGUF export")
    import gguf

    from ..tokenizer import CHAT_STOPS, CHAT_TEMPLATE

    check_source_url(source_url)
    if dtype not in ("f32", "f16", "q8_0"):
        raise OpenLLMError(f"unknown GGUF type {dtype!r}: choose from f32, f16, q8_0")
    if getattr(loaded.tokenizer, "model_path", None) is None:
        raise OpenLLMError(
            "GGUF export needs the model's SentencePiece tokenizer (tokenizer.model), and this "
            "source has none: export from the run or the openllm export it was made from"
        )
    cfg, model = loaded.config, loaded.model
    m = cfg.model
    path = Path(out) / GGUF_FILE.format(dtype=dtype)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]

    w = gguf.GGUFWriter(str(path), "llama")
    _add_identity(w, loaded, license=license, source_url=source_url)
    w.add_context_length(m.max_seq_len)
    w.add_embedding_length(m.d_model)
    w.add_block_count(m.n_layers)
    w.add_feed_forward_length(m.d_ff)
    w.add_head_count(m.n_heads)
    w.add_head_count_kv(m.n_kv_heads)
    w.add_rope_dimension_count(m.head_dim)
    w.add_rope_freq_base(float(m.rope_theta))
    w.add_layer_norm_rms_eps(float(m.norm_eps))
    w.add_vocab_size(m.vocab_size)
    w.add_file_type(int(file_type))
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tok = loaded.tokenizer
    tokens, scores, types = gguf_vocab(tok, m.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_unk_token_id(tok.unk_id)
    w.add_pad_token_id(tok.pad_id)
    w.add_add_bos_token(False)  # our encode() adds no BOS, and training saw none
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)  # trained with add_dummy_prefix = false
    w.add_chat_template(CHAT_TEMPLATE)
    # the template ends an assistant turn with EOS: llama.cpp's end-of-turn token (it stops chats there)
    w.add_eot_token_id(tok.eos_id)
    # llama.cpp has no key for stop strings (a multi-token stop is a request's "stop"): listed for the programs
    # that set up a runtime from the file, as a JSON string since llama.cpp's metadata API leaves arrays out
    w.add_string("openllm.chat.stop_strings", json.dumps(list(CHAT_STOPS)))

    for name, arr in gguf_tensors(model).items():
        qtype = tensor_type(name, arr, dtype)
        data = encode_tensor(arr, qtype)
        w.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
