"""Runs bigger than the machine: a training run as a Hugging Face Job (``openllm train --on hf-jobs[:FLAVOR]``).

:func:`launch` (here) puts the run's inputs -- its config and tokenized data -- into the run's hub repository
(a dataset repository, in the app workspace's layout: ``jobs/NAME/config.json``, ``jobs/NAME/data/tokens/``),
then starts the job with ``huggingface_hub``'s Jobs API (``HfApi.run_job``): the job installs this package and
runs :func:`job_main` (``python -m openllm.app.hfjobs run --repo OWNER/NAME --hub hf --name NAME``), which
restores that layout from the repository (inputs, and the checkpoints of an earlier job when the run is
continued), trains with ``torchrun`` on all the machine's GPUs (one plain process where there is at most one),
and pushes ``runs/NAME`` -- checkpoints, metrics, status -- to the repository after each checkpoint and at the
end (:class:`openllm.app.storage.WorkspaceMirror`: the same mirror, the same layout as the app's workspace).
:func:`launch` then streams the job's logs; Ctrl-C cancels the job (the checkpoints it pushed stay). While it
trains, the job looks for :func:`stop_file` in the repository (the app's Stop) and, when it appears, has its
trainer save a checkpoint and stop, pushes it and ends.

The Hugging Face token goes to the job as a **secret** (``secrets={"HF_TOKEN": ...}``), never in its command
line or its plain environment, which the Jobs page shows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..errors import OpenLLMError
from ..hub import CommitOperationAdd, CommitOperationDelete, Hub, get_hub
from .storage import REPO_TYPE, WorkspaceMirror
from .workspace import Workspace, check_name

__all__ = [
    "JobRequest",
    "parse_target",
    "flavors",
    "stop_file",
    "launch",
    "job_command",
    "job_main",
    "DEFAULT_FLAVOR",
    "DEFAULT_IMAGE",
]

# the package (openllm, or training in a Space), also when this module runs as ``python -m``
PKG = (__spec__.name if __spec__ is not None else __name__).split(".")[0]
DEFAULT_FLAVOR = "a10g-small"
# a CUDA image with Python and pip; OPENLLM_JOB_IMAGE overrides it
DEFAULT_IMAGE = "pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime"
PACKAGE_ENV = "OPENLLM_JOB_PACKAGE"  # what the job pip-installs: this package's source (a git URL, a wheel URL)
IMAGE_ENV = "OPENLLM_JOB_IMAGE"
WORKDIR = "/tmp/openllm-job"  # the job's folder: the same path in every job of a run (its checkpoints name it)
# the file in the repository that asks the run's job to save a checkpoint and stop (the app's Stop): the job
# looks for it as often as it mirrors; a new job's upload of its inputs removes an old one. Outside the mirrored
# folders (storage.DURABLE), so the job's mirror neither restores nor deletes it.
STOP_FILE = "control/{name}/stop-requested"


def stop_file(name: str) -> str:
    """The repository path that asks run ``name``'s job to stop."""
    return STOP_FILE.format(name=check_name(name, "run name"))


def parse_target(on: str | None) -> str | None:
    """``--on``: None/``local`` -> None (train here); ``hf-jobs`` or ``hf-jobs:FLAVOR`` -> the flavor."""
    text = (on or "local").strip()
    if text == "local":
        return None
    kind, _, flavor = text.partition(":")
    if kind != "hf-jobs":
        raise OpenLLMError(f"--on {text!r}: use 'local' (default) or 'hf-jobs[:FLAVOR]', e.g. hf-jobs:a10g-large")
    flavor = flavor.strip() or DEFAULT_FLAVOR
    known = flavors()
    # checked here, before the inputs are uploaded: the Jobs API would refuse it only after that
    if known and flavor not in known:
        raise OpenLLMError(
            f"--on hf-jobs:{flavor}: no such Hugging Face Jobs flavor; use one of {', '.join(known)} "
            f"(a newer huggingface_hub may know newer ones)"
        )
    return flavor


def flavors() -> list[str]:
    """The Jobs hardware flavors the installed huggingface_hub knows (empty for one too old to list them)."""
    try:
        from huggingface_hub import JobHardware  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return []
    return [str(h.value) for h in JobHardware]


@dataclass
class JobRequest:
    """A run to train as a job: its name, config file, tokenized data folder and hub repository."""

    name: str
    config: str | Path  # a preset name or a config file, as everywhere else
    data: Path
    repo: str
    flavor: str = DEFAULT_FLAVOR
    max_steps: int | None = None
    timeout: str | None = None


def job_command(req: JobRequest, *, package: str, hub: str = "hf") -> list[str]:
    """The job's command line: install the package, then the entry point. No token in it."""
    run = [
        "python",
        "-m",
        f"{PKG}.app.hfjobs",
        "run",
        "--repo",
        req.repo,
        "--hub",
        hub,
        "--name",
        req.name,
    ]
    if req.max_steps:
        run += ["--max-steps", str(req.max_steps)]
    install = f"pip install --quiet {_quote(package)}"
    return ["bash", "-c", f"{install} && exec {' '.join(_quote(a) for a in run)}"]


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def upload_inputs(req: JobRequest, hub: Hub) -> str:
    """The config and the tokenized data into the repository (one commit; created private where the hub has
    accounts); returns the commit."""
    from ..config import load_config

    check_name(req.name, "run name")
    config = load_config(req.config).to_json().encode()  # the whole config the job trains with, presets resolved
    if not (req.data / "meta.json").is_file():
        raise OpenLLMError(
            f"--data {req.data}: not a tokenized data folder (no meta.json; make one with openllm tokenize)",
            path=req.data,
        )
    hub.create_repo(repo_id=req.repo, repo_type=REPO_TYPE, exist_ok=True, private=hub.name == "hf")
    base = f"jobs/{req.name}"
    ops: list[Any] = [CommitOperationAdd(path_in_repo=f"{base}/config.json", path_or_fileobj=config)]
    if stop_file(req.name) in hub.list_files(repo_id=req.repo, repo_type=REPO_TYPE):
        ops.append(CommitOperationDelete(path_in_repo=stop_file(req.name)))  # an earlier job's, not this one's
    from ..hub import folder_files

    for rel, src in folder_files(req.data):
        ops.append(CommitOperationAdd(path_in_repo=f"{base}/data/tokens/{rel}", path_or_fileobj=str(src)))
    return hub.create_commit(
        repo_id=req.repo, repo_type=REPO_TYPE, operations=ops, commit_message=f"inputs of run {req.name}"
    )


def launch(
    req: JobRequest,
    *,
    api: Any = None,
    hub: Hub | str | None = "hf",
    token: str | None = None,
    package: str | None = None,
    image: str | None = None,
    follow: bool = True,
    out: Callable[[str], None] = print,
) -> Any:
    """Upload the inputs, start the job (``api.run_job``), stream its logs while ``follow``; Ctrl-C cancels
    it. Returns the job's info (``JobInfo``: ``.id``, ``.url``)."""
    token = token if token is not None else os.environ.get("HF_TOKEN")
    if not token:
        raise OpenLLMError("a Hugging Face Job needs a token with write access: set HF_TOKEN")
    package = package or os.environ.get(PACKAGE_ENV) or PKG
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    the_hub = hub if isinstance(hub, Hub) else get_hub(hub)
    upload_inputs(req, the_hub)
    job = api.run_job(
        image=image or os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE,
        command=job_command(req, package=package, hub="hf"),
        env={"PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
        secrets={"HF_TOKEN": token},
        flavor=req.flavor,
        timeout=req.timeout,
        labels={"openllm-run": req.name},
        token=token,
    )
    out(f"job {job.id} on {req.flavor}: {getattr(job, 'url', '')}  (run {req.name}, repository {req.repo})")
    if not follow:
        return job
    try:
        for line in api.fetch_job_logs(job_id=job.id, follow=True, token=token):
            out(line.rstrip("\n"))
    except KeyboardInterrupt:
        api.cancel_job(job_id=job.id, token=token)
        out(f"job {job.id} cancelled; the checkpoints it pushed are in {req.repo} (runs/{req.name}/)")
    return job


# --- inside the job ------------------------------------------------------------------------------------------


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def job_main(argv: list[str] | None = None) -> int:
    """The job's entry point (also runnable locally, on CPU, against a local hub)."""
    p = argparse.ArgumentParser(prog=f"python -m {PKG}.app.hfjobs run")
    p.add_argument("--repo", required=True)
    p.add_argument("--hub", default="hf")
    p.add_argument("--name", required=True)
    p.add_argument("--workdir", default=WORKDIR)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between looks for a new checkpoint")
    args = p.parse_args(argv)
    ws = Workspace(args.workdir)
    mirror = WorkspaceMirror(ws, get_hub(args.hub), args.repo, interval=args.interval)
    mirror.restore()  # the inputs, and the checkpoints of an earlier job of this run
    job, run = ws.job_dir(args.name), ws.run_dir(args.name)
    if not (job / "config.json").is_file():
        raise OpenLLMError(f"{args.repo} holds no inputs for run {args.name!r} (jobs/{args.name}/config.json)")
    cmd = ["-m", PKG, "train", "--out", str(run), "--no-progress"]
    if rundir.latest_checkpoint(run) is None:  # a continued run resumes from its checkpoint, which names the rest
        cmd += ["--config", str(job / "config.json"), "--data", str(job / "data" / "tokens")]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    n = _gpus()
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}"] if n > 1 else [sys.executable]
    print(f"== training {args.name} on {max(n, 1)} {'GPU' if n else 'CPU process'}{'s' if n > 1 else ''}", flush=True)
    mirror.start()
    done = threading.Event()
    watcher = threading.Thread(
        target=_watch_stop, args=(mirror.hub, args.repo, args.name, run, done, args.interval), daemon=True
    )
    watcher.start()
    try:
        rc = subprocess.call([*launcher, *cmd], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        done.set()
        mirror.close(final=True)  # the last checkpoint, the metrics and the end state
    print(f"== pushed runs/{args.name} to {mirror.where()} ({mirror.commits} commits)", flush=True)
    return rc


def _watch_stop(hub: Hub, repo: str, name: str, run: Path, done: threading.Event, interval: float) -> None:
    """Until training ends: when the repository holds :func:`stop_file` (the app's Stop), ask the trainer to
    stop (:func:`openllm.rundir.request_stop`: it saves a checkpoint, which the mirror pushes, then exits)."""
    path = stop_file(name)
    while not done.wait(interval):
        try:
            if path in hub.list_files(repo_id=repo, repo_type=REPO_TYPE):
                rundir.request_stop(run)
                print("== stop asked from the app: saving a checkpoint, then stopping", flush=True)
                return
        except Exception:  # the hub unreachable for a moment, or training not started yet: look again
            continue


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "run":
        print(f"usage: python -m {PKG}.app.hfjobs run --repo OWNER/NAME --name RUN [--hub hf]", file=sys.stderr)
        return 2
    try:
        return job_main(argv[1:])
    except OpenLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
