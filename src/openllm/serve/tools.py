"""Tool calling on ``/v1/chat/completions``: a request's ``tools`` and ``tool_choice`` checked into a
:class:`ToolRequest`, and a reply's calls read back into OpenAI's ``tool_calls``, whole or as streaming deltas.

A reply calls tools in the chat template's format (:data:`openllm.tokenizer.TOOL_CALL_OPEN`
``{"name": "NAME", "arguments": {...}}`` :data:`~openllm.tokenizer.TOOL_CALL_CLOSE`, one a line); the grammar of
:func:`openllm.constrain.tool_call_grammar` makes the model write exactly that, so the reader below can take it
apart as it streams, without guessing: the name is known once the call's head is complete, and the arguments
end where their JSON object closes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from ..tokenizer import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_SEPARATORS
from .state import ApiError

__all__ = ["ToolRequest", "check_tools", "CallReader", "read_calls"]

# OpenAI's rule for function names; it also keeps a name from needing escapes inside the call's JSON
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CHOICES = ("none", "auto", "required")


@dataclass
class ToolRequest:
    """A request's tools (OpenAI's entries, checked) and how they may be used: ``choice`` is ``none``,
    ``auto``, ``required`` or the name of the one function to call."""

    tools: list[dict]
    choice: str
    parallel: bool = True

    @property
    def calls(self) -> bool:
        """The reply may call tools (it is decoded under the tool-call grammar)."""
        return self.choice != "none"


# far above real schemas (OpenAI's structured outputs allow 10 levels) and below what overflowed the grammar
# compiler's recursion (a 300-level schema, about 600 levels of JSON: a 500)
MAX_SCHEMA_DEPTH = 64


def _bad(message: str, param: str = "tools") -> ApiError:
    return ApiError(400, message, param=param)


def _depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests objects and arrays; iterative, so any depth is measured."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _check_tool(i: int, tool: Any) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise _bad(f'{where} must be {{"type": "function", "function": {{"name": ..., "parameters": {{...}}}}}}')
    fn = tool["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise _bad(f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', got {shown}")
    if not isinstance(fn.get("description", ""), str):
        raise _bad(f"{where}.function.description must be a string")
    params = fn.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise _bad(f"{where}.function.parameters must be a JSON schema object, got {type(params).__name__}")
        if params.get("type", "object") != "object":
            raise _bad(f"{where}.function.parameters must describe an object (type: object), not {params['type']!r}")
        params = {"type": "object", **params}
        if _depth(params) > MAX_SCHEMA_DEPTH:
            raise _bad(
                f"{where}.function.parameters nests more than {MAX_SCHEMA_DEPTH} levels of objects and arrays: "
                f"flatten the schema"
            )
    if not isinstance(fn.get("strict", False), bool):
        raise _bad(f"{where}.function.strict must be true or false")
    clean = {"name": name, **({"description": fn["description"]} if "description" in fn else {})}
    if params is not None:
        clean["parameters"] = params
    if "strict" in fn:
        clean["strict"] = fn["strict"]
    return {"type": "function", "function": clean}


def check_tools(tools: Any, tool_choice: Any, parallel_tool_calls: Any = None) -> ToolRequest | None:
    """The request's :class:`ToolRequest` (None without tools); a bad entry or choice is a 400 in OpenAI's shape
    with a one-line message."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise _bad("parallel_tool_calls must be true or false", "parallel_tool_calls")
    if not tools:
        if tool_choice not in (None, "none"):
            raise _bad("tool_choice needs tools: give the functions the model may call in tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise _bad("tools must be a list of functions")
    checked = [_check_tool(i, t) for i, t in enumerate(tools)]
    names = [t["function"]["name"] for t in checked]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _bad(f"tools names {', '.join(dupes)} more than once; each function needs its own name")
    choice = "auto" if tool_choice is None else tool_choice
    if isinstance(choice, dict):
        fn = choice.get("function") if choice.get("type") == "function" else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise _bad(
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if name not in names:
            raise _bad(f"tool_choice names {name!r}, which is not in tools ({', '.join(names)})", "tool_choice")
        choice = name
    elif choice not in _CHOICES:
        raise _bad(f'tool_choice must be "none", "auto", "required" or a function, not {choice!r}', "tool_choice")
    return ToolRequest(checked, choice, parallel=parallel_tool_calls is not False)


_HEAD = re.compile(
    "\n?"
    + re.escape(TOOL_CALL_OPEN + '{"name' + '"' + TOOL_CALL_SEPARATORS[1] + '"')
    + r"([A-Za-z0-9_-]*)"
    + re.escape('"' + TOOL_CALL_SEPARATORS[0] + '"arguments"' + TOOL_CALL_SEPARATORS[1])
)
_TAIL = "}" + TOOL_CALL_CLOSE


class CallReader:
    """Reads one reply as its text arrives and turns it into OpenAI chat deltas: ``{"content": ...}`` for a
    text reply, or for calls a ``{"tool_calls": [{"index", "id", "type", "function": {"name", "arguments": ""}}]}``
    head followed by ``{"tool_calls": [{"index", "function": {"arguments": fragment}}]}`` pieces. The text is
    held back only while it could still be the start of a call."""

    def __init__(self) -> None:
        self.text = ""
        self.mode: str | None = None  # None (undecided), "text" or "calls"
        self.calls: list[dict[str, Any]] = []  # complete and partial calls, as OpenAI's tool_calls entries
        self._pos = 0  # how far self.text is read
        self._phase = "head"  # of the current call: head, args, tail
        self._depth = 0
        self._in_string = self._escaped = False

    @property
    def complete(self) -> bool:
        """Every call begun has ended (a reply cut by max_tokens may stop inside one)."""
        return self.mode == "calls" and self._phase == "head" and self._pos == len(self.text)

    def feed(self, text: str) -> list[dict]:
        self.text += text
        if self.mode is None:
            if self.text.startswith(TOOL_CALL_OPEN):
                self.mode = "calls"
            elif TOOL_CALL_OPEN.startswith(self.text):
                return []  # could still become a call
            else:
                self.mode = "text"
        if self.mode == "text":
            out = self.text[self._pos :]
            self._pos = len(self.text)
            return [{"content": out}] if out else []
        return self._read_calls()

    def _read_calls(self) -> list[dict]:
        out: list[dict] = []
        while True:
            rest = self.text[self._pos :]
            if self._phase == "head":
                m = _HEAD.match(rest)
                if m is None:
                    return out
                call: dict[str, Any] = {
                    "index": len(self.calls),
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": m.group(1), "arguments": ""},
                }
                self.calls.append(call)
                out.append({"tool_calls": [{**call, "function": dict(call["function"])}]})
                self._pos += m.end()
                self._phase, self._depth, self._in_string, self._escaped = "args", 0, False, False
            elif self._phase == "args":
                end = self._scan(rest)
                piece = rest if end is None else rest[:end]
                if piece:
                    self.calls[-1]["function"]["arguments"] += piece
                    out.append({"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": piece}}]})
                self._pos += len(piece)
                if end is None:
                    return out
                self._phase = "tail"
            else:
                if not rest.startswith(_TAIL):
                    return out
                self._pos += len(_TAIL)
                self._phase = "head"

    def _scan(self, rest: str) -> int | None:
        """Where the arguments' JSON object ends in ``rest`` (just past its closing brace), or None."""
        for i, ch in enumerate(rest):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None

    def close(self) -> list[dict]:
        """The deltas still held back when the reply ends (text that was a prefix of a call's start)."""
        if self.mode is None and self.text:
            self.mode = "text"
            self._pos = len(self.text)
            return [{"content": self.text}]
        return []


def read_calls(text: str) -> tuple[list[dict] | None, str]:
    """A whole reply's calls (OpenAI's ``tool_calls``) and its text: (calls, "") for a reply of complete calls,
    (None, text) for a text reply or one cut off inside a call."""
    reader = CallReader()
    reader.feed(text)
    reader.close()
    if reader.complete and reader.calls:
        return reader.calls, ""
    return None, text
