"""The Gradio layout and its wiring. All logic lives in the small modules beside this one (forms, runner,
monitor, models, corpus_check, workspace, help); this file only connects them to components.

:func:`build_app` builds one tab per function (``_train_tab``, ``_monitor_tab``, ...), each returning the
components other tabs need; :class:`Shared` holds what every tab uses (the workspace, the runner, the model
cache, the lists the pickers offer) and the pickers' memory: a choice a user made is kept across tab switches,
refreshes and reloads (in the browser's local storage), and only replaced when it no longer exists.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, always

import gradio as gr

from .. import rundir
from ..config import preset_names
from ..errors import is_user_error
from ..fsio import write_text_atomic
from ..rundir import checkpoint_steps, read_metrics
from . import chat as C
from . import models as M
from . import tools as T
from .corpus_check import check_corpus
from .estimate import estimate_time
from .forms import (
    CORPUS_EMBEDDED,
    CORPUS_UPLOAD,
    CORPUS_WORKSPACE,
    OPTIMIZERS,
    SCHEDULES,
    FormError,
    config_fields,
    parse_push_form,
    parse_repo,
    parse_sampling_form,
    parse_train_form,
    preset_fields,
)
from .help import load_help
from .monitor import format_progress, loss_figure, memory_usage, progress, tail_log
from .runner import Runner, RunnerError, RunStatus
from .workspace import Workspace, WorkspaceError, default_workspace

__all__ = ["build_app", "CSS", "THEME", "Shared"]

CSS = """
.gradio-container {max-width: 1180px !important; width: 100% !important; margin: 0 auto !important;}
#app-header h1 {margin-bottom: 0.1em;}
#app-header p {color: var(--body-text-color-subdued); margin-top: 0;}
.msg-ok, .msg-err, .msg-info, .msg-warn {padding: 10px 14px; border-radius: 8px; margin: 4px 0; font-size: 0.95em;}
.msg-ok {background: #ecfdf5; border: 1px solid #a7f3d0; color: #065f46;}
.msg-err {background: #fef2f2; border: 1px solid #fecaca; color: #991b1b;}
.msg-info {background: #eff6ff; border: 1px solid #bfdbfe; color: #1e3a8a;}
.msg-warn {background: #fffbeb; border: 1px solid #fde68a; color: #92400e;}
.stats {display: grid; grid-template-columns: repeat(6, minmax(0, 1fr)); gap: 10px; margin: 6px 0;}
@media (max-width: 800px) {.stats {grid-template-columns: repeat(2, minmax(0, 1fr));}}
.mem {font-size: 0.88em; color: var(--body-text-color-subdued); margin: 4px 2px 0;}
.mem b {color: var(--body-text-color); font-weight: 600;}
.stat {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 14px;
       background: var(--block-background-fill);}
.stat .label {font-size: 0.78em; text-transform: uppercase; letter-spacing: 0.04em;
              color: var(--body-text-color-subdued);}
.stat .value {font-size: 1.25em; font-weight: 600; margin-top: 2px; font-variant-numeric: tabular-nums;}
.bar {height: 10px; border-radius: 5px; background: var(--border-color-primary); overflow: hidden; margin: 8px 0 2px;}
.bar > div {height: 100%; background: #2563eb; transition: width 0.6s;}
.state {display: inline-block; padding: 2px 10px; border-radius: 999px; font-weight: 600; font-size: 0.85em;}
.state-queued, .state-preparing, .state-training {background: #dbeafe; color: #1e40af;}
.state-stopping {background: #fef3c7; color: #92400e;}
.state-finished {background: #dcfce7; color: #166534;}
.state-stopped {background: #fef9c3; color: #854d0e;}
.state-failed, .state-diverged {background: #fee2e2; color: #991b1b;}
.state-new {background: #f3f4f6; color: #374151;}
.corpus-check ul {margin: 4px 0 4px 18px;}
.corpus-check pre {white-space: pre-wrap; font-size: 0.85em; max-height: 9em; overflow: auto; margin: 4px 0;
                   background: var(--background-fill-secondary); padding: 6px 8px; border-radius: 6px;}
#log-tail textarea, #log-full textarea {font-family: ui-monospace, SFMono-Regular, Menlo, monospace !important;
                                        font-size: 12px !important;}
#stop-btn, #monitor-stop {color: #b91c1c;}
#help-text table {border-collapse: collapse; margin: 8px 0;}
#help-text th, #help-text td {border: 1px solid var(--border-color-primary) !important; padding: 5px 10px !important;}
#help-text th {background: var(--background-fill-secondary);}
/* tables scroll sideways instead of wrapping their headers one letter per line */
#runs-table, #hub-table {overflow-x: auto;}
#runs-table table, #hub-table table {min-width: 560px;}
#runs-table th, #runs-table td, #hub-table th, #hub-table td {white-space: nowrap;}
/* plots: the figure's own size on a wide screen, the screen's width on a phone (its fonts are sized for that) */
#loss-plot img, #compare-plot img, #curves-plot img {width: 100%; max-width: 640px; height: auto;}
footer {display: none !important;}
"""


def _theme():
    # system fonts only: the default themes fetch Google Fonts, and the app contacts no remote host
    return gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


THEME = _theme()


def _msg(text: str, kind: str = "info", elem_id: str = "") -> str:
    ident = f' id="{elem_id}"' if elem_id else ""
    return f'<div class="msg-{kind}"{ident}>{html.escape(text)}</div>'


def _err(exc: BaseException) -> str:
    if is_user_error(exc) or isinstance(exc, ValueError):
        return _msg(str(exc), "err")
    return _msg(f"Unexpected error: {type(exc).__name__}: {exc}", "err")


def _date(iso: str) -> str:
    """'2026-11-28T10:24:51+00:00' -> '2026-11-28 10:24 UTC' (as given when it does not parse)."""
    from datetime import datetime, timezone

    try:
        d = datetime.fromisoformat(iso).astimezone(timezone.utc)
    except (TypeError, ValueError):
        return iso
    return d.strftime("%Y-%m-%d %H:%M UTC")


def _state_badge(state: str) -> str:
    cls = state if state in rundir.STATES else "new"
    label = "not started" if state == "new" else state
    return (
        f'<span class="state state-{cls}" id="run-state" data-state="{html.escape(state)}">{html.escape(label)}</span>'
    )


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


# --- what every tab shares ------------------------------------------------------------------------------------

PICKERS = ("monitor_run", "models_run", "push_step", "gen_model", "chat_model")


@dataclass
class Shared:
    """The workspace, the runner and the model cache, plus the lists the pickers offer."""

    ws: Workspace
    runner: Runner
    cache: M.ModelCache = field(default_factory=M.ModelCache)

    def run_choices(self) -> list[str]:
        return self.ws.run_names()

    def default_run(self) -> str | None:
        active = self.runner.active()
        if active:
            return active[0]
        names = self.ws.run_names()
        return names[0] if names else None

    def keep_run(self, current: str | None) -> str | None:
        """The user's run while it exists, else the active or newest run."""
        return current if current and current in self.run_choices() else self.default_run()

    def hub_refs(self) -> list[str]:
        try:
            return [f"{v['repo']}@{v['version']}" for v in M.hub_versions()]
        except Exception:
            return []

    def gen_choices(self) -> list[tuple[str, str]]:
        return M.model_choices(self.ws, self.hub_refs())

    def checkpoint_choices(self, run: str | None) -> list[tuple[str, str]]:
        if not run or run not in self.run_choices():
            return []
        run_dir = self.ws.run_dir(run)
        vals = {
            int(r["step"]): r["val_loss"] for r in read_metrics(run_dir) if isinstance(r.get("val_loss"), (int, float))
        }
        best = (rundir.read_best(run_dir) or {}).get("step")
        out = []
        for s in reversed(checkpoint_steps(run_dir)):
            label = f"step {s:,}" + (f" · val {vals[s]:.3f}" if s in vals else "") + (" · best" if s == best else "")
            out.append((label, str(s)))
        return out


def _offer(choices: list, current: Any, value: Any) -> dict:
    """A picker's update: new ``choices``; its value only when it must change (a value sent back unchanged
    would undo a choice the user makes while the refresh is on its way)."""
    if value == current:
        return gr.update(choices=choices)
    return gr.update(choices=choices, value=value)


def _remember(picks: dict | None, key: str, value: Any) -> dict:
    picks = dict(picks or {})
    picks[key] = value
    return picks


def _wrap_tabs() -> dict:
    import inspect

    return (
        {"overflow_behavior": "wrap"} if "overflow_behavior" in inspect.signature(gr.Tabs.__init__).parameters else {}
    )


def _rememberer(key: str):
    def remember(picks, value):
        return _remember(picks, key, value)

    return remember


# --- Train ------------------------------------------------------------------------------------------------------


@dataclass
class TrainTab:
    start_btn: Any
    stop_btn: Any
    msg: Any
    run_name: Any


def _corpus_report(chk) -> str:
    if chk is None:
        return ""
    rows = []
    if chk.size_bytes:
        rows.append(f"<li>size: {_size(chk.size_bytes)} in {chk.files} file{'s' if chk.files != 1 else ''}</li>")
    if chk.documents:
        dropped = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in chk.dropped.items())
        rows.append(
            f"<li>{chk.documents:,} documents after cleaning ({chk.characters:,} characters)"
            + (f"; dropped {html.escape(dropped)}" if dropped else "")
            + "</li>"
        )
    if chk.fields:
        rows.append(
            f"<li>text fields: {html.escape(', '.join(chk.fields))}; training reads "
            f"<b>{html.escape(chk.field or 'text')}</b></li>"
        )
    body = f"<ul>{''.join(rows)}</ul>" if rows else ""
    if chk.preview:
        body += "<div>first documents:</div>" + "".join(f"<pre>{html.escape(t)}</pre>" for t in chk.preview)
    if chk.ok:
        head = '<div class="msg-ok" id="corpus-ok">The corpus is ready to train on.</div>'
    else:
        head = f'<div class="msg-err" id="corpus-problem">Corpus: {html.escape(chk.problem or "not usable")}</div>'
    return f'<div class="corpus-check" data-ok="{str(chk.ok).lower()}">{head}{body}</div>'


def _config_runs(sh: Shared) -> list[str]:
    """Runs whose config can be loaded into the form."""
    return [n for n in sh.run_choices() if (sh.ws.run_dir(n) / rundir.CONFIG).is_file()]


def _config_summary(cfg, est=None) -> str:
    """Parameters, tokens per step and the memory the weights, gradients and AdamW state take (fp32: 16
    bytes per parameter; activations come on top and grow with batch size and context), and the time it
    takes at a speed an earlier run measured on this machine (:func:`estimate.estimate_time`)."""
    from ..model import param_report

    t = cfg.train
    seq = t.seq_len or cfg.model.max_seq_len
    rep = param_report(cfg.model, seq)
    tokens = t.micro_batch_size * t.grad_accum_steps * seq
    state_mib = rep["params"] * 16 / 2**20
    return (
        f'<div class="msg-info" id="config-facts">{rep["params"]:,} parameters '
        f"({rep['params_non_embedding']:,} without embeddings) · {tokens:,} tokens per step "
        f"({t.micro_batch_size} × {t.grad_accum_steps} × {seq}) · {t.max_steps:,} steps = "
        f"{tokens * t.max_steps:,} tokens · memory for weights, gradients and AdamW state: about "
        f"{state_mib:,.0f} MiB in fp32, plus activations</div>"
        + (
            f'<div class="msg-{"info" if est.tokens_per_s else "warn"}" id="config-time" '
            f'data-seconds="{est.seconds or ""}">Time: {html.escape(est.describe())}</div>'
            if est
            else ""
        )
    )


def _train_tab(sh: Shared, presets: list[str], first: str) -> tuple[TrainTab, dict]:
    defaults = preset_fields(first)
    with gr.Row():
        run_name = gr.Textbox(
            label="Run name",
            value="run-1",
            elem_id="run-name",
            scale=2,
            info="the folder under runs/: letters, digits, '.', '_', '-'",
        )
        preset = gr.Dropdown(
            presets, value=first, label="Preset", elem_id="preset", scale=1, info="fills in every field below"
        )
        size = gr.Dropdown(
            presets,
            value=defaults["model_size"],
            label="Model size",
            elem_id="model-size",
            scale=1,
            info="layers, width, heads, context",
        )
        vocab = gr.Number(
            defaults["vocab_size"],
            label="Vocabulary size",
            elem_id="vocab-size",
            scale=1,
            info="tokenizer pieces (at least 324)",
        )
    with gr.Row():
        lr = gr.Number(defaults["lr"], label="Learning rate", elem_id="lr", info="peak, after warmup")
        batch = gr.Number(
            defaults["batch_size"], label="Batch size", elem_id="batch-size", info="sequences per micro-batch"
        )
        steps = gr.Number(defaults["max_steps"], label="Steps", elem_id="steps", info="optimizer steps")
    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
        with gr.Row():
            accum = gr.Number(
                defaults["grad_accum"],
                label="Gradient accumulation",
                elem_id="grad-accum",
                info="micro-batches per step",
            )
            opt = gr.Dropdown(
                list(OPTIMIZERS),
                value=defaults["optimizer"],
                label="Optimizer",
                elem_id="optimizer",
                info="decoupled weight decay",
            )
            sched = gr.Dropdown(
                list(SCHEDULES),
                value=defaults["schedule"],
                label="Scheduler",
                elem_id="scheduler",
                info="learning-rate schedule after warmup",
            )
            wd = gr.Number(defaults["weight_decay"], label="Weight decay", elem_id="weight-decay", info="0 = none")
        with gr.Row():
            clip = gr.Number(
                defaults["grad_clip"], label="Gradient clipping", elem_id="grad-clip", info="max gradient norm; 0 = off"
            )
            warmup = gr.Number(defaults["warmup_steps"], label="Warmup steps", elem_id="warmup", info="linear warmup")
            eval_every = gr.Number(
                defaults["eval_every"],
                label="Evaluate every",
                elem_id="eval-every",
                info="steps between val-loss points",
            )
            save_every = gr.Number(
                defaults["save_every"], label="Save every", elem_id="save-every", info="steps between checkpoints"
            )
    with gr.Group():
        corpus_kind = gr.Radio(
            [CORPUS_EMBEDDED, CORPUS_WORKSPACE, CORPUS_UPLOAD],
            value=CORPUS_EMBEDDED,
            label="Corpus",
            elem_id="corpus-kind",
        )
        corpus_path = gr.Textbox(
            label="Path inside the workspace",
            visible=False,
            elem_id="corpus-path",
            placeholder="corpora/my_text.txt",
            info=f"relative to the workspace {sh.ws.root}",
        )
        upload = gr.File(
            label="Upload a .txt, .jsonl or .parquet file",
            visible=False,
            file_types=[".txt", ".jsonl", ".json", ".parquet", ".md"],
            type="filepath",
            elem_id="corpus-upload",
        )
        text_field = gr.Dropdown(
            [],
            value=None,
            label="Text field",
            visible=False,
            elem_id="text-field",
            allow_custom_value=True,
            info="the field of each record that holds its text",
        )
        corpus_html = gr.HTML("", elem_id="corpus-check")
    with gr.Accordion("The config this run will use: see it, save it, load one", open=False, elem_id="config-box"):
        with gr.Row():
            from_run = gr.Dropdown(
                _config_runs(sh),
                value=None,
                label="Start from the settings of an earlier run",
                elem_id="config-from-run",
                scale=2,
                min_width=240,
                info="fills in the form with that run's config",
            )
            load_file = gr.File(
                label="Load a config file (.json)",
                file_types=[".json"],
                type="filepath",
                elem_id="config-load",
                scale=2,
                min_width=240,
            )
        config_msg = gr.HTML("", elem_id="config-msg")
        with gr.Row():
            config_btn = gr.Button("Show the config", size="sm", elem_id="config-btn")
            save_btn = gr.DownloadButton("Save the config file", size="sm", elem_id="config-save", visible=False)
        config_summary = gr.HTML("", elem_id="config-summary")
        config_json = gr.Code("", language="json", label="config.json", elem_id="config-json", interactive=False)
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="start-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
    msg = gr.HTML("", elem_id="train-msg")

    form = [size, vocab, lr, batch, steps, accum, opt, sched, wd, clip, warmup, eval_every, save_every]

    def on_preset(name):
        try:
            f = preset_fields(name)
        except Exception as exc:
            return [gr.skip()] * len(form) + [_err(exc)]
        return [
            f["model_size"],
            f["vocab_size"],
            f["lr"],
            f["batch_size"],
            f["max_steps"],
            f["grad_accum"],
            f["optimizer"],
            f["schedule"],
            f["weight_decay"],
            f["grad_clip"],
            f["warmup_steps"],
            f["eval_every"],
            f["save_every"],
            _msg(f"Loaded preset {name!r}.", "info"),
        ]

    def corpus_file(kind, path, up) -> tuple[Path | None, str | None]:
        """The file or folder the chosen corpus is, or (None, why not)."""
        if kind == CORPUS_EMBEDDED:
            return None, None
        if kind == CORPUS_UPLOAD:
            return (Path(up), None) if up else (None, "upload a file first")
        try:
            return sh.ws.resolve(path or "", must_exist=True), None
        except WorkspaceError as exc:
            return None, str(exc)

    def check(kind, path, up, fld):
        """The corpus report and the field picker for what is chosen now."""
        where, why = corpus_file(kind, path, up)
        if where is None:
            if why is None:
                return "", gr.update(visible=False)
            return (
                f'<div class="corpus-check" data-ok="false"><div class="msg-err" id="corpus-problem">'
                f"Corpus: {html.escape(why)}</div></div>"
            ), gr.update(visible=False)
        chk = check_corpus(where, fld or None)
        picker = gr.update(visible=bool(chk.fields), choices=chk.fields, value=chk.field)
        return _corpus_report(chk), picker

    def on_corpus_kind(kind, path, up, fld):
        report, picker = check(kind, path, up, fld)
        return gr.update(visible=kind == CORPUS_WORKSPACE), gr.update(visible=kind == CORPUS_UPLOAD), report, picker

    def on_start(run, preset_, *rest):
        values = dict(
            zip(
                [
                    "model_size",
                    "vocab_size",
                    "lr",
                    "batch_size",
                    "max_steps",
                    "grad_accum",
                    "optimizer",
                    "schedule",
                    "weight_decay",
                    "grad_clip",
                    "warmup_steps",
                    "eval_every",
                    "save_every",
                    "corpus_kind",
                    "corpus_path",
                    "upload",
                    "text_field",
                ],
                rest,
            )
        )
        values.update(run_name=run, preset=preset_)
        stay = gr.skip()
        try:
            req = parse_train_form(values)
            where, why = corpus_file(values["corpus_kind"], values["corpus_path"], values["upload"])
            if why is not None:
                raise FormError("Corpus", why)
            if where is not None:  # nothing starts on a corpus that would fail: the same check as when chosen
                chk = check_corpus(where, values.get("text_field") or None)
                if not chk.ok:
                    raise FormError("Corpus", chk.problem or "not usable")
                req.field = chk.field or "text"
            name = sh.runner.start(req)
        except Exception as exc:
            return _err(exc), stay, stay, stay
        started = _msg(f"Started run {name!r}. Following it in the Monitor tab.", "ok")
        return (started, gr.update(choices=sh.run_choices(), value=name), gr.Tabs(selected="monitor"), started)

    def on_config(run, preset_, *rest):
        values = dict(
            zip(
                [
                    "model_size",
                    "vocab_size",
                    "lr",
                    "batch_size",
                    "max_steps",
                    "grad_accum",
                    "optimizer",
                    "schedule",
                    "weight_decay",
                    "grad_clip",
                    "warmup_steps",
                    "eval_every",
                    "save_every",
                    "corpus_kind",
                    "corpus_path",
                    "upload",
                    "text_field",
                ],
                rest,
            )
        )
        values.update(run_name=run or "preview", preset=preset_)
        try:
            cfg = parse_train_form(values).config
        except Exception as exc:
            return _err(exc), "", gr.update(visible=False)
        out = sh.ws.downloads_dir / f"config-{cfg.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, cfg.to_json() + "\n")
        return _config_summary(cfg, estimate_time(sh.ws, cfg)), cfg.to_json(), gr.update(value=str(out), visible=True)

    def fill(source, label):
        """The form filled in from a saved config, with what it could not hold named."""
        try:
            f, lost = config_fields(source)
        except Exception as exc:
            return [gr.skip()] * (len(form) + 1) + [_err(exc)]
        note = (
            " These settings are not in the form and take the preset's values: " + "; ".join(lost) + "."
            if lost
            else " Every setting of it is in the form."
        )
        values = [
            f["preset"],
            f["model_size"],
            f["vocab_size"],
            f["lr"],
            f["batch_size"],
            f["max_steps"],
            f["grad_accum"],
            f["optimizer"],
            f["schedule"],
            f["weight_decay"],
            f["grad_clip"],
            f["warmup_steps"],
            f["eval_every"],
            f["save_every"],
        ]
        return values + [
            _msg(
                f"Loaded the settings of {label}.{note} Check the corpus and the run name, then Start.",
                "warn" if lost else "ok",
            )
        ]

    def on_from_run(name):
        if not name:
            return [gr.skip()] * (len(form) + 2)
        return fill(sh.ws.run_dir(name) / rundir.CONFIG, f"run {name}")

    def on_load_file(path):
        if not path:
            return [gr.skip()] * (len(form) + 2)
        return fill(path, Path(path).name)

    def on_stop():
        try:
            name = sh.runner.stop()
        except RunnerError as exc:
            return _err(exc)
        return _msg(f"Stopping {name!r}: the trainer saves a checkpoint, then exits.", "info")

    # input, not change: a preset filled in from a loaded config must not reset the fields it came with
    preset.input(on_preset, preset, [*form, msg])
    from_run.input(on_from_run, from_run, [preset, *form, config_msg])
    load_file.upload(on_load_file, load_file, [preset, *form, config_msg])
    from_run.focus(lambda: gr.update(choices=_config_runs(sh)), None, from_run)
    corpus_inputs = [corpus_kind, corpus_path, upload, text_field]
    corpus_kind.change(on_corpus_kind, corpus_inputs, [corpus_path, upload, corpus_html, text_field])
    corpus_path.blur(check, corpus_inputs, [corpus_html, text_field])
    corpus_path.submit(check, corpus_inputs, [corpus_html, text_field])
    upload.change(check, corpus_inputs, [corpus_html, text_field])
    text_field.input(check, corpus_inputs, [corpus_html, text_field])
    start_inputs = [run_name, preset, *form, corpus_kind, corpus_path, upload, text_field]
    config_btn.click(on_config, start_inputs, [config_summary, config_json, save_btn])
    return TrainTab(start_btn, stop_btn, msg, run_name), {"start": (on_start, start_inputs), "stop": on_stop}


# --- Monitor ---------------------------------------------------------------------------------------------------


@dataclass
class MonitorTab:
    run: Any
    html: Any
    plot: Any
    log: Any
    count: Any
    stop_btn: Any
    banner: Any
    refresh: Any

    @property
    def outputs(self) -> list:
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


def monitor_view(sh: Shared, run: str | None, last_count: Any):
    """The Monitor tab's HTML, plot (skipped when nothing changed), log tail, change marker, Stop button."""
    if not run:
        return (
            _msg("No run yet. Start one in the Train tab.", "info"),
            gr.skip(),
            "",
            last_count,
            gr.update(interactive=False),
        )
    try:
        st = sh.runner.status(run)
        run_dir = sh.ws.run_dir(run)
    except (WorkspaceError, FormError) as exc:
        return _err(exc), gr.skip(), "", last_count, gr.skip()
    metrics = read_metrics(run_dir)
    p = progress(run_dir, {"step": st.step, "max_steps": st.max_steps}, metrics)
    f = format_progress(p)
    mem = memory_usage(st.pid)
    live = st.state in (rundir.PREPARING, rundir.TRAINING, rundir.STOPPING)
    phase = f" — {html.escape(st.phase)}" if st.phase and st.state == rundir.PREPARING else ""
    who = ""
    if st.holder is not None:
        who = (
            f' · <span id="run-holder">PID {st.pid}' + (" (started outside the app)" if st.external else "") + "</span>"
        )
    error = f'<div class="msg-err" id="run-error">{html.escape(st.error)}</div>' if st.error else ""
    warning = f'<div class="msg-warn" id="run-warning">{html.escape(st.warning)}</div>' if st.warning else ""
    ckpts = checkpoint_steps(run_dir)
    ck = f"step {ckpts[-1]:,}" if ckpts else "none yet"
    stats = [
        ("Step", f["step"], "stat-step"),
        ("ETA", f["eta"] if live else "–", "stat-eta"),
        ("Tokens / s", f["tokens_per_s"], "stat-tps"),
        ("Loss", f["loss"], "stat-loss"),
        ("Val loss (estimate)", f["val_loss"], "stat-val"),
        ("Latest checkpoint", ck, "stat-ckpt"),
    ]
    cards = "".join(
        f'<div class="stat" id="{i}"><div class="label">{html.escape(k)}</div>'
        f'<div class="value">{html.escape(v)}</div></div>'
        for k, v, i in stats
    )
    mem_line = (
        f'<div class="mem" id="stat-mem">Memory: machine RAM <b>{html.escape(mem["ram"])}</b>'
        f" · training process <b>{html.escape(mem.get('training', 'not running'))}</b>"
        f" · GPU <b>{html.escape(mem['gpu'])}</b></div>"
    )
    view = (
        f'<div id="monitor-view" data-step="{p.step}" data-max-steps="{p.max_steps or 0}" '
        f'data-points="{len(metrics)}" data-state="{html.escape(st.state)}" '
        f'data-external="{str(st.external).lower()}">'
        f"<div><b>{html.escape(run)}</b> {_state_badge(st.state)}{phase}{who}</div>"
        f'<div class="bar"><div style="width:{100 * p.fraction:.1f}%"></div></div>'
        f'{error}{warning}<div class="stats">{cards}</div>{mem_line}</div>'
    )
    count = (run, len(metrics), st.state)
    fig = loss_figure(metrics, title=f"{run}: loss") if count != last_count else gr.skip()
    stop = gr.update(interactive=st.active and st.state != rundir.STOPPING)
    return view, fig, _log_text(st), count, stop


def _monitor_tab(sh: Shared) -> MonitorTab:
    banner = gr.HTML("", elem_id="monitor-banner")
    with gr.Row():
        run = gr.Dropdown(sh.run_choices(), value=sh.default_run(), label="Run", elem_id="monitor-run", scale=4)
        refresh = gr.Button("Refresh", scale=1, elem_id="monitor-refresh", min_width=90)
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="monitor-stop", min_width=90, interactive=False)
    view = gr.HTML("", elem_id="monitor-html")
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
        st = sh.runner.status(name)
        if st.log is None:
            return _log_text(st), None
        text = tail_log(st.log, lines=1_000_000, max_bytes=20_000_000)
        return text, str(st.log)

    show_full.click(whole_log, run, [full, download])
    run.change(lambda r: whole_log(r)[1], run, download, show_progress="hidden")
    return MonitorTab(run, view, plot, log, count, stop, banner, refresh)


# --- Generate ---------------------------------------------------------------------------------------------------


def _generate_tab(sh: Shared):
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
    msg = gr.HTML("", elem_id="gen-msg")
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
            yield gr.skip(), _msg(f"Loading {choice.split(':', 1)[-1]} ...", "info")
            loaded = sh.cache.get(source)
            yield "", _msg("Generating ...", "info")
            text = ""
            for text in M.stream_completion(loaded, req):
                yield text, gr.skip()
            step = f" at step {loaded.step:,}" if getattr(loaded, "step", None) else ""
            yield text, _msg(f"Done: {choice.split(':', 1)[-1]}{step}.", "ok")
        except Exception as exc:
            yield gr.skip(), _err(exc)

    btn.click(on_generate, [model, prompt, max_new, temp, top_k, top_p, rep, seed], [out, msg])
    return model, refresh


# --- Chat -------------------------------------------------------------------------------------------------------


def _chat_note(sh: Shared, choice: str | None) -> str:
    """Whether the chosen model was fine-tuned on conversations (its replies follow the chat template) or is a
    base model (it continues text: its replies will not)."""
    if not choice:
        return _msg("Choose a model. Fine-tune a finished run in the Models tab to get one that chats.", "info")
    try:
        source = M.resolve_model(sh.ws, choice)
    except Exception as exc:
        return _err(exc)
    name = choice.split(":", 1)[-1]
    if not Path(source).is_dir():
        return _msg(f"{name}: a hub version; downloaded when you send the first message.", "info")
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


def _chat_tab(sh: Shared, tab, picks):
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
    note = gr.HTML(_chat_note(sh, choices[0][1] if choices else None), elem_id="chat-note")
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
            yield history, "", gr.skip(), _msg("Loading the model ...", "info")
            loaded = sh.cache.get(source)
            prompt = C.chat_prompt(loaded, history, system_ or "", int(max_new_ or 96))
            dropped = len([m for m in history if m["role"] in ("user", "assistant")]) - len(
                [m for m in prompt.messages if m["role"] != "system"]
            )
            history = history + [{"role": "assistant", "content": ""}]
            yield history, "", prompt.text, _msg("Replying ...", "info")
            ended = False
            for reply, ended in C.stream_reply(  # noqa: B007 (read after the loop)
                loaded, prompt, temperature=float(temp_), seed=seed_v
            ):
                history[-1] = {"role": "assistant", "content": reply}
                yield history, gr.skip(), gr.skip(), gr.skip()
            how = (
                "ended its turn" if ended else f"stopped at {prompt.max_new_tokens} new tokens without ending its turn"
            )
            cut = f" The {dropped} oldest messages did not fit the context and were left out." if dropped else ""
            yield history, gr.skip(), gr.skip(), _msg(f"The reply {how}.{cut}", "ok" if ended else "warn")
        except Exception as exc:
            if history and history[-1]["role"] == "user":
                history = history[:-1]
            yield history, text_, gr.skip(), _err(exc)

    inputs = [model, system, box, text, max_new, temp, seed]
    send.click(on_send, inputs, [box, text, rendered, msg])
    text.submit(on_send, inputs, [box, text, rendered, msg])
    clear.click(lambda: ([], "", ""), None, [box, rendered, msg])
    model.change(lambda c: _chat_note(sh, c), model, note, show_progress="hidden")

    def keep(current, saved):
        saved = saved if isinstance(saved, dict) else {}
        opts = C.chat_choices(sh.ws)
        values = [v for _, v in opts]
        # the user's own pick while it exists; a default is replaced by the first fine-tuned model
        value = saved.get("chat_model")
        if value not in values:
            value = values[0] if values else None
        return _offer(opts, current, value)

    refresh.click(keep, [model, picks], model)
    tab.select(keep, [model, picks], model, show_progress="hidden")
    model.input(_rememberer("chat_model"), [picks, model], picks)
    return keep, model


# --- Models -----------------------------------------------------------------------------------------------------


@dataclass
class ModelsTab:
    run: Any
    step: Any
    preview: Any
    runs_df: Any
    hub_df: Any
    dl_ref: Any
    refresh: Any
    continue_btn: Any
    delete_btn: Any
    manage_msg: Any


def _runs_table(sh: Shared) -> list[list[str]]:
    rows = []
    for r in M.list_runs(sh.ws):
        label = "not started" if r.state == "new" else r.state
        rows.append(
            [
                r.name,
                label,
                f"{r.step:,} / {r.max_steps:,}" if r.max_steps else f"{r.step:,}",
                ", ".join(f"{s:,}" for s in r.checkpoints) or "–",
                f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "–",
            ]
        )
    return rows or [["(no runs yet)", "", "", "", ""]]


def _hub_table() -> list[list[str]]:
    try:
        rows = [[v["repo"], v["version"], v.get("commit", "")[:10], _date(v.get("date", ""))] for v in M.hub_versions()]
    except Exception as exc:
        return [[f"(hub unavailable: {exc})", "", "", ""]]
    return rows or [["(no versions on the hub yet)", "", "", ""]]


FT_SYNTHETIC = "use the synthetic verse set"
FT_UPLOAD = "upload conversations"


def _ft_check(source: str, train_file: str | None, val_file: str | None) -> str:
    """The uploaded conversation files checked as the fine-tune will read them (one-line file:line errors)."""
    if source != FT_UPLOAD:
        return _msg(
            f"The synthetic verse set: {C.SYNTHETIC_SIZE:,} question/answer conversations about Bible "
            "verses, made offline from the embedded corpus (synthetic: it teaches the chat format, not "
            "general assistance).",
            "info",
        )
    if not train_file:
        return _msg("Upload a .jsonl file of conversations.", "info")
    try:
        parts = [C.check_conversations(train_file).describe()]
        if val_file:
            parts.append("held out: " + C.check_conversations(val_file, "Held-out conversations").describe())
    except Exception as exc:
        return _err(exc).replace('class="msg-err"', 'class="msg-err" id="ft-problem"', 1)
    return f'<div class="msg-ok" id="ft-ok">{html.escape("; ".join(parts))}. Ready to fine-tune.</div>'


def _models_tab(sh: Shared) -> tuple[ModelsTab, dict]:
    with gr.Row():
        gr.Markdown("### Local runs")
        refresh = gr.Button("Refresh", elem_id="models-refresh", size="sm", scale=0, min_width=110)
    runs_df = gr.Dataframe(
        _runs_table(sh),
        headers=["run", "state", "step", "checkpoints", "best val loss (est.)"],
        interactive=False,
        elem_id="runs-table",
        wrap=False,
    )
    with gr.Row():
        # min_width: on a phone each picker takes a whole line instead of a truncated half
        run = gr.Dropdown(
            sh.run_choices(),
            value=sh.default_run(),
            label="Run",
            elem_id="push-run",
            scale=2,
            min_width=260,
            info="the run to push, continue or delete",
        )
        step = gr.Dropdown(
            sh.checkpoint_choices(sh.default_run()),
            label="Checkpoint",
            elem_id="push-step",
            scale=2,
            min_width=260,
            info="newest first; the one to push",
        )
    preview = gr.HTML("", elem_id="push-preview")
    gr.Markdown("### Push to the hub")
    hf = bool(os.environ.get("HF_TOKEN"))  # only whether it is set: the token itself stays in the hub library
    with gr.Row():
        target = gr.Radio(
            ["local hub", "Hugging Face Hub"],
            value="local hub",
            label="Publish to",
            elem_id="push-target",
            visible=hf,
            info="the Space's HF_TOKEN secret is used by the hub library; it is never shown",
        )
        license_ = gr.Textbox(
            "",
            label="License of the weights",
            elem_id="push-license",
            visible=hf,
            placeholder="from the training data",
            info="empty: what the data allows (public domain for the embedded corpus)",
        )
        private = gr.Checkbox(
            False,
            label="Private repository",
            elem_id="push-private",
            visible=hf,
            info="a new repo is visible to its owner only",
        )
        dataset = gr.Textbox(
            "",
            label="Dataset",
            placeholder="owner/name",
            elem_id="push-dataset",
            visible=hf,
            info="the data it was trained on, for the model card (optional)",
        )
    with gr.Row():
        repo = gr.Textbox(
            label="Repository", placeholder="owner/name", elem_id="push-repo", info="created when it does not exist"
        )
        version = gr.Textbox(
            label="Version", placeholder="e.g. 7k", elem_id="push-version", info="empty = the step count in thousands"
        )
    push_btn = gr.Button("Push", variant="primary", elem_id="push-btn")
    push_msg = gr.HTML("", elem_id="push-msg")
    gr.Markdown("### Continue or delete the run")
    with gr.Row():
        more = gr.Number(
            100,
            label="More steps",
            elem_id="continue-steps",
            precision=0,
            scale=1,
            info="from its latest checkpoint (an exact resume)",
        )
        continue_btn = gr.Button("Continue training", elem_id="continue-btn", scale=1)
        delete_btn = gr.Button("Delete run", variant="stop", elem_id="delete-btn", scale=1, interactive=False)
    manage_msg = gr.HTML("", elem_id="manage-msg")
    gr.Markdown("### Fine-tune the run on conversations")
    with gr.Row():
        ft_name = gr.Textbox(
            "",
            label="Fine-tuned run name",
            elem_id="ft-name",
            placeholder="RUN-chat",
            scale=2,
            min_width=200,
            info="a new run; empty = the run's name + '-chat'",
        )
        ft_steps = gr.Number(
            200, label="Steps", elem_id="ft-steps", precision=0, scale=1, min_width=120, info="optimizer steps"
        )
        ft_lora = gr.Checkbox(
            False,
            label="LoRA",
            elem_id="ft-lora",
            scale=1,
            min_width=120,
            info="train small adapters instead of every weight",
        )
    ft_source = gr.Radio(
        [FT_SYNTHETIC, FT_UPLOAD],
        value=FT_SYNTHETIC,
        label="Conversations",
        elem_id="ft-source",
        info='JSON Lines: {"messages": [{"role": ..., "content": ...}]} or {"prompt": ..., "response": ...} a line',
    )
    with gr.Row(visible=False) as ft_files:
        ft_file = gr.File(
            label="Conversations to train on (.jsonl)", file_types=[".jsonl"], type="filepath", elem_id="ft-file"
        )
        ft_val = gr.File(
            label="Held-out conversations (.jsonl, optional: a val loss)",
            file_types=[".jsonl"],
            type="filepath",
            elem_id="ft-val",
        )
    ft_check = gr.HTML("", elem_id="ft-check")
    ft_btn = gr.Button("Fine-tune", variant="primary", elem_id="ft-btn", interactive=False)
    ft_msg = gr.HTML("", elem_id="ft-msg")

    def on_ft_source(src, f, v):
        return gr.update(visible=src == FT_UPLOAD), _ft_check(src, f, v), ""

    ft_source.change(on_ft_source, [ft_source, ft_file, ft_val], [ft_files, ft_check, ft_msg])
    ft_file.change(_ft_check, [ft_source, ft_file, ft_val], ft_check)
    ft_val.change(_ft_check, [ft_source, ft_file, ft_val], ft_check)
    gr.Markdown("### Versions on the hub")
    hub_df = gr.Dataframe(
        _hub_table(),
        headers=["repository", "version", "commit", "date"],
        interactive=False,
        elem_id="hub-table",
        wrap=False,
    )
    with gr.Row():
        dl_ref = gr.Dropdown(
            sh.hub_refs(),
            label="Download a version",
            allow_custom_value=True,
            elem_id="dl-ref",
            info="owner/name@version, into the workspace's models/",
            scale=4,
        )
        dl_btn = gr.Button("Download", elem_id="dl-btn", scale=1)
    dl_msg = gr.HTML("", elem_id="dl-msg")
    sha = gr.State(None)  # the weights' checksum the preview showed: a push publishes exactly that

    def on_push(run_, step_, repo_, version_, expect, target_, license_value, dataset_, private_):
        try:
            req = parse_push_form(dict(run_name=run_, repo=repo_, version=version_))
            publish = {}
            if target_ == "Hugging Face Hub":
                publish = {"hub": "hf", "license": (license_value or "").strip() or None, "private": bool(private_)}
                if (dataset_ or "").strip():
                    publish["datasets"] = [parse_repo(dataset_, "Dataset")]
            res = M.push_run(sh.ws, req, int(step_) if step_ else None, expect_sha256=expect, **publish)
        except Exception as exc:
            return _err(exc), gr.skip()
        return (
            _msg(
                f"Pushed {req.run_name!r} checkpoint step {res['step']:,} (weights sha256 "
                f"{res['sha256'][:16]}…) to {res['repo']}@{res['version']} (commit "
                f"{str(res.get('commit', ''))[:10]}).",
                "ok",
            ),
            _hub_table(),
        )

    def on_download(ref):
        try:
            folder = M.download_version(sh.ws, ref)
        except Exception as exc:
            return _err(exc)
        return _msg(f"Downloaded {ref} to {sh.ws.relative(folder)} in the workspace.", "ok")

    push_event = push_btn.click(
        on_push, [run, step, repo, version, sha, target, license_, dataset, private], [push_msg, hub_df]
    )
    dl_btn.click(on_download, dl_ref, dl_msg)
    handlers = {
        "sha": sha,
        "more": more,
        "push_btn": push_btn,
        "dl_btn": dl_btn,
        "push_event": push_event,
        "ft_btn": ft_btn,
        "ft_inputs": [ft_name, ft_source, ft_file, ft_val, ft_steps, ft_lora],
        "ft_msg": ft_msg,
    }
    return ModelsTab(
        run, step, preview, runs_df, hub_df, dl_ref, refresh, continue_btn, delete_btn, manage_msg
    ), handlers


def _preview(sh: Shared, run: str | None, step: str | None):
    """The push preview, its checksum, and whether Push, Continue, Delete and Fine-tune can act on this run."""
    off = gr.update(interactive=False)
    if not run:
        return _msg("Choose a run.", "info"), None, off, off, off, off
    try:
        st = sh.runner.status(run)
    except Exception as exc:
        return _err(exc), None, off, off, off, off
    can_continue = (
        not st.active
        and st.state in rundir.END_STATES
        and bool(checkpoint_steps(sh.ws.run_dir(run)))
        and sh.runner.active() is None
    )
    can_delete = not st.active and st.state in (rundir.FAILED, rundir.DIVERGED, "new")
    can_finetune = gr.update(interactive=can_continue and st.state in (rundir.FINISHED, rundir.STOPPED))
    try:
        pv = M.push_preview(sh.ws, run, int(step) if step else None)
    except Exception as exc:
        return (
            _msg(f"Nothing to push: {exc}", "info"),
            None,
            gr.update(interactive=False),
            gr.update(interactive=can_continue),
            gr.update(interactive=can_delete),
            can_finetune,
        )
    warn = f" Warning: {st.warning}" if st.warning else ""
    text = f"Push will publish: {pv.describe()}{warn}"
    html_ = (
        f'<div class="msg-{"warn" if warn else "info"}" id="push-what" data-step="{pv.step}" '
        f'data-sha256="{pv.sha256}">{html.escape(text)}</div>'
    )
    return (
        html_,
        pv.sha256,
        gr.update(interactive=True),
        gr.update(interactive=can_continue),
        gr.update(interactive=can_delete),
        can_finetune,
    )


# --- Evaluate, Export, Compare -----------------------------------------------------------------------------------


def _evaluate_tab(sh: Shared) -> list:
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
            results = T.evaluate_run(
                sh.ws, run_, limit=int(limit_) if limit_ else None, task_file=file_, tasks=list(tasks_ or [])
            )
        except Exception as exc:
            return _err(exc), gr.skip()
        from ..evaluate import markdown

        return _msg(f"Evaluated {run_}; saved with the run (evaluation.json, read by its model card).", "ok"), markdown(
            results
        )

    btn.click(on_evaluate, [run, limit, tasks, task_file], [msg, report])
    run.change(lambda r: T.evaluation_markdown(sh.ws, r), run, report, show_progress="hidden")
    return [run]


def _export_tab(sh: Shared) -> list:
    with gr.Row():
        run = gr.Dropdown(
            sh.run_choices(),
            value=sh.default_run(),
            label="Run",
            elem_id="export-run",
            scale=3,
            min_width=260,
            info="its latest checkpoint",
        )
        fmt = gr.Dropdown(
            list(T.EXPORT_CHOICES),
            value="Hugging Face (safetensors)",
            label="Format",
            elem_id="export-format",
            scale=2,
            min_width=260,
        )
    btn = gr.Button("Export", variant="primary", elem_id="export-btn")
    msg = gr.HTML("", elem_id="export-msg")
    download = gr.DownloadButton("Download the export (zip)", elem_id="export-download", visible=False)

    def on_export(run_, fmt_):
        try:
            folder, archive = T.export_run(sh.ws, run_, fmt_)
        except Exception as exc:
            return _err(exc), gr.update(visible=False)
        return (
            _msg(f"Exported {run_} as {fmt_} to {sh.ws.relative(folder)} in the workspace.", "ok"),
            gr.update(value=str(archive), visible=True),
        )

    btn.click(on_export, [run, fmt], [msg, download])
    return [run]


def _compare_tab(sh: Shared, tab) -> list:
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


# --- the app ----------------------------------------------------------------------------------------------------


def build_app(workspace: str | os.PathLike | None = None) -> gr.Blocks:
    """The whole app on ``workspace`` (default: OPENLLM_APP_WORKSPACE or ./openllm-workspace)."""
    ws = Workspace(workspace if workspace is not None else default_workspace())
    sh = Shared(ws, Runner(ws))
    presets = preset_names()
    first = "tiny" if "tiny" in presets else presets[0]

    with gr.Blocks(title="OpenLLM") as demo:
        gr.Markdown(
            "# OpenLLM\nTrain a small language model from scratch, watch it learn, try it, publish it.",
            elem_id="app-header",
        )
        # the pickers' memory lives in the browser (local storage), so it survives reloads; an older Gradio
        # without BrowserState keeps it for the page's lifetime only
        picks = gr.BrowserState({}, storage_key="openllm-app-picks") if hasattr(gr, "BrowserState") else gr.State({})
        timer = gr.Timer(2.0)
        # wrap: on a phone every tab stays visible (on more rows) instead of hiding in an overflow menu
        with gr.Tabs(elem_id="tabs", **_wrap_tabs()) as tabs:
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train, train_h = _train_tab(sh, presets, first)
            with gr.Tab("Monitor", id="monitor", elem_id="tab-monitor"):
                mon = _monitor_tab(sh)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                gen_model, gen_refresh = _generate_tab(sh)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as chat_tab:
                chat_keep, chat_model = _chat_tab(sh, chat_tab, picks)
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                models, models_h = _models_tab(sh)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                extra_pickers = _evaluate_tab(sh)
            with gr.Tab("Export", id="export", elem_id="tab-export"):
                extra_pickers += _export_tab(sh)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                compare_pickers = _compare_tab(sh, compare_tab)
            with gr.Tab("Help", id="help", elem_id="tab-help"):
                gr.Markdown(load_help(), elem_id="help-text")
        _wire(demo, sh, tabs, picks, timer, train, train_h, mon, gen_model, gen_refresh, models, models_h)

        demo.load(chat_keep, [chat_model, picks], chat_model)
        pickers = [*extra_pickers, *compare_pickers]
        keys = [p.elem_id for p in pickers]

        def keep_runs(*values):
            """The other tabs' run pickers: new runs offered, each choice (or, right after a reload, the one
            remembered in the browser) kept while its run exists."""
            *values, saved = values
            saved = saved if isinstance(saved, dict) else {}
            current = values
            values = [v or saved.get(k) for v, k in zip(values, keys)]
            names = sh.run_choices()
            out = [_offer(names, c, v if v in names else sh.default_run()) for c, v in zip(current, values[:-2])]
            many, one = values[-2:]
            out.append(_offer(names, current[-2], [r for r in (many or []) if r in names]))
            out.append(_offer(names, current[-1], one if one in names else (names[0] if names else None)))
            return out

        tabs.select(keep_runs, [*pickers, picks], pickers, show_progress="hidden")
        demo.load(keep_runs, [*pickers, picks], pickers)
        for picker in pickers:
            picker.input(_rememberer(picker.elem_id), [picks, picker], picks)

    # Gradio 6 takes theme and css in launch(); keep them on the Blocks too, so that a plain
    # ``build_app().launch()`` (e.g. a Space's app.py) looks the same as ``openllm app``.
    if hasattr(demo, "_deprecated_css"):
        demo._deprecated_css = CSS
        demo._deprecated_theme = THEME
    demo.openllm_workspace = ws  # type: ignore[attr-defined]
    demo.openllm_runner = sh.runner  # type: ignore[attr-defined]
    return demo


def _wire(
    demo,
    sh: Shared,
    tabs,
    picks,
    timer,
    train: TrainTab,
    train_h: dict,
    mon: MonitorTab,
    gen_model,
    gen_refresh,
    models: ModelsTab,
    models_h: dict,
) -> None:
    """The events that cross tabs: Start/Stop/Continue, the timer, refreshes, and the pickers' memory."""
    on_start, start_inputs = train_h["start"]
    sha, more = models_h["sha"], models_h["more"]

    def buttons():
        """Start only when nothing trains; Stop only when something does."""
        busy = sh.runner.active() is not None
        return gr.update(interactive=not busy), gr.update(interactive=busy)

    # --- Train ------------------------------------------------------------------------------------------------
    train.start_btn.click(on_start, start_inputs, [train.msg, mon.run, tabs, mon.banner]).then(
        buttons, None, [train.start_btn, train.stop_btn]
    )
    train.stop_btn.click(train_h["stop"], None, train.msg).then(buttons, None, [train.start_btn, train.stop_btn])

    # --- Monitor ----------------------------------------------------------------------------------------------
    def view(run, count):
        return monitor_view(sh, run, count)

    def tick(run, count):
        return (*view(run, count), *buttons())

    mon.run.change(lambda r: view(r, None), mon.run, mon.outputs, show_progress="hidden")
    mon.run.input(lambda p, r: (_remember(p, "monitor_run", r), ""), [picks, mon.run], [picks, mon.banner])
    timer.tick(
        tick,
        [mon.run, mon.count],
        [*mon.outputs, train.start_btn, train.stop_btn],
        show_progress="hidden",
        concurrency_limit=None,
        concurrency_id="monitor",
    )

    def on_monitor_refresh(run):
        run = sh.keep_run(run)
        return gr.update(choices=sh.run_choices(), value=run), *view(run, None)

    mon.refresh.click(on_monitor_refresh, mon.run, [mon.run, *mon.outputs])

    def on_monitor_stop(run):
        try:
            name = sh.runner.stop()
        except RunnerError as exc:
            return _err(exc)
        return _msg(f"Stopping {name!r}: the trainer saves a checkpoint, then exits.", "info")

    mon.stop_btn.click(on_monitor_stop, mon.run, mon.banner)

    # --- Models -----------------------------------------------------------------------------------------------
    preview_outputs = [
        models.preview,
        sha,
        models_h["push_btn"],
        models.continue_btn,
        models.delete_btn,
        models_h["ft_btn"],
    ]

    def pick_step(run, saved):
        """The checkpoint the user chose for this run while it exists (remembered as 'RUN:STEP'), else the
        latest: a checkpoint that was merely the latest once does not stick."""
        choices = sh.checkpoint_choices(run)
        values = [v for _, v in choices]
        chosen = str((saved or {}).get("push_step") or "")
        step = chosen.partition(":")[2] if chosen.partition(":")[0] == run else None
        return choices, step if step in values else (values[0] if values else None)

    def on_models_run(run):
        choices, step = pick_step(run, None)  # another run: its latest checkpoint
        return gr.update(choices=choices, value=step), *_preview(sh, run, step)

    models.run.input(on_models_run, models.run, [models.step, *preview_outputs]).then(
        lambda p, r: {**_remember(p, "models_run", r), "push_step": None}, [picks, models.run], picks
    )
    models.step.input(lambda r, s: _preview(sh, r, s), [models.run, models.step], preview_outputs).then(
        lambda p, r, s: _remember(p, "push_step", f"{r}:{s}"), [picks, models.run, models.step], picks
    )

    def refresh_all(mrun, mstep, gen, dl, mon_run, saved):
        """Every list, each keeping what the user chose while it still exists (a picker not filled in yet, as
        right after a reload, takes the choice remembered in the browser)."""
        saved = saved if isinstance(saved, dict) else {}
        now = (mrun, mstep, gen, mon_run)
        mrun = mrun or saved.get("models_run")
        gen, mon_run = gen or saved.get("gen_model"), mon_run or saved.get("monitor_run")
        names = sh.run_choices()
        mrun = sh.keep_run(mrun)
        steps, step = pick_step(mrun, saved)  # the user's pick for this run, else its newest checkpoint
        gens = sh.gen_choices()
        gen_value = gen if gen and (gen in [v for _, v in gens] or "@" in str(gen)) else None
        return (
            _runs_table(sh),
            _hub_table(),
            _offer(names, now[0], mrun),
            _offer(steps, mstep, step),
            *_preview(sh, mrun, step),
            gr.update(choices=sh.hub_refs()),
            _offer(gens, now[2], gen_value),
            _offer(names, now[3], sh.keep_run(mon_run)),
        )

    refresh_inputs = [models.run, models.step, gen_model, models.dl_ref, mon.run, picks]
    refresh_outputs = [
        models.runs_df,
        models.hub_df,
        models.run,
        models.step,
        *preview_outputs,
        models.dl_ref,
        gen_model,
        mon.run,
    ]
    models.refresh.click(refresh_all, refresh_inputs, refresh_outputs)
    tabs.select(refresh_all, refresh_inputs, refresh_outputs, show_progress="hidden")
    models_h["push_event"].then(refresh_all, refresh_inputs, refresh_outputs, show_progress="hidden")
    models_h["dl_btn"].click(lambda: gr.update(choices=sh.gen_choices()), None, gen_model)

    def on_continue(run, n):
        try:
            total = sh.runner.continue_run(run, int(n or 0))
        except Exception as exc:
            return _err(exc), gr.skip(), gr.skip(), gr.skip()
        done = _msg(
            f"Continuing {run!r} from step {rundir.step_of(rundir.latest_checkpoint(sh.ws.run_dir(run)))}"
            f" to a new total of {total:,} steps. Following it in the Monitor tab.",
            "ok",
        )
        return done, gr.update(choices=sh.run_choices(), value=run), gr.Tabs(selected="monitor"), done

    models.continue_btn.click(on_continue, [models.run, more], [models.manage_msg, mon.run, tabs, mon.banner])

    def on_delete(run):
        try:
            sh.runner.delete(run)
        except Exception as exc:
            return _err(exc)
        return _msg(f"Deleted run {run!r}; its name can be used again.", "ok")

    models.delete_btn.click(on_delete, models.run, models.manage_msg).then(refresh_all, refresh_inputs, refresh_outputs)

    def on_finetune(run, name, source, train_file, val_file, steps, lora):
        name = (name or "").strip() or f"{run}-chat"
        try:
            if not run:
                raise RunnerError("choose the run to fine-tune (the Run picker above)")
            if source == FT_UPLOAD:
                data, val = train_file, val_file
                if not data:
                    raise FormError("Conversations", "upload a .jsonl file of conversations first")
            else:
                data, val = C.synthetic_set(sh.ws)
            sh.runner.finetune(run, name, data, val, lora=bool(lora), max_steps=int(steps or 0) or None)
        except Exception as exc:
            return _err(exc), gr.skip(), gr.skip(), gr.skip()
        done = _msg(
            f"Fine-tuning {run!r} into the new run {name!r} ({int(steps or 200):,} steps"
            f"{', LoRA' if lora else ''}). Following it in the Monitor tab; chat with it in the Chat tab "
            "when it has a checkpoint.",
            "ok",
        )
        return done, gr.update(choices=sh.run_choices(), value=name), gr.Tabs(selected="monitor"), done

    models_h["ft_btn"].click(
        on_finetune, [models.run, *models_h["ft_inputs"]], [models_h["ft_msg"], mon.run, tabs, mon.banner]
    ).then(buttons, None, [train.start_btn, train.stop_btn])

    # --- Generate -------------------------------------------------------------------------------------------
    gen_refresh.click(lambda g: gr.update(choices=sh.gen_choices(), value=g), gen_model, gen_model)
    gen_model.input(lambda p, g: _remember(p, "gen_model", g), [picks, gen_model], picks)

    # --- load: the next free run name, and the pickers as the user left them -----------------------------
    def on_load(saved):
        saved = saved if isinstance(saved, dict) else {}
        names = sh.run_choices()
        i = 1
        while f"run-{i}" in names:
            i += 1
        mon_run = sh.keep_run(saved.get("monitor_run"))
        mrun = sh.keep_run(saved.get("models_run"))
        steps, mstep = pick_step(mrun, saved)
        gens = sh.gen_choices()
        gen = saved.get("gen_model") if saved.get("gen_model") in [v for _, v in gens] else None
        return (
            f"run-{i}",
            gr.update(choices=names, value=mon_run),
            *view(mon_run, None),
            gr.update(choices=names, value=mrun),
            gr.update(choices=steps, value=mstep),
            *_preview(sh, mrun, mstep),
            gr.update(choices=gens, value=gen),
            *buttons(),
        )

    demo.load(
        on_load,
        picks,
        [
            train.run_name,
            mon.run,
            *mon.outputs,
            models.run,
            models.step,
            *preview_outputs,
            gen_model,
            train.start_btn,
            train.stop_btn,
        ],
    )
