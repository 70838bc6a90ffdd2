"""openllm info CONFIG"""

from __future__ import annotations

import argparse

from .common import add_config_overrides


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a config JSON file or a preset name (tiny, small, medium, large)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs (default: the config's)")
    add_config_overrides(p)


def run(args: argparse.Namespace) -> int:
    from ..config import apply_overrides, load_config
    from ..model import param_report

    if args.seq_len is not None and not 1 <= args.seq_len <= 1 << 22:
        from ..errors import OpenLLMError

        raise OpenLLMError(f"--seq-len must be between 1 and {1 << 22:,}, got {args.seq_len}")
    cfg = apply_overrides(load_config(args.config), args.set)
    m = cfg.model
    report = param_report(m, seq_len=args.seq_len or cfg.seq_len)
    total, non_emb = report["params"], report["params_non_embedding"]
    flops, seq = report["flops_per_token"], report["seq_len"]
    print(f"config            {args.config} ({cfg.name})")
    print(
        f"shape             {m.n_layers} layers x {m.d_model} wide, {m.n_heads} heads "
        f"({m.n_kv_heads} kv), SwiGLU {m.d_ff}, vocab {m.vocab_size}, context {m.max_seq_len}, "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings"
    )
    print(f"parameters        {total:,} ({total / 1e6:.1f}M)")
    print(f"non-embedding     {non_emb:,} ({non_emb / 1e6:.1f}M)")
    print(f"training FLOPs    {flops:,} per token at sequence {seq} ({flops / 1e9:.3f} GFLOP)")
    return 0
