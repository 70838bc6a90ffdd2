"""Tokenization throughput: `openllm tokenize` (1 and 2 processes) against a plain SentencePiece loop.

For each file in ../shared/data (or the folder given as the first argument): prepare it once, then time, side
by side on the same prepared corpus and the same tokenizer (BPE, vocab 8192, trained on Tiny Shakespeare and
WikiText-2):

  baseline  a plain single-process loop: read each jsonl line, json-parse it, ``sp.encode(text)``, append
            EOS, and write the ids as uint16 (what a hand-written nanoGPT-style script does)
  ours x1   ``tokenize_corpus(workers=1)`` (also hashes the sources, copies the tokenizer, writes meta.json)
  ours x2   ``tokenize_corpus(workers=2)``

Throughput = UTF-8 bytes of the documents / wall time, best of ``--repeat`` runs; the CPU seconds per MB of
that run (all processes) are printed too, since on a busy machine wall time says little about 2 processes.
The token streams of all three are checked to be identical.
Run:  python benchmarks/tokenize_throughput.py [DATA_DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from openllm.prepare import prepare_corpus
from openllm.shards import tokenize_corpus
from openllm.tokenizer import EOS_ID, train_tokenizer

FILES = [
    ("tinyshakespeare.txt", "text"),
    ("wikitext2_raw_test.txt", "text"),
    ("lambada_test.jsonl", "text"),
    ("hellaswag_val_full.txt", "text"),
]


def baseline(data: Path, model: Path, out: Path) -> np.ndarray:
    """The peer: one process, one document at a time, straight SentencePiece."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    out.mkdir(parents=True, exist_ok=True)
    streams = []
    for split in ("train", "val"):
        ids: list[int] = []
        with open(data / f"{split}.jsonl", encoding="utf-8") as f:
            for line in f:
                ids.extend(sp.encode(json.loads(line)["text"]))
                ids.append(EOS_ID)
        arr = np.array(ids, dtype=np.uint16)
        arr.tofile(out / f"{split}.bin")
        streams.append(arr)
    return np.concatenate(streams)


def ours_stream(out: Path, meta: dict) -> np.ndarray:
    return np.concatenate(
        [np.fromfile(out / n, dtype="<u2") for s in ("train", "val") for n in meta["splits"][s]["shards"]]
    )


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers are joined before we read it)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best_time(fn, repeat: int):
    """(best wall seconds, CPU seconds of that run, result) over ``repeat`` runs."""
    runs, result = [], None
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        result = fn()
        runs.append((time.perf_counter() - t0, _cpu() - c0))
    wall, cpu = min(runs)
    return wall, cpu, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vocab-size", type=int, default=8192)
    args = ap.parse_args()
    src = Path(args.data_dir)
    if not src.is_dir():
        print(f"no data folder {src}", file=sys.stderr)
        return 2
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}, repeat: best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        tok = train_tokenizer(
            [src / "tinyshakespeare.txt", src / "wikitext2_raw_test.txt"],
            tmp / "tok",
            vocab_size=args.vocab_size,
            progress=False,
        )
        header = (
            f"{'file':<24} {'MB':>6} {'baseline MB/s':>14} {'ours x1 MB/s':>13} {'ours x2 MB/s':>13} "
            f"{'x1/base':>8} {'x2/base':>8} {'x2/x1':>6}   CPU s/MB: base  x1    x2"
        )
        print(header)
        print("-" * len(header))
        totals = {"base": 0.0, "one": 0.0, "two": 0.0, "mb": 0.0}
        for name, field in FILES:
            if not (src / name).is_file():
                continue
            data = tmp / f"data-{name}"
            report = prepare_corpus([src / name], data, field=field, progress=False)
            mb = (report["bytes"]["train"] + report["bytes"]["val"]) / 1e6
            t_base, c_base, ref = best_time(lambda: baseline(data, tok.model_path, tmp / "base"), args.repeat)
            t_one, c_one, meta1 = best_time(
                lambda: tokenize_corpus(data, tok.dir, tmp / "one", workers=1, progress=False), args.repeat
            )
            t_two, c_two, meta2 = best_time(
                lambda: tokenize_corpus(data, tok.dir, tmp / "two", workers=2, progress=False), args.repeat
            )
            if not (
                np.array_equal(ref, ours_stream(tmp / "one", meta1))
                and np.array_equal(ref, ours_stream(tmp / "two", meta2))
            ):
                print(f"{name}: token streams differ", file=sys.stderr)
                return 1
            totals["base"] += t_base
            totals["one"] += t_one
            totals["two"] += t_two
            totals["mb"] += mb
            print(
                f"{name:<24} {mb:>6.2f} {mb / t_base:>14.2f} {mb / t_one:>13.2f} {mb / t_two:>13.2f} "
                f"{t_base / t_one:>8.2f} {t_base / t_two:>8.2f} {t_one / t_two:>6.2f}   "
                f"{c_base / mb:>5.2f} {c_one / mb:>5.2f} {c_two / mb:>5.2f}"
            )
            for k, v in (("cbase", c_base), ("cone", c_one), ("ctwo", c_two)):
                totals[k] = totals.get(k, 0.0) + v
        mb = totals["mb"]
        print("-" * len(header))
        print(
            f"{'all':<24} {mb:>6.2f} {mb / totals['base']:>14.2f} {mb / totals['one']:>13.2f} "
            f"{mb / totals['two']:>13.2f} {totals['base'] / totals['one']:>8.2f} "
            f"{totals['base'] / totals['two']:>8.2f} {totals['one'] / totals['two']:>6.2f}   "
            f"{totals['cbase'] / mb:>5.2f} {totals['cone'] / mb:>5.2f} {totals['ctwo'] / mb:>5.2f}"
        )
        print("ratios > 1: faster than the column it is divided by; token streams identical in all three")
    return 0


if __name__ == "__main__":
    sys.exit(main())
