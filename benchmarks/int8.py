"""Dynamic int8 quantization on CPU: speed-up and validation-loss change, fp32 and int8 side by side.

    python benchmarks/int8.py RUN_OR_EXPORT --text val.txt     # a trained model on held-out text
    python benchmarks/int8.py                                   # the small shape, random weights, random tokens

Measured for PyTorch (``openllm.export.quantize.quantize_int8``) and, with ``--onnx``, for onnxruntime
(``quantize_onnx_int8`` on the ONNX export): the validation loss over the same windows, the forward-pass
throughput (batch x sequence tokens scored per second) and greedy generation tokens/s at batch 1. Engines take
turns ``--repeats`` times; medians are reported, per CPU second of this process (one thread by default), which
other processes on a shared machine disturb far less than wall time. With random weights the loss change only
measures how far
int8 moves the logits; give a trained model for a meaningful figure.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def windows(args, loaded):
    """(N, T+1) token windows from --text (with the model's tokenizer), or random tokens."""
    import torch

    T = min(args.seq_len, loaded.config.model.max_seq_len - 1)
    if args.text and loaded.tokenizer is not None:
        raw = Path(args.text).read_text(encoding="utf-8")
        if args.text.endswith(".jsonl"):  # a prepared corpus split: one {"text": ...} document a line
            import json

            raw = "\n".join(json.loads(line)["text"] for line in raw.splitlines() if line.strip())
        ids = loaded.tokenizer.encode(raw)
        n = min(args.windows, len(ids) // (T + 1))
        if n == 0:
            raise SystemExit(f"{args.text} is too short for one window of {T + 1} tokens")
        return torch.tensor(ids[: n * (T + 1)]).view(n, T + 1), f"{args.text} ({n} windows of {T} tokens)"
    g = torch.Generator().manual_seed(0)
    data = torch.randint(4, loaded.config.model.vocab_size, (args.windows, T + 1), generator=g)
    return data, f"random tokens ({args.windows} windows of {T})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "model",
        nargs="?",
        default=None,
        help="run, export or OWNER/NAME@VERSION (default: small shape, random weights)",
    )
    ap.add_argument("--shape", default="small", help="preset for random weights when no model is given")
    ap.add_argument(
        "--text", default=None, help="held-out text for the validation loss (.txt, or a prepared corpus' val.jsonl)"
    )
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--onnx", action="store_true", help="also onnxruntime fp32 vs int8")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F

    import openllm
    from openllm.export.quantize import int8_engine, quantize_int8
    from openllm.generate import SamplingParams, generate

    torch.set_num_threads(args.threads)
    if args.model:
        loaded = openllm.load(args.model)
        what = args.model
    else:
        from openllm.config import load_config
        from openllm.loading import LoadedModel
        from openllm.model import Transformer

        cfg = load_config(args.shape)
        torch.manual_seed(0)
        loaded = LoadedModel(
            model=Transformer(cfg.model).eval(),
            tokenizer=None,
            config=cfg,
            source=args.shape,
            path=Path(args.shape),
            kind="native",
        )
        what = f"{args.shape} shape, random weights"
    fp32 = loaded.model
    int8 = quantize_int8(fp32)
    data, data_what = windows(args, loaded)
    print(f"model: {what}; data: {data_what}; threads {args.threads}; int8 engine {int8_engine()}")

    def val_loss(model):
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(data), args.batch):
                x = data[i : i + args.batch]
                logits = model(x[:, :-1])
                total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
                n += x[:, 1:].numel()
        return total / n

    def forward_speed(model):
        x = data[: args.batch, :-1]
        with torch.no_grad():
            t = time.process_time()
            model(x)
            return x.numel() / (time.process_time() - t)

    prompt = [data[0, :32].tolist()]
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0)

    def gen_speed(model):
        t = time.process_time()
        generate(model, prompt, params)
        return args.new_tokens / (time.process_time() - t)

    engines = {"torch fp32": fp32, "torch int8": int8}
    results = {k: {"loss": val_loss(m)} for k, m in engines.items()}
    fwd = {k: [] for k in engines}
    gen = {k: [] for k in engines}
    for m in engines.values():  # warm-up
        forward_speed(m), gen_speed(m)
    for _ in range(args.repeats):
        for k, m in engines.items():
            fwd[k].append(forward_speed(m))
            gen[k].append(gen_speed(m))
    for k in engines:
        results[k]["forward_tok_s"] = statistics.median(fwd[k])
        results[k]["generate_tok_s"] = statistics.median(gen[k])
    same = generate(fp32, prompt, params) == generate(int8, prompt, params)

    if args.onnx:
        from openllm.export.onnx import OnnxRunner, export_onnx, past_names
        from openllm.export.quantize import quantize_onnx_int8

        tmp = Path(tempfile.mkdtemp(prefix="int8-onnx-"))
        export_onnx(loaded, tmp)
        quantize_onnx_int8(tmp)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        c = loaded.config.model
        for name, file in (("onnxruntime fp32", "model.onnx"), ("onnxruntime int8", "model.int8.onnx")):
            sess = ort.InferenceSession(str(tmp / file), opts, providers=["CPUExecutionProvider"])

            def run(x):
                B, T = x.shape
                feeds = {
                    "input_ids": x.numpy(),
                    "attention_mask": np.ones((B, T), np.int64),
                    "position_ids": np.tile(np.arange(T), (B, 1)),
                    **{n: np.zeros((B, c.n_kv_heads, 0, c.head_dim), np.float32) for n in past_names(c.n_layers)[0]},
                }
                return torch.from_numpy(sess.run(["logits"], feeds)[0])

            total, n = 0.0, 0
            for i in range(0, len(data), args.batch):
                x = data[i : i + args.batch]
                total += F.cross_entropy(run(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
                n += x[:, 1:].numel()
            x = data[: args.batch, :-1]
            run(x)
            speeds = []
            for _ in range(args.repeats):
                t = time.process_time()
                run(x)
                speeds.append(x.numel() / (time.process_time() - t))
            runner = OnnxRunner(tmp, threads=args.threads)
            runner.past = sess
            runner.generate(prompt, args.new_tokens)
            gs = []
            for _ in range(args.repeats):
                t = time.process_time()
                runner.generate(prompt, args.new_tokens)
                gs.append(args.new_tokens / (time.process_time() - t))
            results[name] = {
                "loss": total / n,
                "forward_tok_s": statistics.median(speeds),
                "generate_tok_s": statistics.median(gs),
            }

    print(f"{'engine':18s} {'val loss':>9s} {'ppl':>9s} {'forward tok/s':>14s} {'generate tok/s':>15s}")
    for k, r in results.items():
        print(
            f"{k:18s} {r['loss']:9.4f} {math.exp(min(r['loss'], 50)):9.2f} {r['forward_tok_s']:14.1f} "
            f"{r['generate_tok_s']:15.1f}"
        )
    for base, q in (("torch fp32", "torch int8"), ("onnxruntime fp32", "onnxruntime int8")):
        if base in results and q in results:
            a, b = results[base], results[q]
            print(
                f"{q} vs {base}: forward {b['forward_tok_s'] / a['forward_tok_s']:.2f}x, generate "
                f"{b['generate_tok_s'] / a['generate_tok_s']:.2f}x, val loss {b['loss'] - a['loss']:+.4f} "
                f"({(b['loss'] - a['loss']) / a['loss'] * 100:+.2f}%)"
            )
    print(f"greedy tokens identical (torch fp32 vs int8, {args.new_tokens} tokens): {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
