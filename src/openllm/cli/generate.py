"""openllm generate MODEL --prompt TEXT [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
[--repetition-penalty R] [--seed S] [--stream]"""

from __future__ import annotations

import argparse
import sys

from .common import add_device_option, add_hub_option, utf8_text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a run folder (latest checkpoint), an export folder, or OWNER/NAME@VERSION on the hub",
    )
    p.add_argument("--prompt", action="append", required=True, help="text to continue; repeat for a batch of prompts")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with mass p")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated (one prompt)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantization (CPU): faster, slightly less exact")
    add_device_option(p)
    add_hub_option(p)


def run(args: argparse.Namespace) -> int:
    from ..device import AUTO, resolve_device
    from ..errors import OpenLLMError
    from ..generate import SamplingParams, generate_text, stream_text
    from ..loading import load

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
    try:
        params.validate()
    except ValueError as exc:
        raise OpenLLMError(f"bad sampling option: {exc}") from exc
    args.prompt = [utf8_text(p, "--prompt") for p in args.prompt]
    if args.stream and len(args.prompt) > 1:
        raise OpenLLMError("--stream takes one --prompt; drop --stream to generate a batch")
    # int8 kernels are CPU-only: with --int8, auto means the CPU
    device = "cpu" if args.int8 and args.device == AUTO else resolve_device(args.device)
    if args.int8 and device != "cpu":
        raise OpenLLMError("--int8 runs on the CPU: drop --device or --int8")
    loaded = load(args.model, device=device, hub=args.hub)
    model = loaded.model
    if args.int8:
        from ..export.quantize import quantize_int8

        model = quantize_int8(model, inplace=True)
    if loaded.tokenizer is None:
        raise OpenLLMError(f"{args.model} has no tokenizer (tokenizer.model): cannot generate from text")
    context = loaded.config.model.max_seq_len
    # checked here, not only by the decode loop: its caches are sized by max_new_tokens before it checks
    if params.max_new_tokens >= context:
        raise OpenLLMError(
            f"--max-new-tokens {params.max_new_tokens} does not fit the model's context of {context} tokens "
            f"with a prompt: use at most {context - 1}"
        )
    try:
        if args.stream:
            sys.stdout.write(args.prompt[0])
            sys.stdout.flush()
            for piece in stream_text(model, loaded.tokenizer, args.prompt[0], params):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return 0
        outs = generate_text(model, loaded.tokenizer, args.prompt, params)
    except ValueError as exc:  # prompt longer than the context, and similar
        raise OpenLLMError(str(exc)) from exc
    for i, (prompt, text) in enumerate(zip(args.prompt, outs)):
        if len(outs) > 1:
            print(f"--- {i + 1}")
        print(prompt + text)
    return 0
