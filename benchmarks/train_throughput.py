"""Training throughput (tokens/s) and MFU of our Transformer, side by side in one run with Hugging Face
transformers' LlamaForCausalLM of the same shapes, optimizer and precision, eager and compiled.

Each variant runs the same training step as ``openllm.train``: autocast forward with the loss, backward,
gradient clipping at 1.0, fused AdamW (decay on matrices only, the groups of ``openllm.optim``), zero_grad.
Random tokens (throughput does not depend on them). MFU = model FLOPs per token (6 x matmul weights +
attention, ``Transformer.flops_per_token``, the same figure for both) x tokens/s / device peak.

    python benchmarks/train_throughput.py                                   # tiny on this CPU, eager
    python benchmarks/train_throughput.py --config small --seq-len 1024 --batch 16 --compile   # a GPU

Prints a table with the ratios ours / transformers (eager vs eager, compiled vs compiled). ``--json PATH``
(or ``-`` for stdout's last line) writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from openllm.config import load_config
from openllm.metrics import device_peak_flops
from openllm.model import Transformer
from openllm.optim import param_groups
from openllm.train import autocast_context, resolve_precision


def build(impl: str, cfg, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if impl == "ours":
        return Transformer(cfg.model).to(device)
    from transformers import LlamaConfig, LlamaForCausalLM

    from openllm.hf_compat import llama_config_dict

    kwargs = llama_config_dict(cfg.model)
    kwargs.pop("torch_dtype", None)
    hf_cfg = LlamaConfig(**kwargs)
    hf_cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(hf_cfg).to(device)
    model.config.use_cache = False
    return model


def make_step(impl: str, model, optimizer, precision: str, device: torch.device, compiled: bool):
    fwd = torch.compile(model) if compiled else model
    params = [p for p in model.parameters()]

    if impl == "ours":

        def loss_of(x, y):
            return fwd(x, y, return_logits=False)
    else:

        def loss_of(x, y):
            # labels = the input ids; transformers shifts them (scores T-1 tokens of the same T-token forward)
            return fwd(input_ids=x, labels=y, use_cache=False).loss

    def step(x, y):
        with autocast_context(precision, device):
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One implementation x mode, built and warmed up; ``run(n)`` times n steps."""

    def __init__(self, impl: str, compiled: bool, cfg, args, device, precision, peak) -> None:
        self.impl, self.compiled, self.device, self.args = impl, compiled, device, args
        self.mode = "compiled" if compiled else "eager"
        self.model = build(impl, cfg, device)
        self.model.train()
        fused = device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 0.1), lr=1e-4, betas=(0.9, 0.95), fused=fused)
        self.step = make_step(impl, self.model, self.optimizer, precision, device, compiled)
        V, B, T = cfg.model.vocab_size, args.batch, args.seq_len
        g = torch.Generator().manual_seed(0)
        windows = [torch.randint(0, V, (B, T + 1), generator=g) for _ in range(4)]
        self.batches = [(w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)) for w in windows]
        if impl == "hf":
            self.batches = [(x, x) for x, _ in self.batches]  # transformers shifts the labels itself
        self.tokens_per_step = B * T
        self.flops_per_token = Transformer.flops_per_token(_shape_only(cfg), T)
        self.peak = peak
        self.times: list[float] = []
        self.params = sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
        t0 = time.perf_counter()
        for i in range(args.warmup):
            self.loss = self.step(*self.batches[i % len(self.batches)])
        sync(device)
        self.warmup_s = time.perf_counter() - t0

    def run(self, n: int) -> None:
        t0 = time.perf_counter()
        for i in range(n):
            self.loss = self.step(*self.batches[i % len(self.batches)])
        sync(self.device)
        self.times.append((time.perf_counter() - t0) / n)

    def result(self) -> dict:
        best = min(self.times)
        tps = self.tokens_per_step / best
        out = {
            "impl": self.impl,
            "mode": self.mode,
            "tokens_per_s": tps,
            "ms_per_step": 1000 * best,
            "mfu": (self.flops_per_token * tps / self.peak) if self.peak else None,
            "warmup_s": self.warmup_s,
            "loss": float(self.loss.detach()),
            "params": self.params,
            "round_ms": [round(1000 * t, 2) for t in self.times],
        }
        if self.device.type == "cuda":
            out["max_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out


_SHAPES: dict = {}


def _shape_only(cfg):
    key = id(cfg)
    if key not in _SHAPES:
        with torch.device("meta"):
            _SHAPES[key] = Transformer(cfg.model)
    return _SHAPES[key]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset or config JSON (default: tiny)")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default: the config's)")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 20 CPU, 50 GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3, 10 when compiling)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per variant, taking turns; the best counts")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="also run the torch.compile variants"
    )
    p.add_argument("--only", choices=("ours", "hf"), default=None, help="run one implementation only")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="auto: bf16 on GPU, fp32 on CPU"
    )
    p.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="device peak FLOP/s for MFU (default: the table in openllm.metrics, e.g. H200 989e12)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write results as JSON to this path ('-': stdout's last line)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = load_config(args.config)
    args.batch = args.batch or cfg.train.micro_batch_size
    args.seq_len = args.seq_len or cfg.train.seq_len or cfg.model.max_seq_len
    if args.seq_len > cfg.model.max_seq_len:
        cfg = cfg.replace(model={"max_seq_len": args.seq_len})
    gpu = device.type == "cuda"
    args.steps = args.steps or (50 if gpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (10 if args.compile else 3)
    precision = resolve_precision(args.precision, device)
    peak = args.peak_flops or device_peak_flops(device)
    if peak and precision == "fp32" and not args.peak_flops:
        peak = None  # the table holds bf16/fp16 tensor-core peaks; an fp32 MFU against them would mislead

    impls = [args.only] if args.only else ["ours", "hf"]
    modes = [False, True] if args.compile else [False]
    if args.only and args.compile:
        modes = [True]
    dev_name = torch.cuda.get_device_name(device) if gpu else (platform.processor() or platform.machine())
    print(
        f"device {dev_name} ({device}), torch {torch.__version__}, {precision}, threads "
        f"{torch.get_num_threads()}; config {cfg.name}: {cfg.model.n_layers} x {cfg.model.d_model}, vocab "
        f"{cfg.model.vocab_size}; batch {args.batch} x seq {args.seq_len}; {args.steps} steps x {args.repeat} "
        f"rounds (best), {args.warmup} warm-up",
        file=sys.stderr,
    )
    # every variant is built and warmed up first; then the timed rounds take turns (ours, hf, ours, hf, ...)
    # so a machine whose load drifts treats them alike; each variant's best round counts
    variants, rows = [], []
    for compiled in modes:
        for impl in impls:
            try:
                variants.append(Variant(impl, compiled, cfg, args, device, precision, peak))
                print(
                    f"  built {impl} {'compiled' if compiled else 'eager'} (warm-up {variants[-1].warmup_s:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            except Exception as exc:  # e.g. no C++ compiler for the CPU compile: say so, keep the rest
                rows.append(
                    {"impl": impl, "mode": "compiled" if compiled else "eager", "error": f"{type(exc).__name__}: {exc}"}
                )
    for r in range(args.repeat):
        for v in variants:
            v.run(args.steps)
        print(
            f"  round {r + 1}/{args.repeat}: "
            + ", ".join(f"{v.impl} {v.mode} {v.tokens_per_step / v.times[-1]:,.0f} tok/s" for v in variants),
            file=sys.stderr,
            flush=True,
        )
    rows = [v.result() for v in variants] + rows
    order = {(i, m): k for k, (i, m) in enumerate((i, m) for m in ("eager", "compiled") for i in ("ours", "hf"))}
    rows.sort(key=lambda r: order[(r["impl"], r["mode"])])

    def find(impl, mode):
        return next((r for r in rows if r["impl"] == impl and r["mode"] == mode and "tokens_per_s" in r), None)

    base = find("hf", "eager")
    print()
    print(f"{'implementation':<28}{'tokens/s':>14}{'ms/step':>10}{'MFU':>8}{'vs HF eager':>13}{'vs HF same mode':>17}")
    print("-" * 90)
    for r in rows:
        name = f"{'openllm' if r['impl'] == 'ours' else 'transformers Llama'} ({r['mode']})"
        if "tokens_per_s" not in r:
            print(f"{name:<28}  failed: {r['error'][:55]}")
            continue
        peer = find("hf", r["mode"])
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        vs_base = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        vs_peer = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if peer and r["impl"] == "ours" else "-"
        print(f"{name:<28}{r['tokens_per_s']:>14,.0f}{r['ms_per_step']:>10.1f}{mfu:>8}{vs_base:>13}{vs_peer:>17}")
    result = {
        "device": dev_name,
        "torch": torch.__version__,
        "precision": precision,
        "config": cfg.name,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "peak_flops": peak,
        "threads": torch.get_num_threads(),
        "results": rows,
    }
    primary = next((r for r in reversed(rows) if "tokens_per_s" in r), {})
    result["tokens_per_s"] = primary.get("tokens_per_s")
    result["mfu"] = primary.get("mfu")
    if args.json:
        text = json.dumps(result)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
