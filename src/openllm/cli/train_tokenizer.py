"""openllm train-tokenizer --data DIR --vocab-size N --out DIR"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        nargs="+",
        metavar="PATH",
        help="a prepared corpus folder (its train.jsonl is used), or .jsonl/.txt files",
    )
    p.add_argument("--vocab-size", type=int, required=True, help="number of tokens, special and byte pieces included")
    p.add_argument("--out", required=True, help="tokenizer folder to write (tokenizer.model + Hugging Face files)")
    p.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe", help="SentencePiece algorithm")
    p.add_argument(
        "--character-coverage",
        type=float,
        default=0.9995,
        help="share of characters covered by pieces; the rest use byte fallback (default 0.9995)",
    )
    p.add_argument(
        "--no-byte-fallback",
        dest="byte_fallback",
        action="store_false",
        help="unknown characters become <unk> instead of byte pieces",
    )
    p.add_argument(
        "--user-token",
        dest="user_tokens",
        action="append",
        default=[],
        metavar="TOKEN",
        help="an extra token kept whole, ids from 4 in the given order (repeatable)",
    )
    p.add_argument(
        "--max-sentences",
        type=int,
        default=2_000_000,
        help="train on at most this many lines, sampled uniformly (default 2,000,000)",
    )
    p.add_argument("--threads", type=int, default=None, help="training threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the line sample")
    p.add_argument("--field", default="text", help="text field of .jsonl inputs")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    from ..tokenizer import train_tokenizer

    tok = train_tokenizer(
        args.data,
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        byte_fallback=args.byte_fallback,
        user_tokens=args.user_tokens,
        max_sentences=args.max_sentences,
        threads=args.threads,
        seed=args.seed,
        field=args.field,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(
        f"wrote {args.out}: {args.model_type} vocab {tok.vocab_size}, pad=0 unk=1 bos=2 eos=3"
        + (f", user tokens {', '.join(args.user_tokens)} from 4" if args.user_tokens else "")
        + f", sha256 {tok.sha256[:16]}"
    )
    return 0
