"""Throughput and MFU of `openllm train` itself on a GPU, side by side with transformers' LlamaForCausalLM.

Through the real command: the memmap loader, logging, metrics.jsonl and a checkpoint at the end. Data are
random tokens (throughput does not depend on them) written in the tokenized-data format. The peer, in the
same process tree and on the same device, is benchmarks/train_throughput.py's transformers loop of the same
shapes and optimizer.

    python benchmarks/gpu_train.py --config medium --batch 16 --steps 60 --compile
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def make_random_data(out: Path, vocab: int, train_tokens: int, val_tokens: int, seed: int = 0) -> Path:
    """A tokenized-data folder (docs/architecture.md format) of uniformly random tokens."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    rng.integers(0, vocab, train_tokens, dtype=dtype).tofile(out / "train_000.bin")
    rng.integers(0, vocab, val_tokens, dtype=dtype).tofile(out / "val_000.bin")
    meta = {
        "vocab_size": vocab,
        "dtype": np.dtype(dtype).name,
        "eos_id": 3,
        "tokenizer_sha256": None,
        "splits": {
            "train": {"shards": ["train_000.bin"], "tokens": train_tokens, "documents": 1},
            "val": {"shards": ["val_000.bin"], "tokens": val_tokens, "documents": 1},
        },
        "sources": {"random": {"seed": seed}},
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def steady_state(metrics: list[dict], skip_steps: int) -> dict:
    """Median tokens/s and MFU of the log intervals after the warm-up (compilation) steps."""
    rows = [r for r in metrics if r["step"] > skip_steps and "val_loss" not in r and "tokens_per_s" in r]
    if not rows:
        rows = metrics[-1:]
    tps = float(np.median([r["tokens_per_s"] for r in rows]))
    mfu = [r["mfu"] for r in rows if r.get("mfu") is not None]
    return {"tokens_per_s": tps, "mfu": float(np.median(mfu)) if mfu else None, "intervals": len(rows)}


def run_openllm_train(
    config: str,
    data: Path,
    out: Path,
    *,
    steps: int,
    batch: int,
    seq: int,
    accum: int,
    compile: bool,
    extra_sets: list[str],
) -> dict:
    sets = [
        f"train.micro_batch_size={batch}",
        f"train.grad_accum_steps={accum}",
        f"train.seq_len={seq}",
        f"train.eval_every={steps}",
        "train.eval_batches=4",
        f"train.save_every={steps}",
        "train.log_every=5",
        "train.warmup_steps=10",
        *extra_sets,
    ]
    cmd = [
        sys.executable,
        "-m",
        "openllm",
        "train",
        "--config",
        config,
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--no-progress",
        "--vocab-from-data",
        "--compile" if compile else "--no-compile",
    ]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"openllm train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    res = steady_state(metrics, skip_steps=max(10, steps // 4))
    res.update(wall_s=wall, final_loss=metrics[-1]["loss"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="medium")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for openllm train")
    ap.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the transformers baseline (benchmarks/train_throughput.py)",
    )
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from openllm.config import load_config

    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_train = args.batch * args.seq_len * args.accum * (args.steps + 5) + 1
        data = make_random_data(tmp / "data", cfg.model.vocab_size, n_train, args.seq_len * args.batch * 8)
        ours = run_openllm_train(
            args.config,
            data,
            tmp / "run",
            steps=args.steps,
            batch=args.batch,
            seq=args.seq_len,
            accum=args.accum,
            compile=args.compile,
            extra_sets=args.set,
        )
    results = {"config": args.config, "batch": args.batch, "seq_len": args.seq_len, "openllm_train": ours}
    print(
        f"openllm train  {args.config} b{args.batch} x {args.seq_len}: {ours['tokens_per_s']:,.0f} tokens/s"
        + (f", MFU {ours['mfu']:.1%}" if ours["mfu"] else "")
        + f" (wall {ours['wall_s']:.0f} s)"
    )
    if args.peer:
        cmd = [
            sys.executable,
            str(REPO / "benchmarks" / "train_throughput.py"),
            "--config",
            args.config,
            "--batch",
            str(args.batch),
            "--seq-len",
            str(args.seq_len),
            "--only",
            "hf",
            "--compile" if args.compile else "--no-compile",
            "--json",
            "-",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        print(proc.stdout[-4000:], proc.stderr[-2000:] if proc.returncode else "")
        try:
            peer = json.loads(proc.stdout.strip().splitlines()[-1])
            results["transformers"] = peer
            print(f"ratio openllm train / transformers: {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x")
        except Exception as exc:  # the table above says what went wrong
            print(f"(no transformers figure: {exc})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
