"""Damaged checkpoints are detected, named and survived: checksums in state.json, verification, the newest
intact checkpoint, and one-line errors for every damaged file instead of a traceback."""

import json

import pytest
import torch

from openllm.checkpoint import (
    CheckpointDamaged,
    latest_intact_checkpoint,
    load_model_weights,
    load_optimizer_state,
    load_state,
    model_state_dict,
    save_checkpoint,
    verify_checkpoint,
)
from openllm.config import ModelConfig
from openllm.errors import OpenLLMError
from openllm.loading import load
from openllm.model import Transformer
from openllm.rundir import checkpoint_dir

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**CFG))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(
            tmp_path,
            step,
            model_state_dict(model),
            {"optimizer": opt.state_dict(), "scaler": None},
            {"config": {"model": CFG}},
        )
    return tmp_path


def test_state_records_sizes_and_checksums(run):
    state = verify_checkpoint(checkpoint_dir(run, 3))
    assert set(state["files"]) == {"model.safetensors", "optimizer.pt"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in state["files"].values())


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "delete"])
def test_damaged_weights_are_named_and_skipped(run, damage):
    path = checkpoint_dir(run, 3) / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:]))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    if damage != "delete":  # a folder without weights is not a complete checkpoint at all
        with pytest.raises(CheckpointDamaged, match="step_00000003/model.safetensors"):
            verify_checkpoint(checkpoint_dir(run, 3))
    warnings = []
    assert latest_intact_checkpoint(run, warn=warnings.append) == checkpoint_dir(run, 2)
    assert len(warnings) == (0 if damage == "delete" else 1)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"not a pickle at all"])
def test_damaged_optimizer_never_suggests_unsafe_loading(run, content):
    (checkpoint_dir(run, 3) / "optimizer.pt").write_bytes(content)
    with pytest.raises(CheckpointDamaged) as info:
        load_optimizer_state(checkpoint_dir(run, 3))
    msg = str(info.value)
    assert "optimizer.pt" in msg and "weights_only" not in msg and "\n" not in msg
    assert latest_intact_checkpoint(run) == checkpoint_dir(run, 2)


def test_missing_optimizer_is_one_line(run):
    (checkpoint_dir(run, 3) / "optimizer.pt").unlink()
    with pytest.raises(CheckpointDamaged, match="optimizer.pt is missing"):
        load_optimizer_state(checkpoint_dir(run, 3))


@pytest.mark.parametrize("content", ["{", "[]", '{"step": "three"}', "\udcff"])
def test_damaged_state_json(run, content):
    (checkpoint_dir(run, 3) / "state.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointDamaged, match="state.json"):
        load_state(checkpoint_dir(run, 3))
    assert latest_intact_checkpoint(run) == checkpoint_dir(run, 2)


def test_loading_damaged_weights_is_a_user_error(run, tmp_path):
    path = checkpoint_dir(run, 3) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OpenLLMError, match="model.safetensors cannot be read"):
        load_model_weights(Transformer(ModelConfig(**CFG)), checkpoint_dir(run, 3))
    (run / "config.json").write_text(json.dumps({"model": CFG}))
    with pytest.raises(OpenLLMError, match="damaged"):
        load(run)
