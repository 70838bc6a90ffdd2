"""The Evaluate tab: a run's latest checkpoint on its validation split and on standard or uploaded tasks."""

from __future__ import annotations

import gradio as gr

from .. import access
from .. import render as R
from .. import tools as T
from .. import zerogpu as Z
from .shared import Shared

__all__ = ["build"]


def build(sh: Shared) -> list:
    """Returns its run pickers (kept by the app-wide refresh)."""
    with gr.Row():
        run = gr.Dropdown(
            sh.run_choices(),
            value=sh.default_run(),
            label="Run",
            elem_id="eval-run",
            scale=3,
            info="its latest checkpoint, on the run's validation split",
        )
        limit = gr.Number(
            0,
            label="Limit",
            elem_id="eval-limit",
            precision=0,
            scale=1,
            minimum=0,
            info="at most this many task items; 0 = all",
        )
    with gr.Row():
        tasks = gr.CheckboxGroup(
            ["lambada", "hellaswag"],
            label="Standard tasks",
            elem_id="eval-tasks",
            info="need their data in the local cache (no download here)",
        )
        task_file = gr.File(
            label="Or a task file (.jsonl)", file_types=[".jsonl"], type="filepath", elem_id="eval-task-file"
        )
    btn = gr.Button("Evaluate", variant="primary", elem_id="eval-btn")
    msg = gr.HTML("", elem_id="eval-msg")
    report = gr.Markdown("", elem_id="eval-report")

    def on_evaluate(run_, limit_, tasks_, file_):
        try:
            names = list(tasks_ or [])
            limit = int(limit_) if limit_ else None
            seconds = Z.evaluation_seconds(len(names) + bool(file_), limit)  # the GPU call ZeroGPU is asked for
            results = Z.gpu_call(seconds, T.evaluate_run, sh.ws, run_, limit=limit, task_file=file_, tasks=names)
        except Exception as exc:
            return R.err(exc), gr.skip()
        from ...evaluate import markdown

        done = R.msg(f"Evaluated {run_}; saved with the run (evaluation.json, read by its model card).", "ok")
        return done, markdown(results)

    btn.click(access.writer(on_evaluate), [run, limit, tasks, task_file], [msg, report])
    run.change(lambda r: T.evaluation_markdown(sh.ws, r), run, report, show_progress="hidden")
    return [run]
