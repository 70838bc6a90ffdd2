"""Several GPUs through `openllm train` under torchrun: DDP scaling against one GPU, and FSDP2's losses
against DDP's over the same steps.

    python benchmarks/gpu_multi.py --config medium --batch 16 --steps 40        # needs 2 GPUs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_train import make_random_data, steady_state  # noqa: E402


def train(
    config: str,
    data: Path,
    out: Path,
    *,
    nproc: int,
    steps: int,
    batch: int,
    seq: int,
    compile: bool,
    mode: str = "ddp",
    log_every: int = 5,
    extra: list[str] = (),
) -> list[dict]:
    sets = [
        f"train.micro_batch_size={batch}",
        "train.grad_accum_steps=1",
        f"train.seq_len={seq}",
        f"train.eval_every={steps}",
        "train.eval_batches=2",
        f"train.save_every={steps}",
        f"train.log_every={log_every}",
        "train.warmup_steps=5",
        f"train.distributed={mode}",
        *extra,
    ]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [
        *launcher,
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
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="medium")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument(
        "--single-json",
        default=None,
        help="a gpu_train.py result to compare against (otherwise one GPU is measured here)",
    )
    ap.add_argument("--fsdp-config", default="small")
    ap.add_argument("--fsdp-steps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from openllm.config import load_config

    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        vocab = load_config(args.config).model.vocab_size
        n = args.batch * args.seq_len * args.gpus * (args.steps + 5) + 1
        data = make_random_data(tmp / "data", vocab, n, args.seq_len * args.batch * 8)
        skip = max(10, args.steps // 4)
        if args.single_json:
            single = json.loads(Path(args.single_json).read_text())["openllm_train"]
        else:
            single = steady_state(
                train(
                    args.config,
                    data,
                    tmp / "one",
                    nproc=1,
                    steps=args.steps,
                    batch=args.batch,
                    seq=args.seq_len,
                    compile=True,
                ),
                skip,
            )
        multi = steady_state(
            train(
                args.config,
                data,
                tmp / "ddp",
                nproc=args.gpus,
                steps=args.steps,
                batch=args.batch,
                seq=args.seq_len,
                compile=True,
            ),
            skip,
        )
        eff = multi["tokens_per_s"] / (args.gpus * single["tokens_per_s"])
        out["ddp"] = {
            "single_tokens_per_s": single["tokens_per_s"],
            "multi_tokens_per_s": multi["tokens_per_s"],
            "gpus": args.gpus,
            "scaling_efficiency": eff,
            "multi_mfu": multi["mfu"],
        }
        print(
            f"DDP {args.config} b{args.batch}/GPU x {args.seq_len}: 1 GPU {single['tokens_per_s']:,.0f} tok/s, "
            f"{args.gpus} GPUs {multi['tokens_per_s']:,.0f} tok/s = {eff:.1%} of {args.gpus}x one GPU"
        )

        fvocab = load_config(args.fsdp_config).model.vocab_size
        fdata = make_random_data(tmp / "fdata", fvocab, 8 * 1024 * args.gpus * (args.fsdp_steps + 5) + 1, 8 * 1024 * 4)
        kw = dict(
            nproc=args.gpus,
            steps=args.fsdp_steps,
            batch=8,
            seq=1024,
            compile=False,
            log_every=1,
            extra=["train.precision=fp32"],
        )
        ddp = train(args.fsdp_config, fdata, tmp / "f_ddp", mode="ddp", **kw)
        fsdp = train(args.fsdp_config, fdata, tmp / "f_fsdp", mode="fsdp", **kw)
        pairs = [(a["step"], a["loss"], b["loss"]) for a, b in zip(ddp, fsdp) if "loss" in a and "loss" in b]
        worst = max(abs(a - b) for _, a, b in pairs)
        out["fsdp_vs_ddp"] = {
            "steps": len(pairs),
            "max_abs_loss_diff": worst,
            "losses": [[s, a, b] for s, a, b in pairs],
        }
        print(
            f"FSDP2 vs DDP, {args.fsdp_config}, fp32, {len(pairs)} steps on {args.gpus} GPUs: "
            f"max |loss diff| = {worst:.2e}"
        )
        for s, a, b in pairs[:: max(1, len(pairs) // 5)]:
            print(f"  step {s:>3}: ddp {a:.6f}  fsdp {b:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
