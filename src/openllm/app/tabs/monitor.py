"""The Monitor tab: a run's state, progress, losses, memory and log (refreshed by the app's timer)."""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ... import rundir
from ...rundir import checkpoint_steps, read_metrics
from .. import jobruns
from ..forms import FormError
from ..monitor import dashboard_commands, loss_figure, memory_usage, progress, tail_log
from ..render import err, msg, run_view
from ..runner import RunStatus
from ..workspace import WorkspaceError
from .shared import Shared

__all__ = ["MonitorTab", "build", "view"]


@dataclass
class MonitorTab:
    run: Any
    html: Any
    plot: Any
    log: Any
    count: Any  # (run, metrics lines, state) last drawn: the plot is redrawn only when it changes
    stop_btn: Any
    banner: Any
    refresh: Any

    @property
    def outputs(self) -> list:
        """What :func:`view` fills in, in its order."""
        return [self.html, self.plot, self.log, self.count, self.stop_btn]


def _log_text(st: RunStatus) -> str:
    if st.log is not None:
        return tail_log(st.log) or "(the log is empty so far)"
    if st.external and st.pid:
        return (
            f"(this run is being trained by a process started outside the app, PID {st.pid}; it writes no "
            "log file the app can read: its progress and losses above come from the run's metrics. Start "
            "it with `openllm train ... > RUN/train.log 2>&1` to see its log here)"
        )
    return "(no log for this run)"


def view(sh: Shared, run: str | None, last_count: Any):
    """The tab's HTML, plot (skipped when nothing changed), log tail, change marker, Stop button."""
    if not run:
        return (
            msg("No run yet. Start one in the Train tab.", "info"),
            gr.skip(),
            "",
            last_count,
            gr.update(interactive=False),
        )
    try:
        if jobruns.is_job_run(sh.ws, run):
            return _job_view(sh, run, last_count)
        st = sh.runner.status(run)
        run_dir = sh.ws.run_dir(run)
    except (WorkspaceError, FormError) as exc:
        return err(exc), gr.skip(), "", last_count, gr.skip()
    metrics = read_metrics(run_dir)
    p = progress(run_dir, {"step": st.step, "max_steps": st.max_steps}, metrics)
    page = run_view(
        run, st, p, len(metrics), checkpoint_steps(run_dir), memory_usage(st.pid), dashboard_commands(run_dir)
    )
    count = (run, len(metrics), st.state)
    fig = loss_figure(metrics, title=f"{run}: loss") if count != last_count else gr.skip()
    stop = gr.update(interactive=st.active and st.state != rundir.STOPPING)
    return page, fig, _log_text(st), count, stop


def _job_view(sh: Shared, run: str, last_count: Any):
    """A run on Hugging Face Jobs: its state from the job's stage and what it pushed, the curve from the metrics
    it pushed to its repository, the log from the Jobs API."""
    jv = jobruns.view(sh.ws, run)
    run_dir = sh.ws.run_dir(run)
    metrics = read_metrics(run_dir)
    p = progress(run_dir, {"step": jv.step, "max_steps": jv.max_steps}, metrics)
    st = RunStatus(run, jv.state, f"job {jv.stage.lower()}", jv.step, jv.max_steps, jv.error, None, None, None, False)
    where = (
        f'<div class="msg-info" id="job-info">Hugging Face Job <a href="{html.escape(jv.url)}" target="_blank">'
        f"{html.escape(jv.job_id)}</a> on <b>{html.escape(jv.flavor)}</b>: {html.escape(jv.stage.lower())}; "
        f"checkpoints and metrics in {html.escape(jv.repo)} (billed per minute while it runs)</div>"
    )
    page = where + run_view(run, st, p, len(metrics), jv.checkpoints, {"ram": "–", "gpu": jv.flavor}, [])
    count = (run, len(metrics), jv.state)
    fig = loss_figure(metrics, title=f"{run}: loss") if count != last_count else gr.skip()
    return page, fig, jv.log or "(no log from the job yet)", count, gr.update(interactive=jv.active)


def build(sh: Shared) -> MonitorTab:
    banner = gr.HTML("", elem_id="monitor-banner")
    with gr.Row():
        # allow_custom_value: the timer's tick can reach the server before Start's new list of runs does, and
        # Gradio would then refuse the run just started; view() checks the name itself
        run = gr.Dropdown(
            sh.run_choices(),
            value=sh.default_run(),
            label="Run",
            elem_id="monitor-run",
            scale=4,
            allow_custom_value=True,
        )
        refresh = gr.Button("Refresh", scale=1, elem_id="monitor-refresh", min_width=90)
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="monitor-stop", min_width=90, interactive=False)
    page = gr.HTML("", elem_id="monitor-html")
    plot = gr.Plot(label="Loss", show_label=False, elem_id="loss-plot", format="png")
    log = gr.Textbox(
        label="Log (last lines)", lines=12, max_lines=12, interactive=False, elem_id="log-tail", autoscroll=True
    )
    with gr.Accordion("Whole log", open=False, elem_id="log-whole"):
        with gr.Row():
            show_full = gr.Button("Show the whole log", elem_id="log-show", size="sm")
            download = gr.DownloadButton("Download the log", elem_id="log-download", size="sm")
        full = gr.Textbox(label="Whole log", lines=20, max_lines=40, interactive=False, elem_id="log-full")
    count = gr.State(None)

    def whole_log(name):
        if not name:
            return "", None
        if jobruns.is_job_run(sh.ws, name):
            return jobruns.view(sh.ws, name).log, None
        st = sh.runner.status(name)
        if st.log is None:
            return _log_text(st), None
        text = tail_log(st.log, lines=1_000_000, max_bytes=20_000_000)
        # offered from downloads/, the one workspace folder the server may serve (a job's folder also holds
        # the prepared corpus); a copy, so the download is the log as it was when offered
        copy = sh.ws.downloads_dir / f"log-{name}.txt"
        try:
            shutil.copyfile(st.log, copy)
        except OSError:
            return text, None
        return text, str(copy)

    show_full.click(whole_log, run, [full, download])
    run.change(lambda r: whole_log(r)[1], run, download, show_progress="hidden")
    tab = MonitorTab(run, page, plot, log, count, stop, banner, refresh)
    run.change(lambda r: view(sh, r, None), run, tab.outputs, show_progress="hidden")
    return tab
