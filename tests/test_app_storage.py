"""The app's workspace outlives its machine (openllm.app.storage): where it lives, the mirror to a hub
repository (real local git hub), the restore into an empty workspace, and the whole story with real processes:
an app killed with -9 while it trains, its disk wiped, started again: everything is back and Continue gives
the losses of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openllm import rundir
from openllm.app.storage import DURABLE, WorkspaceMirror, open_storage, storage_config
from openllm.app.workspace import Workspace
from openllm.errors import OpenLLMError
from openllm.hub import LocalHub

REPO = "me/space-workspace"


def test_where_the_workspace_lives_and_whether_it_is_mirrored(tmp_path):
    local = storage_config(env={})
    assert local.workspace == Path.cwd() / "openllm-workspace" and local.repo is None and not local.volume
    # a Space without a volume mirrors by default, into SPACE_ID-workspace on the local hub
    space = storage_config(env={"SPACE_ID": "alice/trainer"})
    assert (space.repo, space.hub, space.space, space.volume) == ("alice/trainer-workspace", "local", True, False)
    # a mounted volume is the workspace, and needs no mirror unless one is named
    vol = storage_config(env={"SPACE_ID": "alice/trainer", "OPENLLM_WORKSPACE": "/data"})
    assert (vol.workspace, vol.repo, vol.volume) == (Path("/data"), None, True)
    named = {"OPENLLM_WORKSPACE": "/data", "OPENLLM_WORKSPACE_REPO": "a/b", "OPENLLM_WORKSPACE_HUB": "hf"}
    both = storage_config(env=named)
    assert (both.repo, both.hub) == ("a/b", "hf")
    assert storage_config(env={"SPACE_ID": "alice/t", "OPENLLM_WORKSPACE_REPO": "off"}).repo is None
    assert storage_config(tmp_path, repo="x/y", env={"OPENLLM_WORKSPACE": "/data"}).workspace == tmp_path
    with pytest.raises(OpenLLMError, match="OPENLLM_WORKSPACE_REPO to OWNER/NAME"):
        storage_config(repo="not a repo", env={})


def _fake_run(ws: Workspace, name: str, steps=(4,), state="training") -> Path:
    run = ws.run_dir(name)
    for step in steps:
        ck = rundir.checkpoint_dir(run, step)
        ck.mkdir(parents=True)
        (ck / rundir.WEIGHTS).write_bytes(os.urandom(64))
        (ck / rundir.STATE).write_text(json.dumps({"step": step}))
    (run / rundir.CHECKPOINTS / f"{rundir.TMP_PREFIX}step_9").mkdir()  # a save in progress: never mirrored
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 6)))
    rundir.move(run, state, step=5, max_steps=20, pid=-1)  # recorded by a process that is gone
    return run


@pytest.mark.slow  # real git: about a second
def test_the_mirror_keeps_what_changed_and_restores_an_empty_workspace_only(tmp_path):
    hub = LocalHub(tmp_path / "hub")
    ws = Workspace(tmp_path / "a")
    run = _fake_run(ws, "r1")
    (ws.corpora_dir / "uploads").mkdir()
    (ws.corpora_dir / "uploads" / "mine.txt").write_text("text\n")
    (ws.models_dir / "m").mkdir()
    (ws.models_dir / "m" / "big.bin").write_bytes(b"downloaded again at will")
    os.symlink("/etc/hostname", ws.corpora_dir / "outside.txt")  # the user's own file: never copied out
    # what is being written at this moment (fsio's atomic file and folder temporaries): gone or renamed soon
    (ws.root / "jobs" / "r1" / "data" / ".tokenizer.tmp-123").mkdir(parents=True)
    (ws.root / "jobs" / "r1" / "data" / ".tokenizer.tmp-123" / "tokenizer.model").write_bytes(b"half")
    (ws.corpora_dir / "uploads" / ".mine.txt.123.tmp").write_text("half")
    mirror = WorkspaceMirror(ws, hub, REPO)
    assert mirror.poll() is not None  # the first look syncs
    files = set(hub.list_files(repo_id=REPO, repo_type="dataset"))
    assert files == {
        "runs/r1/checkpoints/step_00000004/model.safetensors",
        "runs/r1/checkpoints/step_00000004/state.json",
        "runs/r1/metrics.jsonl",
        "runs/r1/status.json",
        "corpora/uploads/mine.txt",
    }
    assert {f.split("/")[0] for f in files} <= set(DURABLE)
    # a logged step alone is no reason to sync; a new checkpoint is, and only it and the live files go
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "loss": 0.9}) + "\n")
    assert mirror.poll() is None
    _fake_run(Workspace(tmp_path / "scratch"), "x")  # (a second fake, to copy a checkpoint from)
    shutil.copytree(tmp_path / "scratch/runs/x/checkpoints/step_00000004", rundir.checkpoint_dir(run, 8))
    shutil.rmtree(rundir.checkpoint_dir(run, 4))  # rotated out: removed from the mirror too
    head = hub.list_commits(repo_id=REPO, repo_type="dataset")[0]
    assert mirror.poll() is not None
    files = set(hub.list_files(repo_id=REPO, repo_type="dataset"))
    assert "runs/r1/checkpoints/step_00000008/state.json" in files
    assert not any("step_00000004" in f for f in files)
    touched = _changed_paths(hub, head.commit_id)
    ckpts = [f"runs/r1/checkpoints/step_0000000{s}/{f}" for s in (4, 8) for f in ("model.safetensors", "state.json")]
    assert touched == {*ckpts, "runs/r1/metrics.jsonl"}  # the new checkpoint, the rotated one and the metrics

    # a new, empty workspace on the same repository: restored, the dead training shown as interrupted
    st = open_storage(tmp_path / "b", repo=REPO, hub=hub)
    assert st.restored == 5 and st.interrupted == ("r1",)
    back = st.workspace.run_dir("r1")
    assert rundir.checkpoint_steps(back) == [8]
    assert [r["step"] for r in rundir.read_metrics(back)] == list(range(1, 7))
    state = rundir.run_state(back)
    assert (state.state, state.phase, state.step, state.error) == ("stopped", rundir.INTERRUPTED, 8, None)
    assert (st.workspace.corpora_dir / "uploads" / "mine.txt").read_text() == "text\n"
    assert st.mirror.poll() is not None  # the interruption is a change of state: it is mirrored
    assert st.mirror.poll() is None  # and the restored files are not uploaded again
    # a workspace that already holds runs is never overwritten by the mirror
    ws.run_dir("other").mkdir()
    again = open_storage(tmp_path / "a", repo=REPO, hub=hub)
    assert again.restored == 0 and sorted(again.workspace.run_names()) == ["other", "r1"]


@pytest.mark.slow  # real git
def test_a_file_removed_while_the_mirror_uploads_it_does_not_fail_the_pass(tmp_path):
    """A training rotates an old checkpoint out while the mirror reads it: the pass looks again at once and
    commits what is there, instead of failing whole (and retrying on its next round)."""

    class RotatingHub(LocalHub):
        calls = 0

        def create_commit(self, **kw):
            RotatingHub.calls += 1
            if RotatingHub.calls == 1:  # the trainer removes the older checkpoint in the middle of the upload
                shutil.rmtree(run / "checkpoints" / "step_00000002")
            return super().create_commit(**kw)

    ws = Workspace(tmp_path / "a")
    run = _fake_run(ws, "r1", steps=(2, 4))
    mirror = WorkspaceMirror(ws, RotatingHub(tmp_path / "hub"), REPO)
    assert mirror.sync() is not None and RotatingHub.calls == 2
    files = set(LocalHub(tmp_path / "hub").list_files(repo_id=REPO, repo_type="dataset"))
    assert "runs/r1/checkpoints/step_00000004/state.json" in files
    assert not any("step_00000002" in f for f in files)


def _changed_paths(hub: LocalHub, since: str) -> set[str]:
    loc = hub.repo_location(repo_id=REPO, repo_type="dataset")
    out = subprocess.run(
        ["git", f"--git-dir={loc}", "diff", "--no-renames", "--name-only", since, "main"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


# --- the whole story, with real processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(ws_dir: Path, hub_dir: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openllm", "app", "--port", str(port), "--workspace", str(ws_dir),
         "--mirror", REPO, "--mirror-hub", str(hub_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the app did not start")


def _wait(pred, what: str, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.mark.slow
def test_an_app_killed_while_training_on_a_wiped_disk_comes_back_and_continue_matches(tmp_path):
    from openllm.app.runner import Runner, child_env
    from test_app_runner import _prepared, _request

    total, every = 16, 4
    hub_dir, ws_dir = tmp_path / "hub", tmp_path / "ws"
    hub = LocalHub(hub_dir)
    ws = Workspace(ws_dir)
    corpus = _prepared(ws, docs=120)
    app, _ = _start_app(ws_dir, hub_dir)
    try:
        Runner(ws).start(_request("a", corpus, max_steps=total, save_every=every))
        run = ws.run_dir("a")
        _wait(lambda: rundir.latest_checkpoint(run) is not None, "the first checkpoint")
        pid = rundir.lock_holder(run)["pid"]
        os.kill(pid, signal.SIGSTOP)  # the machine freezes here: the job saved, the app mirrors it
        saved = rundir.checkpoint_steps(run)[-1]
        assert saved < total
        mirrored = f"runs/a/checkpoints/{rundir.step_name(saved)}/state.json"
        _wait(lambda: mirrored in hub.list_files(repo_id=REPO, repo_type="dataset"), "the mirror of the checkpoint")
        app.kill()  # the app and its job die with the machine: -9, nothing recorded
        os.kill(pid, signal.SIGKILL)
        app.wait(30)
    finally:
        app.kill()
    assert rundir.read_status(run)["state"] == "training"  # it really died mid-run
    shutil.rmtree(ws_dir)  # a new machine: an empty disk

    app, port = _start_app(ws_dir, hub_dir)
    try:
        ws = Workspace(ws_dir)
        run = ws.run_dir("a")
        st = rundir.run_state(run)
        assert (st.state, st.phase, st.step) == ("stopped", rundir.INTERRUPTED, saved), st
        assert rundir.checkpoint_steps(run)[-1] == saved
        assert [r["step"] for r in rundir.read_metrics(run)][:saved] == list(range(1, saved + 1))
        import httpx

        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        runner = Runner(ws)
        assert runner.continue_run("a", total - saved) == total
        assert runner.wait(300) and runner.status("a").state == "finished", runner.status("a")
        # the uninterrupted run: what the job trains, on the same prepared data, in one process
        job = ws.job_dir("a")
        subprocess.run(
            [sys.executable, "-m", "openllm", "train", "--config", str(job / "config.json"), "--data",
             str(job / "data" / "tokens"), "--out", str(ws.run_dir("b")), "--no-progress"],
            check=True, env=child_env(), capture_output=True, timeout=300,
        )  # fmt: skip
        assert runner.status("b").state == "finished"
        losses = {n: {r["step"]: r["loss"] for r in rundir.read_metrics(ws.run_dir(n))} for n in "ab"}
        assert sorted(losses["a"]) == sorted(losses["b"]) == list(range(1, total + 1))
        assert losses["a"] == losses["b"]
        app.send_signal(signal.SIGTERM)  # a Space stopping: the app mirrors one last time and ends
        out = app.communicate(timeout=120)[0]
        assert app.returncode == 0, out
    finally:
        app.kill()
    files = set(hub.list_files(repo_id=REPO, repo_type="dataset"))
    assert f"runs/b/checkpoints/{rundir.step_name(total)}/state.json" in files
    assert f"runs/a/checkpoints/{rundir.step_name(total)}/state.json" in files
