"""OpenAI's endpoints: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` (streaming or not, with log-probabilities; chat with tool calling)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from .chat import CHAT_STOPS
from .engine import Seq
from .schemas import ChatRequest, CompletionRequest
from .state import ApiError, ServerState
from .streams import ClientGone, collect, sse, sse_stream, streaming_response, submit, usage
from .tools import CallReader, ToolRequest, check_tools, read_calls

__all__ = ["router"]

_MAX_SEQS = 128  # sequences one completions request may ask for (prompts x n)

router = APIRouter()


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _gone() -> Response:
    return Response(status_code=499)


def _model_card(state: ServerState) -> dict:
    engine = state.require_engine()
    return {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "openllm",
        "max_model_len": engine.context,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(_state(request))]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict:
    state = _state(request)
    state.check_model(model_id)
    return _model_card(state)


# --- completions ----------------------------------------------------------------------------------------
def _completion_logprobs(state: ServerState, entries: Sequence[tuple | None], offset: int) -> dict:
    """OpenAI's completions ``logprobs`` object over (token, logprob, top) entries; the top dicts hold the
    ``logprobs`` most likely tokens and the chosen one."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for entry in entries:
        if entry is None:  # the prompt's first token: nothing before it to score it
            continue
        tok, lp, top = entry
        text = state.token_text(tok)
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        alts = {state.token_text(t): v for t, v in top}
        alts.setdefault(text, lp)
        out["top_logprobs"].append(alts)
        out["text_offset"].append(offset)
        offset += len(text)
    return out


def _prompt_first(state: ServerState, ids: list[int], out: dict) -> dict:
    """Put the prompt's unscored first token in front, as OpenAI does (logprob and top None)."""
    text = state.token_text(ids[0])
    return {
        "tokens": [text] + out["tokens"],
        "token_logprobs": [None] + out["token_logprobs"],
        "top_logprobs": [None] + out["top_logprobs"],
        "text_offset": [0] + [o + len(text) for o in out["text_offset"]],
    }


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = _state(request)
    name = state.check_model(body.model)
    state.require_engine()
    if body.suffix:
        raise ApiError(400, "suffix (insertion) is not supported by base models", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise ApiError(400, "best_of is not supported (use n)", param="best_of")
    prompts: Sequence[Any] = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    if not prompts:
        raise ApiError(400, "prompt is an empty list; give a string, a list of strings or token ids", param="prompt")
    # tokenizing a long prompt takes time: off the event loop, so /health and other requests stay responsive
    encoded = await run_in_threadpool(
        lambda: [state.encode(p) if isinstance(p, str) else state.check_ids(p) for p in prompts]
    )
    if len(encoded) * body.n > _MAX_SEQS:
        raise ApiError(
            400,
            f"{len(encoded)} prompts x n={body.n} = {len(encoded) * body.n} sequences; at most {_MAX_SEQS} a request",
            param="prompt",
        )
    if body.stream and body.echo and body.logprobs is not None:
        raise ApiError(
            400,
            "echo with logprobs is not supported when streaming; send stream: false",
            param="echo",
            code="unsupported_parameter",
        )
    stops = state.stops(body.stop)
    grammar = state.grammar(body)
    echo_lps = body.logprobs if body.echo else None
    seqs = []
    for i, ids in enumerate(encoded):
        max_new = state.budget(len(ids), body.max_tokens, 16)
        seqs += [
            Seq(
                prompt=ids,
                max_new=max_new,
                index=i * body.n + j,
                stops=stops,
                logprobs=body.logprobs,
                prompt_logprobs=echo_lps,
                grammar=grammar,
            )
            for j in range(body.n)
        ]
    prompt_texts = [p if isinstance(p, str) else state.tokenizer.decode(list(p)) for p in prompts]
    echoes = [t if body.echo else "" for t in prompt_texts]
    prompt_tokens = sum(len(ids) for ids in encoded)
    job, queue = submit(state, seqs, state.sampling(body), stream=body.stream)
    cid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def choice_logprobs(i: int, event: tuple) -> dict | None:
        if body.logprobs is None:
            return None
        lps = event[5]
        p = i // body.n
        if body.echo:
            out = _completion_logprobs(state, lps["prompt"] + lps["tokens"], 0)
            return _prompt_first(state, encoded[p], out)
        return _completion_logprobs(state, lps["tokens"], len(prompt_texts[p]))

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        offsets = {s.index: (0 if body.echo else len(prompt_texts[s.index // body.n])) for s in seqs}

        def chunk(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> str:
            return sse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": now,
                    "model": name,
                    "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}],
                }
            )

        def delta(index: int, text: str, lps: list) -> str:
            if body.logprobs is None:
                return chunk(index, text, None)
            out = _completion_logprobs(state, lps, offsets[index])
            offsets[index] += sum(len(t) for t in out["tokens"])
            return chunk(index, text, None, out)

        def usage_chunk(completion_tokens: int) -> str:
            return sse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": now,
                    "model": name,
                    "choices": [],
                    "usage": usage(prompt_tokens, completion_tokens),
                }
            )

        prelude = [chunk(s.index, echoes[s.index // body.n], None) for s in seqs if echoes[s.index // body.n]]
        return streaming_response(
            sse_stream(
                state,
                job,
                queue,
                prelude=prelude,
                delta=delta,
                finish=lambda i, reason: chunk(i, "", reason),
                usage_chunk=usage_chunk if include_usage else None,
            )
        )

    try:
        results = await collect(state, request, job, queue)
    except ClientGone:
        return _gone()
    choices = [
        {
            "index": i,
            "text": echoes[i // body.n] + results[i][4],
            "logprobs": choice_logprobs(i, results[i]),
            "finish_reason": results[i][2],
        }
        for i in sorted(results)
    ]
    return {
        "id": cid,
        "object": "text_completion",
        "created": now,
        "model": name,
        "choices": choices,
        "usage": usage(prompt_tokens, sum(r[3] for r in results.values())),
    }


# --- chat -----------------------------------------------------------------------------------------------
def _refuse_unsupported_chat(body: ChatRequest) -> ToolRequest | None:
    """The request's tools (checked), after refusing what the chat endpoint cannot honour."""
    if body.functions or body.function_call not in (None, "none"):
        raise ApiError(
            400,
            "functions and function_call (OpenAI's deprecated API) are not supported; send tools and tool_choice",
            param="functions",
            code="unsupported_parameter",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    tooling = check_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
    if tooling is not None and tooling.calls:
        asked = [f for f in ("guided_json", "guided_regex", "guided_choice") if getattr(body, f) is not None]
        if (body.response_format or {}).get("type", "text") != "text":
            asked.insert(0, "response_format")
        if asked:
            raise ApiError(
                400,
                f"{asked[0]} cannot be combined with tools that may be called; send tool_choice: none or drop "
                f"{asked[0]}",
                param=asked[0],
            )
        if body.logprobs:
            raise ApiError(400, "logprobs are not supported with tools that may be called", param="logprobs")
    return tooling


def _chat_logprobs(state: ServerState, entries: Sequence[tuple]) -> dict:
    content = []
    for tok, lp, top in entries:
        text = state.token_text(tok)
        content.append(
            {
                "token": text,
                "logprob": lp,
                "bytes": list(text.encode("utf-8")),
                "top_logprobs": [
                    {"token": (t := state.token_text(i)), "logprob": v, "bytes": list(t.encode("utf-8"))}
                    for i, v in top
                ],
            }
        )
    return {"content": content, "refusal": None}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    state = _state(request)
    name = state.check_model(body.model)
    state.require_engine()
    tooling = _refuse_unsupported_chat(body)
    tools = tooling.tools if tooling is not None else None
    prompt = await run_in_threadpool(state.chat_ids, body.messages, tools)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_new = state.budget(len(prompt), requested, None, param)
    stops = CHAT_STOPS + state.stops(body.stop)
    top = (body.top_logprobs or 0) if body.logprobs else None
    calling = tooling is not None and tooling.calls
    if tooling is not None and calling:
        # a call is one line of JSON, which no turn stop ("\nUser:") can cut; the reply starts with the space
        # the template writes after "Assistant:", dropped like a plain reply's
        grammar: str | None = await run_in_threadpool(
            state.tool_grammar, tooling.tools, tooling.choice, tooling.parallel
        )
        lstrip = True
    else:
        grammar = state.grammar(body)
        # a constrained reply ends when its grammar does (EOS): turn stops would cut a JSON string holding "User:"
        stops = state.stops(body.stop) if grammar else stops
        lstrip = not grammar
    seqs = [
        Seq(prompt=prompt, max_new=max_new, index=j, stops=stops, lstrip=lstrip, logprobs=top, grammar=grammar)
        for j in range(body.n)
    ]
    job, queue = submit(state, seqs, state.sampling(body), stream=body.stream)
    cid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(index: int, delta: dict, finish: str | None, logprobs: dict | None = None) -> str:
            return sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": name,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                }
            )

        def usage_chunk(completion_tokens: int) -> str:
            return sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": now,
                    "model": name,
                    "choices": [],
                    "usage": usage(len(prompt), completion_tokens),
                }
            )

        prelude = [chunk(s.index, {"role": "assistant", "content": ""}, None) for s in seqs]
        if calling:
            readers = {s.index: CallReader() for s in seqs}

            def call_deltas(i: int, text: str, lps: list) -> str:
                return "".join(chunk(i, d, None) for d in readers[i].feed(text))

            def call_finish(i: int, reason: str) -> str:
                held = "".join(chunk(i, d, None) for d in readers[i].close())
                called = reason == "stop" and readers[i].complete and readers[i].calls
                return held + chunk(i, {}, "tool_calls" if called else reason)

            delta, finish = call_deltas, call_finish
        else:

            def delta(i: int, text: str, lps: list) -> str:
                return chunk(i, {"content": text}, None, _chat_logprobs(state, lps) if top is not None else None)

            def finish(i: int, reason: str) -> str:
                return chunk(i, {}, reason)

        return streaming_response(
            sse_stream(
                state,
                job,
                queue,
                prelude=prelude,
                delta=delta,
                finish=finish,
                usage_chunk=usage_chunk if include_usage else None,
            )
        )

    try:
        results = await collect(state, request, job, queue)
    except ClientGone:
        return _gone()
    choices = []
    for i in sorted(results):
        message: dict[str, Any] = {"role": "assistant", "content": results[i][4]}
        reason = results[i][2]
        if calling:
            calls, _ = read_calls(results[i][4])
            if calls is not None and reason == "stop":
                message, reason = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
        choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": _chat_logprobs(state, results[i][5]["tokens"]) if top is not None else None,
                "finish_reason": reason,
            }
        )
    return {
        "id": cid,
        "object": "chat.completion",
        "created": now,
        "model": name,
        "choices": choices,
        "usage": usage(len(prompt), sum(r[3] for r in results.values())),
    }
