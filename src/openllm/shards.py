"""Tokenize a prepared corpus into flat token shards (format: docs/architecture.md, "Tokenized data").

Each split's ``.jsonl`` is cut into byte ranges on line boundaries; worker processes each load the tokenizer,
parse and encode their range, and return the ids with EOS after every document. The parent writes the
results in input order, so the shards are the same for any number of workers.

Workers are forked on Linux: spawning re-imports the caller's ``__main__`` (which fails for ``python -`` and
notebooks), and the workers only touch SentencePiece and numpy, never torch's thread pools. A worker that
dies surfaces as an error (``concurrent.futures`` marks the pool broken) instead of a hang.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OpenLLMError
from .fsio import atomic_output_dir
from .hashing import sha256_file
from .prepare import REPORT_JSON, TRAIN_FILE, VAL_FILE
from .tokenizer import EOS_ID, Tokenizer

__all__ = [
    "tokenize_corpus",
    "plan_tokenize",
    "write_tokenized",
    "encode_range",
    "TokenizePlan",
    "dtype_for_vocab",
    "DEFAULT_SHARD_TOKENS",
]

DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB of uint16 per shard
SPLITS = {"train": TRAIN_FILE, "val": VAL_FILE}
META_FILE = "meta.json"


def dtype_for_vocab(vocab_size: int) -> str:
    """``uint16`` while every id fits (vocab <= 65,535), else ``uint32``."""
    return "uint16" if vocab_size <= 65535 else "uint32"


def _plan_ranges(path: Path, chunk_bytes: int) -> list[tuple[int, int]]:
    """Byte ranges of ``path`` about ``chunk_bytes`` long, each ending at a line end."""
    size = path.stat().st_size
    ranges, start = [], 0
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            if f.tell() < size:
                f.readline()
            end = f.tell()
            ranges.append((start, end))
            start = end
    return ranges


_WORKER_TOKENIZER: dict[str, Tokenizer] = {}


def encode_range(job: tuple[str, str, int, int, str]) -> tuple[np.ndarray, int, int]:
    """Worker: encode the documents in one byte range; returns (ids with EOS after each, documents, bytes)."""
    model_path, path, start, end, dtype = job
    tok = _WORKER_TOKENIZER.get(model_path)
    if tok is None:
        tok = _WORKER_TOKENIZER[model_path] = Tokenizer.load(model_path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    texts = []
    for _n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError) as exc:
            raise OpenLLMError(
                f'{path}: a line near byte {start} is not a {{"text": ...}} object; '
                "re-create the folder with `openllm prepare-data`"
            ) from exc
    encoded = tok.encode_batch(texts)
    total = sum(len(ids) for ids in encoded) + len(encoded)
    out = np.empty(total, dtype=dtype)
    pos = 0
    for ids in encoded:
        out[pos : pos + len(ids)] = ids
        pos += len(ids)
        out[pos] = EOS_ID
        pos += 1
    return out, len(texts), len(data)


@dataclass
class TokenizePlan:
    """What tokenizing a prepared corpus will do: the tokenizer, the id dtype and each split's byte ranges
    (``jobs``: the arguments of :func:`encode_range`, in the order their ids go into the shards)."""

    data: Path
    tok: Tokenizer
    dtype: str
    jobs: dict[str, list[tuple[str, str, int, int, str]]]
    total_bytes: int
    workers: int
    chunk_bytes: int


def plan_tokenize(
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_bytes: int | None = None,
) -> TokenizePlan:
    """Check the inputs and cut each split into byte ranges. The shard boundaries depend on these ranges (a
    shard is cut between ranges), so every engine that tokenizes the corpus starts from this plan."""
    data = Path(data_dir)
    if data.exists() and not data.is_dir():  # a text file given where its prepared folder belongs
        raise OpenLLMError(
            f"--data {data} is a file; tokenize wants a prepared-data folder (train.jsonl, val.jsonl): "
            f"make one with `openllm prepare-data {data} --out DIR`, then pass --data DIR"
        )
    if not data.is_dir():
        raise OpenLLMError(f"--data {data} not found; create it with `openllm prepare-data INPUT --out DIR`")
    missing = [name for name in SPLITS.values() if not (data / name).is_file()]
    if missing:
        raise OpenLLMError(
            f"{data} is not a prepared corpus (missing {', '.join(missing)}); "
            "create it with `openllm prepare-data INPUT --out DIR`"
        )
    if shard_tokens <= 0:
        raise OpenLLMError(f"--shard-tokens must be a positive number of tokens, got {shard_tokens}")
    if workers is not None and workers < 1:
        raise OpenLLMError(f"--workers must be at least 1 (or left out for one per core), got {workers}")
    tok = Tokenizer.load(tokenizer_dir)
    dtype = dtype_for_vocab(tok.vocab_size)
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))

    total_bytes = sum((data / name).stat().st_size for name in SPLITS.values())
    if chunk_bytes is None:  # a few chunks per worker for balance, not so small that overhead shows
        chunk_bytes = min(8 << 20, max(256 << 10, total_bytes // (n_workers * 4) + 1))
    jobs = {
        split: [(str(tok.model_path), str(data / name), s, e, dtype) for s, e in _plan_ranges(data / name, chunk_bytes)]
        for split, name in SPLITS.items()
    }
    n_jobs = sum(len(j) for j in jobs.values())
    return TokenizePlan(data, tok, dtype, jobs, total_bytes, min(n_workers, max(1, n_jobs)), chunk_bytes)


def tokenize_corpus(
    data_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_bytes: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize ``data_dir`` (a prepared corpus: train.jsonl, val.jsonl) with the tokenizer in
    ``tokenizer_dir`` into ``out_dir``; returns the ``meta.json`` dict.

    ``workers``: processes (default: the CPU count; 1 runs in this process). ``shard_tokens``: a new shard
    starts (at a document boundary) once a shard holds about this many tokens.
    """
    plan = plan_tokenize(data_dir, tokenizer_dir, workers=workers, shard_tokens=shard_tokens, chunk_bytes=chunk_bytes)
    pool = None
    if plan.workers > 1:
        import multiprocessing as mp
        import sys
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool = ProcessPoolExecutor(plan.workers, mp_context=ctx)
    try:
        return write_tokenized(
            plan,
            out_dir,
            lambda jobs: pool.map(encode_range, jobs) if pool is not None else map(encode_range, jobs),
            shard_tokens=shard_tokens,
            progress=progress,
        )
    finally:
        if pool is not None:  # every result was consumed, or an error makes the rest pointless
            pool.shutdown(wait=True, cancel_futures=True)


def write_tokenized(
    plan: TokenizePlan,
    out_dir: str | os.PathLike,
    encoded: Callable[[list[tuple[str, str, int, int, str]]], Iterable[tuple[np.ndarray, int, int]]],
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the shards, ``meta.json`` and ``tokenizer/`` into ``out_dir`` (atomically) from ``encoded(jobs)``:
    the :func:`encode_range` results of one split's jobs, in the jobs' order. The one place that decides the
    shard layout, whichever engine did the encoding."""
    from tqdm import tqdm

    data, tok = plan.data, plan.tok
    meta: dict[str, Any] = {
        "format": "openllm-tokens",
        "version": 1,
        "vocab_size": tok.vocab_size,
        "dtype": plan.dtype,
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
        "pad_id": tok.pad_id,
        "tokenizer_sha256": tok.sha256,
        "splits": {},
        "sources": {},
    }
    with atomic_output_dir(out_dir, owned_marker=META_FILE) as tmp:
        bar = tqdm(
            total=plan.total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress, mininterval=0.5
        )
        for split, split_jobs in plan.jobs.items():
            results = encoded(split_jobs)
            shards: list[str] = []
            shard_sizes: list[int] = []
            tokens = docs = 0
            f = None
            try:
                for ids, n_docs, n_bytes in results:
                    if len(ids) and (f is None or shard_sizes[-1] + len(ids) > shard_tokens and shard_sizes[-1] > 0):
                        if f is not None:
                            f.close()
                        shards.append(f"{split}_{len(shards):03d}.bin")
                        shard_sizes.append(0)
                        f = open(tmp / shards[-1], "wb")
                    if len(ids) and f is not None:  # (never None here: the test above opened one)
                        f.write(ids.astype("<" + ids.dtype.str[1:], copy=False).tobytes())
                        shard_sizes[-1] += len(ids)
                    tokens += len(ids)
                    docs += n_docs
                    bar.update(n_bytes)
            finally:
                if f is not None:
                    f.close()
            src = data / SPLITS[split]
            meta["splits"][split] = {
                "shards": shards,
                "shard_tokens": shard_sizes,
                "tokens": tokens,
                "documents": docs,
                "bytes": src.stat().st_size,
            }
            meta["sources"][SPLITS[split]] = {"sha256": sha256_file(src), "bytes": src.stat().st_size}
        bar.close()
        if meta["splits"]["train"]["tokens"] == 0:
            raise OpenLLMError(f"{data}/{TRAIN_FILE} holds no documents; nothing to train on")
        if (data / REPORT_JSON).is_file():
            try:
                report = json.loads((data / REPORT_JSON).read_text(encoding="utf-8"))
                meta["prepared_from"] = report.get("sources", [])
            except ValueError:
                pass
        tok.save(tmp / "tokenizer")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
