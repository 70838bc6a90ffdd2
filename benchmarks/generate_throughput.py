"""Generation throughput on CPU, side by side: our ``openllm.generate``, transformers' ``generate`` on the
Hugging Face export, and onnxruntime on the ONNX export (greedy, KV cache everywhere).

    python benchmarks/generate_throughput.py                      # tiny and small shapes, batch 1 and 8
    python benchmarks/generate_throughput.py --shapes tiny --batches 1 --new-tokens 32 --repeats 3

Weights are random (seeded): throughput does not depend on what the weights say, only on their shapes; every
engine generates exactly ``--new-tokens`` tokens (no stop token). Each engine runs once to warm up, then the
engines take turns ``--repeats`` times and medians are reported, so background load hits all of them alike.
Tokens/s counts new tokens of the whole batch (prompt pass included) per CPU second of this process (one
thread: the engine's own work, robust to other processes on a shared machine); the wall-clock ratio is
printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(shape: str, seed: int):
    import torch

    from openllm.config import load_config
    from openllm.loading import LoadedModel
    from openllm.model import Transformer

    cfg = load_config(shape)
    torch.manual_seed(seed)
    model = Transformer(cfg.model).eval()
    return LoadedModel(model=model, tokenizer=None, config=cfg, source=shape, path=Path(shape), kind="native")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,small", help="config presets (default tiny,small)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for every engine (default 1)")
    ap.add_argument("--engines", default="ours,transformers,onnxruntime")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import transformers

    from openllm.export.hf import export_hf
    from openllm.export.onnx import OnnxRunner, export_onnx
    from openllm.generate import SamplingParams, generate

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    engines = args.engines.split(",")
    rows = []
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads}, "
        f"prompt {args.prompt_len} + {args.new_tokens} new tokens, median of {args.repeats}",
        flush=True,
    )
    for shape in args.shapes.split(","):
        loaded = build(shape, args.seed)
        c = loaded.config.model
        tmp = Path(tempfile.mkdtemp(prefix=f"throughput-{shape}-"))
        runners = {}
        if "transformers" in engines:
            from transformers import AutoModelForCausalLM

            export_hf(loaded, tmp / "hf")
            hf = AutoModelForCausalLM.from_pretrained(tmp / "hf").eval()
        if "onnxruntime" in engines:
            export_onnx(loaded, tmp / "onnx")
            ort_runner = OnnxRunner(tmp / "onnx", threads=args.threads)
        for B in [int(b) for b in args.batches.split(",")]:
            rng = np.random.default_rng(args.seed + B)
            prompts = [rng.integers(4, c.vocab_size, args.prompt_len).tolist() for _ in range(B)]
            N = args.new_tokens
            params = SamplingParams(max_new_tokens=N, temperature=0)
            ids = torch.tensor(prompts)

            def ours():
                return generate(loaded.model, prompts, params)

            def theirs():
                with torch.no_grad():
                    out = hf.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=N,
                        min_new_tokens=N,
                        do_sample=False,
                        eos_token_id=None,
                        pad_token_id=0,
                    )
                return out[:, args.prompt_len :].tolist()

            def onnx():
                return ort_runner.generate(prompts, N)

            runners = {"ours": ours, "transformers": theirs, "onnxruntime": onnx}
            runners = {k: v for k, v in runners.items() if k in engines}
            times: dict[str, list[float]] = {k: [] for k in runners}
            cpu: dict[str, list[float]] = {k: [] for k in runners}
            outputs = {}
            for name, fn in runners.items():  # warm-up, and the tokens for the agreement check
                outputs[name] = fn()
            for _ in range(args.repeats):
                for name, fn in runners.items():
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
            # CPU seconds of this process: on a shared machine other processes' load inflates wall time at
            # random, CPU time much less (with one thread, CPU time = the engine's own work)
            tps = {k: B * N / statistics.median(v) for k, v in cpu.items()}
            best = {k: B * N / statistics.median(v) for k, v in times.items()}
            same = {k: outputs[k] == outputs["ours"] for k in outputs if k != "ours" and "ours" in outputs}
            row = {
                "shape": shape,
                "batch": B,
                "tokens_per_cpu_s": tps,
                "tokens_per_wall_s": best,
                "same_tokens_as_ours": same,
                "wall_seconds": times,
                "cpu_seconds": cpu,
            }
            rows.append(row)
            ratio = {k: tps["ours"] / tps[k] for k in tps if k != "ours" and "ours" in tps}
            cells = "  ".join(f"{k} {v:7.1f}" for k, v in tps.items())
            rats = "  ".join(f"ours/{k} {v:.2f}x" for k, v in ratio.items())
            wall_ratio = {k: best["ours"] / best[k] for k in best if k != "ours" and "ours" in best}
            rats += "  (wall clock: " + ", ".join(f"{v:.2f}x" for v in wall_ratio.values()) + ")"
            print(
                f"{shape:6s} batch {B:2d}  tok/CPU-s: {cells}  |  {rats}  | same tokens: {all(same.values())}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
