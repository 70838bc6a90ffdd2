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
