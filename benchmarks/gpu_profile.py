"""Where a training step's GPU time goes: torch.profiler's top kernels for one config, compiled, bf16, with
the same step as `openllm train` (autocast forward + loss, backward, clipping, fused AdamW).

    python benchmarks/gpu_profile.py --config medium --batch 32 --seq-len 1024
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from openllm.config import load_config
from openllm.model import Transformer
from openllm.optim import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="medium")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rows", type=int, default=18)
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = load_config(args.config)
    model = Transformer(cfg.model).to(dev)
    opt = build_optimizer(model, cfg.train, dev)
    fwd = torch.compile(model)
    params = list(model.parameters())
    x = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len + 1), device=dev)
    inp, tgt = x[:, :-1], x[:, 1:]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(inp, tgt, return_logits=False)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()

    def self_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0))

    total = sum(self_us(e) for e in events) or 1.0
    print(
        f"{args.config} b{args.batch} x {args.seq_len}: top kernels over {args.steps} steps "
        f"(GPU time {total / 1e3 / args.steps:.1f} ms/step)"
    )
    rows = sorted((e for e in events if self_us(e) > 0), key=lambda e: -self_us(e))
    for e in rows[: args.rows]:
        print(
            f"  {100 * self_us(e) / total:5.1f}%  {self_us(e) / 1e3 / args.steps:7.2f} ms/step  "
            f"x{e.count // args.steps:<4} {e.key[:90]}"
        )


if __name__ == "__main__":
    main()
