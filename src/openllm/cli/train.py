"""openllm train --config FILE --data DIR --out RUN [--max-steps N] [--save-every N] [--resume]

Under ``torchrun --nproc_per_node=N -m openllm train ...`` every process runs this; the library sees
torchrun's environment and trains with DDP (or FSDP2 with ``--set train.distributed=fsdp``).
"""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config JSON file or preset name (tiny, small, ...); optional when resuming")
    p.add_argument("--data", help="tokenized data folder (from `openllm tokenize`); optional when resuming")
    p.add_argument("--out", required=True, help="run folder (created; an existing one with checkpoints resumes)")
    p.add_argument("--max-steps", type=int, default=None, help="override train.max_steps")
    p.add_argument("--save-every", type=int, default=None, help="override train.save_every")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="resume from the run folder's latest checkpoint (or the given checkpoint folder); "
                        "without this flag a run folder with checkpoints is resumed anyway")
    p.add_argument("--no-resume", action="store_true",
                   help="refuse to start if --out already holds checkpoints (instead of resuming)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (override train.compile)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field, e.g. --set train.lr=1e-3 (JSON values; repeatable)")
    p.add_argument("--vocab-from-data", action="store_true",
                   help="set model.vocab_size to the tokenized data's vocabulary instead of failing on a mismatch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_sets(items: list[str]) -> dict[str, dict]:
    from ..errors import OpenLLMError

    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise OpenLLMError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-3")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # a bare string such as train.schedule=wsd
        out.setdefault(section, {})[name] = parsed
    return out


def run(args: argparse.Namespace) -> int:
    _cpu_thread_policy()
    from ..train import train

    resume = False if args.no_resume else args.resume
    result = train(
        args.config, data_dir=args.data, out_dir=args.out, max_steps=args.max_steps,
        save_every=args.save_every, resume=resume, device=args.device, compile=args.compile,
        overrides=parse_sets(args.set) or None, vocab_from_data=args.vocab_from_data,
        progress=not args.no_progress,
    )
    if result is not None and _is_main():
        print(f"run folder: {result.run_dir}  ({result.state} at step {result.step}; "
              f"checkpoint {result.checkpoint}, metrics {result.run_dir / 'metrics.jsonl'})")
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _cpu_thread_policy() -> None:
    """Before torch loads OpenMP: idle threads sleep instead of spinning. On a CPU shared with other busy
    processes, spinning threads starve their own team mates (measured on 2 shared cores: 5.5 s per tiny step
    spinning, 1.2 s sleeping); on an idle machine it costs little. An explicit OMP_WAIT_POLICY wins."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
