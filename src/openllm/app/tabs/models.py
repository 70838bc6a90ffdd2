"""The Models tab: the runs and their checkpoints, push to the hub (with a preview of what is published),
continue, delete, fine-tune on conversations, and the hub's versions (download one)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ... import rundir
from ...rundir import checkpoint_steps
from .. import access, jobruns
from .. import chat as C
from .. import models as M
from .. import render as R
from ..forms import FormError, parse_push_form, parse_repo
from ..runner import RunnerError
from .shared import Shared, remember

__all__ = [
    "ModelsTab",
    "build",
    "preview",
    "pick_step",
    "runs_table",
    "hub_table",
    "on_continue",
    "on_delete",
    "on_finetune",
]


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
    sha: Any  # the weights' checksum the preview showed: a push publishes exactly that
    more: Any
    push_btn: Any
    dl_btn: Any
    push_event: Any
    ft_btn: Any
    ft_inputs: list
    ft_msg: Any
    delete_confirm: Any  # Delete acts only once this is ticked (it removes the run's checkpoints for good)

    @property
    def preview_outputs(self) -> list:
        """What :func:`preview` fills in, in its order."""
        return [self.preview, self.sha, self.push_btn, self.continue_btn, self.delete_btn, self.ft_btn]


def runs_table(sh: Shared) -> list[list[str]]:
    rows = []
    for r in M.list_runs(sh.ws):
        label = "not started" if r.state == "new" else r.state
        step, total = r.step, r.max_steps
        job = rundir.read_remote_job(sh.ws.run_dir(r.name))
        if job.get("job_id"):  # trained on Hugging Face Jobs: the stage the app saw last (no network here)
            label = f"{jobruns.STAGE_STATES.get(str(job.get('stage')), rundir.QUEUED)} (Hugging Face Job)"
            step, total = int(job.get("step") or 0), job.get("max_steps") or total
        rows.append(
            [
                r.name,
                label,
                f"{step:,} / {total:,}" if total else f"{step:,}",
                ", ".join(f"{s:,}" for s in r.checkpoints) or "–",
                f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "–",
            ]
        )
    return rows or [["(no runs yet)", "", "", "", ""]]


def hub_table() -> list[list[str]]:
    try:
        rows = [
            [v["repo"], v["version"], v.get("commit", "")[:10], R.date(v.get("date", ""))] for v in M.hub_versions()
        ]
    except Exception as exc:
        return [[f"(hub unavailable: {exc})", "", "", ""]]
    return rows or [["(no versions on the hub yet)", "", "", ""]]


FT_SYNTHETIC = "use the synthetic verse set"
FT_UPLOAD = "upload conversations"


def _ft_check(source: str, train_file: str | None, val_file: str | None) -> str:
    """The uploaded conversation files checked as the fine-tune will read them (one-line file:line errors)."""
    if source != FT_UPLOAD:
        return R.msg(
            f"The synthetic verse set: {C.SYNTHETIC_SIZE:,} question/answer conversations about Bible "
            "verses, made offline from the embedded corpus (synthetic: it teaches the chat format, not "
            "general assistance).",
            "info",
        )
    if not train_file:
        return R.msg("Upload a .jsonl file of conversations.", "info")
    try:
        parts = [C.check_conversations(train_file).describe()]
        if val_file:
            parts.append("held out: " + C.check_conversations(val_file, "Held-out conversations").describe())
    except Exception as exc:
        return R.err(exc, "ft-problem")
    return f'<div class="msg-ok" id="ft-ok">{html.escape("; ".join(parts))}. Ready to fine-tune.</div>'


def build(sh: Shared, picks: Any) -> ModelsTab:
    with gr.Row():
        gr.Markdown("### Local runs")
        refresh = gr.Button("Refresh", elem_id="models-refresh", size="sm", scale=0, min_width=110)
    runs_df = gr.Dataframe(
        runs_table(sh),
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
    preview_html = gr.HTML("", elem_id="push-preview")
    gr.Markdown("### Push to the hub")
    # the Hugging Face Hub is offered with a token to publish with: the signed-in user's (on a Space with
    # sign-in) or the HF_TOKEN secret; only whether one exists is read here, the token stays in the hub library
    hf = bool(os.environ.get("HF_TOKEN")) or access.login_enabled()
    with gr.Row():
        target = gr.Radio(
            ["local hub", "Hugging Face Hub"],
            value="local hub",
            label="Publish to",
            elem_id="push-target",
            visible=hf,
            info="as the signed-in user (their own token, for this push only), else with the Space's HF_TOKEN "
            "secret; a token is never shown or logged",
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
    delete_confirm = gr.Checkbox(
        False, label="Yes, delete this run: its checkpoints, metrics and log, for good", elem_id="delete-confirm"
    )
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
        hub_table(),
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
    sha = gr.State(None)

    def on_push(
        run_, step_, repo_, version_, expect, target_, license_value, dataset_, private_, *, profile=None, token=None
    ):
        try:
            publish: dict[str, Any] = {}
            if target_ == "Hugging Face Hub":
                repo_ = M.user_repo(repo_, getattr(profile, "username", None) if token is not None else None)
                publish = {
                    "hub": M.hf_hub(access.token_value(token)),
                    "license": (license_value or "").strip() or None,
                    "private": bool(private_),
                }
                if (dataset_ or "").strip():
                    publish["datasets"] = [parse_repo(dataset_, "Dataset")]
            req = parse_push_form(dict(run_name=run_, repo=repo_, version=version_))
            res = M.push_run(sh.ws, req, int(step_) if step_ else None, expect_sha256=expect, **publish)
        except Exception as exc:
            return access.safe_text(R.err(exc), token), gr.skip()
        return (
            R.msg(
                f"Pushed {req.run_name!r} checkpoint step {res['step']:,} (weights sha256 "
                f"{res['sha256'][:16]}…) to {res['repo']}@{res['version']} (commit "
                f"{str(res.get('commit', ''))[:10]}).",
                "ok",
            ),
            hub_table(),
        )

    def on_download(ref):
        try:
            folder = M.download_version(sh.ws, ref)
        except Exception as exc:
            return R.err(exc)
        return R.msg(f"Downloaded {ref} to {sh.ws.relative(folder)} in the workspace.", "ok")

    push_event = push_btn.click(
        access.writer(on_push, session=True),
        [run, step, repo, version, sha, target, license_, dataset, private],
        [push_msg, hub_df],
    )
    dl_btn.click(access.writer(on_download), dl_ref, dl_msg)
    tab = ModelsTab(
        run,
        step,
        preview_html,
        runs_df,
        hub_df,
        dl_ref,
        refresh,
        continue_btn,
        delete_btn,
        manage_msg,
        sha,
        more,
        push_btn,
        dl_btn,
        push_event,
        ft_btn,
        [ft_name, ft_source, ft_file, ft_val, ft_steps, ft_lora],
        ft_msg,
        delete_confirm,
    )

    def on_run(run_):
        choices, step_ = pick_step(sh, run_, None)  # another run: its latest checkpoint
        return gr.update(choices=choices, value=step_), *preview(sh, run_, step_)

    run.input(on_run, run, [step, *tab.preview_outputs]).then(
        lambda p, r: {**remember(p, "models_run", r), "push_step": None}, [picks, run], picks
    )
    step.input(lambda r, s: preview(sh, r, s), [run, step], tab.preview_outputs).then(
        lambda p, r, s: remember(p, "push_step", f"{r}:{s}"), [picks, run, step], picks
    )
    return tab


def pick_step(sh: Shared, run: str | None, saved: dict | None) -> tuple[list, str | None]:
    """The checkpoint the user chose for this run while it exists (remembered as 'RUN:STEP'), else the
    latest: a checkpoint that was merely the latest once does not stick."""
    choices = sh.checkpoint_choices(run)
    values = [v for _, v in choices]
    chosen = str((saved or {}).get("push_step") or "")
    step = chosen.partition(":")[2] if chosen.partition(":")[0] == run else None
    return choices, step if step in values else (values[0] if values else None)


def preview(sh: Shared, run: str | None, step: str | None):
    """The push preview, its checksum, and whether Push, Continue, Delete and Fine-tune can act on this run."""
    off = gr.update(interactive=False)
    if not run:
        return R.msg("Choose a run.", "info"), None, off, off, off, off
    try:
        if jobruns.is_job_run(sh.ws, run):
            jv = jobruns.view(sh.ws, run)
            ended = gr.update(interactive=not jv.active)
            where = f"Run {run!r} trains on Hugging Face Jobs: its checkpoints are in {jv.repo} (runs/{run}/)."
            return R.msg(where, "info"), None, off, ended, ended, off
        st = sh.runner.status(run)
    except Exception as exc:
        return R.err(exc), None, off, off, off, off
    can_continue = (
        not st.active
        and st.state in rundir.END_STATES
        and (bool(checkpoint_steps(sh.ws.run_dir(run))) or sh.runner.restartable(run))
        and sh.runner.active() is None
    )
    can_delete = not st.active and st.state in (*rundir.END_STATES, rundir.NEW)
    can_finetune = gr.update(interactive=can_continue and st.state in (rundir.FINISHED, rundir.STOPPED))
    try:
        pv = M.push_preview(sh.ws, run, int(step) if step else None)
    except Exception as exc:
        return (
            R.msg(f"Nothing to push: {exc}", "info"),
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


def on_continue(sh: Shared, run: str, n: Any):
    """Continue ``run`` for ``n`` more steps: the message, the Monitor's run, the tab to show, the Monitor's banner."""
    try:
        latest = rundir.latest_checkpoint(sh.ws.run_dir(run))
        total = sh.runner.continue_run(run, int(n or 0))
    except Exception as exc:
        return R.err(exc), gr.skip(), gr.skip(), gr.skip()
    if latest is None:  # stopped before its first checkpoint: it starts again with its own settings
        text = f"Starting {run!r} again from scratch with its settings ({total:,} steps): it was stopped before "
        text += "its first checkpoint. Following it in the Monitor tab."
    else:
        text = f"Continuing {run!r} from step {rundir.step_of(latest)} to a new total of {total:,} steps. "
        text += "Following it in the Monitor tab."
    done = R.msg(text, "ok")
    return done, gr.update(choices=sh.run_choices(), value=run), gr.Tabs(selected="monitor"), done


def on_continue_job(sh: Shared, run: str, n: Any, token: Any = None):
    """Continue the Hugging Face Job run ``run`` for ``n`` more steps as a new job (the signed-in user's
    ``token``, else HF_TOKEN): the same outputs as :func:`on_continue`."""
    from .. import jobruns

    try:
        total = jobruns.continue_job(sh.ws, run, int(n or 0), token=access.token_value(token))
    except Exception as exc:
        return access.safe_text(R.err(exc), token), gr.skip(), gr.skip(), gr.skip()
    rec = rundir.read_remote_job(sh.ws.run_dir(run))
    done = R.msg(
        f"Launched job {rec['job_id']} on {rec['flavor']}: it resumes {run!r} from step {rec['step']:,} (the last "
        f"checkpoint pushed to {rec['repo']}) to a new total of {total:,} steps. Following it in the Monitor tab.",
        "ok",
    )
    return done, gr.update(choices=sh.run_choices(), value=run), gr.Tabs(selected="monitor"), done


def on_delete(sh: Shared, run: str, confirmed: bool) -> tuple[str, Any]:
    """Delete ``run`` once its confirmation is ticked: the message, and the confirmation cleared."""
    if not run:
        return R.err(RunnerError("choose the run to delete (the Run picker above)")), gr.skip()
    if not confirmed:
        n = len(checkpoint_steps(sh.ws.run_dir(run)))
        return (
            R.msg(
                f"Deleting {run!r} removes its {n} checkpoint{'s' if n != 1 else ''}, metrics and log for good: "
                'tick "Yes, delete this run" and press Delete run again.',
                "warn",
            ),
            gr.skip(),
        )
    try:
        if jobruns.is_job_run(sh.ws, run) and jobruns.view(sh.ws, run).active:
            raise RunnerError(f"run {run!r}'s Hugging Face Job is still running: stop it before deleting the run")
        sh.runner.delete(run)
    except Exception as exc:
        return R.err(exc), False
    return R.msg(f"Deleted run {run!r}; its name can be used again.", "ok"), False


def on_finetune(sh: Shared, run, name, source, train_file, val_file, steps, lora):
    """Fine-tune ``run`` into a new run: the message, the Monitor's run, the tab to show, the Monitor's banner."""
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
        return R.err(exc), gr.skip(), gr.skip(), gr.skip()
    done = R.msg(
        f"Fine-tuning {run!r} into the new run {name!r} ({int(steps or 200):,} steps"
        f"{', LoRA' if lora else ''}). Following it in the Monitor tab; chat with it in the Chat tab "
        "when it has a checkpoint.",
        "ok",
    )
    return done, gr.update(choices=sh.run_choices(), value=name), gr.Tabs(selected="monitor"), done
