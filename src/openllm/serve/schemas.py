"""Request bodies of the HTTP API (pydantic, strict types: ``"5"`` is not an integer and ``true`` is not a
number). Fields and defaults follow OpenAI's completions and chat completions APIs; fields we accept but
the server cannot honour (the deprecated ``functions``, ``suffix``, ...) are refused with a 400 by the
handlers rather than ignored. Unknown fields are ignored, as OpenAI-compatible servers do."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "RequestBody",
    "CompletionRequest",
    "ChatRequest",
    "ChatMessage",
    "ToolCall",
    "GenerateRequest",
    "StreamOptions",
]

Stop = str | list[str] | None


class RequestBody(BaseModel):
    """Every request body: fields of the wrong type are refused (422), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(RequestBody):
    include_usage: bool = False


class _Sampling(RequestBody):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)  # not in OpenAI's API; vLLM and others accept it
    n: int = Field(default=1, ge=1, le=16)
    stop: Stop = Field(default=None)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    # structured output: OpenAI's response_format, or vLLM's guided_* extras (openllm.constrain)
    response_format: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = None
    suffix: str | None = None


class _TextPart(RequestBody):
    type: Literal["text"]
    text: str


class _Function(RequestBody):
    name: str
    arguments: str  # OpenAI sends a call's arguments as a JSON string


class ToolCall(RequestBody):
    """A call an earlier assistant turn made (sent back with the conversation)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: _Function


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: the call they answer

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # OpenAI's tool calling, checked by serve.tools (a bad entry is a 400 with a one-line message, not a 422)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    # the deprecated functions API is refused (use tools)
    functions: list[Any] | None = None
    function_call: Any = None


class GenerateRequest(RequestBody):
    """The original OpenLLM server's ``POST /generate`` body (``max_length`` counts new tokens)."""

    prompt: str
    max_length: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_k: int | None = Field(default=40, ge=1)
    top_p: float | None = Field(default=0.9, gt=0.0, le=1.0)
    num_return_sequences: int = Field(default=1, ge=1, le=16)
    stop_sequences: list[str] | None = None
    seed: int | None = None
