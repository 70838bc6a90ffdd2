"""The app: its tabs (one module each under :mod:`openllm.app.tabs`) and the events that cross them. All logic
lives in the small modules beside this one (forms, runner, monitor, models, corpus_check, workspace, help); the
HTML in :mod:`openllm.app.render`.

:func:`build_app` builds the tabs, each returning the components other tabs need, then wires Start/Stop,
Continue and Fine-tune (which switch to the Monitor), the timer, the refreshes and the pickers' memory: a choice a
user made is kept across tab switches, refreshes and reloads (in the browser's local storage), and only replaced
when it no longer exists.
"""

from __future__ import annotations

import inspect
import os
import warnings
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported, always

import gradio as gr

from ..config import preset_names
from . import access, jobruns
from .help import load_help
from .render import CSS, theme
from .runner import Runner
from .tabs import TABS, chat, compare, evaluate, export, generate, models, monitor, train
from .tabs.shared import Shared, offer, remember, rememberer
from .workspace import Workspace, default_workspace

__all__ = ["build_app", "CSS", "THEME", "Shared"]

THEME = theme()
# the controls of the write actions (their handlers are wrapped by access.writer): on a Space, shown only to
# the signed-in owners
WRITE_ACTIONS = (
    "start-btn",
    "stop-btn",
    "monitor-stop",
    "push-btn",
    "continue-btn",
    "delete-btn",
    "delete-confirm",
    "ft-btn",
    "dl-btn",
    "export-btn",
    "eval-btn",
    "corpus-kind",  # a visitor keeps the embedded corpus: no upload offered
    "train-where",  # a visitor never launches a Hugging Face Job (its flavor and repository are inside it)
)


def _tab(tab_id: str) -> gr.Tab:
    """The tab ``tab_id`` of :data:`openllm.app.tabs.TABS` (the one list of the app's tabs)."""
    label = next(label for i, label, _ in TABS if i == tab_id)
    return gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}")


def _wrap_tabs() -> dict:
    # wrap: on a phone every tab stays visible (on more rows) instead of hiding in an overflow menu
    return (
        {"overflow_behavior": "wrap"} if "overflow_behavior" in inspect.signature(gr.Tabs.__init__).parameters else {}
    )


def _blocks() -> gr.Blocks:
    # Gradio 6 takes theme and css in launch() (openllm.app.launch passes them) and warns when the Blocks gets
    # them; they stay on the Blocks too, so that a plain ``build_app().launch()`` (e.g. a Space's app.py) looks
    # the same
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The parameters have been moved", category=UserWarning)
        return gr.Blocks(title="OpenLLM", css=CSS, theme=THEME)


def build_app(workspace: str | os.PathLike | None = None) -> gr.Blocks:
    """The whole app on ``workspace`` (default: OPENLLM_APP_WORKSPACE or ./openllm-workspace)."""
    ws = Workspace(workspace if workspace is not None else default_workspace())
    sh = Shared(ws, Runner(ws))
    presets = preset_names()
    first = "tiny" if "tiny" in presets else presets[0]

    with _blocks() as demo:
        gr.Markdown(
            "# OpenLLM\nTrain a small language model from scratch, watch it learn, try it, publish it.",
            elem_id="app-header",
        )
        with gr.Row(visible=access.on_space(), elem_id="sign-in-row"):
            # on a Space: Sign in with Hugging Face (owners write; visitors watch, generate and chat)
            if access.login_enabled():
                gr.LoginButton(elem_id="login-btn", size="sm", scale=0, min_width=240)
            visitor_note = gr.HTML("", elem_id="visitor-note-box")
        # the pickers' memory lives in the browser (local storage), so it survives reloads; an older Gradio
        # without BrowserState keeps it for the page's lifetime only
        picks = gr.BrowserState({}, storage_key="openllm-app-picks") if hasattr(gr, "BrowserState") else gr.State({})
        timer = gr.Timer(2.0)
        with gr.Tabs(elem_id="tabs", **_wrap_tabs()) as tabs:
            with _tab("train"):
                train_tab = train.build(sh, presets, first)
            with _tab("monitor"):
                mon = monitor.build(sh)
            with _tab("generate"):
                gen = generate.build(sh, picks)
            with _tab("chat") as chat_tab:
                talk = chat.build(sh, chat_tab, picks)
            with _tab("models"):
                mod = models.build(sh, picks)
            with _tab("evaluate"):
                run_pickers = evaluate.build(sh)
            with _tab("export"):
                run_pickers += export.build(sh)
            with _tab("compare") as compare_tab:
                compare_pickers = compare.build(sh, compare_tab)
            with _tab("help"):
                gr.Markdown(load_help(), elem_id="help-text")
        built = [t.id for t in tabs.children if isinstance(t, gr.Tab)]
        if built != [i for i, _, _ in TABS]:  # a tab added here must be in TABS (the Space's README lists it)
            raise RuntimeError(f"the app builds the tabs {built}, but openllm.app.tabs.TABS lists others")
        _wire_training(sh, tabs, picks, timer, train_tab, mon, mod)
        refresh = _wire_lists(sh, tabs, picks, mon, gen, mod)
        _wire_run_actions(sh, tabs, train_tab, mon, mod, refresh)
        _wire_load(demo, sh, picks, train_tab, mon, gen, mod)
        demo.load(talk.keep, [talk.model, picks], talk.model)
        _wire_run_pickers(demo, sh, tabs, picks, run_pickers, compare_pickers)
        writes = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) in WRITE_ACTIONS]
        access.hide_for_visitors(demo, writes, visitor_note)

    demo.openllm_workspace = ws  # type: ignore[attr-defined]
    demo.openllm_runner = sh.runner  # type: ignore[attr-defined]
    return demo


def _buttons(sh: Shared, run: str | None, where: str | None = None):
    """Start only when nothing trains here (or it goes to Hugging Face Jobs, where several may run at once);
    Stop only when the run the Monitor shows (the one Stop acts on) trains."""
    busy = sh.runner.active() is not None and where != train.WHERE_JOBS
    try:
        if jobruns.is_job_run(sh.ws, run):
            shown = jobruns.view(sh.ws, str(run)).active
        else:
            shown = bool(run) and run in sh.run_choices() and sh.runner.status(str(run)).active
    except Exception:
        shown = False
    return gr.update(interactive=not busy), gr.update(interactive=shown)


def _wire_training(sh, tabs, picks, timer, train_tab: train.TrainTab, mon: monitor.MonitorTab, mod) -> None:
    """Start and Stop, the Monitor following the run (its timer also keeps Start/Stop right)."""
    buttons = [train_tab.start_btn, train_tab.stop_btn]
    where = train_tab.where
    train_tab.start_btn.click(
        access.writer(train_tab.on_start, session=True),
        train_tab.start_inputs,
        [train_tab.msg, mon.run, tabs, mon.banner],
    ).then(lambda run, w: _buttons(sh, run, w), [mon.run, where], buttons)
    # Stop names its run: the one the Monitor shows (Start switches it to the run started)
    train_tab.stop_btn.click(access.writer(train_tab.on_stop, session=True), mon.run, train_tab.msg).then(
        lambda run, w: _buttons(sh, run, w), [mon.run, where], buttons
    )
    where.change(lambda run, w: _buttons(sh, run, w), [mon.run, where], buttons, show_progress="hidden")

    def tick(run, count, w):
        return (*monitor.view(sh, run, count), *_buttons(sh, run, w))

    mon.run.input(lambda p, r: (remember(p, "monitor_run", r), ""), [picks, mon.run], [picks, mon.banner])
    timer.tick(
        tick,
        [mon.run, mon.count, where],
        [*mon.outputs, *buttons],
        show_progress="hidden",
        concurrency_limit=None,
        concurrency_id="monitor",
    )

    def on_refresh(run):
        run = sh.keep_run(run)
        return gr.update(choices=sh.run_choices(), value=run), *monitor.view(sh, run, None)

    mon.refresh.click(on_refresh, mon.run, [mon.run, *mon.outputs])
    mon.stop_btn.click(access.writer(train_tab.on_stop, session=True), mon.run, mon.banner)
    mod.ft_btn.click(
        access.writer(lambda run, *rest: models.on_finetune(sh, run, *rest)),
        [mod.run, *mod.ft_inputs],
        [mod.ft_msg, mon.run, tabs, mon.banner],
    ).then(lambda run: _buttons(sh, run), mon.run, buttons)


def _wire_lists(sh, tabs, picks, mon: monitor.MonitorTab, gen: generate.GenerateTab, mod: models.ModelsTab):
    """Every list refreshed on a tab switch, the Models tab's Refresh and a push; returns (handler, inputs,
    outputs) for the events that refresh them too."""

    def refresh_all(mrun, mstep, gen_model, dl, mon_run, saved):
        """Every list, each keeping what the user chose while it still exists (a picker not filled in yet, as
        right after a reload, takes the choice remembered in the browser)."""
        saved = saved if isinstance(saved, dict) else {}
        now = (mrun, mstep, gen_model, mon_run)
        mrun = mrun or saved.get("models_run")
        gen_model, mon_run = gen_model or saved.get("gen_model"), mon_run or saved.get("monitor_run")
        names = sh.run_choices()
        mrun = sh.keep_run(mrun)
        steps, step = models.pick_step(sh, mrun, saved)  # the user's pick for this run, else its newest checkpoint
        gens = sh.gen_choices()
        gen_value = gen_model if gen_model and (gen_model in [v for _, v in gens] or "@" in str(gen_model)) else None
        return (
            models.runs_table(sh),
            models.hub_table(),
            offer(names, now[0], mrun),
            offer(steps, mstep, step),
            *models.preview(sh, mrun, step),
            gr.update(choices=sh.hub_refs()),
            offer(gens, now[2], gen_value),
            offer(names, now[3], sh.keep_run(mon_run)),
        )

    inputs = [mod.run, mod.step, gen.model, mod.dl_ref, mon.run, picks]
    outputs = [mod.runs_df, mod.hub_df, mod.run, mod.step, *mod.preview_outputs, mod.dl_ref, gen.model, mon.run]
    mod.refresh.click(refresh_all, inputs, outputs)
    tabs.select(refresh_all, inputs, outputs, show_progress="hidden")
    mod.push_event.then(refresh_all, inputs, outputs, show_progress="hidden")
    mod.dl_btn.click(lambda: gr.update(choices=sh.gen_choices()), None, gen.model)
    return refresh_all, inputs, outputs


def _wire_run_actions(sh, tabs, train_tab: train.TrainTab, mon: monitor.MonitorTab, mod: models.ModelsTab, refresh):
    """Continue (switches to the Monitor) and Delete (refreshes the lists)."""

    def on_continue(run, n, *, profile=None, token=None):
        if jobruns.is_job_run(sh.ws, run):  # a new job, resuming from the checkpoint the last one pushed
            return models.on_continue_job(sh, run, n, token)
        return models.on_continue(sh, run, n)

    mod.continue_btn.click(
        access.writer(on_continue, session=True),
        [mod.run, mod.more],
        [mod.manage_msg, mon.run, tabs, mon.banner],
    )
    mod.delete_btn.click(
        access.writer(lambda run, ok: models.on_delete(sh, run, ok)),
        [mod.run, mod.delete_confirm],
        [mod.manage_msg, mod.delete_confirm],
    ).then(*refresh)


def _wire_load(demo, sh, picks, train_tab: train.TrainTab, mon: monitor.MonitorTab, gen, mod: models.ModelsTab):
    """On page load: the next free run name, and the pickers as the user left them."""

    def on_load(saved):
        saved = saved if isinstance(saved, dict) else {}
        names = sh.run_choices()
        i = 1
        while f"run-{i}" in names:
            i += 1
        mon_run = sh.keep_run(saved.get("monitor_run"))
        mrun = sh.keep_run(saved.get("models_run"))
        steps, mstep = models.pick_step(sh, mrun, saved)
        gens = sh.gen_choices()
        gen_model = saved.get("gen_model") if saved.get("gen_model") in [v for _, v in gens] else None
        return (
            f"run-{i}",
            gr.update(choices=names, value=mon_run),
            *monitor.view(sh, mon_run, None),
            gr.update(choices=names, value=mrun),
            gr.update(choices=steps, value=mstep),
            *models.preview(sh, mrun, mstep),
            gr.update(choices=gens, value=gen_model),
            *_buttons(sh, mon_run),
        )

    outputs = [train_tab.run_name, mon.run, *mon.outputs, mod.run, mod.step, *mod.preview_outputs, gen.model]
    demo.load(on_load, picks, [*outputs, train_tab.start_btn, train_tab.stop_btn])


def _wire_run_pickers(demo, sh, tabs, picks, run_pickers: list, compare_pickers: list) -> None:
    """The Evaluate, Export and Compare tabs' run pickers: new runs offered, each choice (or, right after a
    reload, the one remembered in the browser) kept while its run exists."""
    pickers = [*run_pickers, *compare_pickers]
    keys = [p.elem_id for p in pickers]

    def keep_runs(*given: Any):
        *values, saved = given
        saved = saved if isinstance(saved, dict) else {}
        current = values
        values = [v or saved.get(k) for v, k in zip(values, keys)]
        names = sh.run_choices()
        out = [offer(names, c, v if v in names else sh.default_run()) for c, v in zip(current, values[:-2])]
        many, one = values[-2:]
        out.append(offer(names, current[-2], [r for r in (many or []) if r in names]))
        out.append(offer(names, current[-1], one if one in names else (names[0] if names else None)))
        return out

    tabs.select(keep_runs, [*pickers, picks], pickers, show_progress="hidden")
    demo.load(keep_runs, [*pickers, picks], pickers)
    for picker in pickers:
        picker.input(rememberer(picker.elem_id), [picks, picker], picks)
