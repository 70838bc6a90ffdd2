"""The Gradio layout and its wiring. All logic lives in the small modules beside this one (forms, runner,
monitor, models, workspace, help); this file only connects them to components."""
from __future__ import annotations

import html
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, always

import gradio as gr  # noqa: E402

from ..config import preset_names  # noqa: E402
from ..errors import is_user_error  # noqa: E402
from . import models as M  # noqa: E402
from .forms import (CORPUS_EMBEDDED, CORPUS_UPLOAD, CORPUS_WORKSPACE, OPTIMIZERS, SCHEDULES,  # noqa: E402
                    FormError, parse_push_form, parse_sampling_form, parse_train_form, preset_fields)
from .help import load_help  # noqa: E402
from ..rundir import checkpoint_steps, read_metrics  # noqa: E402
from .monitor import format_progress, loss_figure, memory_usage, progress, tail_log  # noqa: E402
from .runner import Runner, RunnerError  # noqa: E402
from .workspace import Workspace, WorkspaceError, default_workspace  # noqa: E402

__all__ = ["build_app", "CSS", "THEME"]

CSS = """
.gradio-container {max-width: 1180px !important; width: 100% !important; margin: 0 auto !important;}
#app-header h1 {margin-bottom: 0.1em;}
#app-header p {color: var(--body-text-color-subdued); margin-top: 0;}
.msg-ok, .msg-err, .msg-info {padding: 10px 14px; border-radius: 8px; margin: 4px 0; font-size: 0.95em;}
.msg-ok {background: #ecfdf5; border: 1px solid #a7f3d0; color: #065f46;}
.msg-err {background: #fef2f2; border: 1px solid #fecaca; color: #991b1b;}
.msg-info {background: #eff6ff; border: 1px solid #bfdbfe; color: #1e3a8a;}
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
.state-running {background: #dbeafe; color: #1e40af;}
.state-finished {background: #dcfce7; color: #166534;}
.state-stopped {background: #fef9c3; color: #854d0e;}
.state-failed {background: #fee2e2; color: #991b1b;}
.state-none {background: #f3f4f6; color: #374151;}
#log-tail textarea {font-family: ui-monospace, SFMono-Regular, Menlo, monospace !important; font-size: 12px !important;}
#stop-btn {color: #b91c1c;}
#help-text table {border-collapse: collapse; margin: 8px 0;}
#help-text th, #help-text td {border: 1px solid var(--border-color-primary) !important; padding: 5px 10px !important;}
#help-text th {background: var(--background-fill-secondary);}
footer {display: none !important;}
"""

def _theme():
    # system fonts only: the default themes fetch Google Fonts, and the app contacts no remote host
    return gr.themes.Soft(font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial",
                                "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"])


THEME = _theme()


def _msg(text: str, kind: str = "info") -> str:
    return f'<div class="msg-{kind}">{html.escape(text)}</div>'


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
    cls = state if state in ("running", "finished", "stopped", "failed") else "none"
    return f'<span class="state state-{cls}" id="run-state" data-state="{html.escape(state)}">{html.escape(state)}</span>'


def build_app(workspace: str | os.PathLike | None = None) -> gr.Blocks:
    """The whole app on ``workspace`` (default: OPENLLM_APP_WORKSPACE or ./openllm-workspace)."""
    ws = Workspace(workspace if workspace is not None else default_workspace())
    runner = Runner(ws)
    cache = M.ModelCache()
    presets = preset_names()
    first = "tiny" if "tiny" in presets else presets[0]
    defaults = preset_fields(first)

    # --- helpers shared by several tabs ------------------------------------------------------------------

    def run_choices() -> list[str]:
        return ws.run_names()

    def default_run() -> str | None:
        active = runner.active()
        if active:
            return active[0]
        names = ws.run_names()
        return names[0] if names else None

    def hub_refs() -> list[str]:
        try:
            return [f"{v['repo']}@{v['version']}" for v in M.hub_versions()]
        except Exception:
            return []

    # --- Train --------------------------------------------------------------------------------------------

    def on_preset(preset):
        try:
            f = preset_fields(preset)
        except Exception as exc:  # noqa: BLE001
            return [gr.skip()] * 13 + [_err(exc)]
        return [f["model_size"], f["vocab_size"], f["lr"], f["batch_size"], f["max_steps"], f["grad_accum"],
                f["optimizer"], f["schedule"], f["weight_decay"], f["grad_clip"], f["warmup_steps"],
                f["eval_every"], f["save_every"], _msg(f"Loaded preset {preset!r}.", "info")]

    def on_corpus_kind(kind):
        return gr.update(visible=kind == CORPUS_WORKSPACE), gr.update(visible=kind == CORPUS_UPLOAD), ""

    def on_start(run_name, preset, size, vocab, lr, batch, steps, accum, opt, sched, wd, clip, warmup,
                 eval_every, save_every, corpus_kind, corpus_path, upload):
        values = dict(run_name=run_name, preset=preset, model_size=size, vocab_size=vocab, lr=lr,
                      batch_size=batch, max_steps=steps, grad_accum=accum, optimizer=opt, schedule=sched,
                      weight_decay=wd, grad_clip=clip, warmup_steps=warmup, eval_every=eval_every,
                      save_every=save_every, corpus_kind=corpus_kind, corpus_path=corpus_path, upload=upload)
        try:
            req = parse_train_form(values)
            if req.corpus_kind == "workspace":
                ws.resolve(req.corpus_path or "", must_exist=True)
            name = runner.start(req)
        except (FormError, RunnerError, WorkspaceError) as exc:
            return _err(exc), gr.skip()
        except Exception as exc:  # noqa: BLE001
            return _err(exc), gr.skip()
        return (_msg(f"Started run {name!r}. Follow it in the Monitor tab.", "ok"),
                gr.update(choices=run_choices(), value=name))

    def on_stop():
        try:
            name = runner.stop()
        except RunnerError as exc:
            return _err(exc)
        return _msg(f"Stopping {name!r}: the trainer saves a checkpoint, then exits.", "info")

    # --- Monitor ------------------------------------------------------------------------------------------

    def monitor_view(run, last_count):
        if not run:
            html_ = ('<div class="msg-info">No run yet. Start one in the Train tab.</div>')
            return html_, gr.skip(), "", last_count
        try:
            st = runner.status(run)
            run_dir = ws.run_dir(run)
        except (WorkspaceError, FormError) as exc:
            return _err(exc), gr.skip(), "", last_count
        metrics = read_metrics(run_dir)
        p = progress(run_dir, {"step": st.step, "max_steps": st.max_steps}, metrics)
        f = format_progress(p)
        active = runner.active()
        mem = memory_usage(active[1] if active and active[0] == run else None)
        phase = f" — {html.escape(st.phase)}" if st.phase and st.state == "running" else ""
        error = f'<div class="msg-err" id="run-error">{html.escape(st.error)}</div>' if st.error else ""
        ckpts = checkpoint_steps(run_dir)
        ck = f"step {ckpts[-1]:,}" if ckpts else "none yet"
        running = st.state == "running"
        stats = [("Step", f["step"], "stat-step"), ("ETA", f["eta"] if running else "–", "stat-eta"),
                 ("Tokens / s", f["tokens_per_s"], "stat-tps"), ("Loss", f["loss"], "stat-loss"),
                 ("Val loss", f["val_loss"], "stat-val"), ("Latest checkpoint", ck, "stat-ckpt")]
        cards = "".join(f'<div class="stat" id="{i}"><div class="label">{html.escape(k)}</div>'
                        f'<div class="value">{html.escape(v)}</div></div>' for k, v, i in stats)
        mem_line = (f'<div class="mem" id="stat-mem">Memory: machine RAM <b>{html.escape(mem["ram"])}</b>'
                    f' · training process <b>{html.escape(mem.get("training", "not running"))}</b>'
                    f' · GPU <b>{html.escape(mem["gpu"])}</b></div>')
        view = (f'<div id="monitor-view" data-step="{p.step}" data-max-steps="{p.max_steps or 0}" '
                f'data-points="{len(metrics)}" data-state="{html.escape(st.state)}">'
                f'<div><b>{html.escape(run)}</b> {_state_badge(st.state)}{phase}</div>'
                f'<div class="bar"><div style="width:{100 * p.fraction:.1f}%"></div></div>'
                f'{error}<div class="stats">{cards}</div>{mem_line}</div>')
        count = (run, len(metrics), st.state)
        fig = gr.skip()
        if count != last_count:
            fig = loss_figure(metrics, title=f"{run}: loss")
        log = tail_log(runner.log_path(run)) or "(no log for this run)"
        return view, fig, log, count

    def on_monitor_run(run):
        return monitor_view(run, None)

    # --- Generate -----------------------------------------------------------------------------------------

    def gen_choices():
        return M.model_choices(ws, hub_refs())

    def on_generate(choice, prompt, max_new, temp, top_k, top_p, rep, seed):
        try:
            req = parse_sampling_form(dict(prompt=prompt, max_new_tokens=max_new, temperature=temp, top_k=top_k,
                                           top_p=top_p, repetition_penalty=rep, seed=seed))
            source = M.resolve_model(ws, choice)
            yield gr.skip(), _msg(f"Loading {choice.split(':', 1)[-1]} ...", "info")
            loaded = cache.get(source)
            yield "", _msg("Generating ...", "info")
            text = ""
            for text in M.stream_completion(loaded, req):
                yield text, gr.skip()
            step = f" at step {loaded.step:,}" if getattr(loaded, "step", None) else ""
            yield text, _msg(f"Done: {choice.split(':', 1)[-1]}{step}.", "ok")
        except Exception as exc:  # noqa: BLE001
            yield gr.skip(), _err(exc)

    # --- Models -------------------------------------------------------------------------------------------

    def runs_table():
        rows = []
        for r in M.list_runs(ws):
            rows.append([r.name, r.state, f"{r.step:,} / {r.max_steps:,}" if r.max_steps else f"{r.step:,}",
                         ", ".join(f"{s:,}" for s in r.checkpoints) or "–",
                         f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "–"])
        return rows or [["(no runs yet)", "", "", "", ""]]

    def hub_table():
        try:
            rows = [[v["repo"], v["version"], v.get("commit", "")[:10], _date(v.get("date", ""))]
                    for v in M.hub_versions()]
        except Exception as exc:  # noqa: BLE001
            return [[f"(hub unavailable: {exc})", "", "", ""]]
        return rows or [["(no versions on the hub yet)", "", "", ""]]

    def refresh_models():
        names = run_choices()
        refs = hub_refs()
        return (runs_table(), hub_table(), gr.update(choices=names, value=names[0] if names else None),
                gr.update(choices=refs), gr.update(choices=gen_choices()))

    def on_push(run, repo, version):
        try:
            req = parse_push_form(dict(run_name=run, repo=repo, version=version))
            res = M.push_run(ws, req)
        except Exception as exc:  # noqa: BLE001
            return _err(exc), gr.skip()
        return (_msg(f"Pushed {req.run_name!r} to {res['repo']}@{res['version']} (commit {str(res.get('commit', ''))[:10]}).",
                     "ok"), hub_table())

    def on_download(ref):
        try:
            folder = M.download_version(ws, ref)
        except Exception as exc:  # noqa: BLE001
            return _err(exc), gr.skip()
        return _msg(f"Downloaded {ref} to {ws.relative(folder)} in the workspace.", "ok"), gr.update(choices=gen_choices())

    # --- layout -------------------------------------------------------------------------------------------

    with gr.Blocks(title="OpenLLM") as demo:
        gr.Markdown("# OpenLLM\nTrain a small language model from scratch, watch it learn, try it, publish it.",
                    elem_id="app-header")
        monitor_state = gr.State(None)
        timer = gr.Timer(2.0)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                with gr.Row():
                    run_name = gr.Textbox(label="Run name", value="run-1", elem_id="run-name", scale=2,
                                          info="the folder under runs/: letters, digits, '.', '_', '-'")
                    preset = gr.Dropdown(presets, value=first, label="Preset", elem_id="preset", scale=1,
                                         info="fills in every field below")
                    size = gr.Dropdown(presets, value=defaults["model_size"], label="Model size", elem_id="model-size",
                                       scale=1, info="layers, width, heads, context")
                    vocab = gr.Number(defaults["vocab_size"], label="Vocabulary size", elem_id="vocab-size", scale=1,
                                      info="tokenizer pieces (at least 324)")
                with gr.Row():
                    lr = gr.Number(defaults["lr"], label="Learning rate", elem_id="lr", info="peak, after warmup")
                    batch = gr.Number(defaults["batch_size"], label="Batch size", elem_id="batch-size",
                                      info="sequences per micro-batch")
                    steps = gr.Number(defaults["max_steps"], label="Steps", elem_id="steps",
                                      info="optimizer steps")
                    accum = gr.Number(defaults["grad_accum"], label="Gradient accumulation", elem_id="grad-accum",
                                      info="micro-batches per step")
                with gr.Row():
                    opt = gr.Dropdown(list(OPTIMIZERS), value=defaults["optimizer"], label="Optimizer",
                                      elem_id="optimizer", info="decoupled weight decay")
                    sched = gr.Dropdown(list(SCHEDULES), value=defaults["schedule"], label="Scheduler",
                                        elem_id="scheduler", info="learning-rate schedule after warmup")
                    wd = gr.Number(defaults["weight_decay"], label="Weight decay", elem_id="weight-decay",
                                   info="0 = none")
                    clip = gr.Number(defaults["grad_clip"], label="Gradient clipping", elem_id="grad-clip",
                                     info="max gradient norm; 0 = off")
                with gr.Row():
                    warmup = gr.Number(defaults["warmup_steps"], label="Warmup steps", elem_id="warmup",
                                       info="linear warmup")
                    eval_every = gr.Number(defaults["eval_every"], label="Evaluate every", elem_id="eval-every",
                                           info="steps between val-loss points")
                    save_every = gr.Number(defaults["save_every"], label="Save every", elem_id="save-every",
                                           info="steps between checkpoints")
                with gr.Group():
                    corpus_kind = gr.Radio([CORPUS_EMBEDDED, CORPUS_WORKSPACE, CORPUS_UPLOAD], value=CORPUS_EMBEDDED,
                                           label="Corpus", elem_id="corpus-kind")
                    corpus_path = gr.Textbox(label="Path inside the workspace", visible=False, elem_id="corpus-path",
                                             placeholder="corpora/my_text.txt",
                                             info=f"relative to the workspace {ws.root}")
                    upload = gr.File(label="Upload a .txt, .jsonl or .parquet file", visible=False,
                                     file_types=[".txt", ".jsonl", ".json", ".parquet", ".md"], type="filepath",
                                     elem_id="corpus-upload")
                with gr.Row():
                    start_btn = gr.Button("Start training", variant="primary", elem_id="start-btn")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
                train_msg = gr.HTML("", elem_id="train-msg")

            with gr.Tab("Monitor", id="monitor", elem_id="tab-monitor"):
                with gr.Row():
                    monitor_run = gr.Dropdown(run_choices(), value=default_run(), label="Run", elem_id="monitor-run",
                                              scale=4)
                    monitor_refresh = gr.Button("Refresh", scale=1, elem_id="monitor-refresh")
                monitor_html = gr.HTML("", elem_id="monitor-html")
                plot = gr.Plot(label="Loss", show_label=False, elem_id="loss-plot", format="png")
                log_box = gr.Textbox(label="Log (last lines)", lines=12, max_lines=12, interactive=False,
                                     elem_id="log-tail", autoscroll=True)

            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    gen_model = gr.Dropdown(gen_choices(), label="Model", elem_id="gen-model", allow_custom_value=True,
                                            info="a run with a checkpoint, a downloaded model, or owner/name@version",
                                            scale=4)
                    gen_refresh = gr.Button("Refresh list", scale=1, elem_id="gen-refresh")
                prompt = gr.Textbox(label="Prompt", lines=3, value="In the beginning", elem_id="gen-prompt")
                with gr.Row():
                    max_new = gr.Number(64, label="Max new tokens", elem_id="gen-max-new",
                                        info="at most this many tokens")
                    temp = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature", elem_id="gen-temp",
                                     info="0 = greedy")
                    top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.01, label="Top-p", elem_id="gen-top-p",
                                      info="1 = off")
                with gr.Row():
                    top_k = gr.Number(50, label="Top-k", elem_id="gen-top-k", info="0 = off")
                    rep = gr.Number(1.0, label="Repetition penalty", elem_id="gen-rep", info="1 = off")
                    seed = gr.Textbox("", label="Seed", elem_id="gen-seed", info="empty = random",
                                      placeholder="random")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-btn")
                gen_msg = gr.HTML("", elem_id="gen-msg")
                gen_out = gr.Textbox(label="Output", lines=8, interactive=False, elem_id="gen-output")

            with gr.Tab("Models", id="models", elem_id="tab-models"):
                with gr.Row():
                    gr.Markdown("### Local runs")
                    models_refresh = gr.Button("Refresh", elem_id="models-refresh", size="sm", scale=0,
                                               min_width=110)
                runs_df = gr.Dataframe(runs_table(), headers=["run", "state", "step", "checkpoints", "best val loss"],
                                       interactive=False, elem_id="runs-table", wrap=True)
                gr.Markdown("### Push a run to the hub")
                with gr.Row():
                    push_run = gr.Dropdown(run_choices(), value=default_run(), label="Run", elem_id="push-run",
                                           info="its latest checkpoint")
                    push_repo = gr.Textbox(label="Repository", placeholder="owner/name", elem_id="push-repo",
                                           info="created when it does not exist")
                    push_version = gr.Textbox(label="Version", placeholder="e.g. 7k", elem_id="push-version",
                                              info="empty = the step count in thousands")
                push_btn = gr.Button("Push", variant="primary", elem_id="push-btn")
                push_msg = gr.HTML("", elem_id="push-msg")
                gr.Markdown("### Versions on the hub")
                hub_df = gr.Dataframe(hub_table(), headers=["repository", "version", "commit", "date"],
                                      interactive=False, elem_id="hub-table", wrap=True)
                with gr.Row():
                    dl_ref = gr.Dropdown(hub_refs(), label="Download a version", allow_custom_value=True,
                                         elem_id="dl-ref", info="owner/name@version, into the workspace's models/",
                                         scale=4)
                    dl_btn = gr.Button("Download", elem_id="dl-btn", scale=1)
                dl_msg = gr.HTML("", elem_id="dl-msg")

            with gr.Tab("Help", id="help", elem_id="tab-help"):
                gr.Markdown(load_help(), elem_id="help-text")

        # --- events -------------------------------------------------------------------------------------------
        form = [size, vocab, lr, batch, steps, accum, opt, sched, wd, clip, warmup, eval_every, save_every]
        preset.change(on_preset, preset, [*form, train_msg])
        corpus_kind.change(on_corpus_kind, corpus_kind, [corpus_path, upload, train_msg])
        start_btn.click(on_start, [run_name, preset, *form, corpus_kind, corpus_path, upload], [train_msg, monitor_run])
        stop_btn.click(on_stop, None, train_msg)

        monitor_outputs = [monitor_html, plot, log_box, monitor_state]
        monitor_run.change(on_monitor_run, monitor_run, monitor_outputs, show_progress="hidden")
        monitor_refresh.click(monitor_view, [monitor_run, gr.State(None)], monitor_outputs)
        timer.tick(monitor_view, [monitor_run, monitor_state], monitor_outputs, show_progress="hidden",
                   concurrency_limit=None, concurrency_id="monitor")

        gen_refresh.click(lambda: gr.update(choices=gen_choices()), None, gen_model)
        gen_btn.click(on_generate, [gen_model, prompt, max_new, temp, top_k, top_p, rep, seed], [gen_out, gen_msg])

        models_outputs = [runs_df, hub_df, push_run, dl_ref, gen_model]
        models_refresh.click(refresh_models, None, models_outputs)
        tabs.select(refresh_models, None, models_outputs, show_progress="hidden")
        push_btn.click(on_push, [push_run, push_repo, push_version], [push_msg, hub_df]).then(
            refresh_models, None, models_outputs)
        dl_btn.click(on_download, dl_ref, [dl_msg, gen_model])

        def on_load():
            names = run_choices()
            used = set(names)
            i = 1
            while f"run-{i}" in used:
                i += 1
            run = default_run()
            return f"run-{i}", gr.update(choices=names, value=run), *monitor_view(run, None)

        demo.load(on_load, None, [run_name, monitor_run, *monitor_outputs])

    # Gradio 6 takes theme and css in launch(); keep them on the Blocks too, so that a plain
    # ``build_app().launch()`` (e.g. a Space's app.py) looks the same as ``openllm app``.
    if hasattr(demo, "_deprecated_css"):
        demo._deprecated_css = CSS
        demo._deprecated_theme = THEME
    demo.openllm_workspace = ws  # type: ignore[attr-defined]
    demo.openllm_runner = runner  # type: ignore[attr-defined]
    return demo
