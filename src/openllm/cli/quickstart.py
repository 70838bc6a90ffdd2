"""openllm quickstart [--out DIR]"""

from __future__ import annotations

import argparse

from .common import add_config_overrides, add_device_option, cpu_thread_policy, no_file_above


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="runs/quickstart", help="folder for everything the pipeline writes (default: runs/quickstart)"
    )
    p.add_argument("--config", default="tiny", help="config preset or JSON file (default: tiny)")
    add_config_overrides(p)
    p.add_argument("--max-steps", type=int, default=None, help="train for this many steps (default: the config's)")
    add_device_option(p)
    p.add_argument("--no-export", action="store_true", help="skip the exports")
    p.add_argument(
        "--no-evaluate-report",
        action="store_true",
        help="skip the evaluation report's extras (generations, baselines, evaluation.json); "
        "the val loss is still computed",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--chat",
        action="store_true",
        help="then fine-tune on synthetic conversations (SFT) and compare base and fine-tuned on held-out ones",
    )
    p.add_argument("--chat-steps", type=int, default=None, help="fine-tuning steps for --chat (default 150)")


def run(args: argparse.Namespace) -> int:
    cpu_thread_policy()
    from ..config import apply_overrides, load_config
    from ..device import resolve_device
    from ..quickstart import quickstart

    config = apply_overrides(load_config(args.config), args.set) if args.set else args.config
    from pathlib import Path

    from ..errors import OpenLLMError

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OpenLLMError(f"--out {args.out} is a file: the quickstart writes a folder; choose another path")
    no_file_above(args.out, "--out")
    result = quickstart(
        args.out,
        config=config,
        max_steps=args.max_steps,
        device=resolve_device(args.device),
        progress=not args.no_progress,
        export=not args.no_export,
        evaluate=not args.no_evaluate_report,
        chat=args.chat,
        chat_steps=args.chat_steps,
    )
    return 0 if result.val_loss < result.unigram_loss else 1
