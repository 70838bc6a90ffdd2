"""Chat requests -> prompt token ids, through the project's one chat template
(:data:`openllm.tokenizer.CHAT_TEMPLATE`): a plain transcript our base models can continue, ending with the
``Assistant:`` turn the model writes. The reply is what follows it (leading spaces dropped), up to EOS, the
model starting the next turn (:data:`CHAT_STOPS`), or ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..tokenizer import CHAT_STOPS, apply_chat_template

__all__ = ["CHAT_STOPS", "chat_prompt"]


def chat_prompt(tokenizer: Any, messages: Iterable[tuple[str, str]]) -> list[int]:
    """(role, text) pairs -> the token ids the model continues (the template's BOS and EOS as their ids)."""
    msgs = [{"role": role, "content": text} for role, text in messages]
    encode_chat = getattr(tokenizer, "encode_chat", None)
    if encode_chat is not None:
        return list(encode_chat(msgs, add_generation_prompt=True))
    return list(tokenizer.encode(apply_chat_template(msgs, add_generation_prompt=True)))
