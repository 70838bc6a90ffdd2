"""Chat requests -> prompt token ids, through the project's one chat template
(:data:`openllm.tokenizer.CHAT_TEMPLATE`): a plain transcript our base models can continue, ending with the
``Assistant:`` turn the model writes. The reply is what follows it (leading spaces dropped), up to EOS, the
model starting the next turn (:data:`CHAT_STOPS`), or ``max_tokens``. A request's tools are rendered by the same
template (serve.tools reads the calls a reply makes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..tokenizer import CHAT_STOPS, apply_chat_template

__all__ = ["CHAT_STOPS", "chat_prompt"]


def chat_prompt(
    tokenizer: Any, messages: Iterable[tuple[str, str] | dict], *, tools: Sequence[dict] | None = None
) -> list[int]:
    """Messages ((role, text) pairs or OpenAI-shaped dicts) and tools -> the token ids the model continues (the
    template's BOS and EOS as their ids)."""
    msgs = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in messages]
    extra = {"tools": list(tools)} if tools else {}
    encode_chat = getattr(tokenizer, "encode_chat", None)
    if encode_chat is not None:
        return list(encode_chat(msgs, add_generation_prompt=True, **extra))
    return list(tokenizer.encode(apply_chat_template(msgs, add_generation_prompt=True, tools=tools)))
