"""The app's runs on Hugging Face Jobs: launch one, watch it, stop it, continue it. No Gradio here.

The job itself is :mod:`hfjobs`'s (the one launcher: inputs to the run's dataset repository, ``HfApi.run_job``,
the entry point that trains and pushes ``runs/NAME`` after each checkpoint). This module is what the app keeps
of such a run: the run folder ``runs/NAME`` holds its config, a copy of the metrics the job pushed, and the
record of its job (:func:`openllm.rundir.write_remote_job`: job id, flavor, repository, the stage last seen),
so a job run is listed, plotted and continued like any other and survives a restart of the app (the record is
in the workspace, which the app's storage keeps).

Watching asks the Jobs API (``inspect_job``, ``fetch_job_logs``) and pulls the pushed metrics through the hub
interface at most every :data:`POLL_S` seconds per run, and no more once the job has ended and its last
metrics were pulled. Stopping first asks the job to save a checkpoint and stop (a file in the repository the job
looks for, :func:`hfjobs.stop_file`), and cancels it (``cancel_job``) when it has not ended within
:data:`STOP_GRACE_S` or when Stop is pressed again. Continuing launches a new job of the same run, which
restores that checkpoint from the repository and trains on to the new total (:func:`hfjobs.job_main`).

Tokens: the signed-in user's own (for the call it came with; kept in this process's memory only, to watch
the job it launched) or the ``HF_TOKEN`` secret. Never written to the workspace, a log or a message.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import Config
from ..errors import OpenLLMError
from ..fsio import write_text_atomic
from ..hub import CommitOperationAdd, Hub, get_hub, validate_repo_id
from ..redact import redact
from . import hfjobs
from .storage import REPO_TYPE
from .workspace import Workspace

__all__ = [
    "JobRunError",
    "JobView",
    "POLL_S",
    "STAGE_STATES",
    "ACTIVE_STAGES",
    "flavors",
    "resolve_token",
    "is_job_run",
    "launch",
    "view",
    "stop",
    "continue_job",
]

POLL_S = 10.0  # the app's timer ticks every 2 s; the Jobs API and the repository are asked at most this often
# how long a job asked to stop may take to save and push its last checkpoint before the app cancels it
STOP_GRACE_S = 600.0
LOG_LINES = 40
ACTIVE_STAGES = ("SCHEDULING", "RUNNING")
# a job's stage as the run's state the Monitor shows
STAGE_STATES = {
    "SCHEDULING": rundir.QUEUED,
    "RUNNING": rundir.TRAINING,
    "COMPLETED": rundir.FINISHED,
    "CANCELED": rundir.STOPPED,
    "ERROR": rundir.FAILED,
    "DELETED": rundir.STOPPED,
}
NO_TOKEN = (
    "Hugging Face Jobs need a token with write access: sign in with Hugging Face (the button at the top of "
    "a Space), or set HF_TOKEN (a token from https://huggingface.co/settings/tokens) before starting the app"
)
# the tokens that launched a job, by job id: this process's memory only, so the Monitor can watch that job
_tokens: dict[str, str] = {}
# per run: (when last asked, the last log tail it gave, what is shown): the Jobs API and the hub are not asked on
# every timer tick
_seen: dict[tuple[str, str], tuple[float, str, str]] = {}
_lock = threading.Lock()


class JobRunError(OpenLLMError):
    """A job run cannot do what was asked (no token, not a job run, still running, no checkpoint pushed)."""


def flavors() -> list[str]:
    """The Jobs hardware flavors huggingface_hub knows (``JobHardware``), the default first."""
    known = hfjobs.flavors() or [hfjobs.DEFAULT_FLAVOR]
    return sorted(known, key=lambda f: f != hfjobs.DEFAULT_FLAVOR)


def resolve_token(token: str | None) -> str:
    """The signed-in user's token, else HF_TOKEN; neither: :class:`JobRunError` saying how to get one."""
    value = token or os.environ.get("HF_TOKEN", "").strip()
    if not value:
        raise JobRunError(NO_TOKEN)
    return value


def is_job_run(ws: Workspace, name: str | None) -> bool:
    return bool(name) and (ws.run_dir(str(name)) / rundir.REMOTE_JOB).is_file()


def _api(api: Any) -> Any:
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi()


def _hub(record: dict[str, Any], token: str | None, hub: Hub | None) -> Hub:
    if hub is not None:
        return hub
    spec = record.get("hub") or "hf"
    if spec == "hf":
        from ..hub.hf import HfHub

        return HfHub(token=token) if token else HfHub()
    return get_hub(spec)


def _record(ws: Workspace, name: str) -> dict[str, Any]:
    record = rundir.read_remote_job(ws.run_dir(name))
    if not record.get("job_id"):
        raise JobRunError(f"run {name!r} is not a Hugging Face Job run")
    return record


def _start(name: str, config: Path, data: Path, repo: str, flavor: str, max_steps: int | None, **kw: Any) -> Any:
    """One job of run ``name`` through :func:`hfjobs.launch` (inputs uploaded, then ``run_job``)."""
    req = hfjobs.JobRequest(name, config, data, repo, flavor=flavor, max_steps=max_steps)
    return hfjobs.launch(req, follow=False, out=lambda line: None, **kw)


def launch(
    ws: Workspace,
    name: str,
    config: Config,
    data: str | os.PathLike,
    repo: str,
    flavor: str,
    *,
    token: str | None,
    api: Any = None,
    hub: Hub | None = None,
) -> dict[str, Any]:
    """Run ``name`` as a Hugging Face Job on ``flavor``, training ``config`` on the tokenized ``data``,
    pushing to the dataset repository ``repo``; returns the run's job record. Several may run at once."""
    value = resolve_token(token)
    repo = validate_repo_id(str(repo or "").strip())
    if flavor not in flavors():
        raise JobRunError(f"Flavor: {flavor!r} is not a Hugging Face Jobs flavor; choose one of {', '.join(flavors())}")
    data = Path(data)
    if not (data / "meta.json").is_file():
        raise JobRunError(
            "Corpus: a Hugging Face Job trains on tokenized data: choose 'A file or folder in the workspace' and a "
            "tokenized folder (jobs/RUN/data/tokens of a run trained here, or one made with openllm tokenize)"
        )
    run_dir, job_dir = ws.run_dir(name), ws.job_dir(name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise JobRunError(f"a run called {name!r} already exists: choose another run name")
    from ..batches import read_meta

    vocab = int(read_meta(data)["vocab_size"])
    if vocab != config.model.vocab_size:  # as a local run on a tokenized folder: the data's vocabulary wins
        config = config.replace(model={"vocab_size": vocab})
    job_dir.mkdir(parents=True, exist_ok=True)
    cfg_file = job_dir / "config.json"  # the job's input, kept for Continue (which uploads the inputs again)
    config.save(cfg_file)
    the_hub = _hub({"hub": "hf"}, value, hub)
    steps = config.train.max_steps
    job = _start(name, cfg_file, data, repo, flavor, steps, api=_api(api), hub=the_hub, token=value)
    _tokens[job.id] = value
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / rundir.CONFIG)  # the Monitor's tokens per step, the config picker
    return rundir.write_remote_job(
        run_dir,
        kind="hf-jobs",
        job_id=job.id,
        jobs=[job.id],
        url=str(getattr(job, "url", "") or ""),
        repo=repo,
        hub="hf" if hub is None else _hub_spec(the_hub),
        flavor=flavor,
        config=_where(ws, cfg_file),
        data=_where(ws, data),
        max_steps=config.train.max_steps,
        stage="SCHEDULING",
        step=0,
    )


def _where(ws: Workspace, path: Path) -> str:
    """A path as the record keeps it: relative to the workspace when inside it (a workspace restored elsewhere
    after a restart still finds it)."""
    return ws.relative(path) if ws.contains(path) else str(Path(path).resolve())


def _found(ws: Workspace, kept: str) -> Path:
    path = Path(kept)
    return path if path.is_absolute() else ws.root / path


def _hub_spec(hub: Hub) -> str:
    root = getattr(hub, "root", None)
    return str(root) if root is not None else "hf"


def _stage(info: Any) -> str:
    status = getattr(info, "status", None)
    stage = getattr(status, "stage", None) if status is not None else None
    value = getattr(stage, "value", stage)
    return str(value or "SCHEDULING").upper()


def _pull(ws: Workspace, name: str, record: dict[str, Any], hub: Hub) -> dict[str, Any]:
    """The metrics and status the job pushed: the metrics copied into the run folder; returns the job's status."""
    base = f"runs/{name}"
    with tempfile.TemporaryDirectory(prefix=".openllm-pull-", dir=ws.root) as tmp:
        if not hub.repo_exists(repo_id=record["repo"], repo_type=REPO_TYPE):
            return {}
        got = hub.download(
            repo_id=record["repo"],
            repo_type=REPO_TYPE,
            local_dir=tmp,
            # the metrics and the trainer's status (read, never written here: rundir.move is its one writer)
            paths=[f"{base}/{f}" for f in rundir.LIVE_FILES if f != rundir.TB],
        )
        metrics = Path(got) / base / rundir.METRICS
        if metrics.is_file():
            write_text_atomic(ws.run_dir(name) / rundir.METRICS, metrics.read_text(encoding="utf-8"))
        return rundir.read_status(Path(got) / base)


def _tail(lines: Iterable[str], n: int = LOG_LINES) -> str:
    return "\n".join(str(x).rstrip("\n") for x in list(lines)[-n:])


@dataclass
class JobView:
    """What the Monitor shows of a job run."""

    name: str
    state: str  # a rundir state (from the job's stage and what its trainer pushed)
    stage: str  # the job's stage (SCHEDULING, RUNNING, COMPLETED, CANCELED, ERROR, DELETED)
    step: int
    max_steps: int | None
    job_id: str
    url: str
    flavor: str
    repo: str
    log: str
    error: str | None
    checkpoints: list[int]  # the newest checkpoint the job pushed (empty: none yet)

    @property
    def active(self) -> bool:
        return self.stage in ACTIVE_STAGES


def view(
    ws: Workspace, name: str, *, token: str | None = None, api: Any = None, hub: Hub | None = None, force: bool = False
) -> JobView:
    """The job run's state, refreshed from the Jobs API and the repository when :data:`POLL_S` has passed
    (``force``: now); the record is updated, so the last state seen survives a restart."""
    run_dir = ws.run_dir(name)
    record = _record(ws, name)
    key = (str(ws.root), name)
    last, good, log = _seen.get(key, (0.0, "", ""))
    error = record.get("error")
    done = record.get("stage") not in ACTIVE_STAGES and record.get("pulled_final")
    if force or (not done and time.monotonic() - last >= POLL_S) or key not in _seen:
        value = token or _tokens.get(record["job_id"]) or os.environ.get("HF_TOKEN") or None
        try:
            if value is None:
                raise JobRunError(NO_TOKEN.replace("Hugging Face Jobs need", "watching this job needs"))
            the_api = _api(api)
            info = the_api.inspect_job(job_id=record["job_id"], token=value)
            stage = _stage(info)
            lines = the_api.fetch_job_logs(job_id=record["job_id"], follow=False, tail=LOG_LINES, token=value)
            good = log = redact(_tail(lines), [value])  # a job's own output could hold a credential: never shown
            remote = _pull(ws, name, record, _hub(record, value, hub))
            step = int(remote.get("step") or record.get("step") or 0)
            error = remote.get("error") if stage == "ERROR" or remote.get("state") == rundir.FAILED else None
            if stage == "ERROR" and not error:  # the job failed before its training recorded why
                why = getattr(getattr(info, "status", None), "message", None)
                error = f"the job failed: {redact(why, [value])}" if why else "the job failed: see its log"
            latest = _latest_pushed(record, name, _hub(record, value, hub)) if remote else None
            record = rundir.write_remote_job(
                run_dir,
                stage=stage,
                step=step,
                checkpoint=latest,
                trainer_state=remote.get("state"),
                error=error,
                pulled_final=stage not in ACTIVE_STAGES,
            )
            asked = record.get("stop_requested_unix")
            if stage in ACTIVE_STAGES and asked and time.time() - float(asked) > STOP_GRACE_S:
                the_api.cancel_job(job_id=record["job_id"], token=value)  # it did not stop by itself in time
                record = rundir.write_remote_job(run_dir, stage="CANCELED", cancelled=True, pulled_final=False)
        except Exception as exc:  # the network, a token without access: shown, and asked again later
            note = f"(could not ask Hugging Face about job {record['job_id']}: {redact(exc, [value or ''])})"
            log = f"{note}\n{good}" if good else note  # the last log it gave stays under the note
        with _lock:
            _seen[key] = (time.monotonic(), good, log)
    stage = str(record.get("stage") or "SCHEDULING")
    state = STAGE_STATES.get(stage, rundir.QUEUED)
    trainer = record.get("trainer_state")
    if stage == "COMPLETED" and trainer in (rundir.FAILED, rundir.DIVERGED, rundir.STOPPED):
        state = trainer  # the job ended normally, its training did not
    elif stage in ACTIVE_STAGES and record.get("stop_requested_unix"):
        state = rundir.STOPPING
    return JobView(
        name=name,
        state=state,
        stage=stage,
        step=int(record.get("step") or 0),
        max_steps=int(record["max_steps"]) if record.get("max_steps") else None,
        job_id=str(record["job_id"]),
        url=str(record.get("url") or ""),
        flavor=str(record.get("flavor") or ""),
        repo=str(record.get("repo") or ""),
        log=log,
        error=error,
        checkpoints=[int(record["checkpoint"])] if record.get("checkpoint") is not None else [],
    )


def stop(
    ws: Workspace, name: str, *, token: str | None, api: Any = None, hub: Hub | None = None, now: bool = False
) -> dict[str, Any]:
    """Stop the run's job. First ask it to save a checkpoint and stop (:func:`hfjobs.stop_file` committed to
    the repository: the job looks for it every few seconds, asks its trainer to stop, pushes the checkpoint
    and ends); :func:`view` cancels it if it has not ended within :data:`STOP_GRACE_S`. A second Stop, or
    ``now``, cancels it at once (``cancel_job``; the run keeps the last checkpoint it pushed). Returns the
    record (``cancelled``: whether it was cancelled now)."""
    record = _record(ws, name)
    if record.get("stage") not in ACTIVE_STAGES:
        raise JobRunError(f"run {name!r}'s job has ended ({record.get('stage')}): there is nothing to stop")
    value = resolve_token(token or _tokens.get(record["job_id"]))
    _seen.pop((str(ws.root), name), None)
    if now or record.get("stop_requested_unix"):
        _api(api).cancel_job(job_id=record["job_id"], token=value)
        return rundir.write_remote_job(ws.run_dir(name), stage="CANCELED", cancelled=True, pulled_final=False)
    ask = CommitOperationAdd(path_in_repo=hfjobs.stop_file(name), path_or_fileobj=record["job_id"].encode())
    _hub(record, value, hub).create_commit(
        repo_id=record["repo"], repo_type=REPO_TYPE, operations=[ask], commit_message=f"stop run {name}"
    )
    return rundir.write_remote_job(ws.run_dir(name), stop_requested_unix=time.time(), cancelled=False)


def _latest_pushed(record: dict[str, Any], name: str, hub: Hub) -> int | None:
    """The newest complete checkpoint the run's jobs pushed (its ``state.json`` is written last)."""
    prefix = f"runs/{name}/{rundir.CHECKPOINTS}/"
    steps = []
    for path in hub.list_files(repo_id=record["repo"], repo_type=REPO_TYPE):
        if path.startswith(prefix) and path.endswith(f"/{rundir.STATE}"):
            step = rundir.step_of(path[len(prefix) :].split("/")[0])
            if step is not None:
                steps.append(step)
    return max(steps) if steps else None


def continue_job(
    ws: Workspace, name: str, more_steps: int, *, token: str | None, api: Any = None, hub: Hub | None = None
) -> int:
    """A new job of run ``name`` that resumes from the last checkpoint its jobs pushed and trains
    ``more_steps`` more steps; returns the new total."""
    record = _record(ws, name)
    if record.get("stage") in ACTIVE_STAGES:
        raise JobRunError(f"run {name!r}'s job {record['job_id']} is still {record['stage'].lower()}: stop it first")
    if int(more_steps) < 1:
        raise JobRunError("More steps: must be at least 1")
    value = resolve_token(token)
    the_hub = _hub(record, value, hub)
    latest = _latest_pushed(record, name, the_hub)
    if latest is None:
        raise JobRunError(f"run {name!r} pushed no checkpoint to {record['repo']}: start a new run instead")
    total = latest + int(more_steps)
    config, data = _found(ws, record["config"]), _found(ws, record["data"])
    job = _start(name, config, data, record["repo"], record["flavor"], total, api=_api(api), hub=the_hub, token=value)
    _tokens[job.id] = value
    _seen.pop((str(ws.root), name), None)
    rundir.write_remote_job(
        ws.run_dir(name),
        job_id=job.id,
        jobs=[*record.get("jobs", []), job.id],
        url=str(getattr(job, "url", "") or ""),
        max_steps=total,
        stage="SCHEDULING",
        step=latest,
        cancelled=False,
        stop_requested_unix=None,
        error=None,
        trainer_state=None,
        pulled_final=False,
    )
    return total
