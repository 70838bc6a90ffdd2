"""Conversations for supervised fine-tuning: read, render, mask, pack, and a synthetic set.

Input is JSON Lines, one conversation a line, in either shape::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}
    {"prompt": "...", "response": "...", "system": "..."}          (``system`` optional)

Roles are ``system`` (or ``developer``), ``user``, ``assistant`` and ``tool``. Tool use is written in OpenAI's
shapes: a line may list ``"tools"`` (``[{"type": "function", "function": {"name", "parameters"}}]``), an
assistant turn may carry ``"tool_calls"`` (``[{"type": "function", "function": {"name", "arguments"}}]``, its
``content`` then optional) and a ``tool`` turn holds a call's result. Every conversation needs at least one
assistant turn. Blank lines are skipped. Each bad line is refused with ``FILE:LINE: what is wrong``.

A conversation is rendered with the project's one chat template (:data:`openllm.tokenizer.CHAT_TEMPLATE`) and
tokenized into ids plus a loss mask that is 1 exactly on the tokens the model has to write: each assistant
turn's text after ``Assistant:`` and the EOS that ends it. The ids are cut where the template's generation
prompt ends (``...Assistant:``), so the prompt part of every assistant turn is tokenized exactly as
:meth:`Tokenizer.encode_chat` tokenizes it at inference (``add_generation_prompt=True``).

Packing puts several whole conversations into one training row of ``seq_len + 1`` tokens. Each token carries
the index of its conversation in the row (``-1`` for padding), from which :func:`attention_mask` builds a
block-diagonal causal mask, so neither loss nor attention crosses conversations.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputNotFound, OpenLLMError
from .hashing import sha256_file
from .tokenizer import SPECIAL_TOKENS, apply_chat_template

__all__ = [
    "ROLES",
    "IGNORE_INDEX",
    "Conversation",
    "Example",
    "PackedRows",
    "read_conversations",
    "parse_conversation",
    "encode_rendered",
    "encode_conversation",
    "encode_conversations",
    "pack",
    "PackedLoader",
    "attention_mask",
    "make_synthetic_conversations",
    "make_corpus_conversations",
    "corpus_documents",
    "write_synthetic_set",
    "SYNTHETIC_NOTE",
    "VERSE_TOOLS",
    "CORPUS_NOTE",
]

ROLES = ("system", "developer", "user", "assistant", "tool")
IGNORE_INDEX = -100  # the target value cross-entropy leaves out (torch's default ignore_index)


@dataclass
class Conversation:
    """One conversation: its messages and where it came from (``file:line``)."""

    messages: list[dict[str, Any]]
    where: str = ""
    tools: list[dict[str, Any]] | None = None  # the functions the assistant may call (OpenAI's shape)


@dataclass
class Example:
    """A tokenized conversation: ids and a 0/1 loss mask of the same length (1 on assistant tokens)."""

    ids: list[int]
    mask: list[int]
    where: str = ""

    def __len__(self) -> int:
        return len(self.ids)


# --- reading ----------------------------------------------------------------------------------------------


def parse_conversation(record: Any, where: str) -> Conversation:
    """A :class:`Conversation` from one decoded JSON line; ``where`` (``file:line``) starts every error."""
    if not isinstance(record, dict):
        raise OpenLLMError(
            f'{where}: a conversation must be a JSON object with "messages" (or "prompt" and '
            f'"response"), got {type(record).__name__}'
        )
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise OpenLLMError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    elif "prompt" in record or "response" in record:
        for key in ("prompt", "response"):
            if not isinstance(record.get(key), str):
                raise OpenLLMError(f'{where}: a prompt/response pair needs "{key}" as a string')
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
        if record.get("system") is not None:
            if not isinstance(record["system"], str):
                raise OpenLLMError(f'{where}: "system" must be a string')
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise OpenLLMError(
            f'{where}: no "messages" list and no "prompt"/"response" pair '
            f"(keys: {', '.join(sorted(map(str, record))) or 'none'})"
        )
    clean: list[dict[str, Any]] = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise OpenLLMError(f'{where}: message {i} is not an object with "role" and "content"')
        if "role" not in m:
            raise OpenLLMError(f'{where}: message {i} has no "role" (use system, user, assistant or tool)')
        role = m["role"]
        if role not in ROLES:
            raise OpenLLMError(
                f"{where}: message {i} has an unknown role {role!r} (use system, user, assistant or tool)"
            )
        content = m.get("content")
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls is not None:
            if content is None:
                content = ""
            calls = _tool_calls(calls, f"{where}: message {i}")
        if not isinstance(content, str):
            raise OpenLLMError(f'{where}: message {i} ({role}) needs "content" as a string')
        clean.append({"role": role, "content": content, **({"tool_calls": calls} if calls else {})})
    if not any(m["role"] == "assistant" for m in clean):
        raise OpenLLMError(f"{where}: the conversation has no assistant turn, so there is nothing to learn from it")
    return Conversation(clean, where, _tools(record.get("tools"), where))


def _tools(tools: Any, where: str) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    ok = isinstance(tools, list) and all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
        for t in tools
    )
    if not ok:
        raise OpenLLMError(f'{where}: "tools" must be a list of {{"type": "function", "function": {{"name": ...}}}}')
    return tools or None


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise OpenLLMError(f'{where}: "tool_calls" must be a list of {{"function": {{"name", "arguments"}}}}')
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise OpenLLMError(f'{where}: a tool call needs "function" with a "name"')
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
            except json.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise OpenLLMError(f"{where}: the arguments of the call to {fn['name']} are not a JSON object")
        elif not isinstance(args, dict):
            raise OpenLLMError(f"{where}: the arguments of the call to {fn['name']} are not a JSON object")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def read_conversations(path: str | os.PathLike) -> list[Conversation]:
    """Every conversation of a JSON Lines file (see the module docstring); raises :class:`OpenLLMError`
    naming the file and line of the first bad one, or the file when it holds none."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: no such file (give a .jsonl file of conversations)", path=path)
    out: list[Conversation] = []
    with open(path, encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OpenLLMError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
                out.append(parse_conversation(record, where))
        except UnicodeDecodeError as exc:
            raise OpenLLMError(f"{path}: not UTF-8 text (conversations are JSON Lines)", path=path) from exc
    if not out:
        raise OpenLLMError(
            f'{path}: no conversations (the file is empty); write one JSON object a line with "messages"'
        )
    return out


# --- tokenizing -------------------------------------------------------------------------------------------


def encode_rendered(tokenizer, text: str) -> list[int]:
    """Ids of rendered template text, its BOS/EOS strings as the tokenizer's ids (as ``encode_chat`` does)."""
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    ids: list[int] = []
    for i, chunk in enumerate(text.split(eos)):
        if i:
            ids.append(tokenizer.eos_id)
        for j, part in enumerate(chunk.split(bos)):
            if j:
                ids.append(tokenizer.bos_id)
            if part:
                ids.extend(tokenizer.encode(part))
    return ids


def encode_conversation(tokenizer, conversation: Conversation | Sequence[dict]) -> Example:
    """Ids and loss mask of one conversation rendered with the chat template (see the module docstring)."""
    if not isinstance(conversation, Conversation):
        conversation = Conversation(list(conversation))
    msgs, tools = conversation.messages, conversation.tools
    full = apply_chat_template(msgs, add_generation_prompt=False, tools=tools)
    # character spans of what the model writes: from the end of each generation prompt to its turn's EOS
    spans: list[tuple[int, int]] = []
    eos = SPECIAL_TOKENS["eos"]
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        head = apply_chat_template(msgs[:i], add_generation_prompt=True, tools=tools)
        start = len(head)
        end = full.index(eos, start) + len(eos)
        if not full.startswith(head):
            raise OpenLLMError(
                f"{conversation.where or 'conversation'}: the chat template does not render "
                f"turns as prefixes of each other"
            )
        spans.append((start, end))
    ids: list[int] = []
    mask: list[int] = []
    pos = 0
    for start, end in spans:
        prompt = encode_rendered(tokenizer, full[pos:start])
        reply = encode_rendered(tokenizer, full[start:end])
        ids += prompt + reply
        mask += [0] * len(prompt) + [1] * len(reply)
        pos = end
    rest = encode_rendered(tokenizer, full[pos:])
    ids += rest
    mask += [0] * len(rest)
    return Example(ids, mask, conversation.where)


@dataclass
class EncodeReport:
    """What :func:`encode_conversations` kept, cut and dropped."""

    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    dropped_where: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.kept} conversations"
        if self.truncated:
            text += f", {self.truncated} truncated to the context"
        if self.dropped:
            text += f", {self.dropped} longer than the context dropped (first: {', '.join(self.dropped_where[:3])})"
        return text


def encode_conversations(
    tokenizer, conversations: Iterable[Conversation], max_len: int, *, too_long: str = "drop"
) -> tuple[list[Example], EncodeReport]:
    """Tokenize conversations; one longer than ``max_len`` tokens is dropped and counted (``too_long="drop"``),
    cut to ``max_len`` (``"truncate"``; dropped when no assistant token is left), or refused (``"error"``)."""
    if too_long not in ("drop", "truncate", "error"):
        raise OpenLLMError(f"too_long must be drop, truncate or error, not {too_long!r}")
    out: list[Example] = []
    report = EncodeReport()
    for conv in conversations:
        ex = encode_conversation(tokenizer, conv)
        if len(ex) > max_len:
            if too_long == "error":
                raise OpenLLMError(
                    f"{conv.where or 'a conversation'}: {len(ex)} tokens, longer than the context "
                    f"of {max_len}; shorten it, or choose to drop or truncate long conversations"
                )
            if too_long == "truncate" and any(ex.mask[1:max_len]):
                ex = Example(ex.ids[:max_len], ex.mask[:max_len], ex.where)
                report.truncated += 1
            else:
                report.dropped += 1
                report.dropped_where.append(conv.where)
                continue
        out.append(ex)
        report.kept += 1
    return out, report


# --- packing ----------------------------------------------------------------------------------------------


@dataclass
class PackedRows:
    """Training rows of ``width`` tokens: ``ids`` (pad-filled), ``labels`` (the id where the loss counts, else
    :data:`IGNORE_INDEX`) and ``segments`` (the conversation's index within its row, -1 on padding)."""

    ids: np.ndarray
    labels: np.ndarray
    segments: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def target_tokens(self) -> int:
        """Number of tokens that count in the loss (assistant tokens after the first position)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def pack(examples: Sequence[Example], width: int, *, pad_id: int = 0, seed: int = 0) -> PackedRows:
    """Whole conversations packed into rows of ``width`` tokens (first fit over a seeded shuffle, so the rows
    are a pure function of the examples and the seed). A conversation never spans two rows."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i])
        if n > width:
            raise OpenLLMError(f"{examples[i].where or 'a conversation'}: {n} tokens do not fit a row of {width}")
        for r, free in enumerate(room):
            if free >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(width - n)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    segments = np.full((len(rows), width), -1, dtype=np.int64)
    for r, members in enumerate(rows):
        pos = 0
        for s, i in enumerate(members):
            ex = examples[i]
            n = len(ex)
            ids[r, pos : pos + n] = ex.ids
            labels[r, pos : pos + n] = np.where(np.asarray(ex.mask, dtype=bool), ex.ids, IGNORE_INDEX)
            segments[r, pos : pos + n] = s
            pos += n
    return PackedRows(ids, labels, segments)


def attention_mask(segments):
    """Boolean (B, 1, T, T) mask for ``scaled_dot_product_attention``: a query sees the keys at or before it in
    its own conversation (padding positions see the padding before them)."""
    import torch

    T = segments.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


class PackedLoader:
    """Training (or evaluation) batches over :class:`PackedRows`, exact to resume: batch ``position`` takes
    rows ``position * world * B + rank * B ...`` of a seeded permutation per epoch, so the whole state is one
    integer. ``next()`` gives ``(x, y, segments)``: inputs, masked targets (shifted by one) and the
    conversation index of every input position."""

    def __init__(
        self,
        rows: PackedRows,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device="cpu",
        shuffle: bool = True,
    ) -> None:
        import torch

        if len(rows) == 0:
            raise OpenLLMError("no conversations to train on (every one was dropped)")
        self.rows, self.batch_size = rows, int(batch_size)
        self.seed, self.rank, self.world_size, self.shuffle = int(seed), int(rank), int(world_size), shuffle
        self.device = torch.device(device)
        self.position = 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def seq_len(self) -> int:
        return self.rows.ids.shape[1] - 1

    def _row(self, g: int) -> int:
        n = len(self.rows)
        epoch, i = divmod(g, n)
        if not self.shuffle:
            return i
        perm = self._perms.get(epoch)
        if perm is None:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(n)}
            perm = self._perms[epoch]
        return int(perm[i])

    def batch(self, position: int):
        import torch

        first = (position * self.world_size + self.rank) * self.batch_size
        idx = [self._row(first + i) for i in range(self.batch_size)]
        ids = torch.from_numpy(self.rows.ids[idx])
        labels = torch.from_numpy(self.rows.labels[idx])
        seg = torch.from_numpy(self.rows.segments[idx])
        x, y, s = ids[:, :-1], labels[:, 1:], seg[:, :-1]
        if self.device.type != "cpu":
            x, y, s = (t.to(self.device, non_blocking=True) for t in (x, y, s))
        return x, y, s

    def next(self):
        out = self.batch(self.position)
        self.position += 1
        return out

    __next__ = next

    def __iter__(self) -> PackedLoader:
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "rows": len(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("seq_len", self.seq_len), ("rows", len(self.rows))):
            if key in state and int(state[key]) != mine:
                raise OpenLLMError(
                    f"cannot resume the conversation stream: the checkpoint has {key}={state[key]}, "
                    f"this run has {mine} (same data and settings are needed to resume)"
                )
        self.position = int(state["position"])

    def epoch_batches(self) -> Iterator[tuple]:
        """The rows once, in order, in batches (the last one may be smaller); for evaluation."""
        import torch

        n = len(self.rows)
        for start in range(self.rank * self.batch_size, n, self.batch_size * self.world_size):
            idx = list(range(start, min(start + self.batch_size, n)))
            ids = torch.from_numpy(self.rows.ids[idx])
            labels = torch.from_numpy(self.rows.labels[idx])
            seg = torch.from_numpy(self.rows.segments[idx])
            yield tuple(t.to(self.device) for t in (ids[:, :-1], labels[:, 1:], seg[:, :-1]))


# --- a synthetic conversation set from the embedded corpus -----------------------------------------------

SYNTHETIC_NOTE = (
    "Synthetic: generated by openllm from the embedded corpus (the King James Bible); every question is built "
    "from a template and every answer is copied from the verse text, so the set teaches the chat format and "
    "verse recall, not general assistance. A part of it is tool use: a get_verse or count_verses function is "
    "offered, the assistant calls it (or answers without it when it does not help), the tool's result is the "
    "corpus's own text or count, and the assistant answers from it."
)
_SYSTEM = "You answer questions about the King James Bible by quoting it."


def _function(name: str, params: dict[str, str]) -> dict[str, Any]:
    props = {k: {"type": t} for k, t in params.items()}
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": props, "required": list(params)}},
    }


# the functions of the tool-use part, kept small: their schemas are part of every prompt that offers them, JSON
# is many tokens to a tokenizer trained on the Bible, and a quickstart chat model has a context of 256 tokens
VERSE_TOOLS = {
    "get_verse": _function("get_verse", {"ref": "string"}),
    "count_verses": _function("count_verses", {"chapter": "string"}),
}
TOOL_FRACTION = 0.2  # of the verse set: conversations that offer a tool
_TOOL_MAX_CHARS = 110


def _call(n: int, name: str, **arguments: Any) -> dict[str, Any]:
    # arguments as the server's grammar writes them: JSON with json.dumps's spacing, keys in the schema's order
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _tool_conversation(rng: random.Random, book: str, ch: int, verses: list[str], v: int) -> dict[str, Any]:
    """One tool-use conversation about verse ``v`` of ``book ch``: look it up, count the chapter's verses, or
    answer without the offered tool when the question needs none (so "auto" has both sides to learn)."""
    ref, text = f"{book} {ch}:{v + 1}", verses[v]
    kind = rng.random()
    # the verse is in the conversation twice (the tool's result, the answer): short ones only, so it fits
    if kind < 0.55 and len(text) <= _TOOL_MAX_CHARS:
        call = _call(1, "get_verse", ref=ref)
        tools = [VERSE_TOOLS["get_verse"]]
        msgs = [
            {"role": "user", "content": rng.choice([f"Look up {ref}.", f"What does {ref} say?", f"Quote {ref}."])},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": text},
            {"role": "assistant", "content": text},
        ]
    elif kind < 0.8:
        call = _call(1, "count_verses", chapter=f"{book} {ch}")
        tools = [VERSE_TOOLS["count_verses"]]
        n = len(verses)
        msgs = [
            {"role": "user", "content": f"How many verses are in {book} {ch}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": str(n)},
            {"role": "assistant", "content": f"{book} {ch} has {n} verses."},
        ]
    else:
        tools = [VERSE_TOOLS["count_verses"]]
        msgs = [
            {"role": "user", "content": f"What does {ref} say?"},
            {"role": "assistant", "content": text},
        ]
    return {"tools": tools, "messages": msgs}


def _verses() -> list[tuple[str, int, list[str]]]:
    from .corpus import embedded_corpus_documents

    out = []
    for doc in embedded_corpus_documents():
        heading, *verses = doc.split("\n")
        book, _, chapter = heading.rpartition(" ")
        out.append((book, int(chapter), verses))
    return out


MAX_SYNTHETIC = 1_000_000  # far above any useful synthetic set; a typo of more would run for hours


def _check_count(n: int) -> None:
    if not 2 <= n <= MAX_SYNTHETIC:
        raise OpenLLMError(
            f"make between 2 conversations (one to train on, one held out) and {MAX_SYNTHETIC:,}, not {n}"
        )


def make_synthetic_conversations(
    n: int = 2000, *, seed: int = 0, val_fraction: float = 0.1, max_chars: int = 400, tools: float = TOOL_FRACTION
) -> tuple[list[dict], list[dict]]:
    """``n`` question/answer conversations about verses of the embedded corpus, split into (train, val) by
    chapter, so no held-out chapter is seen in training. Answers are verse text; verses longer than
    ``max_chars`` are left out. A ``tools`` fraction of them offers a function and uses it
    (:func:`_tool_conversation`). Deterministic for a ``seed``."""
    _check_count(n)
    chapters = _verses()
    rng = random.Random(seed)
    rng.shuffle(chapters)
    n_val_ch = max(1, round(len(chapters) * val_fraction))
    n_val = max(1, round(n * val_fraction))
    parts = [(chapters[n_val_ch:], n - n_val), (chapters[:n_val_ch], n_val)]
    out: list[list[dict]] = []
    for pool, count in parts:
        convs: list[dict] = []
        while len(convs) < count:
            book, ch, verses = rng.choice(pool)
            v = rng.randrange(len(verses))
            text = verses[v]
            if len(text) > max_chars:
                continue
            ref = f"{book} {ch}:{v + 1}"
            if rng.random() < tools:
                convs.append(_tool_conversation(rng, book, ch, verses, v))
                continue
            kind = rng.random()
            if kind < 0.5:
                msgs = [{"role": "user", "content": f"What does {ref} say?"}, {"role": "assistant", "content": text}]
            elif kind < 0.7 and v + 1 < len(verses) and len(verses[v + 1]) <= max_chars:
                msgs = [
                    {"role": "user", "content": f"Quote {ref}."},
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": "And the next verse?"},
                    {"role": "assistant", "content": verses[v + 1]},
                ]
            elif kind < 0.85:
                msgs = [
                    {"role": "user", "content": f'Which verse says: "{text}"'},
                    {"role": "assistant", "content": f"{ref}."},
                ]
            else:
                msgs = (
                    [
                        {"role": "user", "content": f"How does {book} {ch} begin?"},
                        {"role": "assistant", "content": verses[0]},
                    ]
                    if len(verses[0]) <= max_chars
                    else [{"role": "user", "content": f"What does {ref} say?"}, {"role": "assistant", "content": text}]
                )
            if rng.random() < 0.3:
                msgs.insert(0, {"role": "system", "content": _SYSTEM})
            convs.append({"messages": msgs})
        out.append(convs)
    return out[0], out[1]


# --- a synthetic conversation set from the corpus a base run trained on -----------------------------------

CORPUS_NOTE = (
    "Synthetic: generated by openllm from the corpus the base run trained on ({data_dir}); every question is "
    "built from a template and every answer is copied from that text, so the set teaches the chat format and "
    "recall of the corpus (continuing, completing and placing its sentences), not general assistance."
)
_CORPUS_SYSTEM = "You continue and complete passages of the text you were trained on, quoting it."
# a sentence ends at . ! ? before white space, except after a title (Mr. Bennet is one sentence's words)
_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<=[.!?])\s+|\n+")


def corpus_documents(source: str | os.PathLike, *, limit: int = 4000, seed: int = 0) -> tuple[list[str], dict]:
    """Up to ``limit`` documents (drawn with ``seed``) of the corpus a run trained on, decoded from the token
    shards its checkpoint's ``data_dir`` names (or from ``source`` itself when it is a tokenized data folder),
    and what they came from: ``data_dir``, the tokenizer's and the prepared files' checksums, the documents in
    the corpus. A source that records no tokenized corpus (an export, a fine-tune) is an :class:`OpenLLMError`."""
    import numpy as np

    from . import rundir
    from .batches import TokenShards, read_meta
    from .fsio import read_json
    from .tokenizer import Tokenizer

    src = Path(source)
    if (src / "meta.json").is_file():
        data_dir, tok_dir = src, src / "tokenizer"
    else:
        ckpt = rundir.latest_checkpoint(src) if src.is_dir() else None
        ckpt = ckpt or (src if (src / rundir.STATE).is_file() else None)
        data = read_json(ckpt / rundir.STATE).get("data_dir") if ckpt is not None else None
        if ckpt is None or not isinstance(data, str) or not (Path(data) / "meta.json").is_file():
            raise OpenLLMError(
                f"{source}: no record of a tokenized training corpus (a run's checkpoint names it as data_dir; an "
                f"export or a fine-tune has none, or the folder was moved): give the base run folder, or the "
                f"tokenized data folder it trained on",
                path=src,
            )
        data_dir, tok_dir = Path(data), Path(data) / "tokenizer"
        if not (tok_dir / "tokenizer.model").is_file():
            tok_dir = (ckpt.parent.parent if ckpt.parent.name == rundir.CHECKPOINTS else src) / rundir.TOKENIZER
    meta = read_meta(data_dir)
    tok = Tokenizer.load(tok_dir)
    spans: list[tuple[np.ndarray, int, int]] = []  # (shard, start, end) of each document, EOS excluded
    for split in ("train", "val"):
        if split not in meta["splits"]:
            continue
        for arr in TokenShards(data_dir, split).shards:
            ends = np.flatnonzero(arr == tok.eos_id)
            starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.array([], dtype=np.int64)
            spans.extend((arr, int(a), int(b)) for a, b in zip(starts, ends) if b > a)
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(spans)), min(limit, len(spans))))
    docs = [tok.decode([int(t) for t in spans[i][0][spans[i][1] : spans[i][2]]]).strip() for i in chosen]
    info = {
        "data_dir": str(data_dir.resolve()),
        "tokenizer_sha256": meta.get("tokenizer_sha256"),
        "prepared_files": meta.get("sources"),
        "prepared_from": meta.get("prepared_from"),
        "documents": len(spans),
        "documents_used": len(docs),
    }
    return [d for d in docs if d], info


def _sentences(doc: str, max_chars: int) -> list[str]:
    out = []
    for part in _SENTENCE_END.split(doc):
        part = " ".join(part.split())
        if not part:
            continue
        if len(part) > max_chars:  # a run-on line: pieces of about 30 words, so the answers stay short
            words = part.split()
            out += [" ".join(words[i : i + 30]) for i in range(0, len(words), 30)]
        else:
            out.append(part)
    return [x for x in out if len(x) <= max_chars]


def make_corpus_conversations(
    documents: Sequence[str], n: int = 2000, *, seed: int = 0, val_fraction: float = 0.1, max_chars: int = 400
) -> tuple[list[dict], list[dict]]:
    """``n`` conversations about passages of ``documents`` (any text), split into (train, val) by document, so
    no held-out document is seen in training. Questions come from templates (continue this text, complete this
    sentence, what comes before); every answer is a sentence of the text. Deterministic for a ``seed``."""
    _check_count(n)
    docs = [s for s in (_sentences(d, max_chars) for d in documents) if s and any(len(x.split()) >= 4 for x in s)]
    if len(docs) < 2:
        raise OpenLLMError(
            f"the corpus has {len(docs)} document(s) with a sentence of four words or more: a conversation set "
            f"needs at least two (one to train on, one held out)"
        )
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_val_docs = max(1, round(len(docs) * val_fraction))
    n_val = max(1, round(n * val_fraction))
    out: list[list[dict]] = []
    for pool, count in ((docs[n_val_docs:], n - n_val), (docs[:n_val_docs], n_val)):
        convs: list[dict] = []
        while len(convs) < count:
            sents = rng.choice(pool)
            i = rng.randrange(len(sents))
            kind = rng.random()
            words = sents[i].split()
            if kind < 0.4 and i + 1 < len(sents):
                msgs = [
                    {"role": "user", "content": f'Continue this text: "{sents[i]}"'},
                    {"role": "assistant", "content": sents[i + 1]},
                ]
            elif kind < 0.55 and i + 2 < len(sents):
                msgs = [
                    {"role": "user", "content": f'Continue this text: "{sents[i]}"'},
                    {"role": "assistant", "content": sents[i + 1]},
                    {"role": "user", "content": "And then?"},
                    {"role": "assistant", "content": sents[i + 2]},
                ]
            elif kind < 0.8 and len(words) >= 4:
                cut = len(words) // 2
                msgs = [
                    {"role": "user", "content": f'Complete this sentence: "{" ".join(words[:cut])} ..."'},
                    {"role": "assistant", "content": " ".join(words[cut:])},
                ]
            elif i + 1 < len(sents):
                msgs = [
                    {"role": "user", "content": f'What comes just before: "{sents[i + 1]}"'},
                    {"role": "assistant", "content": sents[i]},
                ]
            else:
                continue  # a one-sentence document of a few words: draw again (every pool has a longer one)
            if rng.random() < 0.3:
                msgs.insert(0, {"role": "system", "content": _CORPUS_SYSTEM})
            convs.append({"messages": msgs})
        out.append(convs)
    return out[0], out[1]


def check_synthetic_out(out: Path) -> None:
    """Refuse ``out`` for a conversation set, before anything is made or written: a file, or a non-empty folder
    that is not an earlier conversation set (its ``about.json`` says ``"synthetic": true``), so a prepared
    corpus, a run or any other folder is never replaced."""
    from .fsio import read_json

    if out.exists() and not out.is_dir():
        raise OpenLLMError(f"{out} is a file: choose a new or empty folder for the conversation set", path=out)
    if out.is_dir() and any(out.iterdir()) and read_json(out / "about.json").get("synthetic") is not True:
        raise OpenLLMError(
            f"{out} is not empty and is not an earlier conversation set (no about.json of one): it would be "
            f"replaced; choose a new or empty folder (nothing was written)",
            path=out,
        )


def write_synthetic_set(
    out_dir: str | os.PathLike,
    n: int = 2000,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    source: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``val.jsonl`` and ``about.json`` (what the set is, how it was made, checksums)
    into ``out_dir``; returns ``about.json``'s content. ``source``: a base run (or the tokenized data folder it
    trained on) whose corpus the passages come from (:func:`make_corpus_conversations`); None: the verse set of
    the embedded corpus (:func:`make_synthetic_conversations`). ``out_dir`` is refused unless it is new, empty
    or an earlier set (:func:`check_synthetic_out`), and is replaced whole."""
    from .corpus import EMBEDDED_CORPUS
    from .fsio import atomic_output_dir

    out = Path(out_dir)
    check_synthetic_out(out)
    about: dict[str, Any]
    if source is None:
        train, val = make_synthetic_conversations(n, seed=seed, val_fraction=val_fraction)
        about = {
            "name": "openllm synthetic verse conversations",
            "synthetic": True,
            "note": SYNTHETIC_NOTE,
            "source": EMBEDDED_CORPUS["name"],
            "source_sha256": EMBEDDED_CORPUS["sha256"],
            "seed": seed,
            "split": "by chapter",
            "tool_use": {"fraction": TOOL_FRACTION, "functions": sorted(VERSE_TOOLS)},
            "files": {},
        }
    else:
        docs, info = corpus_documents(source, seed=seed)
        train, val = make_corpus_conversations(docs, n, seed=seed, val_fraction=val_fraction)
        about = {
            "name": "openllm synthetic passage conversations",
            "synthetic": True,
            "note": CORPUS_NOTE.format(data_dir=info["data_dir"]),
            "source": {"run": str(Path(source).resolve()), **info},
            "seed": seed,
            "split": "by document",
            "files": {},
        }
    with atomic_output_dir(out, owned_marker="about.json") as tmp:
        for name, convs in (("train.jsonl", train), ("val.jsonl", val)):
            (tmp / name).write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
            about["files"][name] = {"conversations": len(convs), "sha256": sha256_file(tmp / name)}
        (tmp / "about.json").write_text(json.dumps(about, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return about
