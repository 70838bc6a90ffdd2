"""openllm serve with the official ``openai`` Python client pointed at a real uvicorn server on
127.0.0.1: models, completions, chat, streaming, and errors surfacing as the client's exception types."""

from __future__ import annotations

import asyncio
import re

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from openllm.generate import SamplingParams, generate
from openllm.serve import ServerThread, create_app

NAME = "tiny-openai"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def server(serve_lm):
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name=NAME, api_key=KEY)
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    # max_retries=0: a 429 or 5xx must show up in the test, not be retried away
    with OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
        yield c


def library_greedy(lm, prompt: str, n: int) -> str:
    tok = lm.tokenizer
    ids = tok.encode(prompt)
    out = generate(lm.model, [ids], SamplingParams(max_new_tokens=n, temperature=0, stop_tokens=(tok.eos_id,)))[0]
    return tok.decode(ids + out)[len(tok.decode(ids)) :]


def test_models(client):
    assert [m.id for m in client.models.list()] == [NAME]


def test_completion(client, serve_lm):
    r = client.completions.create(model=NAME, prompt="def step(self):", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == NAME
    assert r.choices[0].text == library_greedy(serve_lm, "def step(self):", 12)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_completion_n_stop_seed(client):
    base = client.completions.create(model=NAME, prompt="self.", max_tokens=16, temperature=0).choices[0].text
    stop = base[6:9]
    r = client.completions.create(model=NAME, prompt="self.", max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].text == base[: base.find(stop)] and r.choices[0].finish_reason == "stop"
    a = client.completions.create(model=NAME, prompt="self.", max_tokens=6, n=2, seed=3, temperature=0.8)
    b = client.completions.create(model=NAME, prompt="self.", max_tokens=6, n=2, seed=3, temperature=0.8)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and len(a.choices) == 2


def test_chat(client):
    r = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}],
        max_tokens=10,
        temperature=0,
    )
    assert r.object == "chat.completion"
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.message.content == choice.message.content.lstrip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 10


def test_streaming_completion(client):
    full = client.completions.create(model=NAME, prompt="for i in", max_tokens=15, temperature=0).choices[0].text
    stream = client.completions.create(model=NAME, prompt="for i in", max_tokens=15, temperature=0, stream=True)
    chunks = list(stream)
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"


def test_streaming_chat_with_usage(client):
    kw = dict(model=NAME, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12, temperature=0)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 12


def test_errors_are_the_clients_exceptions(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="x", max_tokens=100_000)
    assert "512" in str(e.value)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(model=NAME, prompt="x", extra_body={"max_tokens": "many"})
    assert "max_tokens" in str(e.value)
    with OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_async_client_concurrent_requests_are_batched(server, serve_lm):
    prompts = [f"def f{i}(x):" for i in range(8)]
    want = [library_greedy(serve_lm, p, 10) for p in prompts]
    engine = server.app.state.server.engine

    async def main():
        async with AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as c:
            rs = await asyncio.gather(
                *(c.completions.create(model=NAME, prompt=p, max_tokens=10, temperature=0) for p in prompts)
            )
        return [r.choices[0].text for r in rs]

    assert asyncio.run(main()) == want
    # requests sent together decoded together
    assert engine.snapshot()["largest_batch"] > 1


def test_structured_output_with_the_openai_client(client):
    """response_format json_schema (strict) and json_object on chat, streamed or not, and vLLM's guided_choice
    and guided_regex on completions: the text is valid by construction, even from a model with random weights."""
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 8}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}
    messages = [{"role": "user", "content": "The weather in Paris, as JSON."}]
    r = client.chat.completions.create(model=NAME, messages=messages, response_format=fmt, seed=1, max_tokens=160)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    stream = client.chat.completions.create(
        model=NAME, messages=messages, response_format=fmt, seed=2, max_tokens=160, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)
    r = client.chat.completions.create(
        model=NAME, messages=messages, response_format={"type": "json_object"}, temperature=0, max_tokens=300
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = client.completions.create(
        model=NAME, prompt="Is it raining?", max_tokens=20, extra_body={"guided_choice": ["yes", "no"]}, seed=3
    )
    assert r.choices[0].text in ("yes", "no")
    r = client.completions.create(
        model=NAME, prompt="Code:", max_tokens=20, extra_body={"guided_regex": "[A-Z]{2}-[0-9]{3}"}, seed=4
    )
    assert re.fullmatch("[A-Z]{2}-[0-9]{3}", r.choices[0].text)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=NAME, messages=messages, response_format={"type": "json_schema", "json_schema": {"name": "x"}}
        )
    assert e.value.body["param"] == "response_format"


# --- tool calling -------------------------------------------------------------------------------------------
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"enum": ["c", "f"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 6}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _valid_calls(calls, names=tuple(SCHEMAS)) -> list[str]:
    """The called names, after checking each call's id, type and arguments against its function's schema."""
    import json

    import jsonschema

    assert calls, "no tool calls"
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function" and call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return [c.function.name for c in calls]


def _streamed_calls(client, **kw):
    """A streamed reply put together the way the openai client's own stream helper does it."""
    with client.chat.completions.stream(model=NAME, messages=ASK, tools=TOOLS, max_tokens=160, **kw) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion().choices[0]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_tool_calls_required_and_named(client, seed):
    """tool_choice required and named: the untrained model's reply is a well-formed call, whole and streamed
    (one call: parallel_tool_calls false, so the reply fits max_tokens)."""
    one = dict(seed=seed, parallel_tool_calls=False)
    r = client.chat.completions.create(
        model=NAME, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=160, **one
    )
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(_valid_calls(choice.message.tool_calls)) == 1
    named = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(
        model=NAME, messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=160, seed=seed
    )
    assert _valid_calls(r.choices[0].message.tool_calls) == ["get_time"]
    streamed = _streamed_calls(client, tool_choice="required", **one)
    assert streamed.finish_reason == "tool_calls" and len(_valid_calls(streamed.message.tool_calls)) == 1
    streamed = _streamed_calls(client, tool_choice=named, seed=seed)
    assert _valid_calls(streamed.message.tool_calls) == ["get_time"]


PING = [{"type": "function", "function": {"name": "ping"}}]  # no parameters: a call is short, four fit


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_parallel_tool_calls(client, seed):
    """Parallel calls (the default) come as several tool_calls, each with its own id and index."""
    for stream in (False, True):
        kw = dict(model=NAME, messages=ASK, tools=PING, tool_choice="required", seed=seed, max_tokens=150)
        if stream:
            with client.chat.completions.stream(**kw) as s:
                choice = s.get_final_completion().choices[0]
        else:
            choice = client.chat.completions.create(**kw).choices[0]
        calls = choice.message.tool_calls
        assert choice.finish_reason == "tool_calls" and 1 <= len(calls) <= 4
        assert all(c.function.name == "ping" and c.function.arguments == "{}" for c in calls)
        assert len({c.id for c in calls}) == len(calls)


@pytest.mark.slow
def test_tool_call_stream_deltas_are_openais(client):
    """Streamed calls arrive as OpenAI sends them: a head with index, id, type and name (arguments ""), then
    argument fragments that add up to the whole call's arguments."""
    # an untrained model's call may not close within the context left (a cut call has no tool_calls): the first
    # seed whose call closes is the one the stream is compared on
    for seed in range(3, 23):
        kw = dict(model=NAME, messages=ASK, tools=TOOLS, tool_choice="required", seed=seed, max_tokens=160)
        whole = client.chat.completions.create(**kw).choices[0].message.tool_calls
        if whole:
            break
    assert whole, "no seed gave a call that closes within 160 tokens"
    parts: dict[int, dict] = {}
    for chunk in client.chat.completions.create(**kw, stream=True):
        for d in chunk.choices[0].delta.tool_calls or []:
            if d.index not in parts:
                assert d.id.startswith("call_") and d.type == "function" and d.function.name
                assert d.function.arguments == ""
                parts[d.index] = {"name": d.function.name, "arguments": ""}
            else:
                assert d.id is None and d.function.name is None
                parts[d.index]["arguments"] += d.function.arguments
    assert [(p["name"], p["arguments"]) for _, p in sorted(parts.items())] == [
        (c.function.name, c.function.arguments) for c in whole
    ]


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2))
def test_tool_choice_auto_is_text_or_calls(client, serve_lm, seed):
    """auto: the model chooses, and a reply is plain text that does not start like a call, or valid calls.
    The untrained model picks text; a logit bias toward "<", a call's first character, makes it pick a call
    (the arguments' strings are then full of "<", which they may hold)."""
    kw = dict(model=NAME, messages=ASK, tools=TOOLS, seed=seed, max_tokens=20)
    text = client.chat.completions.create(**kw).choices[0]
    assert text.message.tool_calls is None and text.finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text.message.content
    assert not any(c.choices[0].delta.tool_calls for c in chunks)
    assert not text.message.content.startswith("<")
    # the reply's leading space first (a token of its own here), then "<"
    tok = serve_lm.tokenizer
    toward_call = {str(tok.piece_to_id("\u2581")): 15, str(tok.piece_to_id("<")): 30}
    one = dict(seed=seed, parallel_tool_calls=False, logit_bias=toward_call)
    r = client.chat.completions.create(model=NAME, messages=ASK, tools=TOOLS, max_tokens=160, **one)
    assert r.choices[0].finish_reason == "tool_calls" and len(_valid_calls(r.choices[0].message.tool_calls)) == 1
    streamed = _streamed_calls(client, **one)
    assert streamed.finish_reason == "tool_calls" and len(_valid_calls(streamed.message.tool_calls)) == 1


@pytest.mark.slow
def test_tool_choice_none_and_conversations_with_calls(client):
    """none gives text; a conversation holding an earlier call and its result is accepted and answered."""
    r = client.chat.completions.create(
        model=NAME, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=10, temperature=0
    )
    assert r.choices[0].message.tool_calls is None and isinstance(r.choices[0].message.content, str)
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    r = client.chat.completions.create(
        model=NAME, messages=history, tools=TOOLS, tool_choice="none", max_tokens=10, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def _nested(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


@pytest.mark.parametrize(
    "tools, choice, param, words",
    [
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "auto", "tools", "JSON schema object"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None, "tools", "object"),
        ([{"type": "function", "function": {"name": "bad name"}}], None, "tools", "letters, digits"),
        ([{"type": "function", "function": {"name": "f"}}] * 2, None, "tools", "more than once"),
        ([{"name": "f"}], None, "tools", '"type": "function"'),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice", "'nope', which is not in tools"),
        (TOOLS, "sometimes", "tool_choice", "must be"),
        (None, "required", "tool_choice", "needs tools"),
        # a schema 40 levels deep (80 of JSON): a 300-level one overflowed the grammar compiler's recursion (500)
        ([{"type": "function", "function": {"name": "f", "parameters": _nested(40)}}], None, "tools", "64 levels"),
        # a 10,000-character name is refused without echoing all of it
        ([{"type": "function", "function": {"name": "a" * 10_000}}], None, "tools", "letters, digits"),
    ],
)
def test_bad_tools_are_openais_400(client, tools, choice, param, words):
    kw = {} if choice is None else {"tool_choice": choice}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=ASK, tools=tools, max_tokens=5, **kw)
    err = e.value.body
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert words in err["message"] and "\n" not in err["message"] and len(err["message"]) < 300


def test_a_body_nested_too_deeply_to_parse_is_a_400_saying_so(server):
    """JSON nested 5,000 deep (inside tools or anywhere) was a 400 "There was an error parsing the body"."""
    import httpx

    body = '{"model": "m", "messages": [], "tools": ' + "[" * 5000 + "]" * 5000 + "}"
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_invalid"
    assert "nests JSON too deeply" in r.json()["error"]["message"]


@pytest.mark.slow
def test_pydantic_function_tools_parse_with_the_clients_helper(client):
    """The openai client's own pydantic tools (strict schemas with $defs for nested models) and its parse
    helper: the arguments come back as the pydantic model, streamed or not."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Place(BaseModel):
        city: str = Field(max_length=6)
        unit: Literal["c", "f"]

    class Forecast(BaseModel):
        place: Place
        days: int

    tool = openai.pydantic_function_tool(Forecast)
    assert "$defs" in tool["function"]["parameters"]
    kw = dict(model=NAME, messages=ASK, tools=[tool], tool_choice="required", max_tokens=140, seed=0)
    call = client.chat.completions.parse(**kw, parallel_tool_calls=False).choices[0].message.tool_calls[0]
    assert isinstance(call.function.parsed_arguments, Forecast)
    with client.chat.completions.stream(**kw, parallel_tool_calls=False) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.tool_calls[0].function.parsed_arguments, Forecast)
