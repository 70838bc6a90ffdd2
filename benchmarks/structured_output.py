"""The cost of structured output in ``openllm serve``'s engine on CPU: time per generated token with a JSON
schema (llguidance masks the sequence's logits at every step) against the same request unconstrained, at batch
1 and with 8 sequences decoding together (half of them constrained).

    python benchmarks/structured_output.py                 # tiny preset, random weights
    python benchmarks/structured_output.py --preset small --tokens 128

The model has random weights and its EOS row is zeroed, so every sequence generates exactly ``--tokens``
tokens: under the schema below (an array of strings, which never has to end) the constrained text is a valid
prefix all along. Each case runs ``--repeats`` times, the cases taking turns; medians of CPU time per token (this
process, one torch thread) are printed with the ratio constrained / unconstrained.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# an array of at least 64 strings: with random weights the document cannot end before --tokens
SCHEMA = {"type": "array", "items": {"type": "string"}, "minItems": 64}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from serve_throughput import export_random_model, train_bench_tokenizer

    import openllm
    from openllm.constrain import json_schema_grammar
    from openllm.sampling import SamplingParams
    from openllm.serve import Engine, Job, Seq

    tmp = tempfile.TemporaryDirectory()  # the grammar engine reads the tokenizer's file when it first needs it
    tok_dir = train_bench_tokenizer(Path(tmp.name))
    model_dir = export_random_model(args.preset, tok_dir, 0, 512, Path(tmp.name) / "hf")
    loaded = openllm.load(str(model_dir), device="cpu")
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=8).start()
    grammar = json_schema_grammar(SCHEMA)
    prompt = loaded.tokenizer.encode("Give me a list of names as JSON:")

    def run(batch: int, constrained: int) -> float:
        """CPU seconds per generated token for ``batch`` sequences, the first ``constrained`` with the schema."""
        events: queue.Queue = queue.Queue()
        seqs = [
            Seq(prompt=prompt, max_new=args.tokens, index=i, grammar=grammar if i < constrained else None)
            for i in range(batch)
        ]
        start = time.process_time()  # the engine runs on its own thread: the whole process's CPU time
        engine.submit(Job(seqs=seqs, sampling=SamplingParams(temperature=0), emit=events.put))
        done, tokens = 0, 0
        while done < batch:
            event = events.get(timeout=600)
            assert event[0] == "finish", event
            done, tokens = done + 1, tokens + event[3]
        return (time.process_time() - start) / tokens

    cases = {
        "batch 1, unconstrained": (1, 0),
        "batch 1, schema": (1, 1),
        "batch 8, none": (8, 0),
        "batch 8, 4 of 8": (8, 4),
    }
    for batch, constrained in cases.values():
        run(batch, constrained)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (batch, constrained) in cases.items():
            times[name].append(run(batch, constrained))
    engine.stop()
    tmp.cleanup()
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{args.preset} preset, random weights, {args.tokens} tokens a sequence, torch {torch.__version__}, 1 thread")
    for name, v in med.items():
        print(f"  {name:24s} {v * 1e3:7.2f} ms CPU per token")
    print(f"  ratio, batch 1: {med['batch 1, schema'] / med['batch 1, unconstrained']:.2f}x")
    print(f"  ratio, batch 8: {med['batch 8, 4 of 8'] / med['batch 8, none']:.2f}x")


if __name__ == "__main__":
    main()
