"""The FastAPI application of ``openllm serve``: OpenAI-compatible completions and chat completions (with
server-sent-event streaming and log-probabilities), ``/v1/models``, ``/health``, ``/metrics``,
``/tokenize``/``/detokenize`` and the original OpenLLM ``POST /generate``.

Handlers (:mod:`.openai_routes`, :mod:`.extra_routes`) validate, tokenize and check the context budget;
generation happens on the :class:`~openllm.serve.engine.Engine` thread, which batches concurrent requests
continuously. Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 (a prompt or
``max_tokens`` that does not fit, an unsupported option), 401 (missing or wrong API key), 404 (another
model's name), 422 (malformed JSON or a field of the wrong type; the message names the field), 429 (the
queue is full), 500 (generation failed), 503 (the model is still loading).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import extra_routes, openai_routes
from .state import ApiError, ServerState

__all__ = ["create_app", "ApiError", "DEFAULT_MAX_BODY", "DEFAULT_READ_TIMEOUT", "BodyLimit"]

DEFAULT_MAX_BODY = 4 << 20  # 4 MiB: far above any prompt that fits a small model's context
DEFAULT_READ_TIMEOUT = 30.0  # seconds a client gets to send a request's headers, and again its body

log = logging.getLogger("openllm.serve")


def create_app(
    model: Any = None,
    tokenizer: Any = None,
    *,
    load: Callable[[], tuple[Any, Any]] | None = None,
    model_name: str = "openllm",
    api_key: str | None = None,
    max_batch: int = 32,
    kv_cache_tokens: int | None = None,
    prefill_chunk: int = 256,
    max_queue: int = 256,
    batching: str = "continuous",
    prefix_caching: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    body_timeout: float = DEFAULT_READ_TIMEOUT,
    on_ready: Callable[[ServerState], None] | None = None,
) -> FastAPI:
    """An app serving ``model`` (an :class:`openllm.model.Transformer` in eval mode) with ``tokenizer``
    (``encode``, ``decode``, ``eos_id``), or what ``load()`` returns as ``(model, tokenizer)``: then the
    model is loaded on a background thread once the server runs, and ``/health`` answers 503 until it is
    ready. ``api_key`` (or ``OPENLLM_API_KEY``) makes every endpoint but ``/health`` require
    ``Authorization: Bearer KEY``. ``max_batch`` sequences run together, each in a KV-cache slot of
    ``kv_cache_tokens // max_batch`` tokens (default: the model's context); ``batching="static"`` runs a
    batch to its end before starting the next. A request body over ``max_body_bytes`` is refused with 413
    before it is read, one not sent within ``body_timeout``
    seconds with 408. No interactive docs are served (FastAPI's would load Swagger UI from a CDN).
    ``app.state.server`` is the :class:`ServerState`."""
    if (model is None) == (load is None):
        raise ValueError("give either model and tokenizer, or load")
    if api_key is None:
        api_key = os.environ.get("OPENLLM_API_KEY") or None
    options = {
        "max_batch": max_batch,
        "kv_cache_tokens": kv_cache_tokens,
        "prefill_chunk": prefill_chunk,
        "max_queue": max_queue,
        "policy": batching,
        "prefix_caching": prefix_caching,
    }
    state = ServerState(model_name=model_name, api_key=api_key, engine_options=options, on_ready=on_ready)
    if model is not None:
        state.attach(model, tokenizer)  # errors in the options surface here, before serving

    app = FastAPI(
        title="OpenLLM inference server",
        version="0.2.0",
        lifespan=_lifespan(state, load),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    app.state.server = state
    _install_error_handlers(app)
    app.include_router(extra_routes.public_router)
    auth = [Depends(_key_checker(state))]
    app.include_router(openai_routes.router, dependencies=auth)
    app.include_router(extra_routes.router, dependencies=auth)
    return app


def _lifespan(state: ServerState, load: Callable[[], tuple[Any, Any]] | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.engine is not None:
            state.engine.start()  # again, when an app is served a second time
        elif load is not None:
            threading.Thread(target=_load_in_background, args=(state, load), name="openllm-load", daemon=True).start()
        try:
            yield
        finally:
            if state.engine is not None:
                state.engine.stop()

    return lifespan


def _load_in_background(state: ServerState, load: Callable[[], tuple[Any, Any]]) -> None:
    try:
        model, tokenizer = load()
        state.attach(model, tokenizer)
    except Exception as exc:  # reported by /health and the CLI, which exits with the message
        log.error("loading the model failed: %s", exc)
        state.load_error = str(exc) or type(exc).__name__
        state.ready.set()
    if state.on_ready is not None:
        state.on_ready(state)


def _key_checker(state: ServerState):
    async def check_key(request: Request) -> None:
        if not state.api_key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if not token or not hmac.compare_digest(token.encode(), state.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check_key


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413 (OpenAI's error shape): at once when Content-Length
    says so, else as soon as the bytes read pass the limit; at most ``max_bytes`` + one chunk is ever held.
    A body not complete within ``timeout`` seconds is answered 408, so slow clients cannot hold connections
    (and file descriptors) for ever. Pure ASGI: the body read here is replayed to the app, and the client's
    later messages (a disconnect during a stream) still reach it."""

    def __init__(self, app, max_bytes: int, timeout: float = DEFAULT_READ_TIMEOUT) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, send)
        chunks, seen, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                return await self._timed_out(scope, send)
            if message["type"] != "http.request":  # the client left before sending its body
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > self.max_bytes:
                return await self._refuse(scope, send)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _timed_out(self, scope, send) -> None:
        response = ApiError(
            408,
            f"the request body did not arrive within {self.timeout:g} s (openllm serve --read-timeout)",
            code="request_timeout",
            headers={"Connection": "close"},
        ).response()
        await response(scope, _no_body, send)

    async def _refuse(self, scope, send) -> None:
        response = ApiError(
            413,
            f"the request body is larger than the server's limit of {self.max_bytes:,} "
            f"bytes (openllm serve --max-body-bytes)",
            code="request_too_large",
        ).response()
        await response(scope, _no_body, send)


async def _no_body():
    return {"type": "http.disconnect"}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown paths (404), wrong methods (405): the same JSON shape as every other error
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail
        if isinstance(exc.__cause__, RecursionError):  # FastAPI's "error parsing the body" for JSON nested ~1000 deep
            detail, kind = "the body nests JSON too deeply to read: flatten it", "json_invalid"
        return ApiError(
            exc.status_code,
            f"{request.method} {request.url.path}: {detail}",
            code=kind,
            headers=getattr(exc, "headers", None),
        ).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return ApiError(
            500,
            f"internal error ({type(exc).__name__}); the server log has the details",
            type="server_error",
            code="internal_error",
        ).response()

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
        return JSONResponse(
            {
                "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code},
                "detail": detail,
            },
            status_code=422,
        )
