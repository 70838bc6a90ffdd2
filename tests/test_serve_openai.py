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
    r = client.chat.completions.create(model=NAME, messages=messages, response_format=fmt, seed=1, max_tokens=200)
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    stream = client.chat.completions.create(
        model=NAME, messages=messages, response_format=fmt, seed=2, max_tokens=200, stream=True
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
