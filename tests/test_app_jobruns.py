"""The app's runs on Hugging Face Jobs (openllm.app.jobruns): a CONTRACT test at huggingface_hub's Jobs API
boundary (a recording stand-in for HfApi's run_job / inspect_job / fetch_job_logs / cancel_job, in the style of
test_app_hfjobs.py) with the run's repository on a real local hub: launch (the token a secret, never an
argument, never written), watch (stage, pushed metrics, log tail), stop (cancel), continue (a new job from the
last pushed checkpoint), and the record surviving a restart. Plus the access rule: a visitor of a Space is
refused server-side before anything reaches the Jobs API."""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from openllm import rundir
from openllm.app import hfjobs, jobruns
from openllm.app.workspace import Workspace
from openllm.config import Config
from openllm.hub import CommitOperationAdd, LocalHub

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "hf_user_token_of_the_session_0123"
SECRET = "hf_space_secret_token_4567"


class StandInJobsApi:
    """Records the Jobs calls; answers with the shapes huggingface_hub returns (JobInfo.id/.url/.status.stage)."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.stage = "SCHEDULING"
        self.logs = [f"step {i} loss {5 - i / 10:.2f}\n" for i in range(60)]

    def run_job(self, **kw):
        self.calls.append(("run_job", kw))
        n = sum(c[0] == "run_job" for c in self.calls)
        return SimpleNamespace(id=f"job-{n}", url=f"https://huggingface.co/jobs/me/job-{n}")

    def inspect_job(self, **kw):
        self.calls.append(("inspect_job", kw))
        return SimpleNamespace(id=kw["job_id"], status=SimpleNamespace(stage=self.stage, message=None))

    def fetch_job_logs(self, **kw):
        self.calls.append(("fetch_job_logs", kw))
        lines = self.logs[-kw["tail"] :] if kw.get("tail") else self.logs
        yield from lines

    def cancel_job(self, **kw):
        self.calls.append(("cancel_job", kw))

    def named(self, name):
        return [kw for n, kw in self.calls if n == name]


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test a fresh app process: nothing remembered of earlier jobs, no HF_TOKEN unless set."""
    monkeypatch.setattr(jobruns, "_tokens", {})
    monkeypatch.setattr(jobruns, "_seen", {})
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _inputs(tmp_path: Path) -> tuple[Config, Path]:
    from test_batches import random_data
    from test_train import tiny_cfg

    data = random_data(tmp_path / "ws" / "corpora" / "tokens", vocab_size=64, train_tokens=2000, val_tokens=400)
    return Config.from_dict(tiny_cfg(max_steps=10, save_every=5, eval_every=5)), data


def test_flavors_are_the_ones_huggingface_hub_knows():
    from huggingface_hub import JobHardware

    names = jobruns.flavors()
    assert set(names) == {h.value for h in JobHardware} and names[0] == "a10g-small"


def test_without_a_token_nothing_is_uploaded_or_launched(tmp_path):
    cfg, data = Config(), tmp_path / "tokens"
    data.mkdir()
    (data / "meta.json").write_text("{}")  # only looked for: nothing gets as far as reading it
    ws, hub, api = Workspace(tmp_path / "ws"), LocalHub(tmp_path / "hub"), StandInJobsApi()
    with pytest.raises(jobruns.JobRunError, match="sign in with Hugging Face .* or set HF_TOKEN"):
        jobruns.launch(ws, "r1", cfg, data, "me/job", "a10g-small", token=None, api=api, hub=hub)
    # an untokenized corpus and an unknown flavor are refused before anything is uploaded, too
    with pytest.raises(jobruns.JobRunError, match="trains on tokenized data"):
        jobruns.launch(ws, "r1", cfg, tmp_path, "me/job", "a10g-small", token=TOKEN, api=api, hub=hub)
    with pytest.raises(jobruns.JobRunError, match="not a Hugging Face Jobs flavor"):
        jobruns.launch(ws, "r1", cfg, data, "me/job", "a10g-tiny", token=TOKEN, api=api, hub=hub)
    assert api.calls == [] and not ws.run_dir("r1").exists()
    assert not hub.repo_exists(repo_id="me/job", repo_type="dataset")


def test_a_failed_job_and_an_unreachable_jobs_api_are_shown(tmp_path):
    ws, hub = Workspace(tmp_path / "ws"), LocalHub(tmp_path / "hub")
    rundir.write_remote_job(ws.run_dir("r1"), job_id="job-9", repo="me/none", hub=str(hub.root), flavor="a10g-small",
                            max_steps=10, stage="RUNNING")  # fmt: skip
    api = StandInJobsApi()
    api.stage = "ERROR"  # e.g. the image could not be pulled: nothing was pushed
    jv = jobruns.view(ws, "r1", token=TOKEN, api=api, hub=hub)
    assert (jv.state, jv.active, jv.error) == (rundir.FAILED, False, "the job failed: see its log")

    class Down(StandInJobsApi):
        def inspect_job(self, **kw):
            raise ConnectionError(f"connection refused (token {TOKEN})")

    shown = jobruns.view(ws, "r1", token=TOKEN, api=Down(), hub=hub, force=True).log
    assert shown.startswith("(could not ask Hugging Face about job job-9: connection refused") and TOKEN not in shown
    assert shown.endswith(api.logs[-1].strip())  # the last log it gave stays under the note


def _push(hub: LocalHub, steps: int, state: str, ckpt: int) -> None:
    """What the job's mirror pushes: the run's metrics, status and a checkpoint's state.json (written last)."""
    metrics = "".join(
        json.dumps({"step": s, "loss": 5.0 - s / 10, "tokens_per_s": 1000.0}) + "\n" for s in range(1, steps + 1)
    )
    files = {
        "runs/r1/metrics.jsonl": metrics.encode(),
        "runs/r1/status.json": json.dumps({"state": state, "step": steps, "max_steps": 10}).encode(),
        f"runs/r1/checkpoints/{rundir.step_name(ckpt)}/state.json": b"{}",
    }
    ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()]
    hub.create_commit(repo_id="me/job", repo_type="dataset", operations=ops, commit_message="job push")


@pytest.mark.slow  # real git (the local hub) for the inputs and the pushes: ~3 s
def test_launch_watch_stop_and_continue_a_job_run(tmp_path, monkeypatch):
    import huggingface_hub

    cfg, data = _inputs(tmp_path)
    ws, hub, api = Workspace(tmp_path / "ws"), LocalHub(tmp_path / "hub"), StandInJobsApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)  # the app's tabs make their own

    rec = jobruns.launch(ws, "r1", cfg, data, "me/job", "a10g-large", token=TOKEN, api=api, hub=hub)
    (run,) = api.named("run_job")
    assert run["flavor"] == "a10g-large" and run["secrets"] == {"HF_TOKEN": TOKEN} and run["token"] == TOKEN
    assert TOKEN not in json.dumps([run["command"], run["env"]])  # a secret, never an argument
    assert "--name r1 --max-steps 10" in run["command"][-1]
    assert rec["job_id"] == "job-1" and jobruns.is_job_run(ws, "r1") and "r1" in ws.run_names()
    assert "jobs/r1/config.json" in hub.list_files(repo_id="me/job", repo_type="dataset")
    assert TOKEN not in (ws.run_dir("r1") / rundir.REMOTE_JOB).read_text()  # the record keeps no token
    assert (rec["config"], rec["data"]) == (
        "jobs/r1/config.json",
        "corpora/tokens",
    )  # found again if restored elsewhere

    # watching: the stage, the metrics the job pushed (copied into the run folder), the log's tail
    _push(hub, 7, rundir.TRAINING, 5)
    api.stage = "RUNNING"
    jv = jobruns.view(ws, "r1", api=api, hub=hub)
    assert (jv.state, jv.stage, jv.step, jv.max_steps, jv.active) == (rundir.TRAINING, "RUNNING", 7, 10, True)
    assert jv.checkpoints == [5] and [r["step"] for r in rundir.read_metrics(ws.run_dir("r1"))] == list(range(1, 8))
    assert jv.log.splitlines() == [x.strip() for x in api.logs[-jobruns.LOG_LINES :]]
    assert api.named("fetch_job_logs")[-1] == {"job_id": "job-1", "follow": False, "tail": 40, "token": TOKEN}
    asked = len(api.calls)
    jobruns.view(ws, "r1", api=api, hub=hub)  # the timer's next tick: not asked again before POLL_S
    assert len(api.calls) == asked
    # the Monitor tab's view of it (what the app's timer shows)
    from openllm.app.runner import Runner
    from openllm.app.tabs import monitor
    from openllm.app.tabs.shared import Shared

    sh = Shared(ws, Runner(ws))
    page, fig, log, count, stop_btn = monitor.view(sh, "r1", None)
    assert 'id="job-info"' in page and "job-1" in page and "a10g-large" in page and "me/job" in page
    assert "step 5" in page and log == jv.log and count == ("r1", 7, rundir.TRAINING) and stop_btn["interactive"]

    # stop: first the job is asked for a last checkpoint (a file in the repository it looks for) ...
    files = lambda: set(hub.list_files(repo_id="me/job", repo_type="dataset"))
    assert not jobruns.stop(ws, "r1", token=None, api=api, hub=hub)["cancelled"]
    assert hfjobs.stop_file("r1") in files() and api.named("cancel_job") == []
    assert jobruns.view(ws, "r1", api=api, hub=hub).state == rundir.STOPPING
    # ... a second Stop cancels it at once, with the token that launched it
    assert jobruns.stop(ws, "r1", token=None, api=api, hub=hub)["cancelled"]
    assert api.named("cancel_job") == [{"job_id": "job-1", "token": TOKEN}]
    api.stage = "CANCELED"  # as the Jobs API answers from then on
    with pytest.raises(jobruns.JobRunError, match="nothing to stop"):
        jobruns.stop(ws, "r1", token=TOKEN, api=api)
    # the Models tab: listed as a stopped job run, Continue and Delete offered, Push not (its weights are remote)
    from openllm.app.tabs import models

    assert ["r1", "stopped (Hugging Face Job)", "7 / 10"] == models.runs_table(sh)[0][:3]
    _, _, push, again, delete, _ = models.preview(sh, "r1", None)
    assert (push["interactive"], again["interactive"], delete["interactive"]) == (False, True, True)

    # the app restarts (a new process: no token in memory); without one, continuing says how to get one
    monkeypatch.setattr(jobruns, "_tokens", {})
    monkeypatch.setattr(jobruns, "_seen", {})
    with pytest.raises(jobruns.JobRunError, match="HF_TOKEN"):
        jobruns.continue_job(ws, "r1", 5, token=None, api=api, hub=hub)
    monkeypatch.setenv("HF_TOKEN", SECRET)  # the Space's secret, nobody signed in
    assert jobruns.view(ws, "r1", api=api, hub=hub).state == rundir.STOPPED
    total = jobruns.continue_job(ws, "r1", 5, token=None, api=api, hub=hub)
    assert total == 10  # from the last pushed checkpoint (step 5), not the last logged step (7)
    second = api.named("run_job")[-1]
    assert second["secrets"] == {"HF_TOKEN": SECRET} and "--name r1 --max-steps 10" in second["command"][-1]
    rec = rundir.read_remote_job(ws.run_dir("r1"))
    assert rec["jobs"] == ["job-1", "job-2"] and rec["job_id"] == "job-2" and rec["stage"] == "SCHEDULING"
    assert hfjobs.stop_file("r1") not in files()  # the first job's stop request does not stop the second
    api.stage = "RUNNING"
    with pytest.raises(jobruns.JobRunError, match="still scheduling: stop it first"):
        jobruns.continue_job(ws, "r1", 5, token=TOKEN, api=api, hub=hub)
    # a job asked to stop that has not ended within the grace is cancelled by the next look
    jobruns.stop(ws, "r1", token=None, api=api, hub=hub)
    monkeypatch.setattr(jobruns, "STOP_GRACE_S", 0.0)
    assert jobruns.view(ws, "r1", api=api, hub=hub, force=True).stage == "CANCELED"
    assert api.named("cancel_job")[-1] == {"job_id": "job-2", "token": SECRET}


class AppApi:
    """The one ``HfApi`` the app makes: the hub adapter's calls (test_hub_hf_contract's RecordingApi) and the
    Jobs calls (StandInJobsApi), in one record."""

    def __init__(self):
        from test_hub_hf_contract import RecordingApi

        self.hub, self.jobs = RecordingApi(), StandInJobsApi()

    def __getattr__(self, name):
        return getattr(self.jobs if hasattr(self.jobs, name) else self.hub, name)


@pytest.mark.slow  # builds the whole app: ~6 s
def test_only_an_owner_launches_stops_or_continues_a_job_from_the_app(tmp_path, monkeypatch):
    import gradio as gr
    import gradio.oauth
    import huggingface_hub

    from openllm.app import access
    from openllm.app.forms import CORPUS_WORKSPACE
    from openllm.app.ui import WRITE_ACTIONS, build_app
    from test_app_access import OWNER_TOKEN, call, session
    from test_batches import random_data

    monkeypatch.setenv("SPACE_ID", "alice/openllm")
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client")
    for name, value in (
        ("OAUTH_CLIENT_ID", "client"),
        ("OAUTH_CLIENT_SECRET", "secret"),
        ("OAUTH_SCOPES", "openid profile write-repos"),
        ("OPENID_PROVIDER_URL", "https://huggingface.co"),
    ):
        monkeypatch.setattr(gradio.oauth, name, value)  # what a Space with hf_oauth: true gives gradio
    monkeypatch.setenv("HF_TOKEN", SECRET)  # the owner's secret is set: a visitor must still not use it
    api = AppApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: api)
    random_data(tmp_path / "ws" / "corpora" / "tokens", vocab_size=64, train_tokens=2000, val_tokens=400)
    assert {"train-where", "start-btn", "stop-btn", "monitor-stop", "continue-btn"} <= set(WRITE_ACTIONS)
    demo = build_app(tmp_path / "ws")
    ids = {b._id: getattr(b, "elem_id", None) for b in demo.blocks.values()}
    clicks: dict[str, list] = {}
    for f in demo.fns.values():
        for target, event in f.targets:
            if event == "click" and ids.get(target) in ("start-btn", "stop-btn", "monitor-stop", "continue-btn"):
                clicks.setdefault(ids[target], []).append(f)
    assert set(clicks) == {"start-btn", "stop-btn", "monitor-stop", "continue-btn"}
    # Start asked to launch on Hugging Face Jobs, a tokenized folder of the workspace, a repository filled in
    given = {
        "train-where": "Hugging Face Jobs",
        "corpus-kind": CORPUS_WORKSPACE,
        "corpus-path": "corpora/tokens",
        "job-repo": "alice/job",
        "monitor-run": "run-1",
        "run-name": "run-1",
    }

    def inputs(f):
        return [given.get(getattr(c, "elem_id", None), getattr(c, "value", None)) for c in f.inputs]

    for elem, fns in clicks.items():
        guarded = [f for f in fns if access.is_writer(f.fn)]
        assert guarded, elem
        for f in guarded:
            with pytest.raises(gr.Error, match="sign in with Hugging Face"):
                call(f.fn, session(None), *inputs(f))
            with pytest.raises(gr.Error, match="mallory is not one of this Space's owners"):
                call(f.fn, session("mallory"), *inputs(f))
    assert api.jobs.calls == [] and api.hub.calls == [] and list((tmp_path / "ws" / "runs").iterdir()) == []

    # the owner, signed in: the job is launched with her own token (as a secret), not the Space's
    (start,) = [f for f in clicks["start-btn"] if access.is_writer(f.fn)]
    said = html.unescape(call(start.fn, session("alice"), *inputs(start))[0])
    assert "Launched run 'run-1' as Hugging Face Job job-1 on a10g-small" in said and OWNER_TOKEN not in said
    (run,) = api.jobs.named("run_job")
    assert run["secrets"] == {"HF_TOKEN": OWNER_TOKEN} and SECRET not in json.dumps(run)
    assert [c[2].get("token") for c in api.hub.calls if c[0] == "create_commit"] == [OWNER_TOKEN]
    # the form says 4096 tokens, the tokenized folder 64: as for a local run on it, the data's vocabulary wins
    sent = json.loads((tmp_path / "ws" / "jobs" / "run-1" / "config.json").read_text())
    assert sent["model"]["vocab_size"] == 64 and sent["train"]["max_steps"] == 280  # the tiny preset's
    # ... her Stop asks the job for a last checkpoint, with her token; a second one cancels it
    (stop,) = [f for f in clicks["monitor-stop"] if access.is_writer(f.fn)]
    said = html.unescape(call(stop.fn, session("alice"), *inputs(stop)))
    assert "Asked job job-1 of 'run-1' to save a checkpoint and stop" in said and api.jobs.named("cancel_job") == []
    asked = [c for c in api.hub.calls if c[0] == "create_commit"][-1]
    assert asked[2]["token"] == OWNER_TOKEN and [o.path_in_repo for o in asked[1][1]] == [hfjobs.stop_file("run-1")]
    assert "Cancelled job job-1 of 'run-1'" in html.unescape(call(stop.fn, session("alice"), *inputs(stop)))
    assert api.jobs.named("cancel_job") == [{"job_id": "job-1", "token": OWNER_TOKEN}]
