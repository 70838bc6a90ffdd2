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


def run(args: argparse.Namespace) -> int:
    from ..shards import tokenize_corpus

    meta = tokenize_corpus(
        args.data,
        args.tokenizer,
        args.out,
        workers=args.workers,
        shard_tokens=args.shard_tokens,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    for split, s in meta["splits"].items():
        print(f"{split:<6} {s['documents']:>10,} documents {s['tokens']:>14,} tokens in {len(s['shards'])} shard(s)")
    print(f"wrote {args.out}: {meta['dtype']}, vocab {meta['vocab_size']}, tokenizer {meta['tokenizer_sha256'][:16]}")
    return 0
