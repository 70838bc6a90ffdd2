"""The FastAPI application of ``openllm serve``: OpenAI-compatible completions and chat completions (with
server-sent-event streaming), the original OpenLLM ``POST /generate``, ``/health`` and ``/v1/models``.

Handlers only validate, tokenize and check the context budget; generation happens on the
:class:`~openllm.serve.batcher.Batcher` thread, which batches concurrent requests. Errors use OpenAI's
shape, ``{"error": {"message", "type", "param", "code"}}``: 400 (a prompt or ``max_tokens`` that does not
fit the context, an unsupported option), 401 (missing or wrong API key), 422 (malformed JSON or a field of
the wrong type; the message names the field), 429 (the queue is full), 500 (generation failed).
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .batcher import Batcher, Job, QueueFull, Row
from .chat import CHAT_STOPS, render_chat
from .schemas import ChatRequest, CompletionRequest, GenerateRequest

__all__ = ["create_app", "ApiError"]

_POLL_S = 0.25  # how often a waiting non-streaming handler checks that its client is still there
_MAX_ROWS = 128  # sequences one completions request may ask for (prompts x n)


class ApiError(Exception):
    """An error answered to the client in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class _ClientGone(Exception):
    pass


def create_app(model: Any, tokenizer: Any, *, model_name: str = "openllm", api_key: str | None = None,
               max_batch: int = 32, batch_window_ms: float = 10.0, max_queue: int = 256) -> FastAPI:
    """An app serving ``model`` (an :class:`openllm.model.Transformer` in eval mode) with ``tokenizer``
    (``encode``, ``decode``, ``eos_id``). ``api_key`` (or ``OPENLLM_API_KEY``) makes every endpoint but
    ``/health`` require ``Authorization: Bearer KEY``. ``max_batch=1`` serves one request at a time."""
    if api_key is None:
        api_key = os.environ.get("OPENLLM_API_KEY") or None
    batcher = Batcher(model, tokenizer, max_batch=max_batch, window_s=batch_window_ms / 1000.0,
                      max_queue=max_queue)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="OpenLLM inference server", version="0.1.0", lifespan=lifespan)
    app.state.batcher = batcher
    app.state.model_name = model_name

    # --- errors -----------------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts, param, code = [], None, "invalid_value"
        for e in errors:
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            if e.get("type") == "json_invalid":
                parts.append(f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
                code = "json_invalid"
                continue
            field = ".".join(loc) or "body"
            param = param or (loc[0] if loc else None)
            parts.append(f"{field}: {e.get('msg')}")
            code = e.get("type", code) if len(parts) == 1 else code
        message = "; ".join(dict.fromkeys(parts)) or "invalid request"
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": param,
                                       "code": code}, "detail": detail}, status_code=422)

    # --- auth -------------------------------------------------------------------------------------------
    async def check_key(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not token or not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(check_key)]

    # --- helpers ----------------------------------------------------------------------------------------
    def encode(text: str) -> list[int]:
        ids = list(tokenizer.encode(text))
        # an empty prompt starts a new document, which in our training data follows an EOS
        return ids or [int(tokenizer.eos_id)]

    def budget(prompt_len: int, requested: int | None, default: int | None, param: str = "max_tokens") -> int:
        ctx = batcher.context
        if prompt_len >= ctx:
            raise ApiError(400, f"the prompt is {prompt_len} tokens but the model's context is {ctx} tokens, "
                                f"which leaves no room to generate; shorten the prompt to at most {ctx - 1} tokens",
                           param="prompt", code="context_length_exceeded")
        room = ctx - prompt_len
        if requested is None:
            return room if default is None else min(default, room)
        if requested > room:
            raise ApiError(400, f"{param} ({requested}) + the prompt ({prompt_len} tokens) = {requested + prompt_len} "
                                f"tokens, more than the model's context of {ctx} tokens; ask for at most {room} "
                                f"new tokens or shorten the prompt", param=param, code="context_length_exceeded")
        return requested

    def stops_of(stop: str | list[str] | None) -> tuple[str, ...]:
        if stop is None:
            return ()
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > 4:
            raise ApiError(400, f"stop has {len(stops)} sequences; at most 4 are allowed", param="stop")
        return tuple(s for s in stops if s)

    def submit(rows: list[Row], *, temperature: float, top_p: float | None, top_k: int | None,
               seed: int | None, stream: bool) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        job = Job(rows=rows, temperature=temperature, top_p=None if top_p is None or top_p >= 1.0 else top_p,
                  top_k=top_k, seed=seed, stream=stream, emit=emit)
        try:
            batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy: {exc}; retry shortly", type="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        return job, queue

    async def collect(request: Request, job: Job, queue: asyncio.Queue) -> dict[int, tuple]:
        """Wait for every row of a non-streaming job; cancel it when the client disconnects."""
        results: dict[int, tuple] = {}
        getter: asyncio.Future | None = None
        try:
            while len(results) < len(job.rows):
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter}, timeout=_POLL_S)
                if not done:
                    if await request.is_disconnected():
                        raise _ClientGone()
                    continue
                event, getter = getter.result(), None
                if event[0] == "error":
                    raise ApiError(500, event[1], type="server_error", code="generation_failed")
                if event[0] == "finish":
                    results[event[1]] = event
        except BaseException:
            job.cancel()
            raise
        finally:
            if getter is not None:
                getter.cancel()
        return results

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def events(job: Job, queue: asyncio.Queue) -> AsyncIterator[tuple]:
        """A streaming job's events until every row finished; cancels the job if the stream is abandoned
        (Starlette cancels the response when the client disconnects)."""
        finished = 0
        try:
            while finished < len(job.rows):
                event = await queue.get()
                yield event
                if event[0] == "error":
                    return
                if event[0] == "finish":
                    finished += 1
        finally:
            job.cancel()

    def streaming(body: AsyncIterator[str]) -> StreamingResponse:
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def sse_events(job: Job, queue: asyncio.Queue, *, prelude: list[str], delta, finish,
                         usage_chunk=None) -> AsyncIterator[str]:
        """One SSE stream for both completion shapes: ``prelude`` chunks, then a chunk per delta and per
        finished row (``delta(index, text)``, ``finish(index, reason)``), a final usage chunk when asked
        (``usage_chunk(completion_tokens)``), then [DONE]. A failed generation ends with an error event."""
        completion_tokens = 0
        for item in prelude:
            yield item
        async for event in events(job, queue):
            if event[0] == "delta":
                yield delta(event[1], event[2])
            elif event[0] == "finish":
                completion_tokens += event[3]
                yield finish(event[1], event[2])
            else:
                yield sse({"error": {"message": event[1], "type": "server_error", "param": None,
                                     "code": "generation_failed"}})
                return
        if usage_chunk is not None:
            yield usage_chunk(completion_tokens)
        yield "data: [DONE]\n\n"

    def gone() -> Response:
        return Response(status_code=499)

    # --- endpoints --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "context": batcher.context, "batcher": batcher.snapshot()}

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "openllm", "max_model_len": batcher.context}]}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        if body.logprobs is not None:
            raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
        if body.suffix:
            raise ApiError(400, "suffix (insertion) is not supported by base models", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise ApiError(400, "best_of is not supported (use n)", param="best_of")
        prompts: Sequence[Any] = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if prompts and isinstance(prompts[0], int):
            prompts = [prompts]
        if not prompts:
            raise ApiError(400, "prompt is an empty list; give a string, a list of strings or token ids",
                           param="prompt")
        encoded: list[list[int]] = []
        for p in prompts:
            if isinstance(p, str):
                encoded.append(encode(p))
            else:
                bad = [t for t in p if not 0 <= t < model.cfg.vocab_size]
                if bad or not p:
                    raise ApiError(400, f"prompt token ids must be in [0, {model.cfg.vocab_size}); got {bad[:5] or p}",
                                   param="prompt")
                encoded.append(list(p))
        if len(encoded) * body.n > _MAX_ROWS:
            raise ApiError(400, f"{len(encoded)} prompts x n={body.n} = {len(encoded) * body.n} sequences; at most "
                                f"{_MAX_ROWS} a request", param="prompt")
        stops = stops_of(body.stop)
        rows = []
        for i, ids in enumerate(encoded):
            max_new = budget(len(ids), body.max_tokens, 16)
            rows += [Row(prompt=ids, max_new=max_new, index=i * body.n + j, stops=stops) for j in range(body.n)]
        echoes = [(p if isinstance(p, str) else tokenizer.decode(list(p))) if body.echo else "" for p in prompts]
        prompt_tokens = sum(len(ids) for ids in encoded)
        job, queue = submit(rows, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            seed=body.seed, stream=body.stream)
        cid, now, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), body.model or model_name

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def chunk(index: int, text: str, finish: str | None) -> str:
                return sse({"id": cid, "object": "text_completion", "created": now, "model": name,
                            "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]})

            def usage_chunk(completion_tokens: int) -> str:
                return sse({"id": cid, "object": "text_completion", "created": now, "model": name,
                            "choices": [], "usage": usage(prompt_tokens, completion_tokens)})

            prelude = [chunk(row.index, echoes[row.index // body.n], None) for row in rows
                       if echoes[row.index // body.n]]
            return streaming(sse_events(job, queue, prelude=prelude,
                                        delta=lambda i, text: chunk(i, text, None),
                                        finish=lambda i, reason: chunk(i, "", reason),
                                        usage_chunk=usage_chunk if include_usage else None))

        try:
            results = await collect(request, job, queue)
        except _ClientGone:
            return gone()
        choices = [{"index": i, "text": echoes[i // body.n] + results[i][4], "logprobs": None,
                    "finish_reason": results[i][2]} for i in sorted(results)]
        return {"id": cid, "object": "text_completion", "created": now, "model": name, "choices": choices,
                "usage": usage(prompt_tokens, sum(r[3] for r in results.values()))}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatRequest, request: Request):
        if body.logprobs:
            raise ApiError(400, "logprobs are not supported by this server", param="logprobs")
        prompt = encode(render_chat((m.role, m.text()) for m in body.messages))
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        max_new = budget(len(prompt), requested, None, param)
        stops = CHAT_STOPS + stops_of(body.stop)
        rows = [Row(prompt=prompt, max_new=max_new, index=j, stops=stops, lstrip=True) for j in range(body.n)]
        job, queue = submit(rows, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            seed=body.seed, stream=body.stream)
        cid, now, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model or model_name

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def chunk(index: int, delta: dict, finish: str | None) -> str:
                return sse({"id": cid, "object": "chat.completion.chunk", "created": now, "model": name,
                            "choices": [{"index": index, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}]})

            def usage_chunk(completion_tokens: int) -> str:
                return sse({"id": cid, "object": "chat.completion.chunk", "created": now, "model": name,
                            "choices": [], "usage": usage(len(prompt), completion_tokens)})

            prelude = [chunk(row.index, {"role": "assistant", "content": ""}, None) for row in rows]
            return streaming(sse_events(job, queue, prelude=prelude,
                                        delta=lambda i, text: chunk(i, {"content": text}, None),
                                        finish=lambda i, reason: chunk(i, {}, reason),
                                        usage_chunk=usage_chunk if include_usage else None))

        try:
            results = await collect(request, job, queue)
        except _ClientGone:
            return gone()
        choices = [{"index": i, "message": {"role": "assistant", "content": results[i][4]}, "logprobs": None,
                    "finish_reason": results[i][2]} for i in sorted(results)]
        return {"id": cid, "object": "chat.completion", "created": now, "model": name, "choices": choices,
                "usage": usage(len(prompt), sum(r[3] for r in results.values()))}

    @app.post("/generate", dependencies=auth)
    async def generate(body: GenerateRequest, request: Request):
        start = time.perf_counter()
        prompt = encode(body.prompt)
        requested = body.max_new_tokens if body.max_new_tokens is not None else body.max_length
        param = "max_new_tokens" if body.max_new_tokens is not None else "max_length"
        max_new = budget(len(prompt), requested, 256, param)
        stops = tuple(s for s in (body.stop_sequences or []) if s)
        rows = [Row(prompt=prompt, max_new=max_new, index=j, stops=stops) for j in range(body.num_return_sequences)]
        job, queue = submit(rows, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            seed=body.seed, stream=False)
        try:
            results = await collect(request, job, queue)
        except _ClientGone:
            return gone()
        texts = [results[i][4] for i in sorted(results)]
        return {"generated_text": texts, "prompt": body.prompt,
                "generation_time": round(time.perf_counter() - start, 4),
                "parameters": {"max_new_tokens": max_new, "temperature": body.temperature, "top_k": body.top_k,
                               "top_p": body.top_p, "num_return_sequences": body.num_return_sequences,
                               "seed": body.seed},
                "finish_reasons": [results[i][2] for i in sorted(results)],
                "usage": usage(len(prompt), sum(r[3] for r in results.values()))}

    return app
