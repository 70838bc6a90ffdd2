"""Reference points printed beside a model's numbers, so a reader can tell learning from noise:

- **random-init**: the same architecture, freshly initialised (fixed seed), scored on the same data. Its loss
  sits near ln(vocab): what the model knew before training.
- **unigram**: every position predicts the training split's token frequencies (add-one smoothed), ignoring
  context. A model that does not beat it has learned no more than which tokens are common.

Both are plain ``model(idx) -> logits`` modules, so they go through exactly the code that scores the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["UnigramLM", "unigram_counts", "unigram_from_data", "unigram_val_score", "random_init_like"]


class UnigramLM(nn.Module):
    """Context-free LM: the same log-probabilities at every position."""

    logp: torch.Tensor  # a buffer (register_buffer): moves with the module, saved in its state dict

    def __init__(self, counts: np.ndarray | torch.Tensor, *, smoothing: float = 1.0) -> None:
        super().__init__()
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64)) + smoothing
        self.register_buffer("logp", (c / c.sum()).log().float())
        self.vocab_size = int(c.numel())
        self.tokens = int(np.asarray(counts).sum())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logp.to(idx.device).expand(*idx.shape, self.vocab_size)

    def target_logprobs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``forward`` + log_softmax + gather would give, without (B, T, V) logits."""
        logp = self.logp.to(y.device)
        return logp[y], y == int(logp.argmax())

    def entropy(self) -> float:
        """Expected loss (nats) on text with exactly these frequencies."""
        p = self.logp.double().exp()
        return float(-(p * self.logp.double()).sum())


def unigram_counts(streams, vocab_size: int, *, max_tokens: int = 100_000_000) -> np.ndarray:
    """Token counts over ``streams`` (arrays of ids, e.g. the memory-mapped train shards), at most
    ``max_tokens`` in all (a frequency table converges long before that)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    left = max_tokens
    for s in streams:
        if left <= 0:
            break
        a = np.asarray(s[:left])
        counts += np.bincount(a.astype(np.int64, copy=False), minlength=vocab_size)[:vocab_size]
        left -= len(a)
    return counts


def unigram_from_data(data_dir: str | Path, vocab_size: int | None = None) -> UnigramLM:
    """The unigram baseline of a tokenized data folder: its train split's token frequencies. Raises
    :class:`~openllm.errors.OpenLLMError` when the folder has no train split."""
    from ..batches import TokenShards

    train = TokenShards(data_dir, "train")
    return UnigramLM(unigram_counts(train.shards, int(vocab_size or train.vocab_size)))


def unigram_val_score(data_dir: str | Path, *, window: int):
    """The unigram baseline scored on the data folder's val split: the same tokens, hence the same figure, as
    ``evaluate``'s ``baselines.unigram`` (a context-free model scores alike under any window and stride)."""
    from .perplexity import score_stream, val_split_tokens

    return score_stream(unigram_from_data(data_dir), val_split_tokens(data_dir), window=window)


def random_init_like(model, *, seed: int = 0):
    """A fresh instance of our Transformer with ``model``'s config (None for models that are not ours)."""
    from ..model import Transformer

    cfg = getattr(model, "cfg", None)
    if cfg is None or not isinstance(model, Transformer):
        return None
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        fresh = Transformer(cfg)
    finally:
        torch.random.set_rng_state(state)
    p = next(model.parameters())
    return fresh.to(device=p.device, dtype=p.dtype).eval()
