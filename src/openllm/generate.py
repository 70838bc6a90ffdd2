"""Text generation: the one decode loop, the CPU decoding fast path and the one incremental text decoder.

- :func:`decode` is the loop: left-padded prompts of different lengths, positions that count real tokens only,
  one batched :class:`openllm.sampling.Sampler` step per token, stop tokens. It calls a ``step`` function for
  the logits, so the same loop runs our model (:func:`iter_steps`, through its one forward and a
  :class:`openllm.kvcache.KVCache`) and an ONNX graph (``openllm.export.onnx.OnnxRunner``).
- :func:`fast_decode` speeds up the model's forward for decoding on a CPU while it is held.
- :class:`TextDecoder` turns a sequence's tokens into text as they arrive (whole UTF-8 characters, SentencePiece's
  leading space kept, stop strings), for ``generate_text``/``stream_text``, the app's chat and the server.

The token helpers take ids; the text helpers take any tokenizer with ``encode(str) -> list[int]`` and
``decode(list[int]) -> str``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import RMSNorm, Transformer
from .sampling import GREEDY_BELOW, Sampler, SamplingParams, SeqSampling, effective_temperature

__all__ = [
    "SamplingParams",
    "GREEDY_BELOW",
    "effective_temperature",
    "decode",
    "fast_decode",
    "generate",
    "stream",
    "iter_steps",
    "generate_text",
    "stream_text",
    "TextStream",
    "TextDecoder",
    "TokenizerLike",
]


class TokenizerLike(Protocol):
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


# step(new ids (B, T), attention mask so far (B, past + T; False = left padding), positions (B, T)) -> the
# logits of each row's last position (B, vocab)
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def decode(
    step: Step,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    vocab_size: int,
    context: int,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
) -> Iterator[list[int | None]]:
    """Yield, per step, the new token of each sequence (None for sequences that already stopped). Row b samples
    with the generator of ``(params.seed, b)``, as the server's choice b of a request with that seed."""
    params.validate(vocab_size)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    B, longest = len(prompts), max(len(p) for p in prompts)
    if longest + params.max_new_tokens > context:
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
            f"context of {context} tokens"
        )
    ids = torch.full((B, longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, longest), dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        ids[b, longest - len(p) :] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        mask[b, longest - len(p) :] = True
    rows = [SeqSampling(params, p, index=b, vocab_size=vocab_size, device=device) for b, p in enumerate(prompts)]
    sample = Sampler()
    stops = {int(t) for t in params.stop_tokens}
    done = [False] * B
    step_ids = ids
    for _ in range(params.max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        tokens = sample(step(step_ids, mask, positions), rows)
        out: list[int | None] = []
        for b, t in enumerate(tokens):
            if done[b]:
                out.append(None)
                continue
            out.append(t)
            rows[b].accept(t)
            done[b] = t in stops
        yield out
        if all(done):
            return
        step_ids = torch.as_tensor(tokens, dtype=torch.long, device=device)[:, None]
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.bool, device=device)], dim=1)


def _model_step(model: Transformer, batch: int, total: int, *, use_cache: bool) -> Step:
    """Our model as a decode step: a KV cache that grows by the new tokens, or (``use_cache=False``, to check
    the cache) the whole sequence again at every step."""
    if use_cache:
        cache = model.new_cache(batch, total)

        def cached(ids, mask, positions):
            cache.mark(mask[:, -ids.shape[1] :])
            return model(ids, positions=positions, cache=cache, last_only=True)[:, -1]

        return cached
    seen: list[torch.Tensor] = []

    def full(ids, mask, positions):
        seen.append(ids)
        sequence = torch.cat(seen, dim=1)
        cache = model.new_cache(batch, sequence.shape[1])
        cache.mark(mask)
        return model(sequence, cache=cache, last_only=True)[:, -1]

    return full


@torch.no_grad()
def iter_steps(
    model: Transformer, prompts: Sequence[Sequence[int]], params: SamplingParams, *, use_cache: bool, pad_id: int = 0
) -> Iterator[list[int | None]]:
    """:func:`decode` over our model (evaluation mode while it runs)."""
    total = max((len(p) for p in prompts), default=0) + params.max_new_tokens
    was_training = model.training
    model.eval()
    try:
        with fast_decode(model) as fast:
            step = _model_step(fast, len(prompts), total, use_cache=use_cache)
            yield from decode(
                step,
                prompts,
                params,
                vocab_size=model.cfg.vocab_size,
                context=model.cfg.max_seq_len,
                device=next(model.parameters()).device,
                pad_id=pad_id,
            )
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


# --- the CPU decoding fast path -------------------------------------------------------------------------------


class _RowsLinear(nn.Linear):
    """An ``nn.Linear`` that multiplies a few rows by an (in, out) copy of its weight, which BLAS streams much
    faster for a single row than the (out, in) weight itself (onnxruntime stores its weights that way too)."""

    rows: int
    weight_t: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.numel() > self.rows * x.shape[-1]:
            return F.linear(x, self.weight)
        return x @ self.weight_t


class _FusedRMSNorm(RMSNorm):
    """RMSNorm in one fused kernel for fp32 inference (decoding is bound by per-op overhead at small shapes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.float32:
            return super().forward(x)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


# an (in, out) copy pays for products with a few rows: measured on this project's 2-core machine (torch 2.13,
# one thread), 8 rows run about 2x faster through it at every shape of the presets (192 x 576 to 512 x 32000),
# one row 2x faster for the small matrices and as fast for the large ones
_COPY_ROWS = 16


def _twin(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module``'s tree (parameters and buffers shared) with the decoding variants swapped
    in; ``module`` itself is not touched."""
    twin = copy.copy(module)
    twin._modules = {name: _twin(child) for name, child in module._modules.items() if child is not None}
    if type(module) is nn.Linear and module.bias is None:
        twin.__class__ = _RowsLinear
        twin.rows = _COPY_ROWS
        twin.weight_t = module.weight.detach().t().contiguous()
    elif type(module) is RMSNorm:
        twin.__class__ = _FusedRMSNorm
    return twin


@contextlib.contextmanager
def fast_decode(model: Transformer) -> Iterator[Transformer]:
    """A twin of ``model`` for decoding on a CPU: the same parameters and buffers (shared, not copied), with
    fused RMSNorm and linear layers that multiply up to 16 rows (a decoding batch) by (in, out) copies of their
    weights. ``model`` itself is left untouched. The copies are
    taken on entry, so the twin is meant for a stretch of decoding during which the weights do not change. On
    a GPU or in low precision the model itself is handed back."""
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        yield model
        return
    yield cast(Transformer, _twin(model))  # a copy of the model: a Transformer too


# --- text -----------------------------------------------------------------------------------------------------


class TextDecoder:
    """The text of one sequence's generated tokens, kept up to date token by token: a multi-byte character
    split across tokens comes out whole, SentencePiece's leading space of the first piece is kept (decoding
    after a few prompt tokens: "Hello" + "▁world" -> " world"), and the text ends before the first of the
    ``stops`` strings. ``pending`` hands out what a stream may send (text that could still grow into a stop
    string is held back); the work per token is bounded by the text's length, whatever the stop strings."""

    def __init__(self, tokenizer: TokenizerLike, prompt: Sequence[int], stops: Sequence[str] = (), lstrip=False):
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.lstrip = lstrip
        self._context = list(prompt[-4:])
        self._context_text = tokenizer.decode(self._context)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters already handed out
        self.stopped = False  # a stop string ended the text: it is final

    def decode(self) -> str:
        full = self.tokenizer.decode(self._context + self.ids)
        ctx = self._context_text
        text = full[len(ctx) :] if full.startswith(ctx) else self.tokenizer.decode(self.ids)
        return text.lstrip() if self.lstrip else text

    def add(self, token: int, *, final: bool = False, look: bool = True) -> None:
        """Append ``token``; with ``look`` (streaming, stop strings or the last token) bring the text up to
        date and check the stop strings (``stopped`` then tells that one matched)."""
        self.ids.append(token)
        if not (look or self.stops or final):
            return
        text = self.decode()
        if text.endswith("\ufffd") and not final:
            return  # an incomplete UTF-8 character: wait for its other bytes
        if self.stops:
            cut = None
            for s in self.stops:
                i = text.find(s, max(0, self.sent - len(s)))
                if i >= 0 and (cut is None or i < cut):
                    cut = i
            if cut is not None:
                text, self.stopped = text[:cut], True
        self.text = text

    def finish(self) -> None:
        if not self.stopped:
            self.text = self.decode() if self.ids else ""

    def pending(self, *, final: bool) -> str:
        """Text not handed out yet that may be sent now; marks it sent."""
        end = len(self.text)
        if not final and not self.stopped and self.stops:
            end -= max((_partial_stop(self.text, s, self.sent) for s in self.stops), default=0)
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece


def _partial_stop(text: str, stop: str, sent: int) -> int:
    """The length of the longest ending of ``text`` (past ``sent``) that begins ``stop`` without being all of
    it. Only endings that start with ``stop``'s first character are tried, each a startswith of at most the
    text's unsent length, so a huge stop string costs no more than a short one."""
    lo = max(sent, len(text) - len(stop) + 1)
    i = text.find(stop[0], lo)
    while i >= 0:
        if stop.startswith(text[i:]):
            return len(text) - i
        i = text.find(stop[0], i + 1)
    return 0


def _with_eos_stop(tokenizer: TokenizerLike, params: SamplingParams | None) -> SamplingParams:
    params = params or SamplingParams()
    stops = tuple(params.stop_tokens) or (tokenizer.eos_id,)
    return SamplingParams(**{**params.__dict__, "stop_tokens": stops})


def generate_text(
    model: Transformer, tokenizer: TokenizerLike, prompts: Sequence[str], params: SamplingParams | None = None
) -> list[str]:
    """Completions (text after the prompt) for a batch of text prompts; stops at EOS by default."""
    params = _with_eos_stop(tokenizer, params)
    encoded = [tokenizer.encode(p) for p in prompts]
    texts = []
    for ids, out in zip(encoded, generate(model, encoded, params)):
        text = TextDecoder(tokenizer, ids)
        text.ids = out[:-1] if out and out[-1] in params.stop_tokens else out
        text.finish()
        texts.append(text.text)
    return texts


def stream_text(
    model: Transformer, tokenizer: TokenizerLike, prompt: str, params: SamplingParams | None = None
) -> Iterator[str]:
    """Stream the completion of one prompt as text pieces (see :class:`TextDecoder`)."""
    yield from TextStream(model, tokenizer, tokenizer.encode(prompt), _with_eos_stop(tokenizer, params))


class TextStream:
    """The text pieces of one sequence as its tokens arrive (see :class:`TextDecoder`); once iterated,
    ``stopped`` says whether it ended at one of ``params.stop_tokens`` (rather than at ``max_new_tokens``);
    ``lstrip`` drops the text's leading white space (a chat reply after "Assistant:")."""

    def __init__(
        self, model: Transformer, tokenizer: TokenizerLike, ids: list[int], params: SamplingParams, *, lstrip=False
    ) -> None:
        self.model, self.tokenizer, self.ids, self.params = model, tokenizer, ids, params
        self.lstrip = lstrip
        self.stopped = False

    def __iter__(self) -> Iterator[str]:
        text = TextDecoder(self.tokenizer, self.ids, lstrip=self.lstrip)
        for t in stream(self.model, self.ids, self.params):
            if t in self.params.stop_tokens:
                self.stopped = True
                break
            text.add(t)
            piece = text.pending(final=False)
            if piece:
                yield piece
        text.finish()
        piece = text.pending(final=True)
        if piece:
            yield piece
