"""Generated token ids -> text for one sequence: incremental decoding, stop strings, and what a stream may
send yet (text that could still grow into a stop string, or half a UTF-8 character, is held back)."""

from __future__ import annotations

from typing import Any

__all__ = ["TextState"]


class TextState:
    """The text of one sequence's generated tokens, kept up to date token by token."""

    def __init__(self, tokenizer: Any, prompt: list[int], stops: tuple[str, ...] = (), lstrip: bool = False) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.lstrip = lstrip
        # SentencePiece drops the leading space of the first piece it decodes; decoding after a few prompt
        # tokens keeps it ("Hello" + "▁world" -> " world")
        self._context = list(prompt[-4:])
        self._context_text = tokenizer.decode(self._context)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters already streamed
        self.stopped = False  # a stop string ended the text: it is final

    def decode(self) -> str:
        full = self.tokenizer.decode(self._context + self.ids)
        ctx = self._context_text
        text = full[len(ctx) :] if full.startswith(ctx) else self.tokenizer.decode(self.ids)
        return text.lstrip() if self.lstrip else text

    def add(self, token: int, *, final: bool, look: bool) -> None:
        """Append ``token``; with ``look`` (streaming, stop strings or the last token) bring the text up to
        date and check the stop strings (``stopped`` then tells that one matched)."""
        self.ids.append(token)
        if not (look or self.stops or final):
            return
        text = self.decode()
        if text.endswith("\ufffd") and not final:
            return  # an incomplete UTF-8 character: wait for its other bytes
        if self.stops:
            cut = None
            for s in self.stops:
                i = text.find(s, max(0, self.sent - len(s)))
                if i >= 0 and (cut is None or i < cut):
                    cut = i
            if cut is not None:
                text, self.stopped = text[:cut], True
        self.text = text

    def finish(self) -> None:
        if not self.stopped:
            self.text = self.decode() if self.ids else ""

    def pending(self, *, final: bool) -> str:
        """Text not streamed yet that may be sent now; marks it sent."""
        end = len(self.text)
        if not final and not self.stopped and self.stops:
            # keep back an ending that may grow into a stop string
            end -= max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece
