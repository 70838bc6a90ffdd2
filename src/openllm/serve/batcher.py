"""The request queue and the batch scheduler of ``openllm serve``.

HTTP handlers turn each request into a :class:`Job` (one or more :class:`Row` s: a completions request with
``n=3`` or three prompts has three rows) and :meth:`Batcher.submit` it. One scheduler thread owns the model:
it takes the oldest queued job, waits a short window for more (only when there is evidence of concurrent
clients, so a lone client pays no latency for it), gathers every queued job that can share a
batch with it (same sampling settings, and the longest prompt plus the largest ``max_tokens`` fit the
context), and runs them together through :func:`openllm.generate.iter_steps`. Each step's tokens are turned
into text here (incremental decoding, stop strings, ``max_tokens``) and sent back to the handler's asyncio
queue as events:

- ``("delta", row_index, text)`` new text of a streaming row;
- ``("finish", row_index, finish_reason, completion_tokens, full_text)``;
- ``("error", message)``.

Batching is static: a batch runs until all of its rows are finished (EOS, a stop string, ``max_tokens``, or
the client went away); jobs that arrive meanwhile wait for the next batch. A job with a ``seed`` runs in a
batch of its own so that its samples do not depend on who else was being served.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..generate import SamplingParams, iter_steps

__all__ = ["Row", "Job", "Batcher", "QueueFull"]

log = logging.getLogger("openllm.serve")


class QueueFull(Exception):
    """The bounded request queue is full; the server answers 429."""


@dataclass
class Row:
    """One sequence to generate and its progress."""

    prompt: list[int]
    max_new: int
    index: int = 0  # the choice index within its job
    stops: tuple[str, ...] = ()
    lstrip: bool = False  # chat replies drop the space after "Assistant:"
    # progress, written by the scheduler thread only
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of text already streamed
    finish: str | None = None
    _cut: bool = False  # ended by a stop string: text is final
    # the last prompt tokens, decoded with the new ones so a leading space is not lost by the tokenizer
    _context: list[int] = field(default_factory=list)
    _context_text: str = ""


@dataclass
class Job:
    """One HTTP request: its rows, sampling settings and the way back to the handler."""

    rows: list[Row]
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stream: bool = False
    emit: Callable[[tuple], None] = lambda event: None  # thread-safe: called from the scheduler thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    done: bool = False  # answered (finish events sent); written by the scheduler thread

    def cancel(self) -> None:
        """Stop generating for this job (the client went away); safe from any thread."""
        self.cancelled.set()

    @property
    def key(self) -> tuple:
        """Jobs with equal keys may share a batch."""
        if self.seed is not None:
            return ("seeded", id(self))
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", float(self.temperature), self.top_p, self.top_k)

    @property
    def longest_prompt(self) -> int:
        return max(len(r.prompt) for r in self.rows)

    @property
    def most_new(self) -> int:
        return max(r.max_new for r in self.rows)


class Batcher:
    """Owns the model; runs queued jobs in batches on one background thread.

    ``max_batch=1`` serves one request at a time (the peer the benchmark compares against).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 32, window_s: float = 0.01,
                 max_queue: int = 256, context: int | None = None) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.context = int(context or model.cfg.max_seq_len)
        self.eos_id = int(tokenizer.eos_id)
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._last_jobs = 0  # jobs in the last batch, and whether others were queued when it ended:
        self._waited_after_last = False  # the evidence of concurrent clients that makes the window worth it
        self.stats = {"queued": 0, "running_rows": 0, "batches": 0, "rows": 0, "largest_batch": 0,
                      "completed": 0, "cancelled": 0, "rejected": 0, "errors": 0, "tokens": 0}

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        import torch

        if next(self.model.parameters()).is_cuda:
            # cuDNN attention builds a plan for every new shape (~1.3 s each on an H200, and a server sees
            # a new prompt length in almost every batch); the flash and math kernels need none
            torch.backends.cuda.enable_cudnn_sdp(False)
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="openllm-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.emit(("error", "the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- producer side --------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue a job; raises :class:`QueueFull` when ``max_queue`` jobs are already waiting."""
        for row in job.rows:
            if not row.prompt:
                raise ValueError("every prompt needs at least one token")
            if len(row.prompt) + row.max_new > self.context:
                raise ValueError(f"prompt ({len(row.prompt)} tokens) + max_tokens ({row.max_new}) exceeds "
                                 f"the context of {self.context} tokens")
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._queue)} requests are already waiting (--max-queue {self.max_queue})")
            self._queue.append(job)
            self.stats["queued"] = len(self._queue)
            self._cond.notify_all()

    # --- scheduler thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
                with self._cond:
                    self._waited_after_last = bool(self._queue)
            except Exception as exc:  # a bug or an OOM must not kill the server: fail this batch only
                log.exception("generation failed")
                self.stats["errors"] += 1
                for job in batch:
                    if not job.done:
                        job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
            finally:
                self.stats["running_rows"] = 0

    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue[0]
            # Under load, clients whose answers came back together send their next requests a moment
            # apart: a short window lets them share the next batch. A lone client (the last batch held one
            # job and nobody was waiting) would only pay the window in latency, so it goes at once.
            busy = self._last_jobs > 1 or self._waited_after_last
            deadline = time.monotonic() + self.window_s
            while busy and self.max_batch > 1 and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0 or sum(len(j.rows) for j in self._queue if j.key == first.key) >= self.max_batch:
                    break
                self._cond.wait(left)
            if self._stopping:
                return None
            batch, rows = [first], len(first.rows)
            longest, most_new = first.longest_prompt, first.most_new
            for job in list(self._queue)[1:]:
                if rows >= self.max_batch:
                    break
                if job.key != first.key or rows + len(job.rows) > self.max_batch:
                    continue
                # left-padding aligns the prompts' ends: the longest prompt + the most new tokens must fit
                if max(longest, job.longest_prompt) + max(most_new, job.most_new) > self.context:
                    continue
                batch.append(job)
                rows += len(job.rows)
                longest, most_new = max(longest, job.longest_prompt), max(most_new, job.most_new)
            for job in batch:
                self._queue.remove(job)
            self.stats["queued"] = len(self._queue)
            self._last_jobs = len(batch)
            return batch

    def _run(self, jobs: list[Job]) -> None:
        live_jobs = []
        for job in jobs:
            if job.cancelled.is_set():
                self._finish_job(job, cancelled=True)
            else:
                live_jobs.append(job)
        jobs = live_jobs
        if not jobs:
            return
        owner: list[Job] = []
        rows: list[Row] = []
        for job in jobs:
            for row in job.rows:
                self._prepare(row)
                if row.max_new == 0:
                    row.finish = "length"
                owner.append(job)
                rows.append(row)
        self.stats["batches"] += 1
        self.stats["rows"] += len(rows)
        self.stats["running_rows"] = len(rows)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(rows))
        first = jobs[0]
        params = SamplingParams(max_new_tokens=max(r.max_new for r in rows), temperature=first.temperature,
                                top_k=first.top_k, top_p=first.top_p, seed=first.seed,
                                stop_tokens=(self.eos_id,))
        pending = self._settle(jobs)
        if pending:
            steps = iter_steps(self.model, [r.prompt for r in rows], params, use_cache=True)
            try:
                for step in steps:
                    for row, job, tok in zip(rows, owner, step):
                        if row.finish is None and tok is not None:
                            self._advance(row, job, tok)
                    # a job is answered as soon as its own rows are done, not when the batch is
                    pending = self._settle(pending)
                    if not pending:
                        break  # closing the iterator stops the model: nobody is waiting for more
            finally:
                steps.close()
        for job in pending:  # only when iter_steps ended before every row did; report what there is
            for row in job.rows:
                if row.finish is None:
                    row.finish = "length"
            self._finish_job(job, cancelled=job.cancelled.is_set())

    def _settle(self, jobs: list[Job]) -> list[Job]:
        """Answer the jobs whose rows are all finished (cancelled jobs count as finished); return the rest."""
        still = []
        for job in jobs:
            if job.cancelled.is_set():
                for row in job.rows:
                    if row.finish is None:
                        row.finish = "cancelled"
            if all(row.finish is not None for row in job.rows):
                self._finish_job(job, cancelled=job.cancelled.is_set())
            else:
                still.append(job)
        return still

    # --- text -----------------------------------------------------------------------------------------
    def _prepare(self, row: Row) -> None:
        row.ids, row.text, row.sent, row.finish, row._cut = [], "", 0, None, False
        # SentencePiece drops the leading space of the first piece it decodes; decoding after a few prompt
        # tokens keeps it ("Hello" + "▁world" -> " world")
        row._context = list(row.prompt[-4:])
        row._context_text = self.tokenizer.decode(row._context)

    def _decode(self, row: Row) -> str:
        full = self.tokenizer.decode(row._context + row.ids)
        text = full[len(row._context_text):] if full.startswith(row._context_text) else self.tokenizer.decode(row.ids)
        return text.lstrip() if row.lstrip else text

    def _advance(self, row: Row, job: Job, tok: int) -> None:
        if tok == self.eos_id:
            row.finish = "stop"
            return
        row.ids.append(tok)
        self.stats["tokens"] += 1
        at_limit = len(row.ids) >= row.max_new
        if not job.stream and not row.stops and not at_limit:
            return  # nothing to look at until the end
        text = self._decode(row)
        if text.endswith("\ufffd") and not at_limit:
            return  # an incomplete UTF-8 character: wait for its other bytes
        hold = 0
        if row.stops:
            cut = None
            for s in row.stops:
                i = text.find(s, max(0, row.sent - len(s)))
                if i >= 0 and (cut is None or i < cut):
                    cut = i
            if cut is not None:
                text = text[:cut]
                row.finish, row._cut = "stop", True
            else:
                # keep back an ending that may grow into a stop string
                hold = max((k for s in row.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        row.text = text
        if row.finish is None and at_limit:
            row.finish = "length"
        if job.stream:
            end = len(text) if row.finish else len(text) - hold
            if end > row.sent:
                job.emit(("delta", row.index, text[row.sent:end]))
                row.sent = end

    def _finish_job(self, job: Job, *, cancelled: bool) -> None:
        job.done = True
        if cancelled:
            self.stats["cancelled"] += 1
        else:
            self.stats["completed"] += 1
        for row in job.rows:
            if row.finish is None:
                row.finish = "cancelled"
            if not row._cut:  # a stop string already fixed the text; otherwise decode what was generated
                row.text = self._decode(row) if row.ids else ""
            if job.stream and len(row.text) > row.sent:
                job.emit(("delta", row.index, row.text[row.sent:]))
                row.sent = len(row.text)
            job.emit(("finish", row.index, row.finish, len(row.ids), row.text))

    def snapshot(self) -> dict:
        """Counters for /health: queue length, batches run, the largest batch, tokens generated."""
        with self._cond:
            return {**self.stats, "queued": len(self._queue), "max_batch": self.max_batch,
                    "max_queue": self.max_queue}
