"""The Compare tab: runs' loss curves on one plot, and one run's learning rate and gradient norm."""

from __future__ import annotations

from typing import Any

import gradio as gr

from .. import tools as T
from .shared import Shared

__all__ = ["build"]


def build(sh: Shared, tab: Any) -> list:
    names = sh.run_choices()
    runs = gr.Dropdown(
        names,
        value=names[:2],
        multiselect=True,
        label="Runs",
        elem_id="compare-runs",
        info="their loss curves on one plot",
    )
    loss_plot = gr.Plot(show_label=False, elem_id="compare-plot", format="png")
    one = gr.Dropdown(
        names,
        value=names[0] if names else None,
        label="Run",
        elem_id="compare-run",
        info="its learning rate and gradient norm",
    )
    curves = gr.Plot(show_label=False, elem_id="curves-plot", format="png")
    runs.change(lambda r: T.compare_figure(sh.ws, r or []), runs, loss_plot, show_progress="hidden")
    one.change(lambda r: T.curves_figure(sh.ws, r), one, curves, show_progress="hidden")
    tab.select(
        lambda r, o: (
            T.compare_figure(sh.ws, [x for x in r or [] if x in sh.run_choices()]),
            T.curves_figure(sh.ws, o if o in sh.run_choices() else None),
        ),
        [runs, one],
        [loss_plot, curves],
        show_progress="hidden",
    )
    return [runs, one]
