"""The endpoints beyond OpenAI's: ``/health``, ``/metrics`` (Prometheus), ``/tokenize``, ``/detokenize`` and
``/tokenizer_info`` (vLLM's shapes, which lm-eval's remote tokenizer reads), and the original OpenLLM
``POST /generate``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import Field

from ..tokenizer import CHAT_TEMPLATE
from .engine import Seq
from .metrics import CONTENT_TYPE
from .schemas import ChatMessage, GenerateRequest, RequestBody
from .state import ApiError, ServerState
from .streams import ClientGone, collect, submit, usage

__all__ = ["router", "public_router", "TokenizeRequest", "DetokenizeRequest"]

public_router = APIRouter()  # no API key: load balancers and orchestrators probe it
router = APIRouter()


class TokenizeRequest(RequestBody):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(RequestBody):
    model: str | None = None
    tokens: list[int] = Field(default_factory=list)


def _state(request: Request) -> ServerState:
    return request.app.state.server


@public_router.get("/health")
async def health(request: Request):
    state = _state(request)
    if state.engine is None or not state.ready.is_set():
        status = "error" if state.load_error else "loading"
        body = {"status": status, "model": state.model_name}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    engine = state.engine
    return {"status": "ok", "model": state.model_name, "context": engine.context, "engine": engine.snapshot()}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    engine = _state(request).require_engine()
    return PlainTextResponse(engine.metrics.render(engine.gauges), media_type=CONTENT_TYPE)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    state = _state(request)
    state.check_model(body.model)
    engine = state.require_engine()
    if (body.prompt is None) == (body.messages is None):
        raise ApiError(400, "give either prompt (text) or messages (a chat)", param="prompt")
    # tokenizing a long prompt takes time: off the event loop, so /health and other requests stay responsive
    if body.messages is not None:
        ids = await run_in_threadpool(state.chat_ids, body.messages)
    else:
        # our tokenizer adds no special tokens to text: add_special_tokens changes nothing (the prompt is given
        # here: exactly one of the two is, checked above)
        text = state.check_text(body.prompt or "", "prompt")
        ids = list(await run_in_threadpool(state.tokenizer.encode, text))
    out = {"count": len(ids), "max_model_len": engine.context, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [state.token_text(t) for t in ids]
    return out


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    state = _state(request)
    state.check_model(body.model)
    state.require_engine()
    return {"prompt": state.tokenizer.decode(state.check_ids(body.tokens) if body.tokens else [])}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict:
    state = _state(request)
    engine = state.require_engine()
    tok = state.tokenizer
    piece = getattr(tok, "id_to_piece", None)
    names = {
        k: piece(getattr(tok, f"{k}_id")) if piece and getattr(tok, f"{k}_id", None) is not None else None
        for k in ("eos", "bos", "pad")
    }
    return {
        "tokenizer_class": type(tok).__name__,
        "eos_token": names["eos"],
        "bos_token": names["bos"],
        "pad_token": names["pad"],
        "model_max_length": engine.context,
        "chat_template": CHAT_TEMPLATE,
    }


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request):
    state = _state(request)
    state.require_engine()
    start = time.perf_counter()
    prompt = await run_in_threadpool(state.encode, body.prompt)
    requested = body.max_new_tokens if body.max_new_tokens is not None else body.max_length
    param = "max_new_tokens" if body.max_new_tokens is not None else "max_length"
    max_new = state.budget(len(prompt), requested, 256, param)
    stops = tuple(s for s in (body.stop_sequences or []) if s)
    seqs = [Seq(prompt=prompt, max_new=max_new, index=j, stops=stops) for j in range(body.num_return_sequences)]
    sampling = state.sampling(body)
    job, queue = submit(state, seqs, sampling, stream=False)
    try:
        results = await collect(state, request, job, queue)
    except ClientGone:
        return Response(status_code=499)
    order = sorted(results)
    return {
        "generated_text": [results[i][4] for i in order],
        "prompt": body.prompt,
        "generation_time": round(time.perf_counter() - start, 4),
        "parameters": {
            "max_new_tokens": max_new,
            "temperature": body.temperature,
            "top_k": body.top_k,
            "top_p": body.top_p,
            "num_return_sequences": body.num_return_sequences,
            "seed": body.seed,
        },
        "finish_reasons": [results[i][2] for i in order],
        "usage": usage(len(prompt), sum(r[3] for r in results.values())),
    }
