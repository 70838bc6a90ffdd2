"""openllm train --config FILE --data DIR --out RUN [--max-steps N] [--save-every N] [--resume]

Under ``torchrun --nproc_per_node=N -m openllm train ...`` every process runs this; the library sees
torchrun's environment and trains with DDP (or FSDP2 with ``--set train.distributed=fsdp``).
"""

from __future__ import annotations

import argparse

from .common import add_config_overrides, add_device_option, cpu_thread_policy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config JSON file or preset name (tiny, small, ...); optional when resuming")
    p.add_argument(
        "--data",
        action="append",
        help="tokenized data folder (from `openllm tokenize`); a mixture: --data DIR=WEIGHT for each folder, or a "
        'JSON file {"DIR": WEIGHT, ...}; optional when resuming',
    )
    p.add_argument("--out", required=True, help="run folder (created; an existing one with checkpoints resumes)")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--save-every", type=int, default=None, help="override train.save_every")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the run folder's latest checkpoint (or the given checkpoint folder); "
        "without this flag a run folder with checkpoints is resumed anyway",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse to start if --out already holds checkpoints (instead of resuming)",
    )
    add_device_option(p)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the model (override train.compile)",
    )
    add_config_overrides(p)
    p.add_argument(
        "--vocab-from-data",
        action="store_true",
        help="set model.vocab_size to the tokenized data's vocabulary instead of failing on a mismatch",
    )
    p.add_argument(
        "--report-to",
        default=None,
        metavar="TRACKERS",
        help="trackers that mirror metrics.jsonl, comma-separated: tensorboard, trackio, wandb, or none "
        "(override train.report_to; default tensorboard)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--on",
        default="local",
        metavar="WHERE",
        help="'local' (default: this machine) or 'hf-jobs[:FLAVOR]': a Hugging Face Job (flavor default "
        "a10g-small) that trains with torchrun on its GPUs and pushes checkpoints and metrics to --repo",
    )
    p.add_argument(
        "--repo",
        default=None,
        metavar="OWNER/NAME",
        help="with --on hf-jobs: the run's dataset repository on Hugging Face (inputs, checkpoints, metrics)",
    )


def run(args: argparse.Namespace) -> int:
    from ..app.hfjobs import parse_target

    flavor = parse_target(args.on)
    if flavor is not None:
        return _on_jobs(args, flavor)
    if args.repo:  # it would be ignored: the run stays on this machine and pushes nothing
        from ..errors import OpenLLMError

        raise OpenLLMError("--repo is the repository of a run on Hugging Face Jobs: add --on hf-jobs, or drop --repo")
    cpu_thread_policy()
    from ..batches import parse_data_arg
    from ..config import parse_overrides
    from ..device import resolve_device
    from ..train import train

    overrides = parse_overrides(args.set)  # a bad key fails before anything is read
    if args.report_to is not None:
        overrides.setdefault("train", {})["report_to"] = args.report_to
    resume = False if args.no_resume else args.resume
    result = train(
        args.config,
        data_dir=parse_data_arg(args.data),
        out_dir=args.out,
        max_steps=args.max_steps,
        save_every=args.save_every,
        resume=resume,
        device=resolve_device(args.device),
        compile=args.compile,
        overrides=overrides or None,
        vocab_from_data=args.vocab_from_data,
        progress=not args.no_progress,
    )
    if result is not None and _is_main():
        print(
            f"run folder: {result.run_dir}  ({result.state} at step {result.step}; "
            f"checkpoint {result.checkpoint}, metrics {result.run_dir / 'metrics.jsonl'})"
        )
    return 0


def _on_jobs(args: argparse.Namespace, flavor: str) -> int:
    """The run as a Hugging Face Job: its inputs to --repo, the job started, its logs streamed."""
    from pathlib import Path

    from ..app.hfjobs import JobRequest, launch
    from ..errors import OpenLLMError

    if not args.repo or not args.config or not args.data or len(args.data) != 1:
        raise OpenLLMError(
            "--on hf-jobs needs --repo OWNER/NAME, --config (a preset or a file) and one --data DIR (tokenized)"
        )
    from ..device import AUTO

    # the job trains the config file as it is: these would be dropped without a word
    ignored = [
        flag
        for flag, given in (
            ("--set", bool(args.set)),
            ("--report-to", args.report_to is not None),
            ("--resume", args.resume is not None),
            ("--no-resume", args.no_resume),
            ("--save-every", args.save_every is not None),
            ("--compile/--no-compile", args.compile is not None),
            ("--vocab-from-data", args.vocab_from_data),
            ("--device", args.device != AUTO),
        )
        if given
    ]
    if ignored:
        raise OpenLLMError(
            f"--on hf-jobs trains the --config as it is and does not take {', '.join(ignored)}: put those "
            f"settings in the config file, or train here without --on"
        )
    name = Path(args.out).name
    launch(JobRequest(name, args.config, Path(args.data[0]), args.repo, flavor, args.max_steps))
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
