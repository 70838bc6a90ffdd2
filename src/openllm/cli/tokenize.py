"""openllm tokenize --data DIR --tokenizer DIR --out DIR"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="a prepared corpus folder (train.jsonl, val.jsonl)")
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder from `openllm train-tokenizer`")
    p.add_argument("--out", required=True, help="output folder (shards, meta.json, tokenizer/)")
    p.add_argument("--workers", type=int, default=None, help="tokenizing processes (default: all cores)")
    p.add_argument(
        "--shard-tokens",
        type=int,
        default=100_000_000,
        help="start a new shard after about this many tokens (default 100,000,000)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_arguments(p, "one per byte range")


def add_engine_arguments(p: argparse.ArgumentParser, default_tasks: str) -> None:
    """--executor and its options (prepare-data has them too)."""
    g = p.add_argument_group("on a data engine (pip install 'openllm[data]'; docs/data.md)")
    g.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        default=None,
        help="run as a datatrove pipeline on this executor, resumable after a kill (default: the built-in path)",
    )
    g.add_argument("--tasks", type=int, default=None, help=f"datatrove tasks (default: {default_tasks})")
    g.add_argument("--work-dir", default=None, help="parts and datatrove logs (default: OUT.datatrove)")
    g.add_argument("--slurm-partition", default=None, help="Slurm partition (--executor slurm)")
    g.add_argument("--slurm-time", default=None, help="Slurm time limit per task, HH:MM:SS (--executor slurm)")
    g.add_argument("--slurm-venv", default=None, help="virtualenv activate script the Slurm jobs source")


def run(args: argparse.Namespace) -> int:
    if args.executor is not None:
        return _run_on_engine(args)
    from ..shards import tokenize_corpus

    meta = tokenize_corpus(
        args.data,
        args.tokenizer,
        args.out,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    _summary(args, meta)
    return 0


def _run_on_engine(args: argparse.Namespace) -> int:
    from ..dataengine import tokenize_on_engine

    meta = tokenize_on_engine(
        args.data,
        args.tokenizer,
        args.out,
        executor=args.executor,
        workers=args.workers,
        tasks=args.tasks,
        shard_tokens=args.shard_tokens,
        work_dir=args.work_dir,
        slurm=slurm_options(args),
        progress=not args.quiet and sys.stderr.isatty(),
    )
    if meta is None:
        print(f"submitted to Slurm: the shards appear in {args.out} when the merge job ends")
        return 0
    _summary(args, meta)
    return 0


def slurm_options(args: argparse.Namespace) -> dict | None:
    if args.executor != "slurm":
        return None
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time}
    if args.slurm_venv:
        slurm["venv_path"] = args.slurm_venv
    return slurm


def _summary(args: argparse.Namespace, meta: dict) -> None:
    for split, s in meta["splits"].items():
        print(f"{split:<6} {s['documents']:>10,} documents {s['tokens']:>14,} tokens in {len(s['shards'])} shard(s)")
    print(f"wrote {args.out}: {meta['dtype']}, vocab {meta['vocab_size']}, tokenizer {meta['tokenizer_sha256'][:16]}")
