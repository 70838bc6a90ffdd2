"""The Train tab: the run's settings (generated from :data:`openllm.app.schema.TRAIN_FIELDS`), the corpus and
its check, the config box (see, save, load one, start from an earlier run's) and Start/Stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from ... import rundir
from ...fsio import write_text_atomic
from .. import access, jobruns
from ..corpus_check import check_corpus
from ..estimate import estimate_time
from ..forms import (
    CORPUS_EMBEDDED,
    CORPUS_UPLOAD,
    CORPUS_WORKSPACE,
    FormError,
    config_fields,
    parse_train_form,
    preset_fields,
    recipe_fields,
)
from ..render import config_summary, corpus_problem, corpus_report, err, msg
from ..runner import RunnerError
from ..schema import TRAIN_FIELDS, FormField
from ..workspace import WorkspaceError
from .shared import Shared

__all__ = ["TrainTab", "build", "stop_message"]

# the form's values in the order the settings' components are passed to an event: the model size, then each field
FORM_NAMES = ["model_size", *(f.name for f in TRAIN_FIELDS)]
CORPUS_NAMES = ["corpus_kind", "corpus_path", "upload", "text_field"]
WHERE_HERE = "This machine"
WHERE_JOBS = "Hugging Face Jobs"


@dataclass
class TrainTab:
    """What the other tabs' events need: Start and Stop (their buttons, handlers and inputs), the message and
    the run name (the next free one is filled in when the page loads)."""

    start_btn: Any
    stop_btn: Any
    msg: Any
    run_name: Any
    on_start: Callable[..., tuple]
    start_inputs: list
    on_stop: Callable[..., str]
    where: Any  # this machine or Hugging Face Jobs: Start stays offered during a local run when it is Jobs


def stop_message(sh: Shared, run: str | None, token: Any = None) -> str:
    """Stop ``run``, the run the Monitor shows (Train's and Monitor's Stop buttons): never another one. A run
    on Hugging Face Jobs is cancelled with the signed-in user's ``token`` (a ``gr.OAuthToken``) or HF_TOKEN."""
    if not run:
        return err(RunnerError("choose the run to stop in the Monitor tab"))
    try:
        if jobruns.is_job_run(sh.ws, run):
            rec = jobruns.stop(sh.ws, run, token=access.token_value(token))
            if rec.get("cancelled"):
                return msg(
                    f"Cancelled job {rec['job_id']} of {run!r}: the run keeps the last checkpoint it pushed to "
                    f"{rec['repo']}; Continue (Models tab) resumes from it.",
                    "info",
                )
            grace = jobruns.STOP_GRACE_S / 60
            return msg(
                f"Asked job {rec['job_id']} of {run!r} to save a checkpoint and stop (it looks every few seconds). "
                f"It is cancelled if it has not ended within {grace:.0f} minutes; press Stop again to cancel it now.",
                "info",
            )
        name = sh.runner.stop(run)
    except Exception as exc:
        return access.safe_text(err(exc), token)
    return msg(f"Stopping {name!r}: the trainer saves a checkpoint, then exits.", "info")


def _config_runs(sh: Shared) -> list[str]:
    """Runs whose config can be loaded into the form."""
    return [n for n in sh.run_choices() if (sh.ws.run_dir(n) / rundir.CONFIG).is_file()]


def _component(f: FormField, value: Any) -> Any:
    """The widget a setting takes: a list of its choices, a checkbox, or a number."""
    common: dict[str, Any] = {"label": f.label, "elem_id": f.elem_id, "info": f.help}
    if f.setting.choices:
        return gr.Dropdown(list(f.setting.choices), value=value, **common)
    if f.setting.type == "bool":
        return gr.Checkbox(value, **common)
    return gr.Number(value, **common)


def _settings(presets: list[str], first: str) -> tuple[Any, Any, Any, list]:
    """The run name, preset and model size pickers, and one component per form field (in TRAIN_FIELDS order)."""
    defaults = preset_fields(first)
    made: dict[str, Any] = {}

    def place(where: str) -> None:
        for f in TRAIN_FIELDS:
            if f.place == where:
                made[f.name] = _component(f, defaults[f.name])

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
        place("top")
    with gr.Row():
        place("basic")
    advanced = [f for f in TRAIN_FIELDS if f.place == "advanced"]
    with gr.Accordion("Advanced settings", open=False, elem_id="advanced"):
        for i in range(0, len(advanced), 4):  # rows of four
            with gr.Row():
                for f in advanced[i : i + 4]:
                    made[f.name] = _component(f, defaults[f.name])
    return run_name, preset, size, [made[f.name] for f in TRAIN_FIELDS]


def build(sh: Shared, presets: list[str], first: str) -> TrainTab:
    run_name, preset, size, fields = _settings(presets, first)
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
        config_summary_html = gr.HTML("", elem_id="config-summary")
        config_json = gr.Code("", language="json", label="config.json", elem_id="config-json", interactive=False)
    with gr.Group():
        where = gr.Radio(
            [WHERE_HERE, WHERE_JOBS],
            value=WHERE_HERE,
            label="Where to train",
            elem_id="train-where",
            info="Hugging Face Jobs: a GPU machine billed per minute, for runs bigger than this one",
        )
        with gr.Row(visible=False, elem_id="job-options") as job_row:
            flavor = gr.Dropdown(
                jobruns.flavors(),
                value=jobruns.flavors()[0],
                label="Flavor (hardware)",
                elem_id="job-flavor",
                info="the Jobs hardware huggingface_hub knows; prices: huggingface.co/pricing",
            )
            repo = gr.Textbox(
                label="Repository to push to",
                placeholder="OWNER/NAME",
                elem_id="job-repo",
                info="a dataset repository: the run's inputs, checkpoints and metrics",
            )
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="start-btn")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn")
    train_msg = gr.HTML("", elem_id="train-msg")

    form = [size, *fields]

    def on_preset(name):
        try:
            f = preset_fields(name)
        except Exception as exc:
            return [gr.skip()] * len(form) + [err(exc)]
        return [f[n] for n in FORM_NAMES] + [msg(f"Loaded preset {name!r}.", "info")]

    def on_recipe(preset_, recipe):
        try:
            f = recipe_fields(preset_, recipe)
        except Exception as exc:
            return [gr.skip()] * len(fields) + [err(exc)]
        return [f[x.name] if x.name in f else gr.skip() for x in TRAIN_FIELDS] + [
            msg(f"Recipe {recipe!r}: its optimizer, schedule and learning rates are filled in.", "info")
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
            return ("" if why is None else corpus_problem(why)), gr.update(visible=False)
        chk = check_corpus(where, fld or None)
        return corpus_report(chk), gr.update(visible=bool(chk.fields), choices=chk.fields, value=chk.field)

    def on_corpus_kind(kind, path, up, fld):
        report, picker = check(kind, path, up, fld)
        return gr.update(visible=kind == CORPUS_WORKSPACE), gr.update(visible=kind == CORPUS_UPLOAD), report, picker

    def form_values(run, preset_, rest) -> dict[str, Any]:
        return {**dict(zip([*FORM_NAMES, *CORPUS_NAMES], rest)), "run_name": run, "preset": preset_}

    def on_start(run, preset_, *rest, profile=None, token=None):
        values = form_values(run, preset_, rest)
        place, job_flavor, job_repo = rest[len(FORM_NAMES) + len(CORPUS_NAMES) :] or (WHERE_HERE, None, None)
        stay = gr.skip()
        try:
            req = parse_train_form(values)
            where, why = corpus_file(values["corpus_kind"], values["corpus_path"], values["upload"])
            if why is not None:
                raise FormError("Corpus", why)
            if place == WHERE_JOBS:
                if where is None or values["corpus_kind"] != CORPUS_WORKSPACE:
                    raise FormError(
                        "Corpus",
                        f"a Hugging Face Job trains on tokenized data: choose {CORPUS_WORKSPACE!r} and a tokenized "
                        "folder (jobs/RUN/data/tokens of a run trained here, or one made with openllm tokenize)",
                    )
                rec = jobruns.launch(
                    sh.ws, req.run_name, req.config, where, job_repo, job_flavor, token=access.token_value(token)
                )
                name = req.run_name
                started = msg(
                    f"Launched run {name!r} as Hugging Face Job {rec['job_id']} on {rec['flavor']} (billed per "
                    f"minute until it ends or you stop it), pushing to {rec['repo']}. Following it in the Monitor tab.",
                    "ok",
                )
                return (started, gr.update(choices=sh.run_choices(), value=name), gr.Tabs(selected="monitor"), started)
            if where is not None:  # nothing starts on a corpus that would fail: the same check as when chosen
                chk = check_corpus(where, values.get("text_field") or None)
                if not chk.ok:
                    raise FormError("Corpus", chk.problem or "not usable")
                req.field = chk.field or "text"
            name = sh.runner.start(req)
        except Exception as exc:
            return access.safe_text(err(exc), token), stay, stay, stay
        started = msg(f"Started run {name!r}. Following it in the Monitor tab.", "ok")
        return (started, gr.update(choices=sh.run_choices(), value=name), gr.Tabs(selected="monitor"), started)

    def on_config(run, preset_, *rest):
        try:
            cfg = parse_train_form(form_values(run or "preview", preset_, rest)).config
        except Exception as exc:
            return err(exc), "", gr.update(visible=False)
        out = sh.ws.downloads_dir / f"config-{cfg.name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, cfg.to_json() + "\n")
        return config_summary(cfg, estimate_time(sh.ws, cfg)), cfg.to_json(), gr.update(value=str(out), visible=True)

    def fill(source, label):
        """The form filled in from a saved config, with what it could not hold named."""
        try:
            f, lost = config_fields(source)
        except Exception as exc:
            return [gr.skip()] * (len(form) + 1) + [err(exc)]
        note = (
            " These settings are not in the form and take the preset's values: " + "; ".join(lost) + "."
            if lost
            else " Every setting of it is in the form."
        )
        done = msg(
            f"Loaded the settings of {label}.{note} Check the corpus and the run name, then Start.",
            "warn" if lost else "ok",
        )
        return [f["preset"], *(f[n] for n in FORM_NAMES), done]

    def on_from_run(name):
        if not name:
            return [gr.skip()] * (len(form) + 2)
        return fill(sh.ws.run_dir(name) / rundir.CONFIG, f"run {name}")

    def on_load_file(path):
        if not path:
            return [gr.skip()] * (len(form) + 2)
        return fill(path, Path(path).name)

    # input, not change: a preset filled in from a loaded config must not reset the fields it came with
    preset.input(on_preset, preset, [*form, train_msg])
    recipe = fields[[f.name for f in TRAIN_FIELDS].index("recipe")]
    recipe.input(on_recipe, [preset, recipe], [*fields, train_msg])
    from_run.input(on_from_run, from_run, [preset, *form, config_msg])
    load_file.upload(on_load_file, load_file, [preset, *form, config_msg])
    from_run.focus(lambda: gr.update(choices=_config_runs(sh)), None, from_run)
    corpus_inputs = [corpus_kind, corpus_path, upload, text_field]
    corpus_kind.change(on_corpus_kind, corpus_inputs, [corpus_path, upload, corpus_html, text_field])
    corpus_path.blur(check, corpus_inputs, [corpus_html, text_field])
    corpus_path.submit(check, corpus_inputs, [corpus_html, text_field])
    upload.change(check, corpus_inputs, [corpus_html, text_field])
    text_field.input(check, corpus_inputs, [corpus_html, text_field])
    where.change(lambda w: gr.update(visible=w == WHERE_JOBS), where, job_row, show_progress="hidden")
    start_inputs = [run_name, preset, *form, *corpus_inputs, where, flavor, repo]
    config_btn.click(on_config, start_inputs, [config_summary_html, config_json, save_btn])

    def on_stop(run, *, profile=None, token=None):
        return stop_message(sh, run, token)

    return TrainTab(start_btn, stop_btn, train_msg, run_name, on_start, start_inputs, on_stop, where)
