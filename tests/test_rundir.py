"""The run folder's layout: checkpoint naming and completeness, status, metrics, best, evaluation; the run lock
and the run's state machine. Everything is built by hand here, so these tests need no torch."""

import json
import os

import pytest

from openllm import rundir
from openllm.errors import OpenLLMError


def _checkpoint(run, name, *, weights=True, state=True):
    d = run / "checkpoints" / name
    d.mkdir(parents=True)
    if weights:
        (d / "model.safetensors").write_bytes(b"w")
    if state:
        (d / "state.json").write_text('{"step": 1}')
    return d


def test_complete_means_weights_and_state(tmp_path):
    _checkpoint(tmp_path, "step_00000002")
    _checkpoint(tmp_path, "step_00000010")
    _checkpoint(tmp_path, "step_00000020", state=False)  # state.json is written last: not complete
    _checkpoint(tmp_path, "step_00000030", weights=False)
    _checkpoint(tmp_path, "step_7")  # any number of digits is read
    _checkpoint(tmp_path, ".tmp-step_00000040-9")
    _checkpoint(tmp_path, "best")
    assert rundir.checkpoint_steps(tmp_path) == [2, 7, 10]
    assert rundir.latest_checkpoint(tmp_path).name == "step_00000010"
    assert rundir.step_of(rundir.checkpoint_dir(tmp_path, 400)) == 400
    assert rundir.checkpoint_dir(tmp_path, 400).name == "step_00000400"
    assert [p.name for p in rundir.clean_temporary(tmp_path)] == [".tmp-step_00000040-9"]


def test_no_checkpoint(tmp_path):
    assert rundir.latest_checkpoint(tmp_path) is None and rundir.list_checkpoints(tmp_path) == []
    with pytest.raises(OpenLLMError, match="no checkpoint yet"):
        rundir.require_latest_checkpoint(tmp_path)


def test_is_run(tmp_path):
    assert not rundir.is_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": {}, "train": {}}))
    assert rundir.is_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "openllm", "model": {}, "train": {}}))
    assert not rundir.is_run(tmp_path)  # a native export
    (tmp_path / "checkpoints").mkdir()
    assert rundir.is_run(tmp_path)


def test_status_best_evaluation_round_trip(tmp_path):
    assert rundir.read_status(tmp_path) == {} and rundir.read_best(tmp_path) is None
    rundir.move(tmp_path / "run", "training", step=3)
    status = rundir.read_status(tmp_path / "run")
    assert status["state"] == "training" and status["step"] == 3 and status["started"] and status["updated_unix"]
    (tmp_path / "run" / "checkpoints").mkdir()
    rundir.write_best(tmp_path / "run", 400, 1.5)
    best = rundir.read_best(tmp_path / "run")
    assert best["step"] == 400 and best["checkpoint"] == "step_00000400" and best["val_loss"] == 1.5
    rundir.write_evaluation(tmp_path / "run", {"val_loss": 2.0})
    assert rundir.read_evaluation(tmp_path / "run") == {"val_loss": 2.0}


def test_read_metrics_skips_torn_and_stepless_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2}\n[1]\n{"loss": 3}\n{"step": 2, "lo')
    assert rundir.read_metrics(tmp_path) == [{"step": 1, "loss": 2}]
    assert rundir.read_metrics(tmp_path / "missing") == []


# --- the run lock and the run's state ------------------------------------------------------------------------

import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

_HOLDER = """
import sys, time
from openllm.rundir import RunLock
from openllm.errors import OpenLLMError
run, start_at, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
while time.time() < start_at:
    time.sleep(0.001)
try:
    lock = RunLock(run).acquire()
except OpenLLMError as exc:
    print("refused", exc, flush=True)
    sys.exit(3)
print("got", flush=True)
time.sleep(hold)
lock.release()
"""


def _holder(run, *, start_at=0.0, hold=30.0):
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run), str(start_at), str(hold)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_processes_racing_for_the_lock_one_wins(tmp_path):
    start_at = time.time() + 1.5  # both are importing by then; they try within the same millisecond
    procs = [_holder(tmp_path, start_at=start_at, hold=1.5) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    winner = procs[0] if procs[0].returncode == 0 else procs[1]
    loser_out = next(o for p, o in zip(procs, outs) if p.returncode == 3)[0]
    assert f"already being trained by PID {winner.pid}" in loser_out
    assert rundir.lock_holder(tmp_path) is None  # released: nobody holds it
    assert not (tmp_path / rundir.LOCK).exists()


def _write_status(run, status):
    """A status.json as a process wrote it (older runs said ``running`` while training)."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(json.dumps(status))


def test_kill_9_leaves_a_stale_lock_that_is_detected_and_cleared(tmp_path):
    _write_status(tmp_path, {"state": "running", "step": 7, "max_steps": 100, "pid": None})
    proc = _holder(tmp_path)
    try:
        assert proc.stdout.readline().strip() == "got"
        holder = rundir.lock_holder(tmp_path)
        assert holder["pid"] == proc.pid and holder["host"]
        st = rundir.run_state(tmp_path)
        assert st.state == "training" and st.pid == proc.pid and st.active
        with pytest.raises(OpenLLMError, match=f"PID {proc.pid}"):
            rundir.RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert (tmp_path / rundir.LOCK).exists()  # the file stays behind ...
    st = rundir.run_state(tmp_path)  # ... but its flock is free: stale
    assert st.holder is None and st.state == "failed" and "crashed or was killed" in st.error
    assert not (tmp_path / rundir.LOCK).exists()
    with rundir.RunLock(tmp_path):
        assert rundir.lock_holder(tmp_path)["pid"] == os.getpid()


def test_request_stop_sends_sigterm_and_the_run_reads_stopping_then_stopped(tmp_path):
    _write_status(tmp_path, {"state": "training", "step": 3, "max_steps": 10})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLDER.replace("time.sleep(hold)", "signal.sigwait([signal.SIGTERM])").replace(
                "import sys, time",
                "import sys, time, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])",
            ),
            str(tmp_path),
            "0",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "got"
        assert rundir.request_stop(tmp_path) == proc.pid
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    assert rundir.run_state(tmp_path).state == "stopped"  # no end recorded, but a stop had been asked
    with pytest.raises(OpenLLMError, match="nothing to stop"):
        rundir.request_stop(tmp_path)


def test_lock_on_a_read_only_run_folder_is_one_clear_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("mount"):
        # a real read-only file system (tmpfs mounted ro in a private mount namespace: nothing leaks out)
        script = _HOLDER.replace("time.sleep(hold)", "pass")
        proc = subprocess.run(
            [
                "unshare",
                "-m",
                "sh",
                "-c",
                'mount -t tmpfs -o ro tmpfs "$1" && shift && exec "$@"',
                "sh",
                str(run),
                sys.executable,
                "-c",
                script,
                str(run),
                "0",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if "mount" in proc.stderr and proc.returncode != 3:
            pytest.skip(f"cannot mount a read-only file system here: {proc.stderr.strip()}")
        assert proc.returncode == 3, (proc.stdout, proc.stderr)
        out = proc.stdout
        assert "Read-only file system" in out
    else:
        os.chmod(run, 0o555)
        try:
            with pytest.raises(OpenLLMError) as info:
                rundir.RunLock(run).acquire()
        finally:
            os.chmod(run, 0o755)
        out = "refused " + str(info.value)
    assert "is not writable" in out and "--out" in out and len(out.strip().splitlines()) == 1
    assert rundir.lock_holder(run) is None and rundir.run_state(run).state == "new"


def test_state_machine_transitions():
    assert rundir.check_transition("training", "stopping") == "stopping"
    assert rundir.check_transition("finished", "training") == "training"  # continue for more steps
    # an impossible move is a bug in the code that made it: the crash path, not a one-line user error
    with pytest.raises(rundir.InvalidTransition, match="from finished to stopping") as info:
        rundir.check_transition("finished", "stopping")
    assert not isinstance(info.value, OpenLLMError)
    with pytest.raises(rundir.InvalidTransition, match="unknown run state"):
        rundir.check_transition("training", "running")
    assert set(rundir.TRANSITIONS) == set(rundir.STATES) | {"new"}


def test_divergence_nan_or_above_uniform(tmp_path):
    cfg = {"model": {"vocab_size": 512}, "train": {"lr": 1.0, "grad_clip": 0.0}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    _write_status(tmp_path, {"state": "finished", "step": 30, "max_steps": 30})
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in [(10, 7.0), (20, 83.0), (30, 83.1)])
    )
    st = rundir.run_state(tmp_path)
    assert st.state == "diverged" and st.diverged == {"step": 30, "loss": 83.1, "cause": "above_uniform"}
    assert "ln 512 = 6.24" in st.warning and "lower the learning rate (e.g. to 0.1)" in st.warning
    assert "gradient clipping" in st.warning
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in [(10, 7.0), (20, 5.0), (30, 4.0)])
    )
    st = rundir.run_state(tmp_path)
    assert st.state == "finished" and st.warning is None
    # an error's text is never parsed for a divergence: only the recorded fields say it
    _write_status(tmp_path, {"state": "failed", "error": "loss nan at step 12", "step": 12})
    assert rundir.run_state(tmp_path).state == "failed"


def test_failure_and_divergence_are_fields_that_round_trip(tmp_path):
    rundir.move(tmp_path, "training", step=4, max_steps=10, pid=os.getpid())
    rundir.move(tmp_path, "failed", error="out of disk space", error_type="OSError")
    st = rundir.run_state(tmp_path)
    assert (st.state, st.error, st.error_type, st.diverged) == ("failed", "out of disk space", "OSError", None)

    fields = {"step": 12, "loss": None, "cause": rundir.NON_FINITE}
    rundir.move(tmp_path, "training", step=11, pid=os.getpid())  # continued: a new attempt, no old error
    assert "error" not in rundir.read_status(tmp_path) and rundir.read_status(tmp_path)["max_steps"] == 10
    rundir.move(tmp_path, "diverged", error="boom", diverged=fields, warning="lower the learning rate")
    st = rundir.run_state(tmp_path)  # no metrics say so: the recorded fields do
    assert (st.state, st.diverged, st.warning, st.error) == ("diverged", fields, "lower the learning rate", None)
    assert json.loads((tmp_path / "status.json").read_text())["diverged"] == fields


def test_move_follows_the_state_machine(tmp_path):
    assert rundir.move(tmp_path, "queued", max_steps=5, pid=None)["state"] == "queued"
    rundir.move(tmp_path, "preparing", phase="tokenizing", pid=os.getpid())
    assert rundir.read_status(tmp_path)["phase"] == "tokenizing"
    rundir.move(tmp_path, "preparing", step=0)  # the same state: fields only, the phase stays
    assert rundir.read_status(tmp_path)["phase"] == "tokenizing"
    rundir.move(tmp_path, "training")
    assert "phase" not in rundir.read_status(tmp_path)  # a phase lasts until the state changes
    rundir.move(tmp_path, "finished", step=5)
    with pytest.raises(rundir.InvalidTransition, match="from finished to stopping"):
        rundir.move(tmp_path, "stopping")
    assert rundir.read_status(tmp_path)["state"] == "finished"  # refused: nothing written
    # an active state left by another process (it died without recording its end) moves on as failed
    _write_status(tmp_path, {"state": "training", "step": 3, "pid": -1, "error": None})
    assert rundir.move(tmp_path, "preparing", pid=os.getpid())["step"] == 3
    # status.json of older runs ("running" with a phase) reads in today's words
    assert rundir.recorded_state({"state": "running", "phase": "training"}) == "training"
    assert rundir.recorded_state({"state": "running", "phase": "tokenizing"}) == "preparing"


def test_the_lock_records_the_command_line_without_secrets(tmp_path, monkeypatch):
    """The lock file is readable by every local user: a token in a --hub URL must not be recorded there."""
    monkeypatch.setattr(sys, "argv", ["openllm", "finetune", "--hub", "https://alice:S3cretT0ken@hub.example/"])
    with rundir.RunLock(tmp_path):
        text = (tmp_path / rundir.LOCK).read_text()
        assert "S3cretT0ken" not in text and "finetune" in text and "hub.example" in text
    with rundir.RunLock(tmp_path, command="openllm train --hub https://hf_abcdefghijklmnopqrstuvwx@h/"):
        assert "hf_abcdefghijklmnopqrstuvwx" not in (tmp_path / rundir.LOCK).read_text()


def test_status_json_has_one_writer():
    """Only rundir names status.json: everything else moves a run through rundir.move (the state machine)."""
    import ast
    from pathlib import Path

    from test_imports import source_nodes  # parsed once for every check that reads the source

    src = Path(rundir.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        if path == Path(rundir.__file__):
            continue
        for node in source_nodes(path):
            named = (
                (isinstance(node, ast.Constant) and node.value in (rundir.STATUS, "write_status"))
                or (isinstance(node, ast.Attribute) and node.attr in ("STATUS", "write_status"))
                or (isinstance(node, ast.alias) and node.name in ("STATUS", "write_status"))
                or (isinstance(node, ast.Name) and node.id == "write_status")
            )
            if named:
                found.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not found, f"status.json written outside openllm.rundir.move: {found}"


def test_a_run_whose_machine_went_away_is_stopped_at_its_checkpoint_not_failed(tmp_path):
    """interrupt(): status.json says training, nobody holds the lock (the app and its job died with the
    machine): stopped, phase interrupted, at the latest checkpoint, so Continue resumes; anything else is left."""
    run = tmp_path / "run"
    _checkpoint(run, "step_00000004")
    _write_status(run, {"state": "training", "step": 6, "max_steps": 20, "pid": -1, "error": None})
    assert rundir.interrupt(run, "the app restarted")
    st = rundir.run_state(run)
    assert (st.state, st.phase, st.step, st.max_steps, st.error) == ("stopped", rundir.INTERRUPTED, 4, 20, None)
    assert rundir.read_status(run)["reason"] == "the app restarted"
    assert not rundir.interrupt(run, "again")  # already ended
    rundir.move(run, "queued", pid=None)  # Continue: a new attempt, which forgets the interruption
    assert rundir.read_status(run).get("phase") is None and not rundir.read_status(run).get("interrupted")
    assert not rundir.interrupt(run, "x")  # queued a moment ago: its job may be starting
    with rundir.RunLock(run):
        rundir.move(run, "training")
        assert not rundir.interrupt(run, "x")  # held: alive
