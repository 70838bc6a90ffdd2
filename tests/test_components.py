"""Every component of a checkpoint gives and takes a ``state_dict`` that survives the trip to disk (JSON for
state.json's parts, ``torch.save`` read back with ``weights_only=True`` for optimizer.pt's) and continues
exactly; the :class:`~openllm.checkpoint.Checkpointer` writes the layout checkpoints have always had and reads
checkpoints written before the schedule had a state."""

import io
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openllm.batches import RandomWindowLoader
from openllm.checkpoint import (
    CheckpointDamaged,
    Checkpointer,
    ModelWeights,
    RNGState,
    load_optimizer_state,
    load_state,
    read_safetensors,
)
from openllm.config import ModelConfig, TrainConfig
from openllm.distributed import FullOptimizerState
from openllm.model import Transformer
from openllm.optim import LRSchedule, build_optimizer, lr_at
from openllm.train import TrainState

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import random_data

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def via_json(state):
    return json.loads(json.dumps(state))


def via_torch(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


def _train_steps(model, opt, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 64, (2, 16), generator=gen)
        model(x, x, return_logits=False).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _model_and_optimizer(optimizer: str):
    torch.manual_seed(0)
    model = Transformer(MICRO)
    return model, build_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-2), "cpu")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_optimizer_state_round_trips_by_name(optimizer):
    model, opt = _model_and_optimizer(optimizer)
    _train_steps(model, opt, 3)
    state = via_torch(FullOptimizerState(model, opt).state_dict())
    assert "layers.0.attn.wqkv.weight" in state["state"]  # keyed by name: resumable under any engine
    twin, twin_opt = _model_and_optimizer(optimizer)
    twin.load_state_dict(model.state_dict())
    FullOptimizerState(twin, twin_opt).load_state_dict(state)
    _train_steps(model, opt, 2, seed=1)
    _train_steps(twin, twin_opt, 2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_model_weights_round_trip_without_the_tied_head():
    model, _ = _model_and_optimizer("adamw")
    state = ModelWeights(model).state_dict()
    assert "lm_head.weight" not in state and all(t.is_contiguous() for t in state.values())
    torch.manual_seed(1)
    twin = Transformer(MICRO)
    ModelWeights(twin).load_state_dict(read_via_safetensors(state))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    assert twin.lm_head.weight is twin.tok_embeddings.weight


def read_via_safetensors(state):
    from safetensors.torch import load, save

    return load(save(state))


def test_lr_schedule_round_trips_and_follows_the_config():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=3, max_steps=20, schedule="cosine")
    model, opt = _model_and_optimizer("muon")
    sched = LRSchedule(opt, cfg)
    first = [sched.step() for _ in range(7)]
    assert first == [lr_at(s, cfg) for s in range(7)]
    other = LRSchedule(opt, cfg)
    other.load_state_dict(via_json(sched.state_dict()))
    assert other.step() == sched.step() == lr_at(7, cfg)
    # every group follows the curve scaled by its lr_scale (Muon's groups by muon_lr / lr)
    assert all(g["lr"] == lr_at(7, cfg) * g["lr_scale"] for g in opt.param_groups)


def test_grad_scaler_round_trips():
    a = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    a._lazy_init_scale_growth_tracker(torch.device("cpu"))
    a.update(new_scale=256.0)
    b = torch.amp.GradScaler("cpu")
    b.load_state_dict(via_torch(a.state_dict()))
    assert b.get_scale() == 256.0 and b.state_dict() == a.state_dict()


def test_rng_state_round_trips_every_generator():
    rng = RNGState()
    state = via_json(rng.state_dict())
    want = (random.random(), np.random.rand(), torch.rand(3))
    rng.load_state_dict(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2])
    # rank 1 of two takes its own states; of a run resumed with three ranks, the first rank's
    torch.manual_seed(1)
    states = state + RNGState().state_dict()
    for world, source in ((2, 1), (3, 0)):
        RNGState(rank=1, world_size=world).load_state_dict(states)
        mine = torch.rand(3)
        RNGState().load_state_dict([states[source]])
        assert torch.equal(mine, torch.rand(3))


def test_loader_state_round_trips(tmp_path):
    data = random_data(tmp_path / "d")
    a = RandomWindowLoader(data, batch_size=4, seq_len=16, seed=7)
    for _ in range(3):
        a.next()
    b = RandomWindowLoader(data, batch_size=4, seq_len=16, seed=7)
    b.load_state_dict(via_json(a.state_dict()))
    assert all(torch.equal(p, q) for p, q in zip(a.next(), b.next()))


def test_train_state_round_trips():
    a = TrainState(step=12, tokens_seen=3072, elapsed_before=5.0)
    assert a.record_eval(2.5) and not a.record_eval(2.7) and a.best_step == 12
    b = TrainState()
    b.load_state_dict(via_json(a.state_dict()))
    assert (b.step, b.tokens_seen, b.val_loss, b.best_val_loss, b.best_step, b.evals_without_improvement) == (
        12,
        3072,
        2.7,
        2.5,
        12,
        1,
    )
    assert b.elapsed_before >= 5.0


def _components(optimizer="adamw"):
    model, opt = _model_and_optimizer(optimizer)
    sched = LRSchedule(opt, TrainConfig(lr=1e-2, max_steps=10))
    return (
        {
            "model": ModelWeights(model),
            "optimizer": FullOptimizerState(model, opt),
            "scaler": torch.amp.GradScaler("cpu", enabled=False),
            "scheduler": sched,
            "rng": RNGState(),
            "progress": TrainState(step=4, tokens_seen=100),
        },
        model,
        opt,
    )


def test_checkpointer_writes_the_layout_checkpoints_always_had(tmp_path):
    comps, model, opt = _components()
    for _ in range(4):
        comps["scheduler"].step()
    _train_steps(model, opt, 2)
    saver = Checkpointer(tmp_path, comps, keep_last=2)
    ckpt = saver.save(4, {"config": {"x": 1}})
    assert (saver.step, saver.last) == (4, ckpt)
    state = load_state(ckpt)
    # the progress at the top level, every other JSON component under its name, tensors in optimizer.pt
    assert state["step"] == 4 and state["tokens_seen"] == 100 and state["config"] == {"x": 1}
    assert state["scheduler"] == {"steps": 4} and {"python", "numpy", "torch"} <= set(state["rng"][0])
    opt_file = load_optimizer_state(ckpt)
    assert set(opt_file) == {"optimizer", "scaler"} and opt_file["scaler"] is None  # a disabled scaler
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.safetensors", "optimizer.pt", "state.json"]
    assert "lm_head.weight" not in read_safetensors(ckpt / "model.safetensors")  # tied: stored once

    fresh, fresh_model, fresh_opt = _components()
    fresh_model.load_state_dict(model.state_dict())
    fresh["progress"] = TrainState()
    loader = Checkpointer(tmp_path, fresh)
    loader.load(ckpt)
    assert loader.step == 4 and fresh["scheduler"].steps == 4
    assert fresh["progress"].step == 4 and fresh["progress"].tokens_seen == 100
    _train_steps(model, opt, 1, seed=2)
    _train_steps(fresh_model, fresh_opt, 1, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values()))


def test_checkpointer_reads_checkpoints_from_before_the_schedule_had_a_state(tmp_path):
    comps, _, _ = _components()
    ckpt = Checkpointer(tmp_path, comps).save(6, {})
    state = json.loads((ckpt / "state.json").read_text())
    del state["scheduler"]
    fresh, _, _ = _components()
    Checkpointer(tmp_path, fresh).load(ckpt, state)
    assert fresh["scheduler"].steps == 6  # the old layout: it had scheduled `step` updates


def test_checkpointer_refuses_a_checkpoint_without_a_needed_part(tmp_path):
    comps, _, _ = _components()
    ckpt = Checkpointer(tmp_path, comps).save(2, {})
    with pytest.raises(CheckpointDamaged, match="holds no 'lora' state"):
        Checkpointer(tmp_path, {**comps, "lora": comps["scaler"]}).load(ckpt)


def test_only_the_writer_writes(tmp_path):
    comps, _, _ = _components()
    other_rank = Checkpointer(tmp_path, comps, writer=False)
    assert other_rank.save(1, {}) is None and other_rank.step == 1  # it took part in the step's checkpoint
    assert not (tmp_path / "checkpoints").exists()
