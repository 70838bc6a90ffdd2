"""The chat template for base models (ours are trained on plain text, with no chat tokens).

A conversation becomes a plain transcript, one message a line, ending with the turn the model writes::

    System: You are terse.
    User: Hello!
    Assistant: Hi.
    User: What is 2+2?
    Assistant:

The reply is what the model writes after ``Assistant:`` (leading spaces dropped), up to the first of
:data:`CHAT_STOPS` (the model starting the next turn), EOS, or ``max_tokens``.
"""
from __future__ import annotations

from typing import Iterable

__all__ = ["ROLE_NAMES", "CHAT_STOPS", "render_chat"]

ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOPS = ("\nUser:", "\nSystem:")


def render_chat(messages: Iterable[tuple[str, str]]) -> str:
    """(role, text) pairs -> the prompt text the model continues."""
    lines = [f"{ROLE_NAMES[role]}: {' '.join(text.split())}" for role, text in messages]
    return "\n".join(lines + ["Assistant:"])
