"""Constrained decoding (openllm.constrain) with llguidance over our own tokenizer: generation through the one
sampler, on a model with random weights, always gives output of the grammar, and bad grammars are refused."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from openllm.constrain import GrammarError, Vocabulary, grammar_of_request
from openllm.sampling import Sampler, SamplingParams, SeqSampling


@pytest.fixture(scope="module")
def vocab(serve_lm):
    return Vocabulary(serve_lm.tokenizer, serve_lm.tokenizer.vocab_size)


def constrained(lm, vocab, grammar: str, *, seed: int, n: int = 120, temperature: float = 1.0) -> tuple[str, bool]:
    """Sample from the model under ``grammar``: the text and whether it ended at EOS."""
    tok, model = lm.tokenizer, lm.model
    ids = tok.encode("Reply in JSON:")
    row = SeqSampling(
        SamplingParams(temperature=temperature, seed=seed),
        ids,
        vocab_size=vocab.n_vocab,
        device="cpu",
        constraint=vocab.constraint(grammar),
    )
    out: list[int] = []
    cache = model.new_cache(1, len(ids) + n)
    step = ids
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([step]), cache=cache, last_only=True)[:, -1, : vocab.n_vocab]
            token = Sampler()(logits, [row])[0]
            row.accept(token)
            if token == tok.eos_id:
                return tok.decode(out), True
            out.append(token)
            step = [token]
    return tok.decode(out), False


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_model_writes_json_valid_under_the_schema(serve_lm, vocab, seed):
    grammar, _ = grammar_of_request(response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}})
    text, ended = constrained(serve_lm, vocab, grammar, seed=seed)
    assert ended, text
    jsonschema.validate(json.loads(text), SCHEMA)


def test_choice_regex_and_any_object(serve_lm, vocab):
    choice, _ = grammar_of_request(guided_choice=["yes", "no", "maybe so"])
    regex, _ = grammar_of_request(guided_regex=r"[0-9]{3}-[a-z]{2}")
    anything, _ = grammar_of_request(response_format={"type": "json_object"})
    for seed in range(3):
        text, ended = constrained(serve_lm, vocab, choice, seed=seed)
        assert ended and text in ("yes", "no", "maybe so")
        text, ended = constrained(serve_lm, vocab, regex, seed=seed)
        assert ended and re.fullmatch(r"[0-9]{3}-[a-z]{2}", text), text
    text, ended = constrained(serve_lm, vocab, anything, seed=0, n=400)
    assert not ended or isinstance(json.loads(text), dict)


@pytest.mark.parametrize(
    "request_",
    [
        dict(response_format={"type": "yaml"}),
        dict(response_format={"type": "json_schema"}),
        dict(guided_regex="(unclosed"),
        dict(guided_choice=[]),
        dict(guided_json="{not json"),
        dict(guided_json={"type": "object"}, guided_regex="x"),
    ],
)
def test_requests_no_grammar_can_follow_are_refused(request_):
    with pytest.raises((GrammarError, ValueError)):
        grammar_of_request(**request_)


def test_strict_refuses_what_it_cannot_enforce_and_lenient_ignores_it(vocab):
    odd = {"type": "string", "format": "no-such-format"}
    strict, _ = grammar_of_request(
        response_format={"type": "json_schema", "json_schema": {"schema": odd, "strict": True}}
    )
    with pytest.raises(GrammarError):
        vocab.check(strict)
    lenient, _ = grammar_of_request(
        response_format={"type": "json_schema", "json_schema": {"schema": odd, "strict": False}}
    )
    assert vocab.check(lenient)


def _accepts(serve_lm, vocab, grammar: str, text: str) -> bool:
    """Whether ``text``, tokenized, is a whole document of ``grammar``."""
    c = vocab.constraint(grammar)
    for tok in serve_lm.tokenizer.encode(text):
        try:
            c.accept(tok)
        except Exception:
            return False
    return c.complete


def test_tool_call_grammar_allows_only_text_or_well_formed_calls(serve_lm, vocab):
    from openllm.constrain import tool_call_grammar

    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "parameters": {
                    "type": "object",
                    "properties": {"zone": {"type": "string"}},
                    "required": ["zone"],
                    "additionalProperties": False,
                },
            },
        },
        {"type": "function", "function": {"name": "ping"}},
    ]
    time_call = ' <tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>'
    ping = '<tool_call>{"name": "ping", "arguments": {}}</tool_call>'
    cases = {
        " plain text": ("auto",),
        time_call: ("auto", "required", "get_time"),
        f"{time_call}\n{ping}": ("auto", "required"),  # parallel calls
        " " + ping: ("auto", "required", "ping"),
        ' <tool_call>{"name": "get_time", "arguments": {}}</tool_call>': (),  # a required argument missing
        ' <tool_call>{"name": "nope", "arguments": {}}</tool_call>': (),  # not a tool
        ' <tool_call>{"name":"ping","arguments":{}}</tool_call>': (),  # not the template's spacing
        " <b>text that starts like a call</b>": (),
    }
    for choice in ("auto", "required", "get_time", "ping"):
        grammar = vocab.check(tool_call_grammar(tools, choice=choice))
        for text, allowed in cases.items():
            assert _accepts(serve_lm, vocab, grammar, text) == (choice in allowed), (choice, text)
    one = vocab.check(tool_call_grammar(tools, choice="required", parallel=False))
    assert _accepts(serve_lm, vocab, one, time_call) and not _accepts(serve_lm, vocab, one, f"{time_call}\n{ping}")
    with pytest.raises(GrammarError):
        tool_call_grammar(tools, choice="nope")


def test_tool_parameters_with_defs_keep_their_references_apart(serve_lm, vocab):
    """Two functions whose parameters both define $defs/Unit (as pydantic writes nested models): each call's
    reference resolves to its own function's definition."""
    from openllm.constrain import tool_call_grammar

    def fn(name: str, units: list[str]) -> dict:
        params = {
            "type": "object",
            "$defs": {"Unit": {"enum": units}},
            "properties": {"u": {"$ref": "#/$defs/Unit"}},
            "required": ["u"],
        }
        return {"type": "function", "function": {"name": name, "parameters": params}}

    grammar = vocab.check(tool_call_grammar([fn("f", ["c", "k"]), fn("g", ["x"])], choice="required"))
    call = ' <tool_call>{{"name": "{}", "arguments": {{"u": "{}"}}}}</tool_call>'
    assert _accepts(serve_lm, vocab, grammar, call.format("f", "k"))
    assert _accepts(serve_lm, vocab, grammar, call.format("g", "x"))
    assert not _accepts(serve_lm, vocab, grammar, call.format("g", "c"))
