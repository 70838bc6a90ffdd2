"""openllm evaluate RUN_OR_MODEL [--text FILE] [--tasks lambada,hellaswag,FILE.jsonl] [--limit N] [--json FILE]
[--harness]"""

from __future__ import annotations

import argparse
import sys

from .common import add_device_option, add_hub_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder, an export folder or OWNER/NAME@VERSION")
    p.add_argument("--text", metavar="FILE", help="score this UTF-8 text file instead of the run's val split")
    p.add_argument(
        "--data",
        metavar="DIR",
        help="tokenized data folder whose val split to score (default: the one the run trained on)",
    )
    p.add_argument(
        "--tasks",
        default="",
        metavar="LIST",
        help='comma-separated: lambada, hellaswag, NAME=PATH, or FILE.jsonl with {"context", "choices", "label"} lines',
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N items of each task")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    p.add_argument("--markdown", metavar="FILE", help="also write the markdown table to FILE")
    p.add_argument(
        "--harness",
        action="store_true",
        help="also run lm-evaluation-harness on the Hugging Face export, on the same local task files",
    )
    p.add_argument("--window", type=int, default=None, help="perplexity window (default: training seq_len)")
    p.add_argument("--stride", type=int, default=None, help="perplexity stride (default: window / 2)")
    p.add_argument("--max-tokens", type=int, default=None, help="score at most this many val tokens")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: by memory)")
    p.add_argument("--seeds", default="0,1", help="generation seeds (default 0,1)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens per generated sample (default 48)")
    p.add_argument("--no-generation", action="store_true", help="skip the generation samples")
    p.add_argument("--no-baselines", action="store_true", help="skip the random-init and unigram baselines")
    p.add_argument("--no-write", action="store_true", help="do not write RUN/evaluation.json")
    add_device_option(p)
    add_hub_option(p)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..device import resolve_device
    from ..errors import OpenLLMError
    from ..evaluate import evaluate, markdown
    from ..evaluate.generation_quality import GenerationSettings
    from .common import output_file

    output_file(args.json, "--json")
    output_file(args.markdown, "--markdown")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError as exc:
        raise OpenLLMError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from exc
    results = evaluate(
        args.model,
        text=args.text,
        data=args.data,
        tasks=args.tasks,
        limit=args.limit,
        window=args.window,
        stride=args.stride,
        max_tokens=args.max_tokens,
        generation=not args.no_generation,
        gen_settings=GenerationSettings(seeds=seeds or (0,), max_new_tokens=args.max_new_tokens),
        baselines=not args.no_baselines,
        harness=args.harness,
        batch_size=args.batch_size,
        device=resolve_device(args.device),
        json_path=args.json,
        write=not args.no_write,
        hub=args.hub,
    )
    table = markdown(results)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    for path in results.get("written", []):
        print(f"wrote {path}")
    for line in (results.get("harness") or {}).get("mismatches", []):
        print(f"warning: harness and openllm differ: {line}", file=sys.stderr)
    return 0
