"""The scheduler of ``openllm serve``: continuous (iteration-level) batching over a slotted KV cache.

HTTP handlers turn each request into a :class:`Job` of one or more :class:`Seq` s (a completions request with
``n=3`` or three prompts has three) and :meth:`Engine.submit` it. One scheduler thread owns the model and
runs steps; at every step:

1. requests whose client went away are dropped and their KV-cache slots freed;
2. waiting sequences take free slots (``--max-batch`` of them), oldest request first;
3. sequences still reading their prompt are prefilled, at most ``prefill_chunk`` prompt tokens a step in
   all, so a long prompt is read over several steps while the others keep decoding;
4. every sequence past its prompt decodes one token, all in one batch, each at its own position in its
   own slot; finished sequences (EOS, a stop string, ``max_tokens``) leave the batch at once.

``policy="static"`` is the scheduling the server had before (kept for comparison and as an option): new
sequences join only when the running batch is empty, and run until all of them are finished.

Every step is the model's one forward over a :class:`openllm.kvcache.SlotCache` and one batched
:class:`openllm.sampling.Sampler` step. A sequence's tokens do not depend on what else is running: the batch rows
are independent, sampling uses the sequence's own generator (seeded from the request's ``seed`` and the choice
index) and penalties count the sequence's own tokens. Results go back to the handler as events through ``job.emit``:

- ``("delta", index, text, logprobs)`` new text of a streaming sequence, with the log-probabilities of the
  tokens generated since the last delta (a list, empty unless asked for);
- ``("finish", index, finish_reason, completion_tokens, text, logprobs)`` where ``logprobs`` is
  ``{"prompt": [...], "tokens": [...]}`` (each entry ``(token_id, logprob, [(id, logprob), ...])``, the
  prompt's first entry None);
- ``("error", message, http_status, code)``.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from ..constrain import Vocabulary
from ..errors import OpenLLMError
from ..generate import TextDecoder, fast_decode
from ..kvcache import SlotCache
from ..sampling import Sampler, SamplingParams, SeqSampling
from .metrics import ServeMetrics

__all__ = ["Engine", "Job", "Seq", "QueueFull", "POLICIES"]

log = logging.getLogger("openllm.serve")

POLICIES = ("continuous", "static")


class QueueFull(Exception):
    """The bounded request queue is full; the server answers 429."""


@dataclass(eq=False)  # identity: a sequence is found in the running list by itself, not by its fields
class Seq:
    """One sequence to generate (one choice of a request) and its progress."""

    prompt: list[int]
    max_new: int
    index: int = 0  # the choice index within its request
    stops: tuple[str, ...] = ()
    lstrip: bool = False  # chat replies drop the space after "Assistant:"
    logprobs: int | None = None  # None: no log-probabilities; N: the chosen token's and the N most likely
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (completions' echo)
    grammar: str | None = None  # the output's grammar (openllm.constrain), checked by the handler
    # progress, written by the scheduler thread only
    job: Job | None = field(default=None, repr=False)
    slot: int | None = None
    filled: int = 0  # prompt tokens in the cache
    next_token: int | None = None  # sampled, not yet in the cache
    finish: str | None = None
    text: TextDecoder | None = field(default=None, repr=False)
    sampling: SeqSampling | None = field(default=None, repr=False)
    token_lps: list[tuple] = field(default_factory=list)
    prompt_lps: list[tuple | None] = field(default_factory=list)
    lps_sent: int = 0
    last_token_at: float | None = None

    @property
    def generated(self) -> int:
        return len(self.text.ids) if self.text is not None else 0

    # what a running sequence has for certain (submit binds its job, admission its slot, decoder and sampling
    # state): a None here is a bug in the scheduler, not a request's fault
    @property
    def owner(self) -> Job:
        return _bound(self.job, "job")

    @property
    def decoder(self) -> TextDecoder:
        return _bound(self.text, "text decoder")

    @property
    def sampling_state(self) -> SeqSampling:
        return _bound(self.sampling, "sampling state")

    @property
    def bound_slot(self) -> int:
        return _bound(self.slot, "cache slot")


_T = TypeVar("_T")


def _bound(value: _T | None, what: str) -> _T:
    if value is None:
        raise RuntimeError(f"a running sequence has no {what}")
    return value


@dataclass(eq=False)
class Job:
    """One HTTP request: its sequences, sampling settings and the way back to the handler."""

    seqs: list[Seq]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    emit: Callable[[tuple], None] = lambda event: None  # thread-safe: called from the scheduler thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    admitted: int = 0  # sequences that got a slot
    finished: int = 0
    done: bool = False  # answered; written by the scheduler thread

    def cancel(self) -> None:
        """Stop generating for this request (the client went away); safe from any thread."""
        self.cancelled.set()


class Engine:
    """Owns the model and the KV cache; runs submitted jobs on one background thread.

    ``max_batch`` sequences run at once (the KV cache's slots); each slot holds ``kv_cache_tokens //
    max_batch`` tokens (default: the model's context), which is the longest prompt + ``max_tokens`` a
    request may ask for.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 32,
        kv_cache_tokens: int | None = None,
        prefill_chunk: int = 256,
        max_queue: int = 256,
        policy: str = "continuous",
        prefix_caching: bool = True,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or prefill_chunk < 1:
            raise OpenLLMError("--max-batch, --max-queue and --prefill-chunk must be at least 1")
        if policy not in POLICIES:
            raise OpenLLMError(f"--batching must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.model_context = int(model.cfg.max_seq_len)
        slot_len = (
            self.model_context if kv_cache_tokens is None else min(self.model_context, kv_cache_tokens // max_batch)
        )
        if slot_len < 2:
            raise OpenLLMError(
                f"--kv-cache-tokens {kv_cache_tokens} gives each of the {max_batch} slots "
                f"(--max-batch) {slot_len} tokens; give at least {2 * max_batch}"
            )
        p = next(model.parameters())
        try:
            self.cache = SlotCache(
                model.cfg, max_batch, slot_len, device=p.device, dtype=p.dtype, prefix_block=16 if prefix_caching else 0
            )
        except (RuntimeError, MemoryError) as exc:  # torch's out-of-memory errors are RuntimeErrors
            need = SlotCache.bytes_needed(model.cfg, max_batch, slot_len, p.element_size()) / 2**20
            raise OpenLLMError(
                f"cannot allocate the KV cache ({max_batch} slots x {slot_len} tokens = "
                f"{need:.0f} MiB): {exc}; lower --max-batch or --kv-cache-tokens"
            ) from exc
        # tokens the tokenizer cannot turn into text are never sampled (a model's embedding may be padded
        # past its tokenizer's vocabulary)
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        self.vocab_size = min(int(model.cfg.vocab_size), int(tok_vocab or model.cfg.vocab_size))
        self.sampler = Sampler()
        self._vocabulary: Vocabulary | None = None
        self._forward = model  # the model's CPU decoding twin while the scheduler runs (generate.fast_decode)
        self.context = slot_len  # the most prompt + max_tokens a request may ask for
        self.max_batch, self.max_queue = max_batch, max_queue
        self.prefill_chunk, self.policy = prefill_chunk, policy
        self.eos_id = int(tokenizer.eos_id)
        self.metrics = ServeMetrics()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Seq] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.stats = {
            "steps": 0,
            "largest_batch": 0,
            "completed": 0,
            "cancelled": 0,
            "rejected": 0,
            "errors": 0,
            "tokens": 0,
        }

    def vocabulary(self) -> Vocabulary:
        """The tokenizer as the grammar engine sees it, made at the first structured-output request."""
        with self._cond:
            if self._vocabulary is None:
                self._vocabulary = Vocabulary(self.tokenizer, self.vocab_size)
            return self._vocabulary

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if next(self.model.parameters()).is_cuda:
            # cuDNN attention builds a plan for every new shape (~1.3 s each on an H200, and a server sees a
            # new length at almost every step); the flash and math kernels need none
            torch.backends.cuda.enable_cudnn_sdp(False)
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="openllm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the scheduler: waiting and running requests get an error event."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            jobs = list(self._waiting) + [s.owner for s in self._running]
            self._waiting.clear()
        for job in dict.fromkeys(jobs):
            if not job.done:
                self._fail(
                    job, "the server is shutting down; retry on another server", status=503, code="server_shutting_down"
                )

    # --- producer side --------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; raises :class:`QueueFull` when ``max_queue`` jobs are already waiting, ``ValueError`` for
        a job no step could run."""
        job.sampling.validate(self.vocab_size)
        for seq in job.seqs:
            if not seq.prompt:
                raise ValueError("every prompt needs at least one token")
            if len(seq.prompt) + seq.max_new > self.context:
                raise ValueError(
                    f"prompt ({len(seq.prompt)} tokens) + max_tokens ({seq.max_new}) exceeds "
                    f"the {self.context} tokens a sequence may use"
                )
            seq.job = job
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                with self.metrics.lock:
                    self.metrics.rejected += 1
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self._cond.notify_all()

    def wake(self) -> None:
        """Let the scheduler notice a cancellation now rather than at its next step."""
        with self._cond:
            self._cond.notify_all()

    def snapshot(self) -> dict:
        """Counters for /health and tests: waiting and running requests, slots, steps, tokens."""
        with self._cond:
            running_jobs = {id(s.job) for s in self._running}
            return {
                **self.stats,
                "waiting": len(self._waiting),
                "running": len(running_jobs),
                "running_seqs": len(self._running),
                "slots_used": self.cache.used,
                "slots": self.cache.slots,
                "slot_tokens": self.cache.slot_len,
                "max_queue": self.max_queue,
                "policy": self.policy,
            }

    def gauges(self) -> dict:
        with self._cond:
            running = {id(s.job) for s in self._running}
            waiting = sum(1 for j in self._waiting if id(j) not in running)
            return {
                "requests_running": len(running),
                "requests_waiting": waiting,
                "sequences_running": len(self._running),
                "slots_used": self.cache.used,
                "slots": self.cache.slots,
                "slot_tokens": self.cache.slot_len,
                "kv_cache_usage": self.cache.tokens / self.cache.capacity,
                "prefix_cache_queries": self.cache.lookups,
                "prefix_cache_hit_tokens": self.cache.hits,
            }

    # --- scheduler thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        with fast_decode(self.model) as self._forward, torch.no_grad():
            while True:
                with self._cond:
                    while not self._stopping and not self._running and not self._waiting:
                        self._cond.wait()
                    if self._stopping:
                        return
                    self._admit()
                try:
                    self._step()
                except Exception as exc:  # a bug or an OOM must not kill the server: fail the running requests
                    log.exception("generation failed")
                    with self._cond:
                        jobs = list(dict.fromkeys(s.owner for s in self._running))
                    for job in jobs:
                        self.stats["errors"] += 1
                        self._fail(job, f"generation failed: {type(exc).__name__}: {exc}")

    def _admit(self) -> None:
        """Give free slots to waiting sequences, oldest request first (called with the lock held)."""
        for job in [j for j in self._waiting if j.cancelled.is_set()]:
            # a request whose client left while it waited: its sequences that never ran end here
            self._waiting.remove(job)
            job.finished += len(job.seqs) - job.admitted
            if job.finished == len(job.seqs) and not job.done:
                job.done = True
                self.stats["cancelled"] += 1
                self._count_finish("cancelled")
        if self.policy == "static" and self._running:
            return
        while self._waiting and self.cache.free:
            job = self._waiting[0]
            while job.admitted < len(job.seqs) and self.cache.free:
                seq = job.seqs[job.admitted]
                # a sequence scored from its first token (echo) reads its whole prompt
                got = self.cache.allocate(seq.prompt if seq.prompt_logprobs is None else None)
                assert got is not None  # a slot is free (checked above)
                seq.slot, seq.filled = got
                job.admitted += 1
                try:
                    seq.text = TextDecoder(self.tokenizer, seq.prompt, seq.stops, seq.lstrip)
                    seq.sampling = SeqSampling(
                        job.sampling,
                        seq.prompt,
                        index=seq.index,
                        vocab_size=self.vocab_size,
                        device=self.cache.device,
                        constraint=self.vocabulary().constraint(seq.grammar) if seq.grammar else None,
                    )
                except Exception as exc:  # this request cannot start (its grammar, its tokenizer): it fails alone
                    log.exception("admitting a request failed")
                    self.stats["errors"] += 1
                    self._fail(job, f"generation failed: {type(exc).__name__}: {exc}")
                    break
                self._running.append(seq)
            if job.done:
                continue  # _fail took it off the queue
            if job.admitted < len(job.seqs):
                break
            self._waiting.popleft()

    def _step(self) -> None:
        for seq in [s for s in self._running if s.owner.cancelled.is_set()]:
            self._finish(seq, "cancelled")
        for seq in [s for s in self._running if s.max_new == 0 and s.prompt_logprobs is None]:
            self._finish(seq, "length")  # nothing to generate and nothing to score: no need to read the prompt
        budget = self.prefill_chunk if self.policy == "continuous" else float("inf")
        for seq in [s for s in self._running if s.filled < len(s.prompt)]:
            if budget <= 0:
                break
            n = int(min(len(seq.prompt) - seq.filled, budget, self.prefill_chunk))
            self._prefill(seq, n)
            budget -= n
        decoding = [s for s in self._running if s.next_token is not None and s.finish is None]
        if decoding:
            self._decode(decoding)
        self.stats["steps"] += 1

    def _prefill(self, seq: Seq, n: int) -> None:
        start = seq.filled
        device = self.cache.keys[0].device
        ids = torch.as_tensor([seq.prompt[start : start + n]], dtype=torch.long, device=device)
        scored = seq.prompt_logprobs is not None
        rows = self.cache.rows([seq.bound_slot], [seq.prompt[start : start + n]])
        logits = self._forward(ids, cache=rows, last_only=not scored)[0, :, : self.vocab_size]
        seq.filled += n
        with self.metrics.lock:
            self.metrics.prompt_tokens += n
        if seq.prompt_logprobs is not None:  # (scored)
            if start == 0:
                seq.prompt_lps.append(None)  # the first token has no context to be scored in
            targets = seq.prompt[start + 1 : start + n + 1]
            lps = logits[: len(targets)].float().log_softmax(-1)
            for row, tok in zip(lps, targets):
                seq.prompt_lps.append(_entry(row, tok, seq.prompt_logprobs))
        if seq.filled == len(seq.prompt):
            if seq.max_new == 0:
                self._finish(seq, "length")
            else:
                self._sample([seq], logits[-1:])

    def _decode(self, seqs: list[Seq]) -> None:
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(seqs))
        device = self.cache.keys[0].device
        nexts = [[_bound(s.next_token, "next token")] for s in seqs]  # decoding: each has one
        ids = torch.as_tensor(nexts, dtype=torch.long, device=device)
        slots = [s.bound_slot for s in seqs]
        rows = self.cache.rows(slots, nexts)
        logits = self._forward(ids, cache=rows, last_only=True)[:, -1, : self.vocab_size]
        self._sample(seqs, logits)

    def _sample(self, seqs: list[Seq], logits: torch.Tensor) -> None:
        """Pick each sequence's next token from its logits row (B, vocab) and hand it on."""
        tokens = self.sampler(logits, [s.sampling_state for s in seqs])
        raw = logits.float()
        for b, (s, tok) in enumerate(zip(seqs, tokens)):
            entry = None
            if s.logprobs is not None:
                entry = _entry(raw[b].log_softmax(-1), tok, s.logprobs)
            try:
                self._accept(s, tok, entry)
            except Exception as exc:  # e.g. a tokenizer that cannot decode: this request fails, not the batch
                log.exception("generation failed")
                self.stats["errors"] += 1
                self._fail(s.owner, f"generation failed: {type(exc).__name__}: {exc}")

    def _accept(self, seq: Seq, tok: int, entry: tuple | None) -> None:
        now = time.monotonic()
        job = seq.owner
        with self.metrics.lock:
            if seq.last_token_at is None:
                self.metrics.ttft.observe(now - job.submitted)
            else:
                self.metrics.tpot.observe(now - seq.last_token_at)
        seq.last_token_at = now
        if tok == self.eos_id:
            # EOS ends the text but is a generated token: its log-probability is reported (lm-eval scores a
            # continuation from echo + one generated token, and drops that last entry)
            if entry is not None:
                seq.token_lps.append(entry)
            self._finish(seq, "stop")
            return
        seq.sampling_state.accept(tok)
        if entry is not None:
            seq.token_lps.append(entry)
        self.stats["tokens"] += 1
        with self.metrics.lock:
            self.metrics.generation_tokens += 1
        final = seq.generated + 1 >= seq.max_new
        seq.decoder.add(tok, final=final, look=job.stream)
        if seq.decoder.stopped:
            self._finish(seq, "stop")
        elif final:
            self._finish(seq, "length")
        else:
            seq.next_token = tok
            if job.stream:
                piece = seq.decoder.pending(final=False)
                if piece:
                    job.emit(("delta", seq.index, piece, self._new_lps(seq)))

    def _new_lps(self, seq: Seq) -> list:
        new = seq.token_lps[seq.lps_sent :]
        seq.lps_sent = len(seq.token_lps)
        return new

    def _finish(self, seq: Seq, reason: str) -> None:
        seq.finish = reason
        seq.next_token = None
        job = seq.owner
        if seq.slot is not None:
            self.cache.release(seq.slot)
            seq.slot = None
        with self._cond:
            if seq in self._running:
                self._running.remove(seq)
        seq.decoder.finish()
        if job.stream:
            piece = seq.decoder.pending(final=True)
            lps = self._new_lps(seq)
            if piece or lps:
                job.emit(("delta", seq.index, piece, lps))
        job.finished += 1
        if job.finished == len(job.seqs) and not job.done:
            # counted before the last event goes out: a client that has its answer sees it counted
            job.done = True
            cancelled = job.cancelled.is_set()
            self.stats["cancelled" if cancelled else "completed"] += 1
            self._count_finish("cancelled" if cancelled else reason)
            with self.metrics.lock:
                self.metrics.e2e.observe(time.monotonic() - job.submitted)
        job.emit(
            (
                "finish",
                seq.index,
                reason,
                seq.generated,
                seq.decoder.text,
                {"prompt": seq.prompt_lps, "tokens": seq.token_lps},
            )
        )

    def _fail(self, job: Job, message: str, *, status: int = 500, code: str = "generation_failed") -> None:
        """End ``job`` with an error event (the HTTP status and error code it answers with), freeing its
        slots."""
        job.done = True
        with self._cond:
            for seq in job.seqs:
                if seq in self._running:
                    self._running.remove(seq)
                if seq.slot is not None:
                    self.cache.release(seq.slot)
                    seq.slot = None
                seq.finish = seq.finish or "error"
            if job in self._waiting:
                self._waiting.remove(job)
        self._count_finish("error")
        job.emit(("error", message, status, code))

    def _count_finish(self, reason: str) -> None:
        with self.metrics.lock:
            self.metrics.finished[reason] = self.metrics.finished.get(reason, 0) + 1


def _entry(logprobs: torch.Tensor, tok: int, top: int) -> tuple:
    """(token, its log-probability, the ``top`` most likely (token, log-probability) pairs)."""
    alts = []
    if top > 0:
        values, ids = torch.topk(logprobs, top)
        alts = list(zip(ids.tolist(), values.tolist()))
    return (tok, float(logprobs[tok]), alts)
