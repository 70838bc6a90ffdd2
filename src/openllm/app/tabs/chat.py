"""The Chat tab's page: a conversation with a fine-tuned (or base) model through the chat template. The prompt
and the streamed reply come from :mod:`openllm.app.chat`."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .. import chat as C
from .. import models as M
from .. import render as R
from .. import zerogpu as Z
from ..forms import FormError
from .shared import Shared, offer, rememberer

__all__ = ["ChatTab", "build"]


@dataclass
class ChatTab:
    model: Any
    keep: Callable[[Any, Any], dict]  # (current pick, remembered picks) -> the picker's update; also on page load


def _note(sh: Shared, choice: str | None) -> str:
    """Whether the chosen model was fine-tuned on conversations (its replies follow the chat template) or is a
    base model (it continues text: its replies will not)."""
    if not choice:
        return R.msg("Choose a model. Fine-tune a finished run in the Models tab to get one that chats.", "info")
    try:
        source = M.resolve_model(sh.ws, choice)
    except Exception as exc:
        return R.err(exc)
    name = choice.split(":", 1)[-1]
    if not Path(source).is_dir():
        return R.msg(f"{name}: a hub version; downloaded when you send the first message.", "info")
    summary = C.finetune_summary(source)
    if summary:
        return (
            f'<div class="msg-ok" id="chat-kind" data-kind="finetuned">{html.escape(name)}: '
            f"{html.escape(summary)}. Its replies follow the chat template.</div>"
        )
    return (
        f'<div class="msg-warn" id="chat-kind" data-kind="base">{html.escape(name)} is a base model (not '
        "fine-tuned): it continues text, so its replies will not follow the chat template (they run on "
        "until the token limit). Fine-tune it in the Models tab first.</div>"
    )


def build(sh: Shared, tab: Any, picks: Any) -> ChatTab:
    choices = C.chat_choices(sh.ws)
    with gr.Row():
        model = gr.Dropdown(
            choices,
            value=choices[0][1] if choices else None,
            label="Model",
            elem_id="chat-model",
            scale=4,
            info="fine-tuned runs first, then base runs and downloaded models",
        )
        refresh = gr.Button("Refresh list", scale=1, elem_id="chat-refresh")
    note = gr.HTML(_note(sh, choices[0][1] if choices else None), elem_id="chat-note")
    system = gr.Textbox(
        "",
        label="System prompt",
        lines=2,
        elem_id="chat-system",
        placeholder="e.g. Answer with the verse only.",
        info="the conversation's first message",
    )
    box = gr.Chatbot([], label="Conversation", elem_id="chat-box", height=360, feedback_options=None)
    with gr.Row():
        text = gr.Textbox(
            "",
            label="Message",
            elem_id="chat-input",
            scale=5,
            lines=1,
            placeholder="What does Genesis 1:3 say?",
            submit_btn=False,
        )
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1, min_width=90)
        clear = gr.Button("Clear", elem_id="chat-clear", scale=1, min_width=90)
    with gr.Accordion("Sampling, and what the model sees", open=False, elem_id="chat-advanced"):
        with gr.Row():
            max_new = gr.Number(
                96,
                label="Max new tokens",
                elem_id="chat-max-new",
                precision=0,
                info="a reply ends at the end of its turn, or here",
            )
            temp = gr.Slider(
                0.0, 2.0, value=0.7, step=0.05, label="Temperature", elem_id="chat-temp", info="0 = greedy"
            )
            seed = gr.Textbox("", label="Seed", elem_id="chat-seed", info="empty = random", placeholder="random")
        rendered = gr.Textbox(
            "",
            label="The last prompt, rendered with the chat template",
            lines=6,
            interactive=False,
            elem_id="chat-rendered",
        )
    msg = gr.HTML("", elem_id="chat-msg")

    def on_send(choice, system_, history, text_, max_new_, temp_, seed_):
        history = list(history or [])
        try:
            if not (text_ or "").strip():
                raise FormError("Message", "type a message first")
            seed_v = int(seed_) if str(seed_ or "").strip() else None
            source = M.resolve_model(sh.ws, choice)
            history = history + [{"role": "user", "content": text_.strip()}]
            yield history, "", gr.skip(), R.msg("Loading the model ...", "info")
            loaded = sh.cache.get(source)
            prompt = C.chat_prompt(loaded, history, system_ or "", int(max_new_ or 96))
            dropped = len([m for m in history if m["role"] in ("user", "assistant")]) - len(
                [m for m in prompt.messages if m["role"] != "system"]
            )
            history = history + [{"role": "assistant", "content": ""}]
            yield history, "", prompt.text, R.msg("Replying ...", "info")
            ended = False
            seconds = Z.generation_seconds(prompt.max_new_tokens)  # on ZeroGPU, the GPU call the reply asks for
            for reply, ended in Z.gpu_stream(  # noqa: B007 (read after the loop)
                seconds, C.stream_reply, loaded, prompt, temperature=float(temp_), seed=seed_v
            ):
                history[-1] = {"role": "assistant", "content": reply}
                yield history, gr.skip(), gr.skip(), gr.skip()
            how = (
                "ended its turn" if ended else f"stopped at {prompt.max_new_tokens} new tokens without ending its turn"
            )
            cut = f" The {dropped} oldest messages did not fit the context and were left out." if dropped else ""
            yield history, gr.skip(), gr.skip(), R.msg(f"The reply {how}.{cut}", "ok" if ended else "warn")
        except Exception as exc:
            if history and history[-1]["role"] == "user":
                history = history[:-1]
            yield history, text_, gr.skip(), R.err(exc)

    inputs = [model, system, box, text, max_new, temp, seed]
    send.click(on_send, inputs, [box, text, rendered, msg])
    text.submit(on_send, inputs, [box, text, rendered, msg])
    clear.click(lambda: ([], "", ""), None, [box, rendered, msg])
    model.change(lambda c: _note(sh, c), model, note, show_progress="hidden")

    def keep(current, saved):
        saved = saved if isinstance(saved, dict) else {}
        opts = C.chat_choices(sh.ws)
        values = [v for _, v in opts]
        # the user's own pick while it exists; a default is replaced by the first fine-tuned model
        value = saved.get("chat_model")
        if value not in values:
            value = values[0] if values else None
        return offer(opts, current, value)

    refresh.click(keep, [model, picks], model)
    tab.select(keep, [model, picks], model, show_progress="hidden")
    model.input(rememberer("chat_model"), [picks, model], picks)
    return ChatTab(model, keep)
