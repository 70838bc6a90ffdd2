"""Text generation: greedy and sampling (temperature, top-k, top-p, repetition penalty), a batch of prompts
of different lengths, stop tokens, seeds, and a streaming iterator. Works on token ids; the text helpers take
any tokenizer with ``encode(str) -> list[int]`` and ``decode(list[int]) -> str``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .model import Transformer

__all__ = [
    "SamplingParams",
    "generate",
    "stream",
    "iter_steps",
    "generate_text",
    "stream_text",
    "TextStream",
    "TokenizerLike",
]


class TokenizerLike(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# Below this a temperature is greedy: dividing logits by it overflows to inf, and the distribution it asks
# for is argmax anyway (vLLM draws the same line)
GREEDY_BELOW = 1e-5


def effective_temperature(t: float) -> float:
    return 0.0 if t < GREEDY_BELOW else float(t)


@dataclass
class SamplingParams:
    """How to pick the next token. ``temperature`` 0 (or below :data:`GREEDY_BELOW`) means greedy."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_tokens: Sequence[int] = field(default_factory=tuple)

    def validate(self) -> SamplingParams:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be a non-negative integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise ValueError(f"temperature must be >= 0 and finite, got {self.temperature!r}")
        self.temperature = effective_temperature(self.temperature)
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        return self


def _process_logits(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams) -> torch.Tensor:
    """logits (B, V) in fp32 -> the scores to sample from (or argmax)."""
    if seen is not None and p.repetition_penalty != 1.0:
        # CTRL's penalty, as transformers applies it: shrink positive logits, grow negative ones
        penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if effective_temperature(p.temperature) == 0:
        return logits
    logits = logits / p.temperature
    if p.top_k is not None and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p; the best token always stays
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= p.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def iter_steps(
    model: Transformer, prompts: Sequence[Sequence[int]], params: SamplingParams, *, use_cache: bool, pad_id: int = 0
) -> Iterator[list[int | None]]:
    """Yield, per step, the new token of each sequence (None for sequences that already stopped)."""
    params.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    B = len(prompts)
    device = next(model.parameters()).device
    lengths = [len(p) for p in prompts]
    longest = max(lengths)
    total = longest + params.max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
            f"context of {model.cfg.max_seq_len} tokens"
        )
    # left-pad so every sequence ends at the same column; positions count real tokens only
    ids = torch.full((B, longest), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros((B, longest), dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        ids[b, longest - len(p) :] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        valid[b, longest - len(p) :] = True
    gen = torch.Generator(device=device)
    if params.seed is not None:
        gen.manual_seed(params.seed)
    else:
        gen.seed()
    seen = torch.zeros((B, model.cfg.vocab_size), dtype=torch.bool, device=device)
    seen.scatter_(1, ids, valid)
    stops = set(int(t) for t in params.stop_tokens)
    done = [False] * B
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(B, total) if use_cache else None
        step_ids, step_valid = ids, valid
        for _ in range(params.max_new_tokens):
            if use_cache:
                cache.valid[:, cache.length : cache.length + step_ids.size(1)] = step_valid
                pos = (cache.valid[:, : cache.length + step_ids.size(1)].cumsum(-1) - 1).clamp(min=0)
                logits = model(step_ids, positions=pos[:, -step_ids.size(1) :], cache=cache, last_only=True)[:, -1]
            else:
                cache_full = model.new_cache(B, ids.size(1))
                cache_full.valid[:] = valid
                pos = (valid.cumsum(-1) - 1).clamp(min=0)
                logits = model(ids, positions=pos, cache=cache_full, last_only=True)[:, -1]
            scores = _process_logits(logits.float(), seen, params)
            if effective_temperature(params.temperature) == 0:
                nxt = scores.argmax(-1)
            else:
                nxt = torch.multinomial(scores.softmax(-1), 1, generator=gen).squeeze(-1)
            out: list[int | None] = []
            for b, t in enumerate(nxt.tolist()):  # one conversion, not one per sequence
                if done[b]:
                    out.append(None)
                    continue
                out.append(t)
                if t in stops:
                    done[b] = True
            yield out
            if all(done):
                return
            seen.scatter_(1, nxt[:, None], True)
            step_ids = nxt[:, None]
            step_valid = torch.ones((B, 1), dtype=torch.bool, device=device)
            if not use_cache:  # only the cache-less path re-reads the whole sequence
                ids = torch.cat([ids, step_ids], dim=1)
                valid = torch.cat([valid, step_valid], dim=1)
    finally:
        model.train(was_training)


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | None = None,
    *,
    use_cache: bool = True,
) -> list[list[int]]:
    """New tokens for each prompt (a stop token, when hit, is included and ends that sequence)."""
    params = params or SamplingParams()
    outs: list[list[int]] = [[] for _ in prompts]
    for step in iter_steps(model, prompts, params, use_cache=use_cache):
        for b, t in enumerate(step):
            if t is not None:
                outs[b].append(t)
    return outs


def stream(model: Transformer, prompt: Sequence[int], params: SamplingParams | None = None) -> Iterator[int]:
    """New tokens of one prompt, one at a time, as they are produced."""
    for step in iter_steps(model, [prompt], params or SamplingParams(), use_cache=True):
        if step[0] is not None:
            yield step[0]


def _with_eos_stop(tokenizer: TokenizerLike, params: SamplingParams | None) -> SamplingParams:
    params = params or SamplingParams()
    stops = tuple(params.stop_tokens) or (tokenizer.eos_id,)
    return SamplingParams(**{**params.__dict__, "stop_tokens": stops})


def _strip_stop(ids: list[int], stops: Sequence[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in stops else ids


def generate_text(
    model: Transformer, tokenizer: TokenizerLike, prompts: Sequence[str], params: SamplingParams | None = None
) -> list[str]:
    """Completions (text after the prompt) for a batch of text prompts; stops at EOS by default."""
    params = _with_eos_stop(tokenizer, params)
    outs = generate(model, [tokenizer.encode(p) for p in prompts], params)
    return [tokenizer.decode(_strip_stop(o, params.stop_tokens)) for o in outs]


def stream_text(
    model: Transformer, tokenizer: TokenizerLike, prompt: str, params: SamplingParams | None = None
) -> Iterator[str]:
    """Stream the completion of one prompt as text pieces (decoded incrementally, so multi-byte characters
    split across tokens come out whole)."""
    yield from TextStream(model, tokenizer, tokenizer.encode(prompt), _with_eos_stop(tokenizer, params))


class TextStream:
    """The text pieces of one sequence as its tokens arrive, decoded incrementally (a multi-byte character
    split across tokens comes out whole); once iterated, ``stopped`` says whether it ended at one of
    ``params.stop_tokens`` (rather than at ``max_new_tokens``)."""

    def __init__(self, model: Transformer, tokenizer: TokenizerLike, ids: list[int], params: SamplingParams) -> None:
        self.model, self.tokenizer, self.ids, self.params = model, tokenizer, ids, params
        self.stopped = False

    def __iter__(self) -> Iterator[str]:
        out: list[int] = []
        emitted = ""
        for t in stream(self.model, self.ids, self.params):
            if t in self.params.stop_tokens:
                self.stopped = True
                return
            out.append(t)
            text = self.tokenizer.decode(out)
            if text.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence; wait for the rest
            if len(text) > len(emitted):
                yield text[len(emitted) :]
                emitted = text
