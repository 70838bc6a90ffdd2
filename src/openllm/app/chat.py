"""What the Fine-tune action and the Chat tab do: check an uploaded conversation file, make the synthetic verse
set, list the models to chat with (fine-tuned runs first), and stream a reply to a multi-turn conversation
through the project's chat template. No Gradio here; the library (:mod:`openllm.conversations`,
:mod:`openllm.finetune`, :mod:`openllm.generate`) does the work."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OpenLLMError
from ..rundir import checkpoint_steps
from .forms import FormError
from .workspace import Workspace

__all__ = [
    "ConversationCheck",
    "check_conversations",
    "synthetic_set",
    "is_finetuned",
    "chat_choices",
    "ChatPrompt",
    "chat_prompt",
    "message_text",
    "stream_reply",
    "finetune_summary",
    "SYNTHETIC_SIZE",
]

SYNTHETIC_SIZE = 2000  # conversations in the app's synthetic verse set (as `openllm finetune --make-data`)


@dataclass
class ConversationCheck:
    """An uploaded conversation file that reads: how many conversations and turns it holds."""

    path: Path
    conversations: int
    assistant_turns: int

    def describe(self) -> str:
        return (
            f"{self.path.name}: {self.conversations:,} conversation{'s' if self.conversations != 1 else ''}, "
            f"{self.assistant_turns:,} assistant turns to learn from"
        )


def check_conversations(path: str | Path | None, what: str = "Conversations") -> ConversationCheck:
    """Read an uploaded JSON Lines file of conversations as the fine-tune will; a bad one raises a
    :class:`FormError` with the library's one-line ``file:line`` message (the upload's own name, not the
    temporary path the browser's upload landed on)."""
    if not path:
        raise FormError(what, "upload a .jsonl file of conversations, or use the synthetic verse set")
    from ..conversations import read_conversations

    p = Path(path)
    try:
        convs = read_conversations(p)
    except OpenLLMError as exc:
        raise FormError(what, str(exc).replace(str(p), p.name)) from exc
    turns = sum(1 for c in convs for m in c.messages if m["role"] == "assistant")
    return ConversationCheck(p, len(convs), turns)


def synthetic_set(ws: Workspace, n: int = SYNTHETIC_SIZE) -> tuple[Path, Path]:
    """The synthetic verse conversation set in the workspace (``corpora/conversations/verses-N``), written by
    :func:`openllm.conversations.write_synthetic_set` the first time; returns (train.jsonl, val.jsonl)."""
    from ..conversations import write_synthetic_set

    out = ws.corpora_dir / "conversations" / f"verses-{int(n)}"
    train, val = out / "train.jsonl", out / "val.jsonl"
    if not (train.is_file() and val.is_file() and (out / "about.json").is_file()):
        write_synthetic_set(out, int(n))
    return train, val


def is_finetuned(folder: str | Path) -> bool:
    """Whether a run (or a downloaded model folder) was fine-tuned on conversations."""
    from ..finetune import finetune_record

    try:
        return finetune_record(folder) is not None
    except Exception:
        return False


def finetune_summary(folder: str | Path) -> str | None:
    """One line on what a fine-tuned model was made from (base model, data, full or LoRA), or None for a
    model that was not fine-tuned."""
    from ..finetune import finetune_record

    try:
        rec = finetune_record(folder)
    except Exception:
        return None
    if not rec:
        return None
    base = rec.get("base") or {}
    data = rec.get("data") or {}
    name = base.get("hub_ref") or Path(str(base.get("source") or "?")).name
    kept = data.get("kept", data.get("conversations"))
    on = "/".join(Path(str(data.get("path") or "?")).parts[-2:])
    on += f" ({kept:,} conversations)" if isinstance(kept, int) else ""
    how = "LoRA" if rec.get("lora") else "full"
    step = f" step {base['step']:,}" if isinstance(base.get("step"), int) else ""
    return f"fine-tuned ({how}) from {name}{step} on {on}"


def chat_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, value) pairs for the Chat tab: fine-tuned runs first, then the other runs with a checkpoint,
    then downloaded models (fine-tuned ones first); values as :func:`models.resolve_model` takes them."""
    tuned, base = [], []
    for name in ws.run_names():
        steps = checkpoint_steps(ws.run_dir(name))
        if not steps:
            continue
        if is_finetuned(ws.run_dir(name)):
            tuned.append((f"fine-tuned run {name} (step {steps[-1]:,})", f"run:{name}"))
        else:
            base.append((f"base run {name} (step {steps[-1]:,}; not fine-tuned)", f"run:{name}"))
    for name in ws.model_names():
        if is_finetuned(ws.models_dir / name):
            tuned.append((f"fine-tuned downloaded {name}", f"model:{name}"))
        else:
            base.append((f"downloaded {name}", f"model:{name}"))
    return tuned + base


def _fit(tokenizer, messages: list[dict], max_ctx: int, room: int) -> tuple[list[int], list[dict]]:
    """The chat prompt's ids, dropping the oldest turns (the system prompt stays) until ``room`` new tokens
    fit in the context."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system) :]
    while True:
        ids = tokenizer.encode_chat(system + turns, add_generation_prompt=True)
        if len(ids) + room <= max_ctx or len(turns) <= 1:
            return ids, system + turns
        rest = turns[1:]
        while rest and rest[0]["role"] != "user":  # a conversation restarts at a user turn
            rest = rest[1:]
        if not rest:
            return ids, system + turns
        turns = rest


def message_text(content: Any) -> str:
    """A chat message's text: a string as it is; a list of parts (``[{"type": "text", "text": ...}]``, the
    shape Gradio's Chatbot sends back) joined; None as empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


@dataclass
class ChatPrompt:
    """What the model is given: the messages that fit its context, their rendered template text and ids."""

    messages: list[dict]
    text: str
    ids: list[int]
    max_new_tokens: int


def chat_prompt(loaded: Any, history: Sequence[dict], system: str = "", max_new_tokens: int = 128) -> ChatPrompt:
    """The prompt for the assistant's next turn after ``history`` (role/content messages ending with the
    user's turn) under the ``system`` prompt, rendered with the chat template
    (``Tokenizer.encode_chat(..., add_generation_prompt=True)``); the oldest turns are dropped when the whole
    conversation does not fit the model's context."""
    from ..tokenizer import apply_chat_template

    tok = loaded.tokenizer
    if tok is None or not hasattr(tok, "encode_chat"):
        raise OpenLLMError("this model has no tokenizer with the chat template; it cannot chat")
    messages = [{"role": "system", "content": system.strip()}] if (system or "").strip() else []
    messages += [
        {"role": m["role"], "content": message_text(m.get("content"))}
        for m in history
        if m.get("role") in ("user", "assistant")
    ]
    if not messages or messages[-1]["role"] != "user":
        raise FormError("Message", "type a message first")
    max_ctx = loaded.model.cfg.max_seq_len
    room = max(1, min(int(max_new_tokens), max_ctx // 2))
    ids, used = _fit(tok, messages, max_ctx, room)
    if len(ids) >= max_ctx:
        raise FormError(
            "Message",
            f"is {len(ids)} tokens with the template; the model's context is {max_ctx} tokens: write a shorter one",
        )
    return ChatPrompt(
        used, apply_chat_template(used, add_generation_prompt=True), ids, min(int(max_new_tokens), max_ctx - len(ids))
    )


def stream_reply(
    loaded: Any, prompt: ChatPrompt, *, temperature: float = 0.7, top_p: float | None = 0.95, seed: int | None = None
) -> Iterator[tuple[str, bool]]:
    """(the reply so far, whether it ended its turn) as tokens arrive; generation stops at EOS (the end of an
    assistant turn in the template) or after ``prompt.max_new_tokens``."""
    from ..generate import SamplingParams, TextStream

    tok = loaded.tokenizer
    params = SamplingParams(
        max_new_tokens=prompt.max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop_tokens=(tok.eos_id,)
    )
    pieces = TextStream(loaded.model, tok, prompt.ids, params, lstrip=True)  # as the server's chat replies
    emitted = ""
    for piece in pieces:
        emitted += piece
        yield emitted, False
    yield emitted, pieces.stopped
