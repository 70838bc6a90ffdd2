"""Metric arithmetic, nothing else: no models, no files. Every function here has a case computable by hand in
tests/test_evaluate_metrics.py.

Conventions: log-likelihoods and losses are in nats (natural log), as ``torch.nn.functional.cross_entropy``
gives them; bits are nats / ln 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = [
    "mean_loss",
    "perplexity",
    "bits_per_byte",
    "item_perplexity",
    "accuracy",
    "choice_prediction",
    "ngrams",
    "distinct_n",
    "repetition_rate",
    "mean_length",
    "words",
]

LN2 = math.log(2.0)


def mean_loss(total_nll: float, tokens: int) -> float:
    """Mean negative log-likelihood per token (nats)."""
    if tokens <= 0:
        raise ValueError("no tokens were scored")
    return float(total_nll) / tokens


def perplexity(loss: float) -> float:
    """exp(mean loss per token). Uniform logits over V classes give loss ln V, so perplexity V."""
    # exp overflows a float past ~709 nats; such a model is beyond meaningful anyway
    return math.exp(loss) if loss < 700 else float("inf")


def bits_per_byte(total_nll: float, n_bytes: int) -> float:
    """Total nats / ln 2 / UTF-8 bytes of the text those nats were spent on: the code length in bits per
    byte, comparable across tokenizers (a tokenizer with longer tokens has fewer, costlier tokens)."""
    if n_bytes <= 0:
        raise ValueError("the evaluated text has no bytes")
    return float(total_nll) / LN2 / n_bytes


def item_perplexity(loglikelihoods: Sequence[float]) -> float:
    """exp(-mean over items of each item's total log-likelihood): lm-evaluation-harness's ``perplexity``
    aggregation (LAMBADA's ppl is per target word, not per token)."""
    if not loglikelihoods:
        raise ValueError("no items")
    return perplexity(-sum(loglikelihoods) / len(loglikelihoods))


def accuracy(hits: Iterable[bool]) -> float:
    hits = list(hits)
    if not hits:
        raise ValueError("no items")
    return sum(1 for h in hits if h) / len(hits)


def choice_prediction(loglikelihoods: Sequence[float], lengths: Sequence[float] | None = None) -> int:
    """Index of the best choice: highest log-likelihood, or highest log-likelihood per unit of ``lengths``
    (acc_norm). Ties go to the first, as ``numpy.argmax``."""
    if lengths is None:
        scores = list(loglikelihoods)
    else:
        scores = [ll / max(float(n), 1.0) for ll, n in zip(loglikelihoods, lengths)]
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


# --- generation quality ---------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Whitespace-separated words: generation metrics are on words, so they do not depend on the tokenizer."""
    return text.split()


def ngrams(seq: Sequence, n: int) -> list[tuple]:
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(sequences: Iterable[Sequence], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams, pooled over all sequences. 0 when there
    are no n-grams at all."""
    grams: list[tuple] = []
    for s in sequences:
        grams.extend(ngrams(list(s), n))
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences: Iterable[Sequence], n: int = 4) -> float:
    """seq-rep-n (Welleck et al., 2019): per sequence, the share of its n-grams that repeat an earlier one
    (1 - unique / total); averaged over the sequences that have at least one n-gram. 0 = no repetition."""
    rates = []
    for s in sequences:
        grams = ngrams(list(s), n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def mean_length(sequences: Iterable[Sequence]) -> float:
    lengths = [len(s) for s in sequences]
    return sum(lengths) / len(lengths) if lengths else 0.0
