"""Optimizers (AdamW groups, Muon + AdamW as one optimizer), schedules, the recipe options that go with them
(zero-initialised projections, document-aligned windows) and the plain-torch fused loss."""

import copy
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openllm.batches import RandomWindowLoader
from openllm.config import Config, ConfigError, ModelConfig, TrainConfig
from openllm.distributed import full_state, load_full_state
from openllm.kernels import apply_kernels, chunked_linear_cross_entropy
from openllm.model import Transformer
from openllm.optim import MuonAdamW, build_optimizer, lr_at, muon_param_names, set_lr

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import write_shards

SHAPE = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def _model(seed=0, **over):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(**{**SHAPE, **over}))


def _steps(model, opt, batches, lr=1e-3):
    losses = []
    for x in batches:
        set_lr(opt, lr)
        loss = model(x, x.roll(-1, 1), return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (2, 16), generator=g) for _ in range(n)]


@pytest.mark.parametrize("tied", [True, False])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(tied):
    model = _model(tie_embeddings=tied)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02), "cpu")
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    expected_muon = sorted(
        f"layers.{i}.{m}.weight" for i in range(2) for m in ("attn.wqkv", "attn.wo", "mlp.w13", "mlp.w2")
    )
    assert groups["muon"] == expected_muon == sorted(muon_param_names(model))
    norms = [n for n in names.values() if "norm" in n]
    if tied:
        assert groups["decay"] == ["tok_embeddings.weight"] and groups["no_decay"] == sorted(norms)
    else:  # an untied input embedding is AdamW's, without decay; the head is AdamW's, with decay
        assert groups["decay"] == ["lm_head.weight"]
        assert groups["no_decay"] == sorted([*norms, "tok_embeddings.weight"])
    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len({id(p) for p in model.parameters()})  # each parameter exactly once
    # the fused projections are orthogonalised per part: q, k, v and gate, up
    wqkv = model.layers[0].attn.wqkv.weight
    assert opt.muon.splits[wqkv] == [32, 16, 16]
    assert opt.muon.splits[model.layers[0].mlp.w13.weight] == [model.cfg.d_ff, model.cfg.d_ff]


def test_schedule_drives_both_learning_rates():
    tc = TrainConfig(
        optimizer="muon",
        lr=1e-3,
        muon_lr=0.02,
        schedule="wsd",
        warmup_steps=2,
        max_steps=10,
        decay_fraction=0.5,
        min_lr=0.0,
    )
    opt = build_optimizer(_model(), tc, "cpu")
    for step in (0, 3, 8, 9):
        set_lr(opt, lr_at(step, tc))
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["decay"] == pytest.approx(lr_at(step, tc))
        assert lrs["muon"] == pytest.approx(lr_at(step, tc) * 20)
    assert lr_at(9, tc) == 0.0


def test_muon_update_is_newton_schulz_per_part():
    from torch.optim._muon import _zeropower_via_newtonschulz

    model = _model()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.1, muon_momentum=0.0), "cpu")
    wqkv = model.layers[0].attn.wqkv.weight
    before = wqkv.detach().clone()
    x = _batches(1)[0]
    model(x, x.roll(-1, 1), return_logits=False).backward()
    grad = wqkv.grad.clone()
    set_lr(opt, 1e-3)  # Muon's lr: 0.1, no weight decay; momentum 0: the update is NS(gradient)
    opt.step()
    upd = (before - wqkv.detach()) / 0.1
    coeffs = (3.4445, -4.7750, 2.0315)
    per_part = torch.cat(
        [
            _zeropower_via_newtonschulz(g, coeffs, 5, 1e-7).float() * max(1, g.shape[0] / 32) ** 0.5
            for g in grad.split([32, 16, 16])
        ]
    )
    torch.testing.assert_close(upd, per_part, rtol=0, atol=2e-4)
    whole = _zeropower_via_newtonschulz(grad, coeffs, 5, 1e-7).float() * 2**0.5
    assert (upd - whole).abs().max() > 0.05  # not the fused matrix orthogonalised whole
    s = torch.linalg.svdvals(upd[:32].double())
    assert 0.5 < s.median() < 1.5 and s.max() < 1.6, s


def test_state_dict_round_trip_continues_identically():
    model = _model(tie_embeddings=False)
    tc = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02)
    opt = build_optimizer(model, tc, "cpu")
    _steps(model, opt, _batches(3))
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    twin = copy.deepcopy(model)
    opt2 = build_optimizer(twin, tc, "cpu")
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert opt2.muon.state is opt2.state and opt2.adamw.state is opt2.state
    assert opt2.muon.param_groups[0] is opt2.param_groups[0]
    more = _batches(3, seed=5)
    assert _steps(model, opt, more) == _steps(twin, opt2, more)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_full_state_dicts_by_name_round_trip():
    """The checkpoint path (torch.distributed.checkpoint's full state dicts, keyed by parameter name)."""
    model = _model()
    tc = TrainConfig(optimizer="muon", lr=1e-3)
    opt = build_optimizer(model, tc, "cpu")
    _steps(model, opt, _batches(2))
    msd, osd = full_state(model, opt)
    assert "layers.0.attn.wqkv.weight" in osd["state"]
    assert set(osd["state"]["layers.0.attn.wqkv.weight"]) == {"momentum_buffer"}
    assert set(osd["state"]["norm.weight"]) == {"step", "exp_avg", "exp_avg_sq"}
    buf = io.BytesIO()
    torch.save(osd, buf)
    twin = _model(seed=9)
    twin.load_state_dict(msd)
    opt2 = build_optimizer(twin, tc, "cpu")
    load_full_state(twin, opt2, None, torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    more = _batches(2, seed=4)
    assert _steps(model, opt, more) == _steps(twin, opt2, more)


def test_adamw_default_is_unchanged():
    opt = build_optimizer(_model(), TrainConfig(), "cpu")
    assert type(opt) is torch.optim.AdamW
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]


def test_config_validation():
    Config.from_dict(
        {
            "train": {
                "optimizer": "muon",
                "muon_lr": 0.05,
                "muon_momentum": 0.9,
                "batch_warmup_steps": 10,
                "doc_aligned": True,
                "fused_loss": "chunked",
                "check_every": 5,
            },
            "model": {"zero_init_proj": True},
        }
    )
    bad = [
        ({"optimizer": "lion"}, "train.optimizer"),
        ({"muon_lr": 0}, "train.muon_lr"),
        ({"muon_momentum": 1.0}, "train.muon_momentum"),
        ({"muon_weight_decay": -1}, "muon_weight_decay"),
        ({"batch_warmup_steps": -1}, "batch_warmup_steps"),
        ({"fused_loss": "yes"}, "train.fused_loss"),
        ({"check_every": 0}, "train.check_every"),
        ({"doc_aligned": 1}, "train.doc_aligned"),
        ({"fused_ops": "on"}, "train.fused_ops"),
    ]
    for over, field in bad:
        with pytest.raises(ConfigError, match=field):
            Config.from_dict({"train": over})
    with pytest.raises(ConfigError, match="model.zero_init_proj"):
        Config.from_dict({"model": {"zero_init_proj": "yes"}})


def test_zero_init_projections_keep_the_llama_shape():
    plain, zero = _model(), _model(zero_init_proj=True)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in zero.state_dict().items()}
    for block in zero.layers:
        assert not block.attn.wo.weight.any() and not block.mlp.w2.weight.any()
        assert block.attn.wqkv.weight.std() > 0
    x = torch.randint(0, 64, (1, 8))
    # every block is the identity at the start: the logits are the head applied to the normed embeddings
    torch.testing.assert_close(zero(x), zero.lm_head(zero.norm(zero.tok_embeddings(x))))


def test_doc_aligned_windows_start_after_eos(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.append(rng.integers(4, 64, rng.integers(5, 40)), 3) for _ in range(200)]
    data = write_shards(tmp_path / "d", {"train": [np.concatenate(docs[:100]), np.concatenate(docs[100:])]})
    shards = [np.fromfile(tmp_path / "d" / f"train_00{i}.bin", dtype=np.uint16) for i in range(2)]
    loader = RandomWindowLoader(data, batch_size=8, seq_len=16, seed=1, doc_aligned=True)
    seen = set()
    for pos in range(30):
        for s, o in loader.window_starts(pos):
            assert o == 0 or shards[s][o - 1] == 3
            assert o + 17 <= len(shards[s])
            seen.add((s, o))
    assert len(seen) > 100
    state = loader.state_dict()
    with pytest.raises(Exception, match="doc_aligned"):
        RandomWindowLoader(data, batch_size=8, seq_len=16, seed=1).load_state_dict(state)


def test_chunked_cross_entropy_matches_plain_loss_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (2, 37))
    t[0, :4] = -100
    ref = F.cross_entropy((x @ w.T).reshape(-1, 50), t.reshape(-1))
    g_ref = torch.autograd.grad(ref, (x, w))
    out = chunked_linear_cross_entropy(x, w, t, chunk=8)
    g = torch.autograd.grad(out, (x, w))
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_model_with_chunked_loss_trains_like_the_plain_one():
    plain, fused = _model(), _model()
    apply_kernels(fused, fused_loss="chunked")
    x = torch.randint(0, 64, (2, 16))
    lp, lf = plain(x, x, return_logits=False), fused(x, x, return_logits=False)
    lp.backward()
    lf.backward()
    assert lf.item() == pytest.approx(lp.item(), rel=1e-5)
    for (n, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=n)
    logits, _ = fused(x, x)  # asking for logits takes the plain path
    assert logits.shape == (2, 16, 64)


def test_liger_paths_refuse_cpu():
    with pytest.raises(Exception, match="CUDA"):
        apply_kernels(_model(), fused_loss="liger", device="cpu")
    with pytest.raises(Exception, match="CUDA"):
        apply_kernels(_model(), fused_ops=True, device="cpu")


# --- through train() ----------------------------------------------------------------------------------

MICRO = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64}


def _cfg(**train):
    t = {
        "micro_batch_size": 4,
        "seq_len": 32,
        "max_steps": 8,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_every": 4,
        "eval_batches": 2,
        "save_every": 4,
        "log_every": 1,
        "keep_last": 2,
        "optimizer": "muon",
    }
    t.update(train)
    return {"name": "muon", "model": dict(MICRO, tie_embeddings=False, zero_init_proj=True), "train": t}


@pytest.fixture()
def data(tmp_path):
    from test_batches import random_data

    return random_data(tmp_path / "data", vocab_size=64, train_tokens=20000, val_tokens=2000)


def test_train_with_muon_recipe_and_resume(tmp_path, data, one_thread):
    from openllm.checkpoint import load_optimizer_state
    from openllm.rundir import read_metrics
    from openllm.train import train

    cfg = _cfg(
        schedule="wsd",
        decay_fraction=0.5,
        min_lr=0.0,
        batch_warmup_steps=4,
        grad_accum_steps=2,
        doc_aligned=False,
        fused_loss="chunked",
    )
    r = train(cfg, data_dir=data, out_dir=tmp_path / "run", progress=False, log=lambda m: None)
    assert r.state == "finished" and r.step == 8
    recs = read_metrics(tmp_path / "run")
    losses = [x["loss"] for x in recs]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    # batch warmup: 1, 1, 2, 2 micro-batches of 4 x 32 tokens, then 2 (grad_accum_steps)
    assert [x["tokens"] for x in recs][:5] == [128, 256, 512, 768, 1024]
    lrs = {x["step"]: x["lr"] for x in recs}
    assert lrs[8] == 0.0 and lrs[3] == 3e-3
    opt = load_optimizer_state(tmp_path / "run/checkpoints/step_00000008")["optimizer"]
    groups = {g["name"]: g for g in opt["param_groups"]}
    assert groups["muon"]["lr"] == 0.0 and groups["muon"]["lr_scale"] == pytest.approx(0.02 / 3e-3)
    assert "layers.1.mlp.w13.weight" in groups["muon"]["params"]
    assert "momentum_buffer" in opt["state"]["layers.1.mlp.w13.weight"]
    # resuming from step 4 reproduces steps 5..8 bit for bit
    ext = train(
        None,
        data_dir=data,
        out_dir=tmp_path / "run",
        resume=tmp_path / "run/checkpoints/step_00000004",
        progress=False,
        log=lambda m: None,
    )
    assert ext.loss == r.loss


def test_check_every_reads_the_loss_only_where_it_is_used(tmp_path, data, one_thread):
    from openllm.rundir import read_metrics
    from openllm.train import TrainingDiverged, train

    r = train(
        _cfg(check_every=4, log_every=4, optimizer="adamw"),
        data_dir=data,
        out_dir=tmp_path / "a",
        progress=False,
        log=lambda m: None,
    )
    plain = train(
        _cfg(log_every=4, optimizer="adamw"), data_dir=data, out_dir=tmp_path / "b", progress=False, log=lambda m: None
    )
    assert [x["loss"] for x in read_metrics(tmp_path / "a")] == [x["loss"] for x in read_metrics(tmp_path / "b")]
    assert r.loss == plain.loss
    # a divergence between reads is still caught, and no checkpoint holds it
    bad = _cfg(
        lr=1e4,
        muon_lr=1e4,
        warmup_steps=0,
        schedule="constant",
        grad_clip=0.0,
        check_every=5,
        log_every=5,
        save_every=5,
        eval_every=100,
        max_steps=20,
    )
    with pytest.raises(TrainingDiverged, match="within the last 5 steps"):
        train(bad, data_dir=data, out_dir=tmp_path / "c", progress=False, log=lambda m: None)
    from safetensors.torch import load_file

    from openllm.rundir import latest_checkpoint

    last = latest_checkpoint(tmp_path / "c")
    if last is not None:
        assert all(torch.isfinite(t).all() for t in load_file(last / "model.safetensors").values())


# --- real processes (slow) ----------------------------------------------------------------------------


def _spawn_train(*args, nproc=1):
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    return subprocess.Popen(
        [*head, "-m", "openllm", "train", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out + err
    return err


@pytest.mark.slow
def test_muon_sigkill_then_resume_is_bit_identical(tmp_path, data):
    import signal
    import time

    from openllm.rundir import read_metrics

    cfg = tmp_path / "cfg.json"
    c = _cfg(max_steps=40, save_every=8, eval_every=12, keep_last=3, micro_batch_size=8)
    c["model"]["d_model"] = 64
    cfg.write_text(json.dumps(c))
    full = _spawn_train("--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "full"))
    killed = _spawn_train("--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "killed"))
    t0 = time.time()
    while not (tmp_path / "killed/checkpoints/step_00000008/state.json").is_file():
        assert killed.poll() is None and time.time() - t0 < 120, "training ended early or timed out"
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    status = json.loads((tmp_path / "killed/status.json").read_text())
    assert status["state"] == "training" and status["step"] < 40
    resumed = _spawn_train("--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "killed"), "--resume")
    _finish(full)
    assert "resuming from" in _finish(resumed)
    a, b = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, 41))
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"] and ra["grad_norm"] == rb["grad_norm"], ra["step"]
        assert ra.get("val_loss") == rb.get("val_loss")
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full/checkpoints/step_00000040/model.safetensors")
    wb = load_file(tmp_path / "killed/checkpoints/step_00000040/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_muon_ddp_and_fsdp_two_processes_match_one(tmp_path, data):
    """Two gloo processes (DDP, then FSDP2 with row-sharded matrices) against one process with the same global
    batch: the same losses and weights, so the sharded matrices are orthogonalised whole."""
    from safetensors.torch import load_file

    from openllm.rundir import read_metrics

    cfg = tmp_path / "cfg.json"
    c = _cfg(max_steps=6, grad_accum_steps=2, eval_every=3, eval_batches=3, save_every=3)
    c["model"].update(d_model=48, n_heads=4, n_kv_heads=2, zero_init_proj=False)  # rows not a multiple of 2 x 8
    cfg.write_text(json.dumps(c))
    runs = {
        "single": ([], 1),
        "ddp": (["--set", "train.micro_batch_size=2"], 2),
        "fsdp": (["--set", "train.micro_batch_size=2", "--set", "train.distributed=fsdp"], 2),
    }
    procs = {}
    for name, (extra, n) in runs.items():
        procs[name] = _spawn_train(
            "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / name), *extra, nproc=n
        )
        _finish(procs[name])  # one at a time: 2 CPU cores
    ref = read_metrics(tmp_path / "single")
    w_ref = load_file(tmp_path / "single/checkpoints/step_00000006/model.safetensors")
    for name in ("ddp", "fsdp"):
        got = read_metrics(tmp_path / name)
        assert [r["step"] for r in got] == list(range(1, 7))
        for ra, rb in zip(ref, got):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), (name, ra["step"])
        w = load_file(tmp_path / name / "checkpoints/step_00000006/model.safetensors")
        # Newton-Schulz runs in bf16: reduction-order differences in the gradients flip bf16 roundings, so the
        # weights agree to a fraction of one update (lr 0.02); the exact check is the next test
        worst = max(float((w[k] - w_ref[k]).abs().max()) for k in w_ref)
        assert worst < 5e-3, (name, worst)


_FSDP_STEP = """
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from openllm.config import ModelConfig, TrainConfig
from openllm.model import Transformer
from openllm.optim import build_optimizer, set_lr
dist.init_process_group("gloo")
cfg = ModelConfig(vocab_size=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
tc = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02)
torch.manual_seed(0)
ref = Transformer(cfg)
sharded = Transformer(cfg)
sharded.load_state_dict(ref.state_dict())
for block in sharded.layers:
    fully_shard(block)
fully_shard(sharded)
opt_ref, opt = build_optimizer(ref, tc, "cpu"), build_optimizer(sharded, tc, "cpu")
names = [n for n, _ in ref.named_parameters()]
for step in range(3):
    g = torch.Generator().manual_seed(step)
    grads = {n: torch.randn(p.shape, generator=g) for n, p in ref.named_parameters()}
    for (n, p), (_, q) in zip(ref.named_parameters(), sharded.named_parameters()):
        p.grad = grads[n].clone()
        q.grad = torch.distributed.tensor.distribute_tensor(grads[n], q.device_mesh, q.placements)
    for o in (opt_ref, opt):
        set_lr(o, 1e-3)
        o.step()
        o.zero_grad()
worst = max(float((q.full_tensor() - p).abs().max()) for p, q in zip(ref.parameters(), sharded.parameters()))
if dist.get_rank() == 0:
    print("WORST", worst)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_muon_step_on_fsdp2_shards_equals_the_unsharded_step(tmp_path):
    """The same gradients given to a plain model and to its FSDP2 (row-sharded, uneven) copy on 2 gloo ranks:
    Muon must orthogonalise each full matrix, so the parameters stay identical."""
    import os
    import subprocess

    script = tmp_path / "fsdp_step.py"
    script.write_text(_FSDP_STEP)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert float(res.stdout.split("WORST")[1].split()[0]) == 0.0, res.stdout


def test_recipe_model_trained_with_muon_exports_as_plain_llama():
    """Untied head, zero-initialised projections, a few Muon steps: still a LlamaForCausalLM, same logits."""
    from test_model import hf_twin

    model = _model(tie_embeddings=False, zero_init_proj=True)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02), "cpu")
    _steps(model, opt, _batches(3))
    assert model.layers[0].attn.wo.weight.abs().sum() > 0  # the zero projections have moved
    model.eval()
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        ours = model(x)
        theirs = hf_twin(model)(x).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
