"""Loss over a whole token stream with a fixed window and stride (the Hugging Face "perplexity of fixed-length
models" recipe), and the byte counts that turn it into bits per byte.

Window plan for a stream ``t[0..N-1]``: target ``t[j]`` (j >= 1) is predicted from the tokens before it.
Window ``k`` feeds ``t[k*stride : k*stride + window]`` and scores only the targets no earlier window scored,
so every target is scored exactly once and, after the first window, with at least ``window - stride`` tokens
of context. ``stride == window`` gives non-overlapping windows (the training loop's val loss); a smaller
stride gives each token more context at proportionally more compute.

Works with any ``model(idx) -> logits`` (our Transformer, a ``transformers`` causal LM whose output has
``.logits``, the unigram baseline).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..hashing import sha256_bytes
from . import metrics

__all__ = [
    "StreamScore",
    "EvalText",
    "window_plan",
    "score_stream",
    "val_split_tokens",
    "val_split_text",
    "text_file_text",
    "logits_of",
    "target_logprobs",
    "auto_batch_size",
    "model_device",
    "model_vocab_size",
]

# logits elements per forward pass (fp32: 4 bytes each, plus the log-softmax copy). On CPU, buffers of
# hundreds of MB come back from the allocator as fresh pages on every batch (system time grows with them), so
# CPU batches stay small; a GPU wants big batches.
LOGITS_BUDGET = 2**21
LOGITS_BUDGET_ACCEL = 2**27


@dataclass
class StreamScore:
    """Total negative log-likelihood (nats) over ``tokens`` scored targets."""

    nll: float
    tokens: int
    window: int
    stride: int

    @property
    def loss(self) -> float:
        return metrics.mean_loss(self.nll, self.tokens)

    @property
    def perplexity(self) -> float:
        return metrics.perplexity(self.loss)


def window_plan(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first)`` per window: inputs ``t[begin:end]``, targets ``t[begin+1:end+1]``, of which
    those with index >= ``first`` are scored. Covers targets 1..n_tokens-1 exactly once."""
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need window >= 1 and 1 <= stride <= window, got window={window}, stride={stride}")
    plan = []
    last = n_tokens - 1  # index of the last target
    scored = 0  # highest target index scored so far
    begin = 0
    while scored < last:
        end = min(begin + window, last)
        plan.append((begin, end, scored + 1))
        scored = end
        begin += stride
    return plan


def logits_of(model, idx: torch.Tensor) -> torch.Tensor:
    out = model(idx)
    return out.logits if hasattr(out, "logits") else out


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def auto_batch_size(seq_len: int, vocab_size: int, device: torch.device | str = "cpu") -> int:
    budget = LOGITS_BUDGET if torch.device(device).type == "cpu" else LOGITS_BUDGET_ACCEL
    return max(1, budget // max(1, seq_len * vocab_size))


def target_logprobs(model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y | x) and whether y is the argmax, per position (B, T), in fp32. A model may provide its own
    ``target_logprobs`` (the unigram baseline does: its logits are the same at every position)."""
    own = getattr(model, "target_logprobs", None)
    if own is not None:
        return own(x, y)
    logits = logits_of(model, x).float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, y[..., None]).squeeze(-1), logits.argmax(-1) == y


def model_vocab_size(model) -> int:
    """The vocabulary size of our model or a Hugging Face one (its config's), 32000 when neither says."""
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    return int(getattr(cfg, "vocab_size", 0) or getattr(model, "vocab_size", 0) or 32000)


@torch.no_grad()
def score_stream(
    model,
    tokens: Sequence[int] | np.ndarray | torch.Tensor,
    *,
    window: int,
    stride: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "perplexity",
) -> StreamScore:
    """Sum of -log p(t[j] | t[<j]) over j = 1..N-1 (put a document-start token first to score the first real
    token), in float64, with the window plan above."""
    stride = stride or window
    t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if t.ndim != 1 or t.numel() < 2:
        raise ValueError("need a 1-D stream of at least 2 tokens")
    plan = window_plan(t.numel(), window, stride)
    device = model_device(model)
    bs = batch_size or auto_batch_size(window, model_vocab_size(model), device)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    total = 0.0
    count = 0
    # windows of equal length batch together: all but (at most) the last one are full
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in plan:
        groups.setdefault(w[1] - w[0], []).append(w)
    batches = [(g[i : i + bs]) for g in groups.values() for i in range(0, len(g), bs)]
    it: Iterable = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=desc, unit="batch", leave=False, disable=None)
    try:
        for batch in it:
            x = torch.stack([t[b:e] for b, e, _ in batch]).to(device)
            y = torch.stack([t[b + 1 : e + 1] for b, e, _ in batch]).to(device)
            nll = -target_logprobs(model, x, y)[0].double().cpu()
            for row, (b, e, first) in enumerate(batch):
                # target index j sits at column j - 1 - b
                total += float(nll[row, first - 1 - b :].sum())
                count += e - first + 1
    finally:
        if was_training:
            model.train()
    assert count == t.numel() - 1, (count, t.numel())
    if not math.isfinite(total):
        raise ValueError("the model produced non-finite logits")
    return StreamScore(nll=total, tokens=count, window=window, stride=stride)


# --- the streams we evaluate ----------------------------------------------------------------------------


@dataclass
class EvalText:
    """A token stream to score and the UTF-8 byte count of the text it encodes. ``tokens[0]`` is a
    document-start token (EOS, the token that precedes every document in training) that is context only,
    so every token of the text itself is scored: ``tokens_scored == len(tokens) - 1``."""

    tokens: np.ndarray
    n_bytes: int
    name: str
    kind: str  # val | text
    path: str
    documents: int
    bytes_from: str  # how n_bytes was obtained
    sha256: str | None = None  # of the text file, or of the prepared val.jsonl the val shards were made from

    @property
    def tokens_scored(self) -> int:
        return len(self.tokens) - 1


def val_split_tokens(data_dir: str | Path, *, eos_id: int | None = None, max_tokens: int | None = None) -> np.ndarray:
    """The val split of a tokenized data folder as :func:`val_split_text` scores it: a document-start EOS
    (the data's ``eos_id``, else ``eos_id``), then the shards' tokens. ``max_tokens`` keeps the documents that
    fit (at least a prefix of the first)."""
    from ..batches import TokenShards
    from ..errors import OpenLLMError

    shards = TokenShards(data_dir, "val")
    eos = shards.meta.get("eos_id", eos_id)
    if eos is None:
        raise OpenLLMError(
            f"{Path(data_dir) / 'meta.json'} names no eos_id: tokenize the data again with `openllm tokenize`"
        )
    eos = int(eos)
    n = shards.tokens if max_tokens is None else min(shards.tokens, int(max_tokens))
    stream = shards.stream(0, n)
    if n < shards.tokens:
        ends = np.flatnonzero(stream == eos)
        if len(ends):
            stream = stream[: ends[-1] + 1]
    return np.concatenate([[eos], stream]).astype(np.int64)


def val_split_text(data_dir: str | Path, tokenizer, *, max_tokens: int | None = None) -> EvalText:
    """The val split of a tokenized data folder, as the shards hold it (EOS after every document); the
    tokens are :func:`val_split_tokens`'.

    Bytes: the shards hold ids, not text, so the documents are decoded back to text and their UTF-8 bytes
    counted; our tokenizers are lossless (identity normalisation, no dummy prefix, byte fallback), so this is
    the text that was tokenized. Each EOS counts as one byte: it stands for the separator between documents,
    as a newline does between lines of a text file. ``max_tokens`` keeps the documents that fit (at least a
    prefix of the first)."""
    tokens = val_split_tokens(data_dir, eos_id=tokenizer.eos_id, max_tokens=max_tokens)
    eos, stream = int(tokens[0]), tokens[1:]
    ends = np.flatnonzero(stream == eos)
    n_bytes, start = 0, 0
    for end in list(ends) + ([len(stream)] if not len(ends) or ends[-1] != len(stream) - 1 else []):
        doc = stream[start:end]
        if len(doc):
            n_bytes += len(tokenizer.decode(doc.tolist()).encode("utf-8"))
        start = end + 1
    n_bytes += len(ends)
    from ..fsio import read_json

    val_source = (read_json(Path(data_dir) / "meta.json").get("sources") or {}).get("val.jsonl") or {}
    return EvalText(
        tokens=tokens,
        n_bytes=n_bytes,
        name=f"val split of {Path(data_dir).name}",
        kind="val",
        path=str(Path(data_dir)),
        documents=len(ends) or 1,
        bytes_from="decoded val tokens (UTF-8 bytes of each document + 1 per EOS)",
        sha256=val_source.get("sha256") if isinstance(val_source, dict) else None,
    )


def _line_blocks(text: str, block_chars: int = 1 << 16) -> list[str]:
    """The text cut at line ends into blocks of about ``block_chars`` (SentencePiece is slow on one huge
    string); the blocks concatenate back to the text exactly."""
    blocks, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        size += len(line)
        if size >= block_chars:
            blocks.append("".join(cur))
            cur, size = [], 0
    if cur:
        blocks.append("".join(cur))
    return blocks


def check_text_file(path: str | Path) -> Path:
    """``path`` as a text file to score: one that exists, is a regular file and is not empty, else an
    :class:`~openllm.errors.OpenLLMError` saying which and what to give instead."""
    from ..errors import OpenLLMError

    path = Path(path)
    what = "give a UTF-8 text file with at least one character to score"
    if not path.exists():
        raise OpenLLMError(f"the text file {path} does not exist: {what}", path=path)
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device or a pipe)"
        raise OpenLLMError(f"the text file {path} is {kind}: {what}", path=path)
    if path.stat().st_size == 0:
        raise OpenLLMError(f"the text file {path} is empty: {what}", path=path)
    return path


def text_file_text(path: str | Path, tokenizer, *, max_bytes: int | None = None) -> EvalText:
    """Any UTF-8 text file, scored as one document (line ends kept as they are, CRLF included)."""
    from ..errors import OpenLLMError

    path = check_text_file(path)
    raw = path.read_bytes()
    if max_bytes is not None:
        raw = raw[:max_bytes]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OpenLLMError(f"{path} is not UTF-8 text (byte {exc.start}); convert it first", path=path) from exc
    if not text:  # max_bytes 0
        raise OpenLLMError(
            f"the text file {path} is empty: give a UTF-8 text file with at least one character", path=path
        )
    ids: list[int] = []
    for block in _line_blocks(text):
        ids.extend(tokenizer.encode(block))
    tokens = np.asarray([tokenizer.eos_id] + ids, dtype=np.int64)
    return EvalText(
        tokens=tokens,
        n_bytes=len(text.encode("utf-8")),
        name=path.name,
        kind="text",
        path=str(path),
        documents=1,
        bytes_from="file (UTF-8 bytes)",
        sha256=sha256_bytes(raw),
    )
