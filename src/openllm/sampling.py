"""How the next token is picked: one :class:`SamplingParams` and one batched :class:`Sampler`, used by
``openllm.generate``, ``openllm serve`` and the ONNX runner alike.

Each row of a batch carries its own settings, its own seeded ``torch.Generator`` and its own token history, so
a sequence's tokens do not depend on what else runs beside it. The steps, all batched over the rows:

1. penalties over the row's history: CTRL's ``repetition_penalty`` (prompt and generated tokens, as
   transformers applies it), OpenAI's ``presence_penalty``/``frequency_penalty`` (generated tokens) and
   ``logit_bias``; a row with a grammar (:class:`openllm.constrain.Constraint`) keeps only the tokens it allows;
2. greedy rows take the argmax; the others divide by their temperature, keep their ``top_k`` best and the
   smallest set reaching ``top_p`` (the best token always stays, so no setting empties a row);
3. one uniform draw per row from the row's generator picks the token by inverse CDF.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .constrain import Constraint, bitmask_words, unpack_bitmask

__all__ = ["SamplingParams", "Sampler", "SeqSampling", "GREEDY_BELOW", "effective_temperature", "row_generator"]

# Below this a temperature is greedy: dividing logits by it overflows to inf, and the distribution it asks
# for is argmax anyway (vLLM draws the same line)
GREEDY_BELOW = 1e-5
MAX_BIAS = 100.0  # OpenAI's range for logit_bias values


def effective_temperature(t: float) -> float:
    return 0.0 if t < GREEDY_BELOW else float(t)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class SamplingParams:
    """How to pick the next tokens of a sequence. ``temperature`` 0 (or below :data:`GREEDY_BELOW`) is greedy;
    ``max_new_tokens`` and ``stop_tokens`` say when it ends."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_tokens: Sequence[int] = field(default_factory=tuple)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None

    def validate(self, vocab_size: int | None = None) -> SamplingParams:
        """Check every value (``ValueError`` naming the first bad one) so that nothing reaches a batched step
        that could fail it; normalise the temperature. ``vocab_size`` bounds ``logit_bias``'s token ids."""
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise ValueError(f"temperature must be >= 0 and finite, got {self.temperature!r}")
        self.temperature = effective_temperature(self.temperature)
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (self.repetition_penalty > 0 and math.isfinite(self.repetition_penalty)):
            raise ValueError(f"repetition_penalty must be > 0 and finite, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for tok, bias in (self.logit_bias or {}).items():
            if not _is_int(tok) or tok < 0 or (vocab_size is not None and tok >= vocab_size):
                raise ValueError(f"logit_bias: token id {tok!r} is not in the vocabulary (0 to {vocab_size})")
            if not (isinstance(bias, (int, float)) and -MAX_BIAS <= bias <= MAX_BIAS):
                raise ValueError(f"logit_bias: the bias of token {tok} must be in [-100, 100], got {bias!r}")
        return self

    @property
    def greedy(self) -> bool:
        return effective_temperature(self.temperature) == 0


def row_generator(seed: int | None, index: int, device) -> torch.Generator:
    """The generator of one sequence: seeded from ``seed`` and the sequence's index (the first sequence uses
    the seed itself, so a request's first choice and a one-prompt ``generate`` agree); random without a seed."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed((seed + index * 0x9E3779B97F4A7C15) % 2**63)
    return gen


class SeqSampling:
    """One sequence's sampling state: its params, its generator, the counts of the tokens it has seen and its
    grammar (a :class:`openllm.constrain.Constraint`, or None)."""

    def __init__(
        self,
        params: SamplingParams,
        prompt: Sequence[int],
        *,
        index: int = 0,
        vocab_size: int,
        device,
        constraint: Constraint | None = None,
    ):
        self.params = params
        self.constraint = constraint
        self.gen = None if params.greedy else row_generator(params.seed, index, device)
        self.vocab_size = vocab_size
        self.device = device
        self.seen: torch.Tensor | None = None  # prompt + generated (repetition penalty)
        self.counts: torch.Tensor | None = None  # generated only (presence and frequency penalties)
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            ids = [t for t in prompt if 0 <= t < vocab_size]
            if ids:
                self.seen[torch.as_tensor(ids, device=device)] = True
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        if params.logit_bias:
            self.bias = (
                torch.as_tensor(list(params.logit_bias), device=device),
                torch.as_tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device),
            )

    @property
    def adjusts(self) -> bool:
        return self.seen is not None or self.counts is not None or self.bias is not None

    def accept(self, token: int) -> None:
        """Count a generated token in the history the penalties read, and advance the grammar."""
        if self.constraint is not None:
            self.constraint.accept(token)
        if not 0 <= token < self.vocab_size:
            return
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1


class Sampler:
    """Picks the next token of every row of a batch, each row by its own :class:`SeqSampling`."""

    def __call__(self, logits: torch.Tensor, rows: Sequence[SeqSampling]) -> list[int]:
        """``logits`` (B, vocab) -> the B next tokens. The rows' histories are not updated: call
        ``accept`` with the token a sequence keeps."""
        logits = logits.float()
        if any(r.adjusts for r in rows):
            logits = logits.clone()
            for b, r in enumerate(rows):
                if r.adjusts:
                    self._adjust(logits[b], r)
        constrained = [b for b, r in enumerate(rows) if r.constraint is not None]
        if constrained:
            logits = self._constrain(logits, rows, constrained)
        greedy = [r.params.greedy for r in rows]
        picked = logits.argmax(-1)
        if not all(greedy):
            sampled = [b for b, g in enumerate(greedy) if not g]
            idx = torch.as_tensor(sampled, device=logits.device)
            picked[idx] = self._draw(logits.index_select(0, idx), [rows[b] for b in sampled])
        return picked.tolist()

    @staticmethod
    def _adjust(row: torch.Tensor, r: SeqSampling) -> None:
        p = r.params
        if r.seen is not None:
            # CTRL's penalty, as transformers applies it: shrink positive logits, grow negative ones
            penalised = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
            row.copy_(torch.where(r.seen, penalised, row))
        if r.counts is not None:
            row -= p.presence_penalty * (r.counts > 0) + p.frequency_penalty * r.counts
        if r.bias is not None:
            row.index_add_(0, r.bias[0], r.bias[1])

    @staticmethod
    def _constrain(logits: torch.Tensor, rows: Sequence[SeqSampling], constrained: list[int]) -> torch.Tensor:
        V = logits.shape[-1]
        bitmask = torch.empty((len(constrained), bitmask_words(V)), dtype=torch.int32)
        for i, b in enumerate(constrained):
            constraint = rows[b].constraint
            assert constraint is not None
            constraint.allowed(bitmask[i])
        allowed = unpack_bitmask(bitmask, V).to(logits.device)
        idx = torch.as_tensor(constrained, device=logits.device)
        picked = logits.index_select(0, idx).masked_fill(~allowed, float("-inf"))
        return logits.index_copy(0, idx, picked)

    @staticmethod
    def _draw(logits: torch.Tensor, rows: Sequence[SeqSampling]) -> torch.Tensor:
        device, V = logits.device, logits.shape[-1]
        temps = torch.as_tensor([r.params.temperature for r in rows], device=device, dtype=logits.dtype)
        scores = logits / temps[:, None]
        ks = [r.params.top_k for r in rows]
        ps = [r.params.top_p for r in rows]
        if any(k is not None and k < V for k in ks) or any(p is not None and p < 1.0 for p in ps):
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            drop = torch.zeros_like(sorted_scores, dtype=torch.bool)
            k_t = torch.as_tensor([min(k or V, V) for k in ks], device=device)
            drop |= torch.arange(V, device=device)[None, :] >= k_t[:, None]
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            probs = sorted_scores.softmax(-1)
            p_t = torch.as_tensor([p if p is not None else 1.0 for p in ps], device=device, dtype=probs.dtype)
            # drop a token when the tokens ranked above it already reach top_p; the best token always stays,
            # whatever top_p (a float32 top_p of 0 included)
            drop |= (probs.cumsum(-1) - probs) >= p_t[:, None]
            drop[:, 0] = False
            scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
        probs = scores.softmax(-1)
        cdf = probs.cumsum(-1)
        # one draw in (0, 1] per row from the row's own generator: the row's tokens do not depend on the batch
        u = torch.cat([1.0 - torch.rand(1, generator=r.gen, device=device, dtype=cdf.dtype) for r in rows])
        return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1).clamp_(max=V - 1)
