"""openllm export RUN --format native|hf|onnx|gguf --out DIR"""

from __future__ import annotations

import argparse

from .common import add_hub_option, no_file_above


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "source",
        metavar="RUN",
        help="a run folder (its latest checkpoint), an export folder, or OWNER/NAME@VERSION on the hub",
    )
    p.add_argument(
        "--format",
        required=True,
        help="native, hf, onnx or gguf; several with commas (e.g. hf,onnx go to OUT/hf and OUT/onnx)",
    )
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument(
        "--gguf-type", default="f16", help="GGUF tensor types: f32, f16, q8_0, several with commas (default f16)"
    )
    add_hub_option(p)


def run(args: argparse.Namespace) -> int:
    from ..export import export, parse_formats, parse_gguf_types

    formats = parse_formats(args.format)  # fail on a bad format before loading anything
    parse_gguf_types(args.gguf_type)
    no_file_above(args.out, "--out")
    folders = export(args.source, args.out, formats, overwrite=args.overwrite, gguf_types=args.gguf_type, hub=args.hub)
    for fmt, folder in folders.items():
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        print(f"{fmt:7s} {folder}  ({', '.join(files)})")
    return 0
