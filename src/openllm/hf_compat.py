"""The mapping between our weights and Hugging Face's ``LlamaForCausalLM``: renames, plus splitting (or
joining) the fused q/k/v and gate/up projections. Exact copies, no arithmetic, so round trips are bit-exact."""

from __future__ import annotations

from typing import Any

import torch

from .config import ModelConfig

__all__ = ["llama_config_dict", "to_hf_state_dict", "from_hf_state_dict", "model_config_from_llama"]


def llama_config_dict(
    cfg: ModelConfig,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``transformers.LlamaConfig`` describing the same network."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": "float32",
    }


def model_config_from_llama(hf: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig from a Llama config.json (the inverse of :func:`llama_config_dict`)."""
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"],
        rope_theta=float(hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    ).validate()


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> LlamaForCausalLM's names (contiguous tensors, ready for safetensors)."""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": state["tok_embeddings.weight"], "model.norm.weight": state["norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["lm_head.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        wq, wk, wv = state[src + "attn.wqkv.weight"].split([q, kv, kv], dim=0)
        gate, up = state[src + "mlp.w13.weight"].split(cfg.d_ff, dim=0)
        out.update(
            {
                dst + "self_attn.q_proj.weight": wq,
                dst + "self_attn.k_proj.weight": wk,
                dst + "self_attn.v_proj.weight": wv,
                dst + "self_attn.o_proj.weight": state[src + "attn.wo.weight"],
                dst + "mlp.gate_proj.weight": gate,
                dst + "mlp.up_proj.weight": up,
                dst + "mlp.down_proj.weight": state[src + "mlp.w2.weight"],
                dst + "input_layernorm.weight": state[src + "attn_norm.weight"],
                dst + "post_attention_layernorm.weight": state[src + "mlp_norm.weight"],
            }
        )
    return {k: v.detach().contiguous() for k, v in out.items()}


def from_hf_state_dict(hf: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's names -> our state dict (the inverse of :func:`to_hf_state_dict`)."""
    emb = hf["model.embed_tokens.weight"]
    out = {"tok_embeddings.weight": emb, "norm.weight": hf["model.norm.weight"]}
    out["lm_head.weight"] = emb if cfg.tie_embeddings else hf["lm_head.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        out.update(
            {
                dst + "attn.wqkv.weight": torch.cat(
                    [
                        hf[src + "self_attn.q_proj.weight"],
                        hf[src + "self_attn.k_proj.weight"],
                        hf[src + "self_attn.v_proj.weight"],
                    ],
                    dim=0,
                ),
                dst + "attn.wo.weight": hf[src + "self_attn.o_proj.weight"],
                dst + "mlp.w13.weight": torch.cat(
                    [hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]], dim=0
                ),
                dst + "mlp.w2.weight": hf[src + "mlp.down_proj.weight"],
                dst + "attn_norm.weight": hf[src + "input_layernorm.weight"],
                dst + "mlp_norm.weight": hf[src + "post_attention_layernorm.weight"],
            }
        )
    return out
