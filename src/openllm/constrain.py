"""Constrained decoding: output that is valid by construction (a JSON schema, any JSON object, a regular
expression, one of a list of strings), whatever the model's quality.

Grammars and token masks come from llguidance (Microsoft's constrained-decoding engine, also used by vLLM and
llama.cpp), chosen over xgrammar because it is one small abi3 wheel with no torch or transformers dependency,
reads our tokenizer from its ``tokenizers`` JSON in milliseconds (:func:`openllm.tokenizer.build_hf_tokenizer`)
and computes a sequence's mask in about a tenth of a millisecond, without a compile step per schema.

Each sequence owns a :class:`Constraint` (its grammar state); :class:`openllm.sampling.Sampler` asks every
constrained row of a batch for its allowed tokens as a bitmask and masks only those rows, so an unconstrained
sequence beside them costs nothing more. Once a grammar is complete, only EOS is allowed, which ends the
sequence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import torch

from .errors import OpenLLMError, require

__all__ = [
    "GrammarError",
    "Vocabulary",
    "Constraint",
    "json_schema_grammar",
    "json_object_grammar",
    "regex_grammar",
    "choice_grammar",
    "tool_call_grammar",
    "MAX_TOOL_CALLS",
]


class GrammarError(ValueError):
    """A schema, pattern or choice list that no grammar can be made of (the request's fault)."""


def json_schema_grammar(schema: Any, *, strict: bool = True) -> str:
    """A grammar for JSON documents valid under ``schema``, written compactly (no optional white space, so a
    bounded schema gives bounded output). ``strict=False`` ignores keywords llguidance does not implement
    instead of refusing the schema."""
    import llguidance

    if not isinstance(schema, dict):
        raise GrammarError(f"a JSON schema is an object, got {type(schema).__name__}")
    options = {"whitespace_flexible": False, "lenient": not strict}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise GrammarError(f"the JSON schema is not valid: {exc}") from exc


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
    return json_schema_grammar({"type": "object"})


def regex_grammar(pattern: str) -> str:
    import llguidance

    try:
        re.compile(pattern)
    except re.error as exc:
        raise GrammarError(f"the regular expression does not compile: {exc}") from exc
    return llguidance.LLMatcher.grammar_from_regex(pattern)


def choice_grammar(choices: Sequence[str]) -> str:
    """Exactly one of ``choices``."""
    if not choices or not all(isinstance(c, str) and c for c in choices):
        raise GrammarError("give a non-empty list of non-empty strings to choose from")
    return regex_grammar("(" + "|".join(re.escape(c) for c in choices) + ")")


MAX_TOOL_CALLS = 4  # calls one reply may make when parallel calls are allowed


def tool_call_grammar(tools: Sequence[dict], *, choice: str = "auto", parallel: bool = True) -> str:
    """A grammar for a chat reply that calls tools the way the chat template writes calls
    (:data:`openllm.tokenizer.TOOL_CALL_OPEN` ``{"name": ..., "arguments": {...}}`` ...CLOSE, one a line), each
    call's ``arguments`` valid under its function's ``parameters``. ``tools`` are OpenAI's function entries
    (checked by the caller); ``choice`` is ``"auto"`` (plain text that does not start with "<", or calls),
    ``"required"`` (calls only) or a function's name (one call of it). The reply starts with the space the
    template writes after ``Assistant:``."""
    import llguidance

    from .tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_SEPARATORS

    functions = [t["function"] for t in tools]
    if choice not in ("auto", "required"):
        functions = [f for f in functions if f["name"] == choice]
        parallel = False
    if not functions:
        raise GrammarError(f"no tool named {choice!r} to call")
    calls = []
    defs: dict[str, Any] = {}
    for f in functions:
        params = f.get("parameters")
        if params is None:  # OpenAI: a function without parameters takes none
            params = {"type": "object", "properties": {}, "additionalProperties": False}
        params = _hoist_defs(params, f"{f['name']}.", defs)
        calls.append(
            {
                "type": "object",
                "properties": {"name": {"const": f["name"]}, "arguments": params},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    item, key = TOOL_CALL_SEPARATORS
    # one %json of anyOf, not an alternative of %json rules: llguidance's documented way to offer several schemas
    schema = {
        "anyOf": calls,
        **({"$defs": defs} if defs else {}),
        "x-guidance": {
            "whitespace_flexible": False,
            "item_separator": item,
            "key_separator": key,
            "lenient": not all(bool(f.get("strict")) for f in functions),
        },
    }
    more = f'("\\n" call){{0,{MAX_TOOL_CALLS - 1}}}' if parallel else ""
    rules = [
        f"calls: call {more}",
        f"call: {json.dumps(TOOL_CALL_OPEN)} %json {json.dumps(schema)} {json.dumps(TOOL_CALL_CLOSE)}",
    ]
    if choice == "auto":
        # plain text is anything that does not start with a call's first character, so a reply is text or calls,
        # never both, and the model commits at its first character (a text reply cannot start with "<")
        first = re.escape(TOOL_CALL_OPEN[0])
        rules = ['start: " " (TEXT | calls)', f"TEXT: /([^{first}](.|\\n)*)?/", *rules]
    else:
        rules = ['start: " " calls', *rules]
    lark = "\n".join(rules)
    try:
        return llguidance.LLMatcher.grammar_from_lark(lark)
    except ValueError as exc:
        raise GrammarError(f"the tools' parameters are not a usable JSON schema: {exc}") from exc


def _hoist_defs(schema: Any, prefix: str, defs: dict[str, Any]) -> Any:
    """``schema`` with its ``$defs`` moved into ``defs`` under ``prefix`` and its local references renamed to
    match: a function's parameters sit inside the call's schema, where ``#/$defs/...`` would point at the root
    (pydantic, and so the openai client's ``pydantic_function_tool``, writes nested models this way)."""

    def rename(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: rename(v) for k, v in node.items() if k not in ("$defs", "definitions")}
            ref = node.get("$ref")
            for key in ("$defs", "definitions"):
                if isinstance(ref, str) and ref.startswith(f"#/{key}/"):
                    out["$ref"] = f"#/$defs/{prefix}{ref[len(key) + 3 :]}"
            return out
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    if isinstance(schema, dict):
        for key in ("$defs", "definitions"):
            for name, sub in (schema.get(key) or {}).items():
                defs[f"{prefix}{name}"] = rename(sub)
    return rename(schema)


def _tokenizers_json(tokenizer: Any) -> str:
    """Our tokenizer as a ``tokenizers`` JSON document (what llguidance reads)."""
    from .tokenizer import build_hf_tokenizer

    model_path = getattr(tokenizer, "model_path", None)
    if model_path is not None:
        return build_hf_tokenizer(model_path).to_str()
    json_path = getattr(tokenizer, "json_path", None)
    if json_path is not None:
        with open(json_path, encoding="utf-8") as f:
            return f.read()
    raise OpenLLMError(f"constrained decoding needs an OpenLLM tokenizer, not {type(tokenizer).__name__}")


class Vocabulary:
    """llguidance's view of a tokenizer, made once per model: it makes each sequence's :class:`Constraint`.
    ``n_vocab`` is the number of token ids the sampler sees (the model's logits may be wider)."""

    def __init__(self, tokenizer: Any, n_vocab: int) -> None:
        require("llguidance", "serve", what="structured output")
        import llguidance

        self.n_vocab = int(n_vocab)
        self.eos_id = int(tokenizer.eos_id)
        self._tok = llguidance.LLTokenizer(_tokenizers_json(tokenizer), n_vocab=self.n_vocab, eos_token=self.eos_id)

    def check(self, grammar: str) -> str:
        """``grammar`` if llguidance accepts it with this vocabulary, else :class:`GrammarError`."""
        import llguidance

        error = llguidance.LLMatcher.validate_grammar(grammar, self._tok)
        if error and not error.startswith("WARNING"):
            raise GrammarError(error)
        return grammar

    def constraint(self, grammar: str) -> Constraint:
        return Constraint(self, grammar)


class Constraint:
    """One sequence's grammar state: which tokens may come next, advanced by each token the sequence keeps."""

    def __init__(self, vocab: Vocabulary, grammar: str) -> None:
        import llguidance

        self.vocab = vocab
        self._matcher = llguidance.LLMatcher(vocab._tok, grammar)
        if self._matcher.is_error():
            raise GrammarError(self._matcher.get_error())

    def allowed(self, out: torch.Tensor) -> None:
        """Write the allowed next tokens into ``out``, a (words,) int32 row of a bitmask (bit i of word w is
        token 32 w + i)."""
        mask = torch.frombuffer(bytearray(self._matcher.compute_bitmask()), dtype=torch.int32)
        out.copy_(mask[: out.shape[0]])

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise OpenLLMError(f"token {token} breaks the output's grammar: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The output so far is a whole document of the grammar."""
        return self._matcher.is_accepting()


def bitmask_words(n_vocab: int) -> int:
    return (n_vocab + 31) // 32


def unpack_bitmask(bitmask: torch.Tensor, n_vocab: int) -> torch.Tensor:
    """(rows, words) int32 -> (rows, n_vocab) bool: which tokens are allowed."""
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    return ((bitmask[:, :, None] >> bits) & 1).bool().reshape(bitmask.shape[0], -1)[:, :n_vocab]


def grammar_of_request(
    *,
    response_format: dict | None = None,
    guided_json: Any = None,
    guided_regex: str | None = None,
    guided_choice: Sequence[str] | None = None,
) -> tuple[str | None, str | None]:
    """The grammar a request asks for (OpenAI's ``response_format``, or vLLM's ``guided_json``/``guided_regex``/
    ``guided_choice``), or None, and the name of the field it came from (for error messages)."""
    asked = [
        (name, value)
        for name, value in (
            ("response_format", response_format if (response_format or {}).get("type", "text") != "text" else None),
            ("guided_json", guided_json),
            ("guided_regex", guided_regex),
            ("guided_choice", guided_choice),
        )
        if value is not None
    ]
    if not asked:
        return None, None
    if len(asked) > 1:
        raise GrammarError(f"ask for one kind of structured output, not {' and '.join(n for n, _ in asked)}")
    name, value = asked[0]
    if name == "guided_json":
        schema = json.loads(value) if isinstance(value, str) else value
        return json_schema_grammar(schema), name
    if name == "guided_regex":
        return regex_grammar(str(value)), name
    if name == "guided_choice":
        return choice_grammar(list(value)), name
    if not isinstance(value, dict):
        raise GrammarError("response_format must be an object with a type")
    kind = value.get("type")
    if kind == "json_object":
        return json_object_grammar(), name
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise GrammarError('response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}')
        return json_schema_grammar(spec["schema"], strict=bool(spec.get("strict", False))), name
    raise GrammarError(f"response_format type {kind!r} is not one of text, json_object, json_schema")
