"""The Generate tab: a completion of a prompt by a run, a downloaded model or a hub version, streamed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from .. import models as M
from .. import zerogpu as Z
from ..forms import parse_sampling_form
from ..render import err, msg
from .shared import Shared, remember

__all__ = ["GenerateTab", "build"]


@dataclass
class GenerateTab:
    model: Any


def build(sh: Shared, picks: Any) -> GenerateTab:
    with gr.Row():
        model = gr.Dropdown(
            sh.gen_choices(),
            label="Model",
            elem_id="gen-model",
            allow_custom_value=True,
            info="a run with a checkpoint, a downloaded model, or owner/name@version",
            scale=4,
        )
        refresh = gr.Button("Refresh list", scale=1, elem_id="gen-refresh")
    prompt = gr.Textbox(label="Prompt", lines=3, value="In the beginning", elem_id="gen-prompt")
    with gr.Row():
        max_new = gr.Number(64, label="Max new tokens", elem_id="gen-max-new", info="at most this many tokens")
        temp = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature", elem_id="gen-temp", info="0 = greedy")
        top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Top-p", elem_id="gen-top-p", info="1 = off")
    with gr.Row():
        top_k = gr.Number(50, label="Top-k", elem_id="gen-top-k", info="0 = off")
        rep = gr.Number(1.0, label="Repetition penalty", elem_id="gen-rep", info="1 = off")
        seed = gr.Textbox("", label="Seed", elem_id="gen-seed", info="empty = random", placeholder="random")
    btn = gr.Button("Generate", variant="primary", elem_id="gen-btn")
    gen_msg = gr.HTML("", elem_id="gen-msg")
    out = gr.Textbox(label="Output", lines=8, interactive=False, elem_id="gen-output")

    def on_generate(choice, prompt_, max_new_, temp_, top_k_, top_p_, rep_, seed_):
        try:
            req = parse_sampling_form(
                dict(
                    prompt=prompt_,
                    max_new_tokens=max_new_,
                    temperature=temp_,
                    top_k=top_k_,
                    top_p=top_p_,
                    repetition_penalty=rep_,
                    seed=seed_,
                )
            )
            source = M.resolve_model(sh.ws, choice)
            yield gr.skip(), msg(f"Loading {choice.split(':', 1)[-1]} ...", "info")
            loaded = sh.cache.get(source)
            yield "", msg("Generating ...", "info")
            text = ""
            # on ZeroGPU inside a GPU call as long as the reply needs (elsewhere a plain call)
            for text in Z.gpu_stream(Z.generation_seconds(req.params.max_new_tokens), M.stream_completion, loaded, req):
                yield text, gr.skip()
            step = f" at step {loaded.step:,}" if getattr(loaded, "step", None) else ""
            yield text, msg(f"Done: {choice.split(':', 1)[-1]}{step}.", "ok")
        except Exception as exc:
            yield gr.skip(), err(exc)

    btn.click(on_generate, [model, prompt, max_new, temp, top_k, top_p, rep, seed], [out, gen_msg])
    refresh.click(lambda g: gr.update(choices=sh.gen_choices(), value=g), model, model)
    model.input(lambda p, g: remember(p, "gen_model", g), [picks, model], picks)
    return GenerateTab(model)
