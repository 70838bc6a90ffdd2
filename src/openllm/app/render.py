"""What the app shows as HTML: its stylesheet and theme, message boxes, badges and the small reports (the corpus
check, the config's facts): strings in, strings out; no Gradio components (the theme aside).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from .. import rundir
from ..config import Config
from ..errors import is_user_error
from .monitor import Progress, format_progress

__all__ = [
    "CSS",
    "theme",
    "msg",
    "err",
    "date",
    "state_badge",
    "size",
    "corpus_report",
    "run_view",
    "corpus_problem",
    "config_summary",
]

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


def theme():
    """The app's Gradio theme: system fonts only (the default themes fetch Google Fonts, and the app contacts no
    remote host)."""
    import gradio as gr

    return gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def msg(text: str, kind: str = "info", elem_id: str = "") -> str:
    ident = f' id="{elem_id}"' if elem_id else ""
    return f'<div class="msg-{kind}"{ident}>{html.escape(text)}</div>'


def err(exc: BaseException, elem_id: str = "") -> str:
    """An error as the user sees it: its message when it is theirs to fix, else its type too. A file missing
    (or unreadable) inside the installed package or inside a run folder is no input of the user's: the
    installation or the run is damaged, and the message names the file and says so."""
    damaged = _damaged(exc)
    if damaged:
        return msg(damaged, "err", elem_id)
    if is_user_error(exc) or isinstance(exc, ValueError):
        return msg(str(exc), "err", elem_id)
    return msg(f"Unexpected error: {type(exc).__name__}: {exc}", "err", elem_id)


_PACKAGE = Path(__file__).resolve().parent.parent


def _damaged(exc: BaseException) -> str | None:
    """What :func:`err` says of an ``OSError`` about a file of the package or of a run folder, else None."""
    if not isinstance(exc, OSError) or not isinstance(exc.filename, (str, os.PathLike)) or not str(exc.filename):
        return None
    path = Path(os.path.abspath(os.fspath(exc.filename)))
    why = exc.strerror or type(exc).__name__
    if path == _PACKAGE or _PACKAGE in path.parents:
        return (
            f"a file of the openllm installation cannot be read: {path} ({why}); the installation is damaged: "
            f"reinstall openllm (pip install --force-reinstall openllm), or restart the Space"
        )
    run = next((p for p in path.parents if rundir.is_run(p)), None)
    if run is not None:
        return f"the run {run.name} is damaged: {path} ({why}); restore that file, or delete the run and train it again"
    return None


def date(iso: str) -> str:
    """'2026-11-28T10:24:51+00:00' -> '2026-11-28 10:24 UTC' (as given when it does not parse)."""
    try:
        d = datetime.fromisoformat(iso).astimezone(timezone.utc)
    except (TypeError, ValueError):
        return iso
    return d.strftime("%Y-%m-%d %H:%M UTC")


def state_badge(state: str) -> str:
    cls = state if state in rundir.STATES else "new"
    label = "not started" if state == "new" else state
    return (
        f'<span class="state state-{cls}" id="run-state" data-state="{html.escape(state)}">{html.escape(label)}</span>'
    )


def size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _problem(why: str) -> str:
    return f'<div class="msg-err" id="corpus-problem">Corpus: {html.escape(why)}</div>'


def corpus_problem(why: str) -> str:
    """The corpus report when there is no corpus to check (why not)."""
    return f'<div class="corpus-check" data-ok="false">{_problem(why)}</div>'


def corpus_report(chk) -> str:
    """What :func:`openllm.app.corpus_check.check_corpus` found, as the Train tab shows it."""
    if chk is None:
        return ""
    rows = []
    if chk.size_bytes:
        rows.append(f"<li>size: {size(chk.size_bytes)} in {chk.files} file{'s' if chk.files != 1 else ''}</li>")
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
        head = _problem(chk.problem or "not usable")
    return f'<div class="corpus-check" data-ok="{str(chk.ok).lower()}">{head}{body}</div>'


def config_summary(cfg: Config, est=None) -> str:
    """Parameters, tokens per step, the memory training takes (:func:`openllm.model.train_memory_bytes`, the
    estimate the trainer checks before it starts) and the time it takes at a speed an earlier run measured on
    this machine (:func:`openllm.app.estimate.estimate_time`)."""
    from ..model import param_report, train_memory_bytes

    t = cfg.train
    seq = cfg.seq_len
    rep = param_report(cfg.model, seq)
    tokens = t.micro_batch_size * t.grad_accum_steps * seq
    mem = train_memory_bytes(cfg.model, micro_batch=t.micro_batch_size, seq_len=seq)
    return (
        f'<div class="msg-info" id="config-facts">{rep["params"]:,} parameters '
        f"({rep['params_non_embedding']:,} without embeddings) · {tokens:,} tokens per step "
        f"({t.micro_batch_size} × {t.grad_accum_steps} × {seq}) · {t.max_steps:,} steps = "
        f"{tokens * t.max_steps:,} tokens · memory for training: about {mem['total'] / 2**20:,.0f} MiB in fp32 "
        f"(weights, gradients and AdamW state {mem['states'] / 2**20:,.0f} MiB, activations "
        f"{mem['activations'] / 2**20:,.0f} MiB)</div>"
        + (
            f'<div class="msg-{"info" if est.tokens_per_s else "warn"}" id="config-time" '
            f'data-seconds="{est.seconds or ""}">Time: {html.escape(est.describe())}</div>'
            if est
            else ""
        )
    )


def _stat_cards(stats: list[tuple[str, str, str]]) -> str:
    return "".join(
        f'<div class="stat" id="{i}"><div class="label">{html.escape(k)}</div>'
        f'<div class="value">{html.escape(v)}</div></div>'
        for k, v, i in stats
    )


def run_view(
    run: str, st, p: Progress, points: int, ckpts: list[int], mem: dict[str, str], dashboards: Sequence[str] = ()
) -> str:
    """The Monitor's page for ``run``: its state (``st``, a :class:`openllm.app.runner.RunStatus`), who trains
    it, the progress bar, error and warning, the stat cards, the memory line and the commands that open its
    trackers' dashboards (``dashboards``)."""
    f = format_progress(p)
    live = st.state in (rundir.PREPARING, rundir.TRAINING, rundir.STOPPING)
    shown = st.state == rundir.PREPARING or (st.state == rundir.STOPPED and st.phase == rundir.INTERRUPTED)
    phase = f' — <span id="run-phase">{html.escape(st.phase)}</span>' if st.phase and shown else ""
    who = ""
    if st.holder is not None:
        outside = " (started outside the app)" if st.external else ""
        who = f' · <span id="run-holder">PID {st.pid}{outside}</span>'
    error = f'<div class="msg-err" id="run-error">{html.escape(st.error)}</div>' if st.error else ""
    warning = f'<div class="msg-warn" id="run-warning">{html.escape(st.warning)}</div>' if st.warning else ""
    cards = _stat_cards(
        [
            ("Step", f["step"], "stat-step"),
            ("ETA", f["eta"] if live else "–", "stat-eta"),
            ("Tokens / s", f["tokens_per_s"], "stat-tps"),
            ("Loss", f["loss"], "stat-loss"),
            ("Val loss (estimate)", f["val_loss"], "stat-val"),
            ("Latest checkpoint", f"step {ckpts[-1]:,}" if ckpts else "none yet", "stat-ckpt"),
        ]
    )
    mem_line = (
        f'<div class="mem" id="stat-mem">Memory: machine RAM <b>{html.escape(mem["ram"])}</b>'
        f" · training process <b>{html.escape(mem.get('training', 'not running'))}</b>"
        f" · GPU <b>{html.escape(mem['gpu'])}</b></div>"
    )
    if dashboards:
        mem_line += (
            '<div class="mem" id="run-dashboards">Dashboards: '
            + " · ".join(f"<code>{html.escape(c)}</code>" for c in dashboards)
            + "</div>"
        )
    return (
        f'<div id="monitor-view" data-step="{p.step}" data-max-steps="{p.max_steps or 0}" '
        f'data-points="{points}" data-state="{html.escape(st.state)}" '
        f'data-external="{str(st.external).lower()}">'
        f"<div><b>{html.escape(run)}</b> {state_badge(st.state)}{phase}{who}</div>"
        f'<div class="bar"><div style="width:{100 * p.fraction:.1f}%"></div></div>'
        f'{error}{warning}<div class="stats">{cards}</div>{mem_line}</div>'
    )
