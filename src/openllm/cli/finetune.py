"""openllm finetune MODEL --data CONVERSATIONS --out RUN [--val FILE] [--lora] [--max-steps N] [--resume]
openllm finetune --make-data OUT [--conversations N] [--seed S]
openllm finetune MODEL --evaluate CONVERSATIONS [--base MODEL] [--samples N] [--json FILE]

Under ``torchrun`` every process runs this and the fine-tune uses DDP, as ``openllm train`` does.
"""

from __future__ import annotations

import argparse
import json
import os

from .common import add_config_overrides, add_device_option, add_hub_option, cpu_thread_policy, output_file


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", help="base model: a run, an export or OWNER/NAME@VERSION (optional when resuming)"
    )
    p.add_argument(
        "--data", help='conversations to train on: JSON Lines, {"messages": [...]} or {"prompt", "response"} a line'
    )
    p.add_argument(
        "--val",
        help="held-out conversations: the val-loss estimate during training, and base vs "
        "fine-tuned assistant-token loss at the end",
    )
    p.add_argument("--out", help="run folder for the fine-tune (an existing one with checkpoints resumes)")
    p.add_argument(
        "--lora",
        action="store_true",
        help="train LoRA adapters (peft) instead of every weight; checkpoints hold the merged weights",
    )
    p.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 16)")
    p.add_argument(
        "--too-long",
        choices=("drop", "truncate", "error"),
        default="drop",
        help="a conversation longer than the context: drop it and count it (default), truncate it, "
        "or stop with an error",
    )
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default 200)")
    p.add_argument("--save-every", type=int, default=None, help="override train.save_every")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the run folder's latest checkpoint (or the given one)",
    )
    add_config_overrides(p)
    add_device_option(p)
    add_hub_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--make-data",
        metavar="OUT",
        help="write a synthetic conversation set (train.jsonl, val.jsonl, about.json) into OUT (a new or empty "
        "folder, or an earlier set) and stop: passages of the corpus MODEL (a run, or its tokenized data) trained "
        "on; without MODEL, verse questions about the embedded corpus",
    )
    p.add_argument("--conversations", type=int, default=2000, help="--make-data: how many (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="--make-data: the seed (default 0)")
    p.add_argument(
        "--evaluate",
        metavar="CONVERSATIONS",
        help="score MODEL on these conversations (assistant-token loss, greedy samples) and stop",
    )
    p.add_argument("--base", help="--evaluate: also score this base model on the same conversations")
    p.add_argument("--samples", type=int, default=3, help="greedy samples to show (default 3)")
    p.add_argument(
        "--tasks",
        default="",
        help="--evaluate: also score these tasks (as openllm evaluate --tasks) in base and chat form",
    )
    p.add_argument("--limit", type=int, default=None, help="--evaluate: items per task")
    p.add_argument("--json", help="write the evaluation as JSON to this file")


def run(args: argparse.Namespace) -> int:
    from ..errors import OpenLLMError

    output_file(args.json, "--json")
    for option, value in (("--lora-rank", args.lora_rank), ("--samples", args.samples)):
        if value is not None and value < (1 if option == "--lora-rank" else 0):
            raise OpenLLMError(f"{option} must be at least {1 if option == '--lora-rank' else 0}, got {value}")
    if args.lora_alpha is not None and not (0 < args.lora_alpha < float("inf")):
        raise OpenLLMError(f"--lora-alpha must be a positive number, got {args.lora_alpha}")

    if args.make_data:
        from ..conversations import write_synthetic_set

        about = write_synthetic_set(args.make_data, args.conversations, seed=args.seed, source=args.model)
        files = ", ".join(f"{k} ({v['conversations']})" for k, v in about["files"].items())
        print(f"{args.make_data}: {files}; {about['note']}")
        return 0
    cpu_thread_policy()
    from ..device import resolve_device

    if args.evaluate:
        if not args.model:
            raise OpenLLMError("give the MODEL to evaluate: openllm finetune MODEL --evaluate CONVERSATIONS")
        print_chat_eval(_evaluate(args.model, args.evaluate, args.base, args, resolve_device(args.device)))
        return 0
    if not args.out:
        raise OpenLLMError("give --out RUN: the run folder of the fine-tune")
    from ..config import parse_overrides
    from ..finetune import finetune

    overrides = parse_overrides(args.set)
    lora = None
    if args.lora or args.lora_rank is not None or args.lora_alpha is not None:
        lora = {k: v for k, v in (("rank", args.lora_rank), ("alpha", args.lora_alpha)) if v is not None} or True
    device = resolve_device(args.device)
    result = finetune(
        args.model,
        args.data,
        args.out,
        val_data=args.val,
        lora=lora,
        too_long=args.too_long,
        max_steps=args.max_steps,
        save_every=args.save_every,
        overrides=overrides or None,
        resume=args.resume,
        device=device,
        hub=args.hub,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") != "0":
        return 0
    print(f"run folder: {result.run_dir}  ({result.state} at step {result.step}; checkpoint {result.checkpoint})")
    if args.val and result.state == "finished":
        from ..finetune import finetune_record

        base = (finetune_record(result.run_dir) or {}).get("base", {}).get("source")
        print_chat_eval(_evaluate(str(result.run_dir), args.val, base, args, device))
    return 0


def _evaluate(model: str, data: str, base: str | None, args: argparse.Namespace, device: str) -> dict:
    from ..evaluate.chat import evaluate_chat

    res = evaluate_chat(
        model,
        data,
        base=base,
        samples=args.samples,
        device=device,
        hub=args.hub,
        tasks=getattr(args, "tasks", "") or (),
        limit=getattr(args, "limit", None),
    )
    if args.json:
        from ..fsio import write_json_atomic

        write_json_atomic(args.json, res)
    return res


def print_chat_eval(res: dict) -> None:
    """Print :func:`openllm.evaluate.chat.evaluate_chat`'s result as a short table and the samples."""
    rows = [("fine-tuned" if "base" in res else "model", res)] + ([("base", res["base"])] if "base" in res else [])
    print(
        f"assistant-token loss on {res['data']} ({res['assistant_tokens']} tokens, "
        f"{res['conversations']} conversations):"
    )
    for name, r in rows:
        rate = ""
        if "ended_turn_rate" in r:
            rate = f", answered and ended its turn in {r['ended_turn_rate']:.0%} of samples"
            rate += f" (empty replies {r['empty_reply_rate']:.0%})" if r.get("empty_reply_rate") else ""
        print(f"  {name:<10} {r['assistant_loss']:.4f} (ppl {r['assistant_ppl']:.2f}){rate}  [{r['model']}]")
    for name, r in rows:
        for task, forms in (r.get("tasks") or {}).items():
            print(
                f"  {name:<10} {task}: "
                + ", ".join(
                    f"{form} acc {m['acc']:.3f}" + (f" acc_norm {m['acc_norm']:.3f}" if "acc_norm" in m else "")
                    for form, m in forms.items()
                )
                + f" (n={forms['chat_form']['n']})"
            )
    for name, r in rows:
        for s in r.get("samples", []):
            q = s["messages"][-1]["content"] if s["messages"] else ""
            print(
                f"  {name}: {json.dumps(q)[:80]} -> {json.dumps(s['reply'])[:100]}"
                f"{' (empty)' if s.get('empty') else '' if s['ended_turn'] else ' (no EOS)'}"
            )
