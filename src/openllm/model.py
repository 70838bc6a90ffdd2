"""The decoder-only transformer, Llama-shaped: RMSNorm, rotary embeddings, SwiGLU, optional grouped-query
attention, tied or untied embeddings, causal attention through ``scaled_dot_product_attention``.

Nothing here knows about files, hubs or command lines. Weights are laid out so that the Hugging Face export
is a rename plus a split of the fused projections (see ``openllm.hf_compat``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .kvcache import KVCache

__all__ = ["Transformer", "KVCache", "RMSNorm", "param_report"]  # KVCache: see openllm.kvcache


def _exporting() -> bool:
    """True under TorchScript tracing (the ONNX exporter) and torch.export/torch.compile, whose graphs must not
    use ``enable_gqa`` (ONNX knows no such attribute)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 whatever the autocast dtype, as Llama does, then scale in the input dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, shape (max_len, head_dim), in the half-split ("rotate_half") convention."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B or 1, 1, T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        # q, k and v in one matmul; the export splits it into q_proj, k_proj, v_proj
        self.wqkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, *, mask=None, cache=None, layer: int = 0, causal: bool = True):
        B, T, _ = x.shape
        H, Hkv = self.n_heads, self.n_kv_heads
        qkv = self.wqkv(x).view(B, T, H + 2 * Hkv, self.head_dim).transpose(1, 2)
        # q and k heads rotated in one go (elementwise, so identical to rotating them apart)
        q, k = apply_rope(qkv[:, : H + Hkv], cos, sin).split([H, Hkv], dim=1)
        v = qkv[:, H + Hkv :]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        gqa = self.n_kv_heads != self.n_heads
        share_kv = gqa and not self.training and not _exporting()
        if gqa and not share_kv:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None and causal,
            dropout_p=self.dropout if self.training else 0.0,
            # inference: let the kernel share kv heads instead of copying them (same values)
            **({"enable_gqa": True} if share_kv else {}),
        )
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.d_ff = cfg.ff_dim
        # gate and up projections in one matmul; the export splits it into gate_proj and up_proj
        self.w13 = nn.Linear(cfg.d_model, 2 * self.d_ff, bias=False)
        self.w2 = nn.Linear(self.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).split(self.d_ff, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, *, mask=None, cache=None, layer=0, causal=True):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask=mask, cache=cache, layer=layer, causal=causal))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
    """Decoder-only language model. ``forward(idx)`` returns logits (B, T, vocab), or the mean
    cross-entropy when ``targets`` are given (with ``return_logits=False`` the logits are not kept);
    ``last_only=True`` gives the logits of the last position only, (B, 1, vocab), for generation."""

    rope_cos: torch.Tensor  # buffers (register_buffer): they move with the model, not saved in its state dict
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # training-only fused loss (openllm.kernels.apply_kernels): fn(hidden, head_weight, targets, ignore_index)
        self.loss_fn = None
        self.reset_parameters()

    # --- construction -----------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        # residual projections are scaled down by depth so the residual stream's variance stays put (GPT-2)
        resid_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith(("wo.weight", "w2.weight")):
                if self.cfg.zero_init_proj:
                    nn.init.zeros_(p)  # each block starts as the identity (modded-nanogpt's recipe)
                else:
                    nn.init.normal_(p, mean=0.0, std=resid_std)
            else:
                nn.init.normal_(p, mean=0.0, std=std)

    # --- accounting -------------------------------------------------------------------------------------
    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors counted once). ``non_embedding`` leaves out the token embedding
        (and the output head when it is a separate matrix)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel()
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward = 3x forward): 6 per weight of every matmul, the
        output head included, plus attention's 12 * layers * width * seq_len (PaLM appendix B, as nanoGPT)."""
        c = self.cfg
        T = seq_len or c.max_seq_len
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul + 12 * c.n_layers * c.d_model * T

    # --- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        return_logits: bool = True,
        ignore_index: int = -100,
        last_only: bool = False,
        attn_mask: torch.Tensor | None = None,
    ):
        B, T = idx.shape
        # attn_mask (training without a cache): a boolean (B, 1, T, T) mask, e.g. block-diagonal so that packed
        # conversations do not attend to each other (openllm.conversations.attention_mask)
        mask, causal = attn_mask, True
        if cache is not None:
            cache_positions, mask, causal = cache.begin(T)
            positions = cache_positions if positions is None else positions
        if positions is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
            cos, sin = self.rope_cos[:T][None, None], self.rope_sin[:T][None, None]
        else:
            if not _exporting() and int(positions.max()) >= self.cfg.max_seq_len:
                raise ValueError(f"position {int(positions.max())} exceeds max_seq_len {self.cfg.max_seq_len}")
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]
        x = self.tok_embeddings(idx)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask=mask, cache=cache, layer=i, causal=causal)
        if cache is not None:
            cache.end(T)
        if last_only and targets is None:
            x = x[:, -1:]  # generation needs the next token only: skip the head on the prompt
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)
        if self.loss_fn is not None and not return_logits:
            return self.loss_fn(x, self.lm_head.weight, targets, ignore_index)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index)
        return (logits, loss) if return_logits else loss

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`openllm.kvcache.KVCache` of ``batch`` rows on the model's device and dtype."""
        p = next(self.parameters())
        return KVCache.empty(self.cfg, batch, max_len or self.cfg.max_seq_len, device=p.device, dtype=p.dtype)


def param_report(model_cfg: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    """Size and cost of a model shape without allocating its weights (built on the meta device):
    ``params``, ``params_non_embedding``, ``flops_per_token`` (training, at ``seq_len``, default the
    context length) and the ``seq_len`` used."""
    with torch.device("meta"):
        model = Transformer(model_cfg)
    seq = seq_len or model_cfg.max_seq_len
    return {
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "flops_per_token": model.flops_per_token(seq),
        "seq_len": seq,
    }


def train_memory_bytes(
    model_cfg: ModelConfig,
    *,
    micro_batch: int,
    seq_len: int,
    precision: str = "fp32",
    optimizer_states: int = 2,
    attention_scores: bool = True,
) -> dict[str, int]:
    """A rough upper estimate of the memory one training process needs, before anything is allocated:
    fp32 weights, gradients and ``optimizer_states`` fp32 moments per parameter, plus the activations kept
    for the backward pass (about 34 x width values per token and layer, and the attention scores of a
    non-fused kernel: heads x seq_len per token and layer; ``attention_scores=False`` for flash attention) and
    the logits with their gradient."""
    p = param_report(model_cfg, seq_len)["params"]
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    tokens = micro_batch * seq_len
    scores = 5 * model_cfg.n_heads * seq_len if attention_scores else 0
    per_layer = tokens * (34 * model_cfg.d_model + scores) * act_bytes // 2
    states = p * 4 * (2 + optimizer_states)
    activations = model_cfg.n_layers * per_layer + 2 * tokens * model_cfg.vocab_size * 4
    return {"states": states, "activations": activations, "total": states + activations}
