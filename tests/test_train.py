import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openllm.checkpoint import load_model_weights, load_optimizer_state
from openllm.config import Config, TrainConfig
from openllm.errors import OpenLLMError
from openllm.hashing import sha256_file
from openllm.model import Transformer
from openllm.optim import lr_at, param_groups
from openllm.rundir import QUEUED, latest_checkpoint, list_checkpoints, move, read_metrics, run_state
from openllm.train import StepPlan, TrainingDiverged, choices_line, fit_micro_batch, resolve_compile, resolve_run, train

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import random_data

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64}


def tiny_cfg(**train) -> dict:
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
    }
    t.update(train)
    return {"name": "micro", "model": dict(MICRO), "train": t}


def quiet(**kw):
    return dict(progress=False, log=lambda msg: None, **kw)


@pytest.fixture()
def data(tmp_path):
    return random_data(tmp_path / "data", vocab_size=64, train_tokens=20000, val_tokens=2000)


def test_schedules():
    cos = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, schedule="cosine")
    assert lr_at(0, cos) == pytest.approx(0.1) and lr_at(9, cos) == pytest.approx(1.0)
    assert lr_at(10, cos) == pytest.approx(1.0)
    assert lr_at(60, cos) == pytest.approx(0.55)
    assert lr_at(110, cos) == pytest.approx(0.1)
    lrs = [lr_at(s, cos) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    wsd = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=110, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, wsd) == 1.0 and lr_at(87, wsd) == 1.0
    assert lr_at(88, wsd) == pytest.approx(1 - 1 / 22)
    assert lr_at(109, wsd) == pytest.approx(0.0)
    const = TrainConfig(lr=0.5, warmup_steps=0, schedule="constant")
    assert lr_at(0, const) == lr_at(999, const) == 0.5
    assert TrainConfig(lr=1.0, min_lr=None).min_lr is None and lr_at(10**6, TrainConfig(lr=1.0)) == 0.1


def test_weight_decay_groups():
    cfg = Config.from_dict({"model": {**MICRO, "tie_embeddings": False}})
    model = Transformer(cfg.model)
    decay, no_decay = param_groups(model, 0.1)
    named = {id(p): n for n, p in model.named_parameters()}
    d = {named[id(p)] for p in decay["params"]}
    nd = {named[id(p)] for p in no_decay["params"]}
    assert "lm_head.weight" in d and "layers.0.attn.wqkv.weight" in d and "layers.1.mlp.w2.weight" in d
    assert "tok_embeddings.weight" in nd and "norm.weight" in nd and "layers.0.attn_norm.weight" in nd
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    tied = Transformer(Config.from_dict({"model": MICRO}).model)
    g = param_groups(tied, 0.1)
    # the tied matrix is the output head too: decayed, and listed once
    assert sum(p.numel() for grp in g for p in grp["params"]) == tied.num_params()
    assert any(p is tied.tok_embeddings.weight for p in g[0]["params"])


def test_run_folder_contract(tmp_path, data):
    run = tmp_path / "run"
    logged = []
    result = train(tiny_cfg(max_steps=8, grad_accum_steps=2), data_dir=data, out_dir=run, **quiet(on_log=logged.append))
    assert result.state == "finished" and result.step == 8
    for name in ("config.json", "metrics.jsonl", "status.json", "loss.png", "checkpoints/best.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 8 and status["max_steps"] == 8
    assert status["pid"] == os.getpid() and status["error"] is None and "updated" in status
    records = read_metrics(run)
    assert [r["step"] for r in records] == list(range(1, 9)) and len(logged) == 8
    for r in records:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_s"} <= set(r) and math.isfinite(r["loss"])
        assert r["tokens"] == r["step"] * 4 * 32 * 2
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    assert "mfu" not in records[0]  # CPU: no known peak
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts][-1] == "step_00000008" and len(ckpts) <= 3  # keep_last=2 (+ best)
    ck = ckpts[-1]
    assert sorted(p.name for p in ck.iterdir()) == ["model.safetensors", "optimizer.pt", "state.json"]
    state = json.loads((ck / "state.json").read_text())
    assert state["step"] == 8 and state["tokens_seen"] == 8 * 256 and state["loader"]["position"] == 16
    assert state["config"]["train"]["grad_accum_steps"] == 2 and state["tokenizer_sha256"] == "0" * 64
    assert {"python", "numpy", "torch"} <= set(state["rng"][0])
    assert "lm_head.weight" not in load_file(ck / "model.safetensors")  # tied: stored once
    model = load_model_weights(Transformer(Config.from_dict(state["config"]).model), ck)
    assert model.lm_head.weight is model.tok_embeddings.weight
    opt = load_optimizer_state(ck)
    assert "state" in opt["optimizer"] and opt["scaler"] is None
    best = json.loads((run / "checkpoints/best.json").read_text())
    assert best["step"] in (4, 8) and (run / "checkpoints" / best["checkpoint"]).is_dir()
    # the run loads through openllm.load (the run-folder contract other modules rely on)
    import openllm

    loaded = openllm.load(run)
    assert loaded.step == 8


def test_resume_finished_run_extends_and_config_checks(tmp_path, data):
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=4, eval_every=100), data_dir=data, out_dir=run, **quiet())
    # auto-resume: same folder, more steps, no config needed
    r = train(None, data_dir=data, out_dir=run, max_steps=6, **quiet())
    assert r.step == 6
    assert [x["step"] for x in read_metrics(run)] == list(range(1, 7))
    with pytest.raises(OpenLLMError, match="already holds checkpoints"):
        train(tiny_cfg(), data_dir=data, out_dir=run, resume=False, **quiet())
    with pytest.raises(OpenLLMError, match="model shape differs"):
        train({**tiny_cfg(), "model": {**MICRO, "d_model": 64}}, data_dir=data, out_dir=run, **quiet())
    with pytest.raises(OpenLLMError, match="cannot change the model"):
        train(None, data_dir=data, out_dir=run, overrides={"model": {"dropout": 0.1}}, **quiet())
    with pytest.raises(OpenLLMError, match="no checkpoint to resume"):
        train(tiny_cfg(), data_dir=data, out_dir=tmp_path / "empty", resume=True, **quiet())


def test_vocab_mismatch_is_a_clear_error(tmp_path, data):
    cfg = tiny_cfg()
    cfg["model"]["vocab_size"] = 128
    with pytest.raises(OpenLLMError, match=r"vocabulary of 64 tokens but model.vocab_size is 128.*--vocab-from-data"):
        train(cfg, data_dir=data, out_dir=tmp_path / "r", **quiet())
    r = train(cfg, data_dir=data, out_dir=tmp_path / "r2", max_steps=1, vocab_from_data=True, **quiet())
    assert json.loads((tmp_path / "r2/config.json").read_text())["model"]["vocab_size"] == 64 and r.step == 1


def test_resolve_run_builds_one_config_from_every_source(tmp_path, data):
    cfg = tiny_cfg()
    cfg["model"]["vocab_size"] = 128
    plan = resolve_run(
        cfg,
        data,
        tmp_path / "run",
        overrides={"train": {"lr": 1e-3, "max_steps": 3}},
        max_steps=5,
        save_every=2,
        vocab_from_data=True,
    )
    # the data's vocabulary, the overrides and the explicit arguments (which win) land in one config
    assert (plan.cfg.model.vocab_size, plan.cfg.train.lr, plan.cfg.train.max_steps, plan.cfg.train.save_every) == (
        64,
        1e-3,
        5,
        2,
    )
    assert plan.resume_from is None and plan.state == {} and plan.seq_len == 32
    # an override of the vocabulary is what the data is checked against; nothing is written while resolving
    assert resolve_run(cfg, data, tmp_path / "run", overrides={"model": {"vocab_size": 64}}).cfg.model.vocab_size == 64
    with pytest.raises(OpenLLMError, match="vocabulary of 64 tokens but model.vocab_size is 96"):
        resolve_run(cfg, data, tmp_path / "run", overrides={"model": {"vocab_size": 96}})
    assert not (tmp_path / "run").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data):
    run = tmp_path / "run"
    # an absurd constant learning rate: the first update is applied, the next step's loss/gradients are NaN
    cfg = tiny_cfg(lr=1e4, warmup_steps=0, schedule="constant", grad_clip=0.0, save_every=1, max_steps=10)
    said = []
    with pytest.raises(TrainingDiverged, match=r"training diverged at step (\d+)") as e:
        train(cfg, data_dir=data, out_dir=run, progress=False, log=said.append)
    bad = int(e.value.args[0].split("step ")[1].split(":")[0])
    assert 1 < bad < 10
    status = json.loads((run / "status.json").read_text())
    # recorded as diverged by the trainer itself, with the divergence rule's advice
    assert status["state"] == "diverged" and f"step {bad}" in status["error"]
    assert "NaN" in status["warning"] and "lower the learning rate (e.g. to 1000)" in status["warning"]
    assert "gradient clipping" in status["warning"] and f"warning: {status['warning']}" in said
    st = run_state(run)
    assert st.state == "diverged" and st.warning == status["warning"]
    latest = latest_checkpoint(run)
    assert latest.name == f"step_{bad - 1:08d}" and str(latest) in str(e.value)
    assert not (run / "checkpoints" / f"step_{bad:08d}").exists()
    weights = load_file(latest / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert all(r["step"] < bad for r in read_metrics(run))
    assert (run / "loss.png").is_file()


def test_a_run_that_ends_above_the_uniform_loss_is_diverged(tmp_path, data):
    """No NaN, the run finishes, but its loss ends far above ln(64) (a uniform guess): status.json says
    diverged with the rule's warning (what to change), the trainer says it as one line."""
    run = tmp_path / "run"
    said = []
    cfg = tiny_cfg(
        lr=3.0, warmup_steps=0, schedule="constant", grad_clip=0.0, max_steps=8, eval_every=100, save_every=100
    )
    r = train(cfg, data_dir=data, out_dir=run, progress=False, log=said.append)
    assert r.state == "diverged" and r.step == 8 and latest_checkpoint(run).name == "step_00000008"
    assert "ln 64 = 4.16" in r.warning and "lower the learning rate (e.g. to 0.3)" in r.warning
    assert "gradient clipping" in r.warning
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "diverged" and status["warning"] == r.warning and status["error"] is None
    assert said[-1] == f"warning: {r.warning}" and "\n" not in r.warning
    assert run_state(run).state == "diverged"
    # the same settings with clipping and a sane learning rate: finished, no warning
    r = train(tiny_cfg(max_steps=8, eval_every=100), data_dir=data, out_dir=tmp_path / "ok", **quiet())
    assert r.state == "finished" and r.warning is None
    assert json.loads((tmp_path / "ok/status.json").read_text())["warning"] is None


def test_early_stopping(tmp_path, data):
    # a learning rate far below fp32 resolution: the weights, hence the val loss, never change
    cfg = tiny_cfg(lr=1e-30, min_lr=0.0, warmup_steps=0, eval_every=2, early_stop_patience=2, max_steps=50)
    r = train(cfg, data_dir=data, out_dir=tmp_path / "r", **quiet())
    assert r.state == "finished" and r.step == 6 and "early stop" in r.reason
    assert r.best_step == 2
    assert json.loads((tmp_path / "r/checkpoints/best.json").read_text())["step"] == 2
    assert latest_checkpoint(tmp_path / "r").name == "step_00000006"


def test_step_plan_reads_the_host_on_every_step_that_logs_evaluates_or_saves():
    rng = random.Random(0)
    for _ in range(300):
        tc = TrainConfig(
            max_steps=rng.randint(1, 30),
            log_every=rng.randint(1, 7),
            eval_every=rng.randint(1, 9),
            save_every=rng.randint(1, 11),
            check_every=rng.randint(1, 5),
            grad_accum_steps=rng.randint(1, 4),
            batch_warmup_steps=rng.randint(0, 8),
        )
        plan = StepPlan(tc, seq_len=8, world_size=2, evaluates=rng.random() < 0.7)
        for n in range(1, tc.max_steps + 1):
            s = plan(n)
            assert s.read_host == (s.log or s.save or n % tc.check_every == 0)
            assert (not s.evaluate or s.log) and (s.evaluate <= plan.evaluates) and s.last == (n == tc.max_steps)
            assert 1 <= s.accum <= tc.grad_accum_steps and s.tokens == s.accum * tc.micro_batch_size * 8 * 2
            if s.last:  # the last step records and keeps everything
                assert s.log and s.save and s.evaluate == plan.evaluates
            if s.read_host:  # a stop request or early stopping, known at this read, ends the run here
                end = s.ending()
                assert end.log and end.save and end.last and end.evaluate == s.evaluate
            else:
                with pytest.raises(ValueError):
                    s.ending()


def test_the_loop_does_what_the_step_plan_says(tmp_path, data):
    cfg = tiny_cfg(max_steps=11, log_every=3, eval_every=4, save_every=5, check_every=2, keep_last=100)
    run = tmp_path / "run"
    train(cfg, data_dir=data, out_dir=run, **quiet())
    plan = StepPlan(Config.from_dict(cfg).train, seq_len=32)
    steps = [plan(n) for n in range(1, 12)]
    records = read_metrics(run)
    assert [r["step"] for r in records] == [s.number for s in steps if s.log] == [3, 4, 6, 8, 9, 11]
    assert [r["step"] for r in records if "val_loss" in r] == [s.number for s in steps if s.evaluate]
    assert all(math.isfinite(r["loss"]) for r in records)  # every logged step read the loss on the host
    saved = {int(p.name[5:]) for p in list_checkpoints(run)}
    # the planned saves, and the steps whose evaluation found a new best
    assert {s.number for s in steps if s.save} <= saved <= {s.number for s in steps if s.save or s.evaluate}


# --- real processes ---------------------------------------------------------------------------------------


def _write_cfg(path: Path, **train_kw) -> Path:
    cfg = tiny_cfg(**train_kw)
    cfg["model"].update(d_model=64, vocab_size=64)
    cfg["train"].update(micro_batch_size=8)
    path.write_text(json.dumps(cfg))
    return path


def _spawn(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "openllm", "train", "--no-progress", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(pred, proc, timeout=120.0):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, data):
    # the presets' default recipe (Muon + AdamW, WSD, untied head): its optimizer state resumes exactly too
    cfg = _write_cfg(tmp_path / "cfg.json", recipe="speedrun", max_steps=60, save_every=8, eval_every=12, keep_last=3)
    full = _spawn("--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "full"))
    killed = _spawn("--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "killed"))
    _wait_for(lambda: (tmp_path / "killed/checkpoints/step_00000008/state.json").is_file(), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    status = json.loads((tmp_path / "killed/status.json").read_text())
    assert status["state"] == "training" and status["step"] < 60  # it really died mid-run
    resumed = _spawn("--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "killed"), "--resume")
    for p in (full, resumed):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert "resuming from" in err
    a = read_metrics(tmp_path / "full")
    b = read_metrics(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, 61))  # no duplicated or missing steps after the resume
    for ra, rb in zip(a, b):
        assert ra["loss"] == rb["loss"] and ra["grad_norm"] == rb["grad_norm"], ra["step"]
        assert ra.get("val_loss") == rb.get("val_loss")
    wa = load_file(tmp_path / "full/checkpoints/step_00000060/model.safetensors")
    wb = load_file(tmp_path / "killed/checkpoints/step_00000060/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "killed/status.json").read_text())["state"] == "finished"


@pytest.mark.slow
def test_sigterm_stops_gracefully_with_a_checkpoint(tmp_path, data):
    cfg = _write_cfg(tmp_path / "cfg.json", max_steps=100000, save_every=100000, eval_every=100000)
    run = tmp_path / "run"
    proc = _spawn("--config", str(cfg), "--data", str(data), "--out", str(run))
    _wait_for(lambda: (run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped" and status["error"] is None and "SIGTERM" in status["reason"]
    step = status["step"]
    assert 3 <= step < 100000
    assert latest_checkpoint(run).name == f"step_{step:08d}"
    assert read_metrics(run)[-1]["step"] == step


@pytest.mark.slow
def test_cli_user_errors_are_one_line(tmp_path, data):
    from conftest import run_cli

    res = run_cli("train", "--out", str(tmp_path / "r"), check=False, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 2 and "give a config" in res.stderr and "Traceback" not in res.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**tiny_cfg(), "model": {**MICRO, "vocab_size": 100}}))
    res = run_cli(
        "train",
        "--config",
        str(cfg),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        check=False,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert res.returncode == 2 and "model.vocab_size is 100" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_second_train_into_a_running_run_is_refused(tmp_path, data):
    """One training per run folder whoever starts it: a second `openllm train --out RUN` while the first runs
    exits 2 naming the first's PID and leaves the run's files alone; the first goes on."""
    from conftest import run_cli

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**tiny_cfg(), "train": {**tiny_cfg()["train"], "max_steps": 100000}}))
    run = tmp_path / "run"
    first = _spawn("--config", str(cfg), "--data", str(data), "--out", str(run))
    try:
        _wait_for(lambda: (run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= 2, first)
        before = (run / "config.json").read_bytes()
        second = run_cli(
            "train",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--out",
            str(run),
            check=False,
            env={"OMP_NUM_THREADS": "1"},
        )
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert str(first.pid) in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert (run / "config.json").read_bytes() == before and first.poll() is None
        steps = len(read_metrics(run))
        _wait_for(lambda: len(read_metrics(run)) > steps, first)  # the first run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0


@pytest.mark.slow
def test_sigterm_during_setup_ends_the_run_as_stopped(tmp_path, data):
    """SIGTERM as soon as the trainer holds the run lock, before its first step: exit 0, state stopped, nothing
    saved for a fresh run; a resumed run keeps its checkpoints and its step."""
    # a wider model than the others here: its setup takes long enough for the signal to land in it
    cfg = _write_cfg(tmp_path / "cfg.json", max_steps=100000, save_every=2, eval_every=100000)
    wide = json.loads(cfg.read_text())
    wide["model"].update(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4)
    cfg.write_text(json.dumps(wide))

    def stop_at_lock(run: Path, *args: str) -> tuple[str, str, dict]:
        proc = _spawn("--config", str(cfg), "--data", str(data), "--out", str(run), *args)
        _wait_for(lambda: (run / ".lock").exists(), proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        return out, err, json.loads((run / "status.json").read_text())

    run = tmp_path / "fresh"
    out, _, status = stop_at_lock(run)
    assert status["state"] == "stopped" and status["step"] == 0 and status["error"] is None
    assert "SIGTERM during setup" in status["reason"] and "nothing was trained or saved" in status["reason"]
    assert latest_checkpoint(run) is None and not read_metrics(run)
    assert "stopped at step 0" in out and not (run / ".lock").exists()
    assert run_state(run).state == "stopped"

    resumed = tmp_path / "resumed"
    train(wide, data_dir=data, out_dir=resumed, max_steps=2, **quiet())
    before = sorted(p.name for p in list_checkpoints(resumed))
    _, _, status = stop_at_lock(resumed, "--max-steps", "6")
    assert status["state"] == "stopped" and status["step"] == 2 and "before step 3" in status["reason"]
    assert sorted(p.name for p in list_checkpoints(resumed)) == before == ["step_00000002"]
    assert status["checkpoint"].endswith("step_00000002") and [r["step"] for r in read_metrics(resumed)] == [1, 2]


@pytest.mark.slow
def test_cli_says_divergence_as_one_warning_line(tmp_path, data):
    """`openllm train`: a finished run whose loss ended above ln(vocab) exits 0 with one warning line; a NaN
    loss exits 2 with the same kind of warning line and the one-line error."""
    from conftest import run_cli

    env = {"OMP_NUM_THREADS": "1"}
    above = tmp_path / "above.json"
    above.write_text(
        json.dumps(
            tiny_cfg(
                lr=3.0, warmup_steps=0, schedule="constant", grad_clip=0.0, max_steps=8, eval_every=100, save_every=100
            )
        )
    )
    res = run_cli(
        "train",
        "--no-progress",
        "--config",
        str(above),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "a"),
        check=False,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "worse than guessing uniformly" in warnings[0], res.stderr
    assert "lower the learning rate" in warnings[0] and "(diverged at step 8" in res.stdout
    assert json.loads((tmp_path / "a/status.json").read_text())["state"] == "diverged"

    nan = tmp_path / "nan.json"
    nan.write_text(json.dumps(tiny_cfg(lr=1e4, warmup_steps=0, schedule="constant", grad_clip=0.0, max_steps=10)))
    res = run_cli(
        "train",
        "--no-progress",
        "--config",
        str(nan),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "n"),
        check=False,
        env=env,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("warning:")] == [
        (
            "warning: the loss became NaN/inf: training diverged; lower the learning rate (e.g. to 1000) and turn on "
            "gradient clipping (e.g. 1.0)"
        )
    ]
    assert lines[-1].startswith("error: training diverged at step")
    assert json.loads((tmp_path / "n/status.json").read_text())["state"] == "diverged"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "kwargs, names",
    [
        ({"overrides": {"train": {"seed": 5}}}, "train.seed"),
        ({"overrides": {"train": {"seq_len": 16}}}, "train.seq_len"),
        ({"overrides": {"train": {"doc_aligned": True}}}, "train.doc_aligned"),
        # a recipe switch changes the optimizer, whose state the checkpoint holds (a KeyError inside setup)
        pytest.param(
            {"overrides": {"train": {"recipe": "speedrun"}}},
            "train.optimizer 'adamw' -> 'muon'",
            marks=pytest.mark.slow,
        ),
        ({"config": tiny_cfg(max_steps=4, eval_every=100, lr=1e-2)}, "train.lr"),
    ],
)
def test_refused_resume_writes_nothing(tmp_path, data, kwargs, names):
    """A resume that cannot continue the data stream, or a --config that disagrees with the checkpoint's, is
    refused before the run folder is touched: config.json and a finished status.json stay as they were
    (issue 24)."""
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=4, eval_every=100), data_dir=data, out_dir=run, **quiet())
    before = _tree(run)
    config = kwargs.pop("config", None)
    with pytest.raises(OpenLLMError, match=names) as info:
        train(config, data_dir=data, out_dir=run, max_steps=6, **kwargs, **quiet())
    assert "\n" not in str(info.value)
    assert _tree(run) == before
    assert run_state(run).state == "finished"


@pytest.mark.slow
def test_resume_failing_inside_setup_writes_nothing(tmp_path, data):
    """A resume that fails only once setup loads the checkpoint leaves config.json, status.json and every other
    file of the run as they were (issue 24): here optimizer.pt holds state of other shapes, or is not a torch
    file at all, with state.json's record of it rewritten to match (nothing checks those before setup)."""
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=4, eval_every=100), data_dir=data, out_dir=run, **quiet())
    ckpt = latest_checkpoint(run)
    other = load_optimizer_state(ckpt)
    next(iter(other["optimizer"]["state"].values()))["exp_avg"] = torch.zeros(3, 3)
    state = json.loads((ckpt / "state.json").read_text())
    for damage in (lambda p: torch.save(other, p), lambda p: p.write_bytes(b"not a torch file")):
        damage(ckpt / "optimizer.pt")
        state["files"]["optimizer.pt"] = {
            "bytes": (ckpt / "optimizer.pt").stat().st_size,
            "sha256": sha256_file(ckpt / "optimizer.pt"),
        }
        (ckpt / "state.json").write_text(json.dumps(state))
        before = _tree(run)
        with pytest.raises(OpenLLMError, match="optimizer") as info:
            train(None, data_dir=data, out_dir=run, max_steps=6, overrides={"train": {"lr": 1e-3}}, **quiet())
        assert "\n" not in str(info.value)
        assert _tree(run) == before
        assert run_state(run).state == "finished"
    # a resume the app queued (its Continue) owns the status already: its failure is recorded there, with why
    move(run, QUEUED, phase="queued", error=None, pid=None)
    with pytest.raises(OpenLLMError):
        train(None, data_dir=data, out_dir=run, max_steps=6, **quiet())
    assert run_state(run).state == "failed" and "optimizer.pt" in run_state(run).error


def test_resume_with_the_same_config_and_a_new_lr_by_set(tmp_path, data):
    """--config equal to the checkpoint's resumes; a deliberate --set train.lr changes the peak rate."""
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=4, eval_every=100), data_dir=data, out_dir=run, **quiet())
    r = train(tiny_cfg(max_steps=4, eval_every=100), data_dir=data, out_dir=run, max_steps=5, **quiet())
    assert r.step == 5
    r = train(None, data_dir=data, out_dir=run, max_steps=6, overrides={"train": {"lr": 1e-3}}, **quiet())
    assert r.step == 6 and json.loads((run / "config.json").read_text())["train"]["lr"] == 1e-3


def test_resume_state_without_config_is_named_damaged(tmp_path, data):
    run = tmp_path / "run"
    train(tiny_cfg(max_steps=4, eval_every=100), data_dir=data, out_dir=run, **quiet())
    state_path = latest_checkpoint(run) / "state.json"
    intact = json.loads(state_path.read_text())
    for key, value in (
        ("config", None),
        ("data_dir", 5),
        ("config", "x"),
        ("loader", 5),
        ("scheduler", 5),
        ("rng", [5]),
    ):
        state = {**intact, key: value}
        if value is None:
            del state[key]
        state_path.write_text(json.dumps(state))
        with pytest.raises(OpenLLMError, match=f"state.json: '{key}'"):
            resolve_run(None, None, run, max_steps=6)
    state_path.write_text(json.dumps(intact))
    assert resolve_run(None, None, run, max_steps=6).resume_from == state_path.parent


@pytest.mark.slow
def test_a_mixture_trains_by_its_weights_and_resumes_exactly(tmp_path):
    """Two token folders with weights 0.7 / 0.3: a run stopped at step 4 and continued (its mixture read back
    from the checkpoint) has the uninterrupted run's losses; the mixture and each part's checksum are in
    state.json and the model card (issue 28)."""
    import threading

    from openllm.publish.cards import model_card
    from openllm.publish.facts import collect_facts

    a = random_data(tmp_path / "a", vocab_size=64, train_tokens=8000, val_tokens=1000, seed=1)
    b = random_data(tmp_path / "b", vocab_size=64, train_tokens=4000, val_tokens=1000, seed=2)
    mix = {str(a): 0.7, str(b): 0.3}
    cfg = tiny_cfg(max_steps=6, eval_every=3, save_every=3)
    train(cfg, data_dir=mix, out_dir=tmp_path / "full", **quiet())
    stop = threading.Event()
    stopped = train(cfg, data_dir=mix, out_dir=tmp_path / "part", stop_event=stop, **quiet(on_log=lambda r: stop.set()))
    assert stopped.state == "stopped" and stopped.step < 6
    done = train(None, out_dir=tmp_path / "part", **quiet())  # no --data: the checkpoint's mixture
    assert done.state == "finished" and done.step == 6
    full, part = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "part")
    assert [r["step"] for r in part] == list(range(1, 7))
    for ra, rb in zip(full, part):
        assert (ra["loss"], ra["grad_norm"], ra.get("val_loss")) == (rb["loss"], rb["grad_norm"], rb.get("val_loss"))
    state = json.loads((tmp_path / "part/checkpoints/step_00000006/state.json").read_text())
    parts = state["data_mixture"]
    assert [(p["data_dir"], p["weight"]) for p in parts] == [(str(a.resolve()), 0.7), (str(b.resolve()), 0.3)]
    assert [p["meta_sha256"] for p in parts] == [sha256_file(a / "meta.json"), sha256_file(b / "meta.json")]
    assert state["loader"]["mixture"] == [0.7, 0.3]
    card = model_card(collect_facts(tmp_path / "part"), repo_id="me/mix", version="6")
    for name, weight, share, tokens, part in (
        ("a", 0.7, "70.0%", "8,000", parts[0]),
        ("b", 0.3, "30.0%", "4,000", parts[1]),
    ):
        row = (
            f"weight {weight} ({share} of the windows), {tokens} train tokens, meta.json sha256 `{part['meta_sha256']}`"
        )
        assert f"| mixture part `{name}` | {row} |" in card


def test_what_a_run_chooses_by_itself_is_said_in_one_line():
    from openllm.config import load_config

    medium = load_config("medium")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile(medium.train, cuda) and not resolve_compile(medium.train, cpu)  # unset: CUDA only
    assert resolve_compile(medium.replace(train={"compile": True}).train, cpu)
    line = choices_line(medium, cuda, True, None)
    assert line.startswith("recipe speedrun: Muon (lr 0.02) for the blocks' matrices, AdamW (lr 0.0018)")
    assert "wsd schedule, untied head" in line and "train.compile unset: on on cuda" in line
    assert "every 5 steps" in line and "\n" not in line
    # a GPU without room for the micro-batch: halved, accumulation doubled, the same tokens a step, and why
    fitted, why = fit_micro_batch(medium, 1024, "bf16", free=12 * 2**30)
    t = fitted.train
    assert t.micro_batch_size * t.grad_accum_steps == 32 * 4 and t.micro_batch_size < 32 and "GiB is free" in why
    assert fit_micro_batch(medium, 1024, "bf16", free=80 * 2**30) == (medium, None)
