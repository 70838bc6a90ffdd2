"""The app's library modules without a browser: the runner's process management (real subprocesses), the
monitor's numbers and plots, the model picker's sandbox, the help text, and keeping tokens out of children."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openllm.app import help as app_help
from openllm.app import models as M
from openllm.app.forms import CORPUS_WORKSPACE, FormError, parse_train_form, preset_fields
from openllm.app.monitor import format_duration, loss_figure, memory_usage, progress, tail_log
from openllm.app.runner import Runner, RunnerError, child_env, run_status
from openllm.app.workspace import Workspace
from openllm.rundir import checkpoint_steps, move, read_metrics


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


def _prepared(ws: Workspace, docs: int = 300) -> str:
    """A prepared corpus folder (train.jsonl + val.jsonl) inside the workspace, from the embedded corpus."""
    from openllm.corpus import embedded_corpus_documents

    d = ws.corpora_dir / "prepared"
    d.mkdir(parents=True, exist_ok=True)
    texts = []
    for t in embedded_corpus_documents():
        texts.append(t)
        if len(texts) >= docs:
            break
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for t in texts[:-10]:
            f.write(json.dumps({"text": t}) + "\n")
    with open(d / "val.jsonl", "w", encoding="utf-8") as f:
        for t in texts[-10:]:
            f.write(json.dumps({"text": t}) + "\n")
    return "corpora/prepared"


def _request(name: str, corpus: str, **over):
    values = {
        **preset_fields("tiny"),
        "preset": "tiny",
        "run_name": name,
        "corpus_kind": CORPUS_WORKSPACE,
        "corpus_path": corpus,
        "upload": None,
        "vocab_size": 400,
        "max_steps": 20,
        "batch_size": 2,
        "warmup_steps": 1,
        "eval_every": 5,
        "save_every": 100,
    }
    values.update(over)
    return parse_train_form(values)


# --- runner (real job processes) ------------------------------------------------------------------------------


@pytest.mark.slow
def test_second_start_is_refused_and_stop_ends_the_job(ws):
    runner = Runner(ws)
    corpus = _prepared(ws, docs=120)
    runner.start(_request("first", corpus))
    assert runner.active()[0] == "first"
    with pytest.raises(RunnerError, match="'first' is still training"):
        runner.start(_request("second", corpus))
    assert not ws.run_dir("second").exists()
    # a second runner (the app restarted) sees the same job
    assert Runner(ws).active()[0] == "first"
    assert runner.status("first").state in ("queued", "preparing", "training")
    deadline = time.time() + 60
    while time.time() < deadline and runner.status("first").phase in (None, "starting"):
        time.sleep(0.2)  # let the job get going: it must stop cleanly wherever it is
    runner.stop()
    assert runner.wait(120), "the job did not stop"
    st = runner.status("first")
    assert st.state == "stopped", st
    with pytest.raises(RunnerError, match="no training is running"):
        runner.stop()
    with pytest.raises(RunnerError, match="already exists"):
        runner.start(_request("first", corpus))


@pytest.mark.slow
def test_a_failing_job_reports_its_error(ws):
    runner = Runner(ws)
    corpus = _prepared(ws, docs=20)
    runner.start(_request("toobig", corpus, vocab_size=60000))  # far more pieces than 20 chapters hold
    assert runner.wait(180)
    st = runner.status("toobig")
    assert st.state == "failed"
    assert "training the tokenizer" in st.error and "vocab" in st.error.lower(), st.error
    assert "Traceback" not in st.error
    log = runner.log_path("toobig").read_text()
    assert "error:" in log


def test_workspace_corpus_outside_is_refused_before_anything_starts(ws, tmp_path):
    runner = Runner(ws)
    (tmp_path / "outside").mkdir()
    for bad in ["../outside", str(tmp_path / "outside"), "/etc"]:
        with pytest.raises(RunnerError, match="outside the app's workspace"):
            runner.start(_request("x", bad))
    (ws.corpora_dir / "mixed").mkdir()
    os.symlink(tmp_path / "outside", ws.corpora_dir / "mixed" / "link", target_is_directory=True)
    (ws.corpora_dir / "mixed" / "ok.txt").write_text("fine\n")
    with pytest.raises(RunnerError, match="leads outside"):
        runner.start(_request("x", "corpora/mixed"))
    assert runner.active() is None and not ws.run_dir("x").exists()


def test_a_crashed_run_is_reported_failed(ws):
    run = ws.run_dir("crashed")
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "status.json").write_text(
        json.dumps({"state": "running", "step": 7, "max_steps": 10, "pid": dead.pid, "error": None})
    )
    st = run_status(ws, "crashed")
    assert st.state == "failed" and "crashed or was killed" in st.error and st.step == 7
    (run / "status.json").write_text(
        json.dumps({"state": "failed", "step": 3, "max_steps": 10, "pid": None, "error": "loss is nan at step 3"})
    )
    assert run_status(ws, "crashed").error == "loss is nan at step 3"
    assert run_status(ws, "crashed").state == "failed"


def test_children_never_see_tokens(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setenv("MY_API_KEY", "k")
    monkeypatch.setenv("OPENLLM_HUB", "/somewhere")
    env = child_env()
    assert "HF_TOKEN" not in env and "MY_API_KEY" not in env
    assert "hf_secret_value" not in json.dumps(env)
    assert env["OPENLLM_HUB"] == "/somewhere" and env["GRADIO_ANALYTICS_ENABLED"] == "False"


# --- monitor ------------------------------------------------------------------------------------------------


def _run_with_metrics(ws: Workspace, name="m", n=20, partial=True) -> Path:
    run = ws.run_dir(name)
    run.mkdir(parents=True)
    (run / "config.json").write_text(
        json.dumps(
            {
                "model": {"max_seq_len": 256},
                "train": {"micro_batch_size": 4, "grad_accum_steps": 2, "seq_len": 128, "max_steps": 100},
            }
        )
    )
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, n + 1):
            rec = {"step": s, "loss": 5.0 - s * 0.1, "lr": 1e-3, "tokens_per_s": 1024.0}
            if s % 10 == 0:
                rec["val_loss"] = 5.5 - s * 0.1
            f.write(json.dumps(rec) + "\n")
        if partial:
            f.write('{"step": 21, "loss": 3.')  # being written
    return run


def test_progress_eta_and_last_values(ws):
    run = _run_with_metrics(ws)
    metrics = read_metrics(run)
    assert len(metrics) == 20
    p = progress(run, {"step": 20, "max_steps": 100})
    assert (p.step, p.max_steps, p.fraction) == (20, 100, 0.2)
    assert p.tokens_per_s == 1024.0
    # 80 steps left x (4 x 2 x 128) tokens per step / 1024 tokens/s
    assert p.eta_s == pytest.approx(80 * 1024 / 1024)
    assert p.loss == pytest.approx(3.0) and p.val_loss == pytest.approx(3.5)
    assert format_duration(p.eta_s) == "1m 20s" and format_duration(None) == "–"
    assert format_duration(3725) == "1h 02m"


def test_loss_figure_has_both_curves(ws):
    fig = loss_figure(read_metrics(_run_with_metrics(ws)))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["training loss", "validation loss (estimate)"]
    assert len(fig.axes[0].get_lines()[1].get_xdata()) == 2
    empty = loss_figure([])
    assert "no metrics yet" in [t.get_text() for t in empty.axes[0].texts]


def test_tail_log_keeps_the_latest_progress_bar_state(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(
        "== training\n"
        + "".join(f"\rtrain: {i}/10" for i in range(11))
        + "\n"
        + "\n".join(f"line {i}" for i in range(100))
        + "\n"
    )
    tail = tail_log(log, lines=3)
    assert tail == "line 97\nline 98\nline 99"
    assert tail_log(log, lines=103).splitlines()[:2] == ["== training", "train: 10/10"]
    assert tail_log(tmp_path / "missing.txt") == ""


def test_memory_usage_reports_ram():
    mem = memory_usage(os.getpid())
    assert "GiB" in mem["ram"] and "%" in mem["ram"]
    assert mem["training"].split()[1] in ("MiB", "GiB")
    assert mem["gpu"]


# --- the model picker's sandbox ------------------------------------------------------------------------------


def test_model_choices_resolve_inside_the_workspace_only(ws, tmp_path):
    run = ws.run_dir("r1")
    (run / "checkpoints" / "step_00000005").mkdir(parents=True)
    (run / "checkpoints" / "step_00000005" / "model.safetensors").write_bytes(b"")
    (run / "checkpoints" / "step_00000005" / "state.json").write_text("{}")
    ws.run_dir("empty").mkdir()
    assert checkpoint_steps(run) == [5]
    choices = M.model_choices(ws, ["me/m@v1"])
    assert ("run r1 (step 5)", "run:r1") in choices and ("hub me/m@v1", "hub:me/m@v1") in choices
    assert not any("empty" in v for _, v in choices)
    assert M.resolve_model(ws, "run:r1") == str(run.resolve())
    assert M.resolve_model(ws, "hub:me/m@v1") == "me/m@v1"
    assert M.resolve_model(ws, "me/m@v1") == "me/m@v1"  # typed by hand
    os.symlink(tmp_path, ws.runs_dir / "link")
    for bad, words in [
        ("run:../../x", "not allowed"),
        ("run:empty", "no checkpoint"),
        ("run:nope", "not in"),
        ("/etc/passwd", "owner/name@version"),
        ("../x@1", "owner/name"),
        ("", "choose a model"),
        ("model:..", "not allowed"),
        ("run:link", "not in the workspace"),
    ]:
        with pytest.raises(FormError, match=words):
            M.resolve_model(ws, bad)


def test_push_refuses_runs_without_checkpoints(ws):
    from openllm.app.forms import PushRequest

    ws.run_dir("fresh").mkdir()
    with pytest.raises(FormError, match="no checkpoint"):
        M.push_run(ws, PushRequest("fresh", "me/x", "v1"))
    with pytest.raises(FormError, match="not in the workspace"):
        M.push_run(ws, PushRequest("ghost", "me/x", "v1"))


# --- help -----------------------------------------------------------------------------------------------------


def test_help_comes_from_docs_app_md():
    text = app_help.load_help()
    assert text != app_help.FALLBACK
    docs = (Path(__file__).resolve().parent.parent / "docs" / "app.md").read_text()
    assert text.strip() in docs and not text.startswith("# ")


def test_help_in_the_built_space_and_fallback(tmp_path):
    space = tmp_path / "space"
    (space / "training").mkdir(parents=True)
    (space / "HELP.md").write_text("# Title\n\nSpace help here.\n")
    assert app_help.load_help(space / "training").strip() == "Space help here."
    bare = tmp_path / "bare" / "pkg"
    bare.mkdir(parents=True)
    assert app_help.load_help(bare) == app_help.FALLBACK


# --- the command --------------------------------------------------------------------------------------------


def test_gradio_analytics_are_off_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    import importlib

    import openllm.app

    importlib.reload(openllm.app)  # cheap: the package sets it before anything imports gradio
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    ui_source = (Path(openllm.app.__file__).parent / "ui.py").read_text()
    assert ui_source.index('os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"') < ui_source.index("import gradio")


@pytest.mark.slow
def test_openllm_app_serves_on_loopback_only(tmp_path):
    import socket

    import httpx
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_TOKEN": "hf_do_not_print_me", "GRADIO_ANALYTICS_ENABLED": "True"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openllm", "app", "--port", str(port), "--workspace", str(tmp_path / "ws")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.time() + 120
        page = None
        while time.time() < deadline:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                if page.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.5)
        assert page is not None and page.status_code == 200 and "OpenLLM" in page.text
        listening = [
            c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        assert (tmp_path / "ws" / "runs").is_dir()
        (tmp_path / "ws" / "corpora" / "mine.txt").write_text("workspace file\n")
        for path in [
            "/etc/passwd",
            str(Path.cwd() / "pyproject.toml"),
            "pyproject.toml",
            "../../etc/passwd",
            str(tmp_path / "ws" / "corpora" / "mine.txt"),
        ]:
            for prefix in ("gradio_api/file=", "file="):
                r = httpx.get(f"http://127.0.0.1:{port}/{prefix}{path}", timeout=10)
                assert r.status_code in (403, 404), (prefix + path, r.status_code)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "hf_do_not_print_me" not in out and "hf_do_not_print_me" not in page.text
    assert f"http://127.0.0.1:{port}" in out


# --- the run lock decides who trains (real processes) ---------------------------------------------------------

_EXTERNAL = """
import signal, sys, time
from openllm.rundir import RunLock, move
run = sys.argv[1]
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # SIGTERM is the stop request, as for the trainer
lock = RunLock(run, command="openllm train --out " + run).acquire()
move(run, "training", step=5, max_steps=50)
print("holding", flush=True)
signal.sigwait([signal.SIGTERM])
move(run, "stopped", step=6)
lock.release()
"""


def test_a_run_trained_outside_the_app_is_shown_blocks_start_and_is_stopped_from_the_app(ws):
    run = ws.run_dir("cli")
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _EXTERNAL, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        runner = Runner(ws)
        st = runner.status("cli")
        assert (st.state, st.pid, st.external, st.log) == ("training", proc.pid, True, None)
        assert runner.active() == ("cli", proc.pid)
        with pytest.raises(RunnerError, match=f"'cli' is still training \\(started outside the app, PID {proc.pid}"):
            runner.start(_request("another", "corpora/x"))
        assert not ws.run_dir("another").exists()
        assert runner.stop() == "cli"
        assert runner.status("cli").state in ("stopping", "stopped")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    st = runner.status("cli")
    assert st.state == "stopped" and not st.active and runner.active() is None


def test_a_finished_run_never_blocks_start_and_failed_runs_can_be_deleted(ws):
    runner = Runner(ws)
    for name, state in [("done", "finished"), ("broken", "failed")]:
        move(ws.run_dir(name), "training", step=9, max_steps=10)
        move(ws.run_dir(name), state, step=10, error="x" if state == "failed" else None)
    assert runner.active() is None
    runner._refuse_while_active()
    with pytest.raises(RunnerError, match="already exists \\(failed\\): delete it"):
        runner.start(_request("broken", "corpora/x"))
    (ws.job_dir("broken")).mkdir(parents=True)
    runner.delete("broken")
    assert not ws.run_dir("broken").exists() and not ws.job_dir("broken").exists()
    assert ws.run_names() == ["done"]


def test_stop_stops_the_run_it_names_only(ws):
    """Stop acts on the run the user looks at: asking to stop another run leaves a CLI training alone."""
    run = ws.run_dir("cli")
    run.mkdir()
    move(ws.run_dir("shown"), "training", step=9, max_steps=10)
    move(ws.run_dir("shown"), "finished", step=10)
    proc = subprocess.Popen([sys.executable, "-c", _EXTERNAL, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        runner = Runner(ws)
        with pytest.raises(RunnerError, match="'shown' is not training \\(finished\\)"):
            runner.stop("shown")
        time.sleep(0.5)
        assert proc.poll() is None and runner.status("cli").state == "training"
        assert runner.stop("cli") == "cli"
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert runner.status("cli").state == "stopped"


_HOLD = """
import sys
from openllm.rundir import RunLock
lock = RunLock(sys.argv[1], command=sys.argv[2]).acquire()
print("holding", flush=True)
sys.stdin.read()
"""


def test_the_apps_own_job_is_not_started_outside_the_app_whichever_version_wrote_its_lock(ws):
    run = ws.run_dir("r")
    run.mkdir()
    job = ws.job_dir("r")
    for command, external in [
        (f"{sys.executable} -m openllm.app.job {job}", False),
        (f"{sys.executable} -m __main__ {job}", False),  # what the job recorded before issue 24
        (f"openllm train --out {run}", True),
        (f"{sys.executable} -m openllm.app.jobs {job}x", True),
    ]:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(run), command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "holding"
            assert run_status(ws, "r").external is external, command
        finally:
            proc.kill()
            proc.wait(30)


def test_a_stopped_finished_or_failed_run_can_be_deleted_an_active_one_cannot(ws):
    runner = Runner(ws)
    for name, state in [("done", "finished"), ("halted", "stopped"), ("broken", "failed")]:
        move(ws.run_dir(name), "training", step=9, max_steps=10)
        move(ws.run_dir(name), state, step=10, error="x" if state == "failed" else None)
        runner.delete(name)
        assert not ws.run_dir(name).exists()
    run = ws.run_dir("cli")
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _EXTERNAL, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        with pytest.raises(RunnerError, match="'cli' is training: stop it before deleting it"):
            runner.delete("cli")
        assert (run / "status.json").is_file()
    finally:
        proc.terminate()
        proc.wait(30)


def _start_both(ws: Workspace, runners: list[Runner], corpus: str) -> tuple[list[str], list[Exception]]:
    import threading

    barrier = threading.Barrier(len(runners))
    started: list[str] = []
    refused: list[Exception] = []

    def go(i: int) -> None:
        req = _request(f"race{i}", corpus)
        barrier.wait()
        try:
            started.append(runners[i].start(req))
        except RunnerError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(runners))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return started, refused


@pytest.mark.slow
@pytest.mark.parametrize("apps", [1, 2], ids=["one-app", "two-apps"])
def test_concurrent_starts_launch_one_training_which_is_the_apps_own(ws, apps):
    """Gradio runs several handlers at once, and two apps may share a workspace: of two Starts at the same
    moment exactly one launches. The one launched is labelled the app's (not "started outside the app")."""
    corpus = _prepared(ws, docs=120)
    first = Runner(ws)
    runners = [first, first] if apps == 1 else [first, Runner(ws)]
    started, refused = _start_both(ws, runners, corpus)
    try:
        assert len(started) == 1 and len(refused) == 1, (started, refused)
        assert "is still training" in str(refused[0])
        name = started[0]
        deadline = time.time() + 60
        while time.time() < deadline and not first.status(name).pid:  # the job has written its lock
            st = first.status(name)
            assert not st.external, st.holder  # not even while the lock is taken but not yet written
            time.sleep(0.05)
        st = first.status(name)
        assert st.pid and not st.external, st.holder
    finally:
        for n in ("race0", "race1"):
            if ws.run_dir(n).exists() and first.status(n).active:
                first.stop(n)
        first.wait(120)


@pytest.mark.slow
def test_a_run_stopped_while_preparing_is_continued_from_scratch_and_can_be_deleted(ws):
    runner = Runner(ws)
    text = ws.corpora_dir / "raw.txt"
    from openllm.corpus import embedded_corpus_documents

    docs = list(itertools.islice(embedded_corpus_documents(), 200))
    text.write_text("\n\n".join(docs), encoding="utf-8")
    runner.start(_request("early", "corpora/raw.txt", max_steps=4, eval_every=2, save_every=2))
    deadline = time.time() + 60
    while time.time() < deadline and runner.status("early").state != "preparing":
        time.sleep(0.05)
    runner.stop("early")
    assert runner.wait(60)
    st = runner.status("early")
    assert st.state == "stopped" and not checkpoint_steps(ws.run_dir("early")), st
    with pytest.raises(RunnerError, match="already exists \\(stopped\\)"):
        runner.start(_request("early", "corpora/raw.txt"))
    assert runner.continue_run("early", 10) == 4  # its own settings, from the start
    assert runner.wait(300)
    st = runner.status("early")
    assert st.state == "finished" and checkpoint_steps(ws.run_dir("early"))[-1] == 4, (st, runner.log_path("early"))
    runner.delete("early")
    assert "early" not in ws.run_names() and not ws.job_dir("early").exists()


def test_corpus_is_checked_when_chosen(ws):
    from openllm.app.corpus_check import check_corpus

    empty = ws.corpora_dir / "empty.txt"
    empty.write_text("")
    assert not check_corpus(empty).ok and "empty" in check_corpus(empty).problem
    assert "does not exist" in check_corpus(ws.corpora_dir / "nope.txt").problem
    recs = ws.corpora_dir / "recs.jsonl"
    recs.write_text(
        "".join(
            json.dumps(
                {
                    "id": str(i),
                    "body": f"Document number {i} has enough words to be kept by the cleaning step of the corpus.",
                }
            )
            + "\n"
            for i in range(30)
        )
    )
    chk = check_corpus(recs)
    assert not chk.ok and chk.fields == ["body", "id"] and "no text field 'text'" in chk.problem
    assert "--" not in chk.problem  # the app's words, not the command line's
    chk = check_corpus(recs, "body")
    assert chk.ok and chk.documents == 30 and chk.preview[0].startswith("Document number")
    one = ws.corpora_dir / "one.txt"
    one.write_text("A single paragraph of text that is long enough to be kept after cleaning.\n")
    assert not check_corpus(one).ok and "at least 2" in check_corpus(one).problem


def test_push_preview_names_the_checkpoint_and_its_weights(ws):
    import hashlib

    from openllm.app.forms import PushRequest

    run = ws.run_dir("r")
    for step, payload in [(10, b"ten"), (20, b"twenty")]:
        d = run / "checkpoints" / f"step_{step:08d}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(payload)
        (d / "state.json").write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": 3.0, "val_loss": 3.25}) + "\n")
    pv = M.push_preview(ws, "r", 10)
    assert (pv.step, pv.val_loss, pv.sha256) == (10, 3.25, hashlib.sha256(b"ten").hexdigest())
    assert "checkpoint step 10" in pv.describe() and "val loss estimate 3.2500" in pv.describe()
    # that checksum is the checkpoint's file, not the repo's model.safetensors (Hugging Face names): said so
    assert "checkpoint file sha256" in pv.describe() and "not the pushed" in pv.describe(), pv.describe()
    assert M.push_preview(ws, "r").step == 20  # default: the latest
    with pytest.raises(FormError, match="no checkpoint at step 15"):
        M.push_preview(ws, "r", 15)
    with pytest.raises(FormError, match="changed since it was shown"):
        M.push_run(ws, PushRequest("r", "me/x", "v1"), 10, expect_sha256=hashlib.sha256(b"other").hexdigest())


def _wait_step(ws: Workspace, name: str, at_least: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r["step"] >= at_least for r in read_metrics(ws.run_dir(name))):
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} never reached step {at_least}")


@pytest.mark.slow
def test_cli_resume_is_shown_and_stopped_then_continue_matches_an_uninterrupted_run(ws):
    runner = Runner(ws)
    corpus = _prepared(ws, docs=120)
    total = 24
    runner.start(_request("a", corpus, max_steps=total, save_every=1000))
    _wait_step(ws, "a", 3)
    runner.stop()
    assert runner.wait(120) and runner.status("a").state == "stopped"
    first_stop = checkpoint_steps(ws.run_dir("a"))[-1]

    # a resume from the command line, as docs/training.md says: the app sees it live and stops it
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openllm",
            "train",
            "--out",
            str(ws.run_dir("a")),
            "--max-steps",
            str(total),
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        _wait_step(ws, "a", first_stop + 2)
        st = runner.status("a")
        assert st.state == "training" and st.pid == cli.pid and st.external and st.log is None, st
        with pytest.raises(RunnerError, match="'a' is still training \\(started outside the app"):
            runner.start(_request("b", corpus, max_steps=total, save_every=1000))
        runner.stop()
        assert cli.wait(120) == 0
    finally:
        cli.kill()
    assert runner.status("a").state == "stopped"
    second_stop = checkpoint_steps(ws.run_dir("a"))[-1]
    assert first_stop < second_stop < total

    # continue in the app to the same total: an exact resume
    assert runner.continue_run("a", total - second_stop) == total
    assert runner.wait(300)
    assert runner.status("a").state == "finished", runner.status("a")

    runner.start(_request("b", corpus, max_steps=total, save_every=1000))
    assert runner.wait(300) and runner.status("b").state == "finished"
    losses = {n: {r["step"]: r["loss"] for r in read_metrics(ws.run_dir(n)) if "loss" in r} for n in "ab"}
    assert sorted(losses["a"]) == sorted(losses["b"]) == list(range(1, total + 1))
    for step in range(1, total + 1):
        assert losses["a"][step] == pytest.approx(losses["b"][step], rel=1e-5), step

    # the CLI honours the lock too: while another process holds the run, it is refused and touches nothing
    from openllm.rundir import RunLock

    before = (ws.run_dir("a") / "status.json").read_bytes()
    with RunLock(ws.run_dir("a")):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "openllm",
                "train",
                "--out",
                str(ws.run_dir("a")),
                "--max-steps",
                str(total + 5),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )
    assert res.returncode != 0 and f"already being trained by PID {os.getpid()}" in res.stderr, res.stderr
    assert (ws.run_dir("a") / "status.json").read_bytes() == before


def test_compare_and_curves_figures(ws):
    from openllm.app import tools as T

    _run_with_metrics(ws, "m1")
    _run_with_metrics(ws, "m2", n=10)
    fig = T.compare_figure(ws, ["m1", "m2"])
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == ["m1", "m2"]
    curves = T.curves_figure(ws, "m1")
    assert [len(ax.get_lines()) for ax in curves.axes] == [1, 0]  # lr logged; no gradient norm in these metrics
    with pytest.raises(FormError, match="no checkpoint yet"):
        T.export_run(ws, "m1", "ONNX")


@pytest.mark.slow
def test_the_hf_token_is_never_in_what_the_browser_receives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_never_shown_4242")
    from openllm.app.ui import build_app

    demo = build_app(tmp_path / "ws")
    config = json.dumps(demo.config, default=str)
    assert "push-target" in config and "push-private" in config  # the Hugging Face Hub is offered, private too ...
    assert "hf_never_shown_4242" not in config  # ... without the token ever reaching the page


# --- fine-tune and chat (issue 20) --------------------------------------------------------------------------


def _base_run(ws: Workspace, tokenizer_dir: Path, name: str = "base") -> Path:
    """A finished tiny run (one checkpoint, a 128-token context) to fine-tune."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_export_run

    return make_export_run(ws.run_dir(name), tokenizer_dir, steps=(1,), max_seq_len=128, init_std=0.02)


def test_a_bad_conversation_upload_is_refused_before_anything_starts(ws, tmp_path, export_tokenizer_dir):
    from openllm.app.chat import check_conversations

    _base_run(ws, export_tokenizer_dir)
    bad = tmp_path / "chats.jsonl"
    good = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n'
    bad.write_text(good + '{"messages": [{"role": "robot", "content": "beep"}]}\n')
    with pytest.raises(FormError) as err:
        check_conversations(bad)
    # the upload's own name and line, on one line, not the temporary path the browser's upload landed on
    assert str(err.value) == (
        "Conversations: chats.jsonl:2: message 1 has an unknown role 'robot' (use system, user, assistant or tool)"
    )
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(FormError, match=r"empty\.jsonl: no conversations"):
        check_conversations(tmp_path / "empty.jsonl")
    runner = Runner(ws)
    with pytest.raises(FormError, match="chats.jsonl:2: message 1 has an unknown role"):
        runner.finetune("base", "chat", bad)
    assert not ws.run_dir("chat").exists() and runner.active() is None
    bad.write_text(good)
    assert check_conversations(bad).describe() == "chats.jsonl: 1 conversation, 1 assistant turns to learn from"
    with pytest.raises(RunnerError, match="only a finished or stopped run with a checkpoint"):
        runner.finetune("nothing-here", "chat", bad)


@pytest.mark.slow
def test_a_synthetic_set_fine_tune_job_finishes_and_chats(ws, export_tokenizer_dir):
    from openllm.app import chat as C
    from openllm.finetune import finetune_record

    _base_run(ws, export_tokenizer_dir)
    train, val = C.synthetic_set(ws, 60)
    assert ws.contains(train) and json.loads((train.parent / "about.json").read_text())["synthetic"] is True
    runner = Runner(ws)
    runner.finetune("base", "chat", train, val, max_steps=4)
    assert runner.active()[0] == "chat"
    with pytest.raises(RunnerError, match="still training"):
        runner.finetune("base", "chat-2", train)
    assert runner.wait(120), "the fine-tune job did not end"
    st = runner.status("chat")
    assert st.state == "finished" and st.step == 4, (st, runner.log_path("chat").read_text()[-2000:])
    rec = finetune_record(ws.run_dir("chat"))
    assert rec["base"]["source"] == str(ws.run_dir("base").resolve()) and rec["data"]["path"] == str(train)
    assert [r["step"] for r in read_metrics(ws.run_dir("chat"))][-1] == 4
    # the Chat tab offers the fine-tuned run first and says the base run is not fine-tuned
    assert C.chat_choices(ws) == [
        ("fine-tuned run chat (step 4)", "run:chat"),
        ("base run base (step 1; not fine-tuned)", "run:base"),
    ]
    loaded = M.ModelCache().get(M.resolve_model(ws, "run:chat"))
    history = [{"role": "user", "content": "What does Genesis 1:3 say?"}]
    prompt = C.chat_prompt(loaded, history, "Be terse.", max_new_tokens=8)
    assert prompt.text.startswith("<s>System: Be terse.\nUser: What does Genesis 1:3 say?\nAssistant:")
    assert prompt.ids == loaded.tokenizer.encode_chat(prompt.messages, add_generation_prompt=True)
    pieces = list(C.stream_reply(loaded, prompt, temperature=0.0))
    assert pieces and all(a[0] == b[0][: len(a[0])] for a, b in itertools.pairwise(pieces))  # it grows
    # the oldest turns give way when a long conversation no longer fits the 128-token context
    long = [{"role": r, "content": "word " * 30} for r in ("user", "assistant") * 4] + history
    fitted = C.chat_prompt(loaded, long, "Be terse.", max_new_tokens=16)
    assert fitted.messages[0]["role"] == "system" and fitted.messages[-1] == history[0]
    assert len(fitted.ids) + fitted.max_new_tokens <= 128 and len(fitted.messages) < len(long) + 1


@pytest.mark.slow
def test_an_uploaded_fine_tune_is_stopped_and_continued_as_a_fine_tune(ws, tmp_path, export_tokenizer_dir):
    from openllm.app import chat as C
    from openllm.finetune import finetune_record

    _base_run(ws, export_tokenizer_dir)
    train, _ = C.synthetic_set(ws, 200)
    upload = tmp_path / "upload" / "my chats.jsonl"  # outside the workspace, as a browser upload is
    upload.parent.mkdir()
    upload.write_bytes(train.read_bytes())
    runner = Runner(ws)
    runner.finetune("base", "chat", upload, max_steps=400)
    _wait_step(ws, "chat", 2, timeout=120)
    runner.stop()
    assert runner.wait(120)
    st = runner.status("chat")
    assert st.state == "stopped" and 2 <= st.step < 400, st
    copied = Path(finetune_record(ws.run_dir("chat"))["data"]["path"])
    assert ws.contains(copied) and copied.name == "chat-data-my_chats.jsonl"
    total = runner.continue_run("chat", 3)
    assert runner.wait(120)
    st = runner.status("chat")
    assert st.state == "finished" and st.step == total, (st, runner.log_path("chat").read_text()[-2000:])
    from openllm.hashing import sha256_file

    assert finetune_record(ws.run_dir("chat"))["data"]["sha256"] == sha256_file(upload)
    assert "continuing to step" in runner.log_path("chat").read_text()
