"""Between a handler and the engine: submitting a job, waiting for its results (cancelling it when the client
goes away), and server-sent events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..sampling import SamplingParams
from .engine import Job, QueueFull, Seq
from .state import ApiError, ServerState

__all__ = ["submit", "collect", "ClientGone", "sse", "sse_stream", "streaming_response", "usage"]

_POLL_S = 0.25  # how often a waiting non-streaming handler checks that its client is still there


class ClientGone(Exception):
    """The client of a non-streaming request disconnected before its answer."""


def submit(state: ServerState, seqs: list[Seq], sampling: SamplingParams, *, stream: bool) -> tuple[Job, asyncio.Queue]:
    """Queue ``seqs`` on the engine; their events arrive on the returned asyncio queue."""
    engine = state.require_engine()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    job = Job(seqs=seqs, sampling=sampling, stream=stream, emit=emit)
    try:
        engine.submit(job)
    except QueueFull as exc:
        raise ApiError(
            429,
            f"the server is busy: {exc}; retry shortly",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from exc
    return job, queue


def _cancel(state: ServerState, job: Job) -> None:
    job.cancel()
    if state.engine is not None:
        state.engine.wake()


async def collect(state: ServerState, request: Request, job: Job, queue: asyncio.Queue) -> dict[int, tuple]:
    """Every sequence's finish event of a non-streaming job, by choice index; cancels the job when the
    client disconnects (raising :class:`ClientGone`) and turns an engine error into a 500."""
    results: dict[int, tuple] = {}
    getter: asyncio.Future | None = None
    try:
        while len(results) < len(job.seqs):
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=_POLL_S)
            if not done:
                if await request.is_disconnected():
                    raise ClientGone()
                continue
            event, getter = getter.result(), None
            if event[0] == "error":
                raise ApiError(event[2], event[1], type="server_error", code=event[3])
            if event[0] == "finish":
                results[event[1]] = event
    except BaseException:
        _cancel(state, job)
        raise
    finally:
        if getter is not None:
            getter.cancel()
    return results


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def sse_stream(
    state: ServerState,
    job: Job,
    queue: asyncio.Queue,
    *,
    prelude: list[str],
    delta: Callable[[int, str, list], str],
    finish: Callable[[int, str], str],
    usage_chunk: Callable[[int], str] | None = None,
) -> AsyncIterator[str]:
    """One SSE stream for both completion shapes: ``prelude`` chunks, then a chunk per delta
    (``delta(index, text, logprobs)``) and per finished sequence (``finish(index, reason)``), a final usage
    chunk when asked (``usage_chunk(completion_tokens)``), then [DONE]. A failed generation ends with an
    error event, then [DONE]. The job is cancelled if the stream is abandoned (Starlette cancels the response when the
    client disconnects)."""
    completion_tokens = finished = 0
    try:
        for item in prelude:
            yield item
        while finished < len(job.seqs):
            event = await queue.get()
            if event[0] == "delta":
                yield delta(event[1], event[2], event[3])
            elif event[0] == "finish":
                finished += 1
                completion_tokens += event[3]
                yield finish(event[1], event[2])
            else:
                yield sse({"error": {"message": event[1], "type": "server_error", "param": None, "code": event[3]}})
                yield "data: [DONE]\n\n"  # the stream ends cleanly: clients see the error, not a cut connection
                return
        if usage_chunk is not None:
            yield usage_chunk(completion_tokens)
        yield "data: [DONE]\n\n"
    finally:
        _cancel(state, job)


def streaming_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
