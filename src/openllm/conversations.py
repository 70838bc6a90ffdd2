"""Conversations for supervised fine-tuning: read, render, mask, pack, and a synthetic set.

Input is JSON Lines, one conversation a line, in either shape::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}, ...]}
    {"prompt": "...", "response": "...", "system": "..."}          (``system`` optional)

Roles are ``system`` (or ``developer``), ``user`` and ``assistant``. Every conversation needs at least one
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
    "write_synthetic_set",
    "SYNTHETIC_NOTE",
]

ROLES = ("system", "developer", "user", "assistant")
IGNORE_INDEX = -100  # the target value cross-entropy leaves out (torch's default ignore_index)


@dataclass
class Conversation:
    """One conversation: its messages and where it came from (``file:line``)."""

    messages: list[dict[str, str]]
    where: str = ""


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
    clean: list[dict[str, str]] = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise OpenLLMError(f'{where}: message {i} is not an object with "role" and "content"')
        if "role" not in m:
            raise OpenLLMError(f'{where}: message {i} has no "role" (use system, user or assistant)')
        role = m["role"]
        if role not in ROLES:
            raise OpenLLMError(f"{where}: message {i} has an unknown role {role!r} (use system, user or assistant)")
        content = m.get("content")
        if not isinstance(content, str):
            raise OpenLLMError(f'{where}: message {i} ({role}) needs "content" as a string')
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in clean):
        raise OpenLLMError(f"{where}: the conversation has no assistant turn, so there is nothing to learn from it")
    return Conversation(clean, where)


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
    msgs = conversation.messages
    full = apply_chat_template(msgs, add_generation_prompt=False)
    # character spans of what the model writes: from the end of each generation prompt to its turn's EOS
    spans: list[tuple[int, int]] = []
    eos = SPECIAL_TOKENS["eos"]
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = len(apply_chat_template(msgs[:i], add_generation_prompt=True))
        end = full.index(eos, start) + len(eos)
        if not full.startswith(apply_chat_template(msgs[:i], add_generation_prompt=True)):
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
    "verse recall, not general assistance."
)
_SYSTEM = "You answer questions about the King James Bible by quoting it."


def _verses() -> list[tuple[str, int, list[str]]]:
    from .corpus import embedded_corpus_documents

    out = []
    for doc in embedded_corpus_documents():
        heading, *verses = doc.split("\n")
        book, _, chapter = heading.rpartition(" ")
        out.append((book, int(chapter), verses))
    return out


def make_synthetic_conversations(
    n: int = 2000, *, seed: int = 0, val_fraction: float = 0.1, max_chars: int = 400
) -> tuple[list[dict], list[dict]]:
    """``n`` question/answer conversations about verses of the embedded corpus, split into (train, val) by
    chapter, so no held-out chapter is seen in training. Answers are verse text; verses longer than
    ``max_chars`` are left out. Deterministic for a ``seed``."""
    if n < 2:
        raise OpenLLMError(f"make at least 2 conversations (one to train on, one held out), not {n}")
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


def write_synthetic_set(
    out_dir: str | os.PathLike, n: int = 2000, *, seed: int = 0, val_fraction: float = 0.1
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``val.jsonl`` and ``about.json`` (what the set is, how it was made, checksums)
    into ``out_dir``; returns ``about.json``'s content."""
    from .corpus import EMBEDDED_CORPUS
    from .fsio import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OpenLLMError(f"{out} is a file: choose a folder for the conversation set", path=out)
    out.mkdir(parents=True, exist_ok=True)
    train, val = make_synthetic_conversations(n, seed=seed, val_fraction=val_fraction)
    about: dict[str, Any] = {
        "name": "openllm synthetic verse conversations",
        "synthetic": True,
        "note": SYNTHETIC_NOTE,
        "source": EMBEDDED_CORPUS["name"],
        "source_sha256": EMBEDDED_CORPUS["sha256"],
        "seed": seed,
        "split": "by chapter",
        "files": {},
    }
    for name, convs in (("train.jsonl", train), ("val.jsonl", val)):
        write_text_atomic(out / name, "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs))
        about["files"][name] = {"conversations": len(convs), "sha256": sha256_file(out / name)}
    write_json_atomic(out / "about.json", about)
    return about
