"""serve.tools: reading a reply's calls (the chat template's format) into OpenAI's tool_calls, whole or a
piece at a time, and checking a request's tools."""

from __future__ import annotations

import json

import pytest

from openllm.serve.state import ApiError
from openllm.serve.tools import CallReader, check_tools, read_calls

CALLS = (
    '<tool_call>{"name": "find", "arguments": {"q": "a \\"}\\" {x}", "n": [1, {"k": 2}]}}</tool_call>\n'
    '<tool_call>{"name": "ping", "arguments": {}}</tool_call>'
)


def _stream(text: str, size: int) -> list[dict]:
    reader = CallReader()
    deltas = [d for i in range(0, len(text), size) for d in reader.feed(text[i : i + size])]
    return deltas + reader.close()


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_calls_read_in_pieces_add_up_to_the_whole(size):
    calls, content = read_calls(CALLS)
    assert content == "" and [c["function"]["name"] for c in calls] == ["find", "ping"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"q": 'a "}" {x}', "n": [1, {"k": 2}]}
    assert calls[1]["function"]["arguments"] == "{}" and calls[0]["id"] != calls[1]["id"]
    deltas = _stream(CALLS, size)
    assert all("content" not in d for d in deltas)
    heads = [d["tool_calls"][0] for d in deltas if "id" in d["tool_calls"][0]]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (0, "function", {"name": "find", "arguments": ""}),
        (1, "function", {"name": "ping", "arguments": ""}),
    ]
    for i, call in enumerate(calls):
        args = "".join(
            d["tool_calls"][0]["function"]["arguments"]
            for d in deltas
            if d["tool_calls"][0]["index"] == i and "id" not in d["tool_calls"][0]
        )
        assert args == call["function"]["arguments"]


def test_text_is_held_only_while_it_could_start_a_call():
    reader = CallReader()
    assert reader.feed("<tool") == []  # could still be a call
    assert reader.feed("box> hi") == [{"content": "<toolbox> hi"}]
    assert reader.feed(" there") == [{"content": " there"}]
    reader = CallReader()
    assert reader.feed("<") == [] and reader.close() == [{"content": "<"}]
    assert _stream("Hello", 2) == [{"content": "He"}, {"content": "ll"}, {"content": "o"}]
    # a reply cut inside a call (max_tokens) has no calls: the text is the content
    cut = CALLS[:40]
    assert read_calls(cut) == (None, cut)


@pytest.mark.parametrize(
    "tools, choice, message",
    [
        ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], None, "parameters must be a JSON"),
        ([{"type": "function", "function": {"name": "f", "description": 3}}], None, "description"),
        ([{"type": "function", "function": {"name": "f"}}], {"type": "function"}, "tool_choice must be"),
        ({"f": 1}, None, "must be a list"),
    ],
)
def test_bad_tools_are_refused_in_one_line(tools, choice, message):
    with pytest.raises(ApiError) as e:
        check_tools(tools, choice)
    assert e.value.status == 400 and message in e.value.message and "\n" not in e.value.message


def test_tool_choice_defaults_to_auto_and_none_calls_nothing():
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert check_tools(tools, None).choice == "auto" and check_tools(None, "none") is None
    assert not check_tools(tools, "none").calls
    named = check_tools(tools, {"type": "function", "function": {"name": "f"}}, False)
    assert named.choice == "f" and not named.parallel
