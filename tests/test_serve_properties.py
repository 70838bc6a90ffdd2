"""Property-based requests (hypothesis): whatever a client sends to the completion endpoints, the answer is a
4xx in OpenAI's error shape or a well-formed 200; never a 500, never a plain-text body."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openllm.serve import ServerThread, create_app

pytestmark = pytest.mark.slow

ODD = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.lists(st.integers(-3, 600), max_size=4)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
COMMON = {
    "model": ODD | st.just("tiny-serve"),
    "max_tokens": st.integers(-2, 4) | ODD,
    "temperature": st.floats(-1, 3) | ODD,
    "top_p": st.floats(-1, 2) | ODD,
    "n": st.integers(-1, 3) | ODD,
    "stop": ODD | st.lists(st.text(max_size=3), max_size=6),
    "seed": ODD,
    "stream": st.booleans() | ODD,
    "logprobs": ODD | st.integers(0, 6),
    "presence_penalty": st.floats(-3, 3) | ODD,
    "logit_bias": ODD | st.dictionaries(st.sampled_from(["1", "7", "x", "-1"]), st.floats(-200, 200)),
    "response_format": ODD | st.just({"type": "json_object"}),
    "tools": ODD,
}
COMPLETION = st.fixed_dictionaries(
    {}, optional={**COMMON, "prompt": ODD | st.text(max_size=40), "echo": st.booleans() | ODD}
)
CHAT = st.fixed_dictionaries(
    {},
    optional={
        **COMMON,
        "top_logprobs": ODD,
        "messages": ODD
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]) | ODD,
                    "content": st.text(max_size=20) | ODD,
                },
            ),
            max_size=3,
        ),
    },
)


@pytest.fixture(scope="module")
def client(serve_lm):
    app = create_app(serve_lm.model, serve_lm.tokenizer, model_name="tiny-serve")
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        yield c


def _post(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    # NaN and Infinity as Python's json writes them: not JSON, which the server must say, not crash on
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def _check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text[:500]
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        return
    body = r.json()
    if r.status_code >= 400:
        assert set(body["error"]) >= {"message", "type", "param", "code"} and body["error"]["message"]
    else:
        assert body["choices"] and body["usage"]["completion_tokens"] >= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=COMPLETION)
def test_any_completion_request(client, body):
    _check(_post(client, "/v1/completions", body))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=CHAT)
def test_any_chat_request(client, body):
    _check(_post(client, "/v1/chat/completions", body))


# --- structured output: every reply validates against its schema --------------------------------------------

LEAF = (
    st.just({"type": "boolean"})
    | st.tuples(st.integers(-50, 50), st.integers(0, 60)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}
    )
    | st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n})
    | st.lists(st.sampled_from(["red", "green", "x y", "7"]), min_size=1, max_size=3, unique=True).map(
        lambda v: {"enum": v}
    )
)


def _objects(children):
    return st.dictionaries(st.sampled_from(["a", "bb", "name", "k 1"]), children, min_size=1, max_size=3).map(
        lambda props: {
            "type": "object",
            "properties": props,
            "required": sorted(props),
            "additionalProperties": False,
        }
    )


SCHEMAS = st.recursive(
    LEAF,
    lambda children: _objects(children) | children.map(lambda s: {"type": "array", "items": s, "maxItems": 3}),
    max_leaves=5,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_objects(SCHEMAS), seed=st.integers(0, 2**31), chat=st.booleans(), stream=st.booleans())
def test_every_structured_reply_validates_against_its_schema(client, schema, seed, chat, stream):
    """Random schemas from a bounded family (so a complete document always fits max_tokens), random seeds,
    chat or completions, streamed or not: the reply ends at its grammar's end and validates with jsonschema."""
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}}
    body = {"max_tokens": 400, "temperature": 1.0, "seed": seed, "response_format": fmt, "stream": stream}
    if chat:
        path, body = "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": "JSON please"}]}
    else:
        path, body = "/v1/completions", {**body, "prompt": "JSON:"}
    if stream:
        with client.stream("POST", path, json=body) as r:
            assert r.status_code == 200, r.read()
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        choices = [c["choices"][0] for c in chunks if c["choices"]]
        text = "".join((c.get("delta", {}).get("content") or "") if chat else c["text"] for c in choices)
        finish = next(c["finish_reason"] for c in choices if c["finish_reason"])
    else:
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        text, finish = (choice["message"]["content"] if chat else choice["text"]), choice["finish_reason"]
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), schema)
