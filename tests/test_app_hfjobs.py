"""A run as a Hugging Face Job (openllm.app.hfjobs): a CONTRACT test at huggingface_hub's Jobs API boundary
(a recording stand-in for HfApi's run_job / fetch_job_logs / cancel_job: the arguments, the token passed as a
secret and nowhere else, the logs streamed, Ctrl-C cancelling), and the job's own entry point run for real,
on CPU, against a local hub: it trains, pushes checkpoints and metrics, and a second job continues the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from openllm import rundir
from openllm.app import hfjobs as J
from openllm.errors import OpenLLMError
from openllm.hub import LocalHub

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "hf_jobs_secret_token_value"


class RecordingJobsApi:
    """Records the Jobs calls; answers with the shapes huggingface_hub returns."""

    def __init__(self, logs=(), interrupt_after: int | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.logs = list(logs)
        self.interrupt_after = interrupt_after

    def run_job(self, **kw):
        self.calls.append(("run_job", kw))
        return SimpleNamespace(id="job-123", url="https://huggingface.co/jobs/me/job-123")

    def fetch_job_logs(self, **kw):
        self.calls.append(("fetch_job_logs", kw))
        for i, line in enumerate(self.logs):
            if self.interrupt_after is not None and i == self.interrupt_after:
                raise KeyboardInterrupt
            yield line

    def cancel_job(self, **kw):
        self.calls.append(("cancel_job", kw))


def test_where_a_run_trains():
    assert J.parse_target(None) is None and J.parse_target("local") is None
    assert J.parse_target("hf-jobs") == J.DEFAULT_FLAVOR and J.parse_target("hf-jobs:h200x8") == "h200x8"
    with pytest.raises(OpenLLMError, match="use 'local' \\(default\\) or 'hf-jobs\\[:FLAVOR\\]'"):
        J.parse_target("slurm")
    # a flavor huggingface_hub's JobHardware does not list is refused before anything is uploaded
    with pytest.raises(OpenLLMError, match="a10g-smal: no such Hugging Face Jobs flavor; use one of .*a10g-small"):
        J.parse_target("hf-jobs:a10g-smal")


def _inputs(tmp_path: Path, steps: int) -> tuple[Path, Path]:
    from test_batches import random_data
    from test_train import tiny_cfg

    data = random_data(tmp_path / "tokens", vocab_size=64, train_tokens=20000, val_tokens=2000)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_cfg(max_steps=steps, save_every=5, eval_every=5)))
    return cfg, data


@pytest.mark.slow  # real git for the inputs' upload
def test_launch_passes_the_token_as_a_secret_streams_logs_and_cancels_on_ctrl_c(tmp_path, monkeypatch):
    cfg, data = _inputs(tmp_path, 10)
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = RecordingJobsApi(logs=["step 1 loss 4.1\n", "step 2 loss 4.0\n", "never read"], interrupt_after=2)
    printed: list[str] = []
    req = J.JobRequest("r1", cfg, data, "me/job", flavor="a10g-large", max_steps=10)
    job = J.launch(req, api=api, hub=hub, package="openllm @ git+https://example.org/openllm", out=printed.append)
    assert job.id == "job-123"
    names = [c[0] for c in api.calls]
    assert names == ["run_job", "fetch_job_logs", "cancel_job"]
    run = api.calls[0][1]
    assert run["flavor"] == "a10g-large" and run["image"] == J.DEFAULT_IMAGE and run["token"] == TOKEN
    assert run["secrets"] == {"HF_TOKEN": TOKEN}  # the token as a secret ...
    assert TOKEN not in json.dumps(run["command"]) and TOKEN not in json.dumps(run["env"])  # ... and nowhere else
    script = run["command"][-1]
    assert run["command"][:2] == ["bash", "-c"]
    assert script.startswith("pip install --quiet 'openllm @ git+https://example.org/openllm' && exec python -m ")
    assert "openllm.app.hfjobs run --repo me/job --hub hf --name r1 --max-steps 10" in script
    assert api.calls[1][1] == {"job_id": "job-123", "follow": True, "token": TOKEN}
    assert api.calls[2][1] == {"job_id": "job-123", "token": TOKEN}
    assert printed[1:3] == ["step 1 loss 4.1", "step 2 loss 4.0"] and "cancelled" in printed[-1]
    # the inputs went to the run's repository first, in the app workspace's layout
    files = set(hub.list_files(repo_id="me/job", repo_type="dataset"))
    assert "jobs/r1/config.json" in files and "jobs/r1/data/tokens/meta.json" in files

    # no token: refused before anything is uploaded or started
    monkeypatch.delenv("HF_TOKEN")
    api2 = RecordingJobsApi()
    with pytest.raises(OpenLLMError, match="set HF_TOKEN"):
        J.launch(J.JobRequest("r2", cfg, data, "me/job2"), api=api2, hub=hub)
    assert api2.calls == [] and not hub.repo_exists(repo_id="me/job2", repo_type="dataset")


@pytest.mark.slow
def test_the_jobs_entry_point_trains_pushes_and_a_second_job_continues_the_run(tmp_path, monkeypatch):
    steps = 10
    cfg, data = _inputs(tmp_path, steps)
    hub_dir = tmp_path / "hub"
    hub = LocalHub(hub_dir)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    J.launch(J.JobRequest("r1", cfg, data, "me/job"), api=RecordingJobsApi(), hub=hub, follow=False)
    work = tmp_path / "job"  # the job machine's folder (the same path in every job of the run)
    entry = [sys.executable, "-m", "openllm.app.hfjobs", "run", "--repo", "me/job", "--hub", str(hub_dir)]
    entry += ["--name", "r1", "--workdir", str(work), "--interval", "0.5"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "OPENLLM_CACHE": str(tmp_path / "cache")}
    res = subprocess.run(entry, capture_output=True, text=True, timeout=300, env={**_env(), **env})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== training r1 on 1 CPU process" in res.stdout
    files = set(hub.list_files(repo_id="me/job", repo_type="dataset"))
    assert {f"runs/r1/checkpoints/{rundir.step_name(s)}/state.json" for s in (steps,)} <= files
    assert "runs/r1/metrics.jsonl" in files

    # a second job on a new machine (the folder is gone) continues the run from what the first pushed
    import shutil

    shutil.rmtree(work)
    res = subprocess.run([*entry, "--max-steps", str(2 * steps)], capture_output=True, text=True, timeout=300,
                         env={**_env(), **env})  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming from" in res.stderr
    back = hub.download(repo_id="me/job", repo_type="dataset", local_dir=tmp_path / "check")
    metrics = rundir.read_metrics(back / "runs" / "r1")
    assert [r["step"] for r in metrics] == list(range(1, 2 * steps + 1))
    assert json.loads((back / "runs/r1/status.json").read_text())["state"] == "finished"


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}


@pytest.mark.slow
def test_the_job_stops_with_a_last_checkpoint_when_the_repository_asks_it_to(tmp_path, monkeypatch):
    """The app's Stop: a file in the repository (hfjobs.stop_file) makes the running job's trainer save a
    checkpoint and stop; the job pushes it and ends by itself (no cancel needed)."""
    import time

    from openllm.hub import CommitOperationAdd

    cfg, data = _inputs(tmp_path, 100_000)  # far more steps than it will reach
    settings = json.loads(cfg.read_text())
    settings["train"].update(save_every=20, eval_every=20)  # fewer checkpoints to push while it runs
    cfg.write_text(json.dumps(settings))
    hub_dir = tmp_path / "hub"
    hub = LocalHub(hub_dir)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    J.launch(J.JobRequest("r1", cfg, data, "me/job"), api=RecordingJobsApi(), hub=hub, follow=False)
    entry = [sys.executable, "-m", "openllm.app.hfjobs", "run", "--repo", "me/job", "--hub", str(hub_dir)]
    entry += ["--name", "r1", "--workdir", str(tmp_path / "job"), "--interval", "0.5"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "OPENLLM_CACHE": str(tmp_path / "cache")}
    log = open(tmp_path / "job.log", "w+")  # a file, not a pipe nobody reads while it trains
    proc = subprocess.Popen(entry, stdout=log, stderr=subprocess.STDOUT, text=True, env={**_env(), **env})
    try:
        deadline = time.monotonic() + 240
        ckpts: list[str] = []
        while not ckpts and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)  # the first checkpoint pushed: training runs
            ckpts = [f for f in hub.list_files(repo_id="me/job", repo_type="dataset") if f.endswith("/state.json")]
        assert ckpts, (tmp_path / "job.log").read_text()
        ask = CommitOperationAdd(path_in_repo=J.stop_file("r1"), path_or_fileobj=b"job-123")
        hub.create_commit(repo_id="me/job", repo_type="dataset", operations=[ask], commit_message="stop")
        proc.wait(timeout=240)
    finally:
        proc.kill()
        log.close()
    out = (tmp_path / "job.log").read_text()
    assert proc.returncode == 0, out
    assert "== stop asked from the app: saving a checkpoint, then stopping" in out
    back = hub.download(repo_id="me/job", repo_type="dataset", local_dir=tmp_path / "check")
    status = json.loads((back / "runs/r1/status.json").read_text())
    assert status["state"] == "stopped" and 0 < status["step"] < 100_000
    assert rundir.step_of(rundir.latest_checkpoint(back / "runs" / "r1")) == status["step"]  # the last checkpoint


@pytest.mark.slow  # real git for the inputs' upload
def test_a_preset_name_is_a_config_for_a_job_as_everywhere_else(tmp_path):
    from openllm.config import load_config

    _, data = _inputs(tmp_path, 2)
    hub = LocalHub(tmp_path / "hub")
    J.upload_inputs(J.JobRequest("r1", "tiny", data, "me/job"), hub)
    got = hub.download(repo_id="me/job", repo_type=J.REPO_TYPE, local_dir=tmp_path / "got")
    assert (Path(got) / "jobs/r1/config.json").read_text() == load_config("tiny").to_json()
    with pytest.raises(OpenLLMError, match="config file not found: nope.json"):
        J.upload_inputs(J.JobRequest("r2", "nope.json", data, "me/job"), hub)
