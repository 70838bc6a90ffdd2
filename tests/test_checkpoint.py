import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from openllm.checkpoint import (
    load_model_weights,
    load_optimizer_state,
    load_state,
    model_state_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from openllm.config import ModelConfig
from openllm.errors import OpenLLMError
from openllm.model import Transformer
from openllm.rundir import checkpoint_dir, clean_temporary, latest_checkpoint, list_checkpoints, read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import random_data

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)


def _save(run, step, model, **kw):
    opt = torch.optim.AdamW(model.parameters())
    return save_checkpoint(
        run, step, model_state_dict(model), {"optimizer": opt.state_dict(), "scaler": None}, {"config": {"x": 1}}, **kw
    )


def test_save_load_round_trip_and_keep_last(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**CFG))
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, model, keep_last=2, protect={2})
    # keep the last two, plus the protected (best) one
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000004", "step_00000005"]
    ck = latest_checkpoint(tmp_path)
    assert ck == checkpoint_dir(tmp_path, 5) and load_state(ck)["step"] == 5
    other = Transformer(ModelConfig(**CFG))
    load_model_weights(other, ck)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other.lm_head.weight is other.tok_embeddings.weight
    assert "state" in load_optimizer_state(ck)["optimizer"]  # weights_only=True load
    with pytest.raises(OpenLLMError, match="does not match"):
        load_model_weights(Transformer(ModelConfig(**{**CFG, "n_layers": 3})), ck)
    # saving the same step again replaces it whole
    _save(tmp_path, 5, model)
    assert load_state(ck)["step"] == 5 and not any(
        p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir()
    )


def test_partial_writes_are_invisible_and_cleaned(tmp_path):
    model = Transformer(ModelConfig(**CFG))
    _save(tmp_path, 3, model)
    root = tmp_path / "checkpoints"
    # what a kill in the middle of writing step 4 leaves: a temporary folder with a truncated weights file
    partial = root / ".tmp-step_00000004-999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    # and a step folder without state.json is not a checkpoint either
    (root / "step_00000009").mkdir()
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert clean_temporary(tmp_path) == [partial] and not partial.exists()


def test_rng_state_round_trip():
    state = json.loads(json.dumps(rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_usable(tmp_path):
    data = random_data(tmp_path / "data", vocab_size=2048, train_tokens=20000, val_tokens=2000)
    cfg = {
        "model": {"vocab_size": 2048, "d_model": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 32},
        "train": {
            "micro_batch_size": 2,
            "seq_len": 16,
            "max_steps": 30,
            "save_every": 1,
            "keep_last": 2,
            "eval_every": 1000,
            "log_every": 1,
            "warmup_steps": 0,
        },
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "openllm",
        "train",
        "--no-progress",
        "--config",
        str(tmp_path / "cfg.json"),
        "--data",
        str(data),
        "--out",
        str(run),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    root = run / "checkpoints"
    seen_tmp = None
    t0 = time.time()
    while seen_tmp is None and time.time() - t0 < 120:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the test could kill it: {proc.stderr.read()}")
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            continue
        # a write in progress while a complete earlier checkpoint exists: kill right now
        if any(n.startswith("step_") for n in names):
            tmp = [n for n in names if n.startswith(".tmp-step_")]
            if tmp:
                proc.send_signal(signal.SIGKILL)
                seen_tmp = tmp[0]
    proc.wait()
    assert seen_tmp is not None and proc.returncode == -signal.SIGKILL
    killed_step = int(seen_tmp.split("_")[1].split("-")[0])
    latest = latest_checkpoint(run)
    assert latest is not None and int(latest.name[5:]) <= killed_step
    # the previous checkpoint is complete and loads: weights, optimizer, state
    state = load_state(latest)
    model = load_model_weights(Transformer(ModelConfig(**cfg["model"])), latest)
    assert state["step"] == int(latest.name[5:]) and model is not None
    assert "state" in load_optimizer_state(latest)["optimizer"]
    # and the run resumes from it, cleans the partial write up, and finishes
    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resuming from {latest}" in res.stderr
    assert not any(n.startswith(".tmp") for n in os.listdir(root))
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 31))
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_every_file_of_a_checkpoint_follows_the_umask(tmp_path):
    """safetensors writes its file private (0600): a checkpoint's weights get the mode its state.json gets, so
    whoever may read the run folder may read the model too (#24)."""
    import os

    model = Transformer(ModelConfig(**CFG))
    old = os.umask(0o022)
    try:
        _save(tmp_path, 1, model)
    finally:
        os.umask(old)
    ck = latest_checkpoint(tmp_path)
    modes = {p.name: p.stat().st_mode & 0o777 for p in ck.iterdir()}
    assert modes["model.safetensors"] == modes["state.json"] == 0o644, modes
