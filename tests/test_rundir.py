"""The run folder's layout: checkpoint naming and completeness, status, metrics, best, evaluation, atomic
writes. Everything is built by hand here, so these tests need no torch."""

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
    rundir.write_status(tmp_path / "run", {"state": "running", "step": 3})
    assert rundir.read_status(tmp_path / "run") == {"state": "running", "step": 3}
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


def test_load_json_names_the_damaged_file(tmp_path):
    p = tmp_path / "state.json"
    with pytest.raises(OpenLLMError, match="state.json is missing"):
        rundir.load_json(p)
    p.write_bytes(b"\xff\xfe{")
    with pytest.raises(OpenLLMError, match="not UTF-8"):
        rundir.load_json(p)
    p.write_text("{")
    with pytest.raises(OpenLLMError, match="not valid JSON"):
        rundir.load_json(p)
    p.write_text("[]")
    with pytest.raises(OpenLLMError, match="expected a JSON object"):
        rundir.load_json(p)
    assert rundir.read_json(p) == {}


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    rundir.write_json_atomic(tmp_path / "s.json", {"a": 1})
    rundir.write_json_atomic(tmp_path / "s.json", {"a": "é"})
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == {"a": "é"}
    with pytest.raises(RuntimeError):
        with rundir.atomic_file(tmp_path / "s.json") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == {"a": "é"}
    assert os.listdir(tmp_path) == ["s.json"]


def test_atomic_output_dir_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OpenLLMError, match="not an earlier output"):
        with rundir.atomic_output_dir(out, owned_marker="meta.json"):
            pass
    assert (out / "mine.txt").read_text() == "user data"
    with pytest.raises(RuntimeError):
        with rundir.atomic_output_dir(tmp_path / "new", owned_marker="meta.json") as tmp:
            (tmp / "meta.json").write_text("{}")
            raise RuntimeError
    assert not (tmp_path / "new").exists() and sorted(os.listdir(tmp_path)) == ["out"]


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


def test_kill_9_leaves_a_stale_lock_that_is_detected_and_cleared(tmp_path):
    rundir.write_status(tmp_path, {"state": "running", "step": 7, "max_steps": 100, "pid": None})
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
    rundir.write_status(tmp_path, {"state": "running", "step": 3, "max_steps": 10})
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
    with pytest.raises(OpenLLMError, match="from finished to stopping"):
        rundir.check_transition("finished", "stopping")
    with pytest.raises(OpenLLMError, match="unknown run state"):
        rundir.check_transition("training", "running")
    assert set(rundir.TRANSITIONS) == set(rundir.STATES) | {"new"}


def test_divergence_nan_or_above_uniform(tmp_path):
    cfg = {"model": {"vocab_size": 512}, "train": {"lr": 1.0, "grad_clip": 0.0}}
    rundir.write_json_atomic(tmp_path / "config.json", cfg)
    rundir.write_status(tmp_path, {"state": "finished", "step": 30, "max_steps": 30})
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in [(10, 7.0), (20, 83.0), (30, 83.1)])
    )
    st = rundir.run_state(tmp_path)
    assert st.state == "diverged"
    assert "ln 512 = 6.24" in st.warning and "lower the learning rate (e.g. to 0.1)" in st.warning
    assert "gradient clipping" in st.warning
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in [(10, 7.0), (20, 5.0), (30, 4.0)])
    )
    st = rundir.run_state(tmp_path)
    assert st.state == "finished" and st.warning is None
    rundir.write_status(tmp_path, {"state": "failed", "error": "loss nan at step 12", "step": 12})
    assert rundir.run_state(tmp_path).state == "diverged"


def test_the_lock_records_the_command_line_without_secrets(tmp_path, monkeypatch):
    """The lock file is readable by every local user: a token in a --hub URL must not be recorded there."""
    monkeypatch.setattr(sys, "argv", ["openllm", "finetune", "--hub", "https://alice:S3cretT0ken@hub.example/"])
    with rundir.RunLock(tmp_path):
        text = (tmp_path / rundir.LOCK).read_text()
        assert "S3cretT0ken" not in text and "finetune" in text and "hub.example" in text
    with rundir.RunLock(tmp_path, command="openllm train --hub https://hf_abcdefghijklmnopqrstuvwx@h/"):
        assert "hf_abcdefghijklmnopqrstuvwx" not in (tmp_path / rundir.LOCK).read_text()
