"""The trackers that mirror metrics.jsonl (train.report_to): TensorBoard, trackio (its local store, for real) and
Weights & Biases in offline mode (its .wandb files, read with wandb's own record format). Nothing leaves the
machine: trackio gets no Space or server, W&B runs offline, every store lies under tmp_path."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from openllm.config import Config, report_targets
from openllm.errors import ConfigError, MissingExtra, user_message
from openllm.metrics import check_reporters, trackio_command
from openllm.rundir import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli
from test_batches import random_data

MICRO = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64}
TRAIN = {"micro_batch_size": 4, "seq_len": 32, "eval_every": 2, "eval_batches": 2, "save_every": 4, "log_every": 1}


def test_report_to_names_trackers_or_none():
    assert report_targets("tensorboard") == ("tensorboard",)
    assert report_targets("trackio, wandb,trackio") == ("trackio", "wandb")
    assert report_targets("none") == ()
    for bad in ("", "tb", "none,wandb", "wandb,", 3):
        with pytest.raises(ConfigError, match="train.report_to must be none or a comma-separated list"):
            report_targets(bad)
    assert Config.from_dict({"train": {"report_to": "trackio"}}).train.report_to == "trackio"


@pytest.mark.parametrize("module", ["trackio", "wandb"])
def test_a_missing_tracker_package_is_the_one_line_extra_hint(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails, as when the package is not installed
    with pytest.raises(MissingExtra) as info:
        check_reporters(["tensorboard", module])
    assert user_message(info.value) == (
        f"train.report_to {module} needs {module}, which is not installed: pip install 'openllm[track]'"
    )
    check_reporters(["tensorboard"])  # TensorBoard is in the core install


def test_trackio_command_names_the_project(monkeypatch):
    monkeypatch.delenv("OPENLLM_TRACKER_PROJECT", raising=False)
    assert trackio_command() == 'trackio show --project "openllm"'
    monkeypatch.setenv("OPENLLM_TRACKER_PROJECT", "mine")
    assert trackio_command() == 'trackio show --project "mine"'


# --- the real trackers, through `openllm train --report-to` ---------------------------------------------------


def _tracker_env(tmp: Path) -> dict[str, str]:
    env = {
        "TRACKIO_DIR": str(tmp / "trackio"),  # trackio's local store (default ~/.cache/huggingface/trackio)
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp / "wandb"),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
        "WANDB_DISABLE_GIT": "true",
        "OMP_NUM_THREADS": "1",
    }
    (tmp / "wandb").mkdir()
    return env


def _trackio_logs(env: dict[str, str], project: str) -> dict[str, list[dict]]:
    """Every run's logs in trackio's store, read by trackio itself (TRACKIO_DIR is read when it is imported)."""
    code = (
        "import json; from trackio.sqlite_storage import SQLiteStorage as S; "
        f"print(json.dumps({{r: S.get_logs({project!r}, r) for r in S.get_runs({project!r})}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's leveldb-style log (a 7-byte file header, 32 KiB blocks, records in
    chunks of crc32 + length + type) of wandb.proto.wandb_internal_pb2.Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


@pytest.mark.slow
def test_trackio_and_wandb_offline_hold_the_runs_metrics_across_a_resume(tmp_path, monkeypatch):
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "SPACE_ID", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)  # nothing that would send the run anywhere
    env = _tracker_env(tmp_path)
    data = random_data(tmp_path / "data", vocab_size=64, train_tokens=8000, val_tokens=1000)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"name": "micro", "model": MICRO, "train": {**TRAIN, "max_steps": 4}}))
    run = tmp_path / "run"
    first = run_cli(
        "train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--no-progress",
        "--report-to", "trackio,wandb,tensorboard", env=env,
    )  # fmt: skip
    assert first.stdout.count("\n") == 1 and first.stdout.startswith("run folder:")  # trackio's banner: stderr
    # the resume reports to the same tracker runs (report_to is in the checkpoint's config)
    run_cli("train", "--out", str(run), "--max-steps", "6", "--no-progress", env=env)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    state = json.loads((run / "checkpoints/step_00000006/state.json").read_text())
    run_id = state["run_id"]
    assert run_id == json.loads((run / "checkpoints/step_00000004/state.json").read_text())["run_id"]
    assert any((run / "tb").iterdir())

    def same(logged: dict, record: dict) -> None:
        for key, value in record.items():
            if key != "step":
                assert logged[key] == pytest.approx(value, rel=1e-6), (record["step"], key)

    # trackio: one run, named after the folder and the run id, holding every record
    logs = _trackio_logs(env, "openllm")
    assert list(logs) == [f"run-{run_id}"]
    by_step = {r["step"]: r for r in logs[f"run-{run_id}"]}
    assert sorted(by_step) == [1, 2, 3, 4, 5, 6]
    for r in records:
        same(by_step[r["step"]], r)

    # W&B offline: one offline run folder a process, both with the run's id; config and identity logged once each
    runs = sorted((tmp_path / "wandb" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(runs) == 2
    history: dict[int, dict] = {}
    resumed = []
    for path in runs:
        recs = _wandb_records(path)
        started = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
        assert len(started) == 1 and started[0].run_id == run_id and started[0].display_name == "run"
        config = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in started[0].config.update}
        assert config["model"]["d_model"] == 32 and config["train"]["report_to"] == "trackio,wandb,tensorboard"
        assert config["openllm"]["run_id"] == run_id and config["openllm"]["world_size"] == 1
        resumed.append(config["openllm"]["resumed_step"])
        for r in recs:
            if r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                history[r.history.step.num] = items
    assert sorted(history) == [1, 2, 3, 4, 5, 6] and resumed == [None, 4]
    for r in records:
        same(history[r["step"]], r)


@pytest.mark.slow
def test_a_tracker_that_cannot_start_ends_the_run_before_its_first_step_in_one_line(tmp_path):
    env = {**_tracker_env(tmp_path), "WANDB_MODE": "bogus"}  # W&B refuses its own settings, offline
    data = random_data(tmp_path / "data", vocab_size=64, train_tokens=8000, val_tokens=1000)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"name": "micro", "model": MICRO, "train": {**TRAIN, "max_steps": 4}}))
    run = tmp_path / "run"
    res = run_cli(
        "train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--no-progress",
        "--report-to", "wandb", env=env, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train.report_to wandb: wandb could not start (ValidationError: ")
    assert last.endswith("fix its settings or leave it out of --report-to")
    assert read_metrics(run) == [] and json.loads((run / "status.json").read_text())["state"] == "failed"
