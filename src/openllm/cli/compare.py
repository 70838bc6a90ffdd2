"""openllm compare A B ... [--plot FILE] [--json FILE] [--evaluate]"""

from __future__ import annotations

import argparse

from .common import add_hub_option


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="+",
        metavar="RUN_OR_MODEL",
        help="run folders, export folders or OWNER/NAME@VERSION references",
    )
    p.add_argument("--plot", metavar="FILE", help="write the runs' loss curves (metrics.jsonl) to this PNG")
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate (val split, no tasks) the sources that have no evaluation.json yet",
    )
    add_hub_option(p)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..compare import compare
    from .common import output_file

    output_file(args.json, "--json")
    res = compare(args.sources, plot=args.plot, evaluate_missing=args.evaluate, hub=args.hub)
    print(res["table"])
    if res["plot"]:
        print(f"\nwrote {res['plot']}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"models": res["models"], "plot": res["plot"]}, indent=2) + "\n", encoding="utf-8"
        )
        print(f"wrote {args.json}")
    return 0
