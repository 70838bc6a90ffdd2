"""What the endpoints share: the server's state (the model once loaded, its engine, names, the API key),
OpenAI-shaped errors, and the request checks every generation endpoint makes (tokenizing, the context
budget, stop strings, sampling options)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from ..constrain import GrammarError, grammar_of_request, tool_call_grammar
from ..sampling import SamplingParams
from .chat import chat_prompt
from .engine import Engine

__all__ = ["ApiError", "ServerState"]

_MAX_STOPS = 4


class ApiError(Exception):
    """An error answered to the client in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


@dataclass
class ServerState:
    """The server's model, engine and settings. ``engine`` is None until the model is loaded (``/health``
    answers 503 meanwhile); ``load_error`` says why loading failed."""

    model_name: str
    api_key: str | None
    engine_options: dict
    engine: Engine | None = None
    tokenizer: Any = None
    loaded: Any = None  # openllm.load's result, when the server loaded the model itself
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    ready: threading.Event = field(default_factory=threading.Event)
    on_ready: Callable[[ServerState], None] | None = None  # after a background load, failed or not

    def attach(self, model: Any, tokenizer: Any) -> None:
        """Build the engine over ``model`` and start serving it."""
        self.tokenizer = tokenizer
        self.engine = Engine(model, tokenizer, **self.engine_options).start()
        self.ready.set()

    # --- checks shared by the generation endpoints ------------------------------------------------------
    def require_engine(self) -> Engine:
        if self.engine is None or not self.ready.is_set():
            why = self.load_error or "the model is still loading; retry when /health answers 200"
            raise ApiError(503, why, type="server_error", code="model_not_ready", headers={"Retry-After": "1"})
        return self.engine

    def check_model(self, name: str | None) -> str:
        """The model id to answer with; a request naming another model is a 404."""
        if name is not None and name != self.model_name:
            raise ApiError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.model_name}' (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        return self.model_name

    @staticmethod
    def check_text(text: str, param: str) -> str:
        """``text`` if it can be encoded: JSON lets a lone surrogate through (``"\\ud800"``), UTF-8 does not."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(
                400,
                f"{param} holds a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not "
                f"text; send valid Unicode",
                param=param,
            ) from exc
        return text

    def chat_ids(self, messages: Any, tools: list[dict] | None = None) -> list[int]:
        """The chat template's token ids for OpenAI-shaped ``messages`` (and the request's checked ``tools``)."""
        turns = []
        for m in messages:
            turn: dict[str, Any] = {"role": m.role, "content": self.check_text(m.text(), "messages")}
            if m.role == "assistant" and m.tool_calls:
                turn["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {
                            "name": self.check_text(c.function.name, "messages"),
                            "arguments": self.check_text(c.function.arguments, "messages"),
                        },
                    }
                    for c in m.tool_calls
                ]
            if m.tool_call_id is not None:
                turn["tool_call_id"] = m.tool_call_id
            turns.append(turn)
        return chat_prompt(self.tokenizer, turns, tools=tools)

    def encode(self, text: str, param: str = "prompt") -> list[int]:
        ids = list(self.tokenizer.encode(self.check_text(text, param)))
        # an empty prompt starts a new document, which in our training data follows an EOS
        return ids or [int(self.tokenizer.eos_id)]

    def check_ids(self, ids: list[int]) -> list[int]:
        vocab = self.require_engine().model.cfg.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad or not ids:
            raise ApiError(400, f"prompt token ids must be in [0, {vocab}); got {bad[:5] or ids}", param="prompt")
        return list(ids)

    def budget(self, prompt_len: int, requested: int | None, default: int | None, param: str = "max_tokens") -> int:
        """New tokens a request gets: ``requested`` (or ``default``, or all the room left), checked against
        the room its KV-cache slot leaves after the prompt."""
        engine = self.require_engine()
        ctx = engine.context
        what = (
            f"the model's context of {ctx} tokens"
            if ctx == engine.model_context
            else f"the {ctx} tokens a KV-cache slot holds (--kv-cache-tokens / --max-batch)"
        )
        if prompt_len >= ctx:
            raise ApiError(
                400,
                f"the prompt is {prompt_len} tokens but a sequence may use {what}, which leaves "
                f"no room to generate; shorten the prompt to at most {ctx - 1} tokens",
                param="prompt",
                code="context_length_exceeded",
            )
        room = ctx - prompt_len
        if requested is None:
            return room if default is None else min(default, room)
        if requested > room:
            raise ApiError(
                400,
                f"{param} ({requested}) + the prompt ({prompt_len} tokens) = {requested + prompt_len} "
                f"tokens, more than {what}; ask for at most {room} new tokens or shorten the "
                f"prompt",
                param=param,
                code="context_length_exceeded",
            )
        return requested

    @staticmethod
    def stops(stop: str | list[str] | None) -> tuple[str, ...]:
        if stop is None:
            return ()
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > _MAX_STOPS:
            raise ApiError(400, f"stop has {len(stops)} sequences; at most {_MAX_STOPS} are allowed", param="stop")
        return tuple(s for s in stops if s)

    def sampling(self, body: Any) -> SamplingParams:
        """The validated sampling settings of an OpenAI-shaped body (temperature, top_p, top_k, seed,
        penalties, logit_bias): a bad value is this request's 400, never a failure of the batch it joins."""
        bias = None
        logit_bias = getattr(body, "logit_bias", None)
        if logit_bias:
            vocab = self.require_engine().vocab_size
            bias = {}
            for key, value in logit_bias.items():
                # ASCII digits only: str.isdigit() also takes "²", which int() refuses
                if not re.fullmatch(r"[0-9]{1,9}", key) or not 0 <= int(key) < vocab:
                    raise ApiError(
                        400, f"logit_bias keys are token ids in [0, {vocab}); got {key!r}", param="logit_bias"
                    )
                bias[int(key)] = value
        top_p = body.top_p
        params = SamplingParams(
            temperature=body.temperature,
            top_p=None if top_p is None or top_p >= 1.0 else top_p,
            top_k=body.top_k,
            seed=body.seed,
            presence_penalty=getattr(body, "presence_penalty", None) or 0.0,
            frequency_penalty=getattr(body, "frequency_penalty", None) or 0.0,
            logit_bias=bias,
        )
        try:
            return params.validate(self.require_engine().vocab_size)
        except ValueError as exc:
            param = str(exc).split(" ", 1)[0].rstrip(":")
            raise ApiError(400, str(exc), param=param) from exc

    def grammar(self, body: Any) -> str | None:
        """The grammar the output must follow (``response_format``, ``guided_json``/``_regex``/``_choice``),
        checked against the model's vocabulary: a schema or pattern that cannot be followed is this request's
        400."""
        fields = ("guided_json", "guided_regex", "guided_choice", "response_format")
        param = next((f for f in fields if getattr(body, f, None) is not None), "response_format")
        try:
            grammar, _ = grammar_of_request(
                response_format=body.response_format,
                guided_json=body.guided_json,
                guided_regex=body.guided_regex,
                guided_choice=body.guided_choice,
            )
            if grammar is None:
                return None
            return self.require_engine().vocabulary().check(grammar)
        except (GrammarError, ValueError) as exc:
            raise ApiError(400, str(exc), param=param) from exc

    def tool_grammar(self, tools: list[dict], choice: str, parallel: bool) -> str:
        """The grammar of a reply that may call ``tools`` (:func:`openllm.constrain.tool_call_grammar`), checked
        against the model's vocabulary: parameters no grammar can follow are this request's 400."""
        try:
            grammar = tool_call_grammar(tools, choice=choice, parallel=parallel)
            return self.require_engine().vocabulary().check(grammar)
        except (GrammarError, ValueError, RecursionError) as exc:  # RecursionError: a schema too deep to compile
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ApiError(400, f"the tools cannot be called: {first}", param="tools") from exc

    def token_text(self, tok: int) -> str:
        """One token as text, the way it adds to the text before it (SentencePiece's '▁' is a space); EOS adds
        nothing."""
        if tok == self.tokenizer.eos_id:
            return ""
        piece = getattr(self.tokenizer, "id_to_piece", None)
        if piece is None:
            return self.tokenizer.decode([tok])
        text = piece(int(tok))
        return text.replace("\u2581", " ")
