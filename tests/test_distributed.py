"""Two gloo processes on CPU under torchrun against one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openllm.rundir import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import random_data

pytestmark = pytest.mark.slow

CFG = {
    "name": "dist",
    "model": {"vocab_size": 64, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64},
    "train": {
        "micro_batch_size": 4,
        "grad_accum_steps": 2,
        "seq_len": 32,
        "max_steps": 6,
        "lr": 3e-3,
        "warmup_steps": 2,
        "eval_every": 3,
        "eval_batches": 3,
        "save_every": 3,
        "log_every": 1,
    },
}


def _run(args, nproc=1, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "openllm",
            "train",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "openllm", "train", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = random_data(tmp / "data", vocab_size=64, train_tokens=20000, val_tokens=3000)
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    single = tmp / "single"
    _run(["--no-progress", "--config", str(cfg), "--data", str(data), "--out", str(single)])
    return tmp, data, cfg, single


def _compare(a: Path, b: Path, steps):
    ra = {r["step"]: r for r in read_metrics(a)}
    rb = {r["step"]: r for r in read_metrics(b)}
    for s in steps:
        assert rb[s]["loss"] == pytest.approx(ra[s]["loss"], rel=1e-5, abs=1e-6), s
        assert rb[s]["tokens"] == ra[s]["tokens"]
        if "val_loss" in ra[s]:
            assert rb[s]["val_loss"] == pytest.approx(ra[s]["val_loss"], rel=1e-5)
    wa = load_file(a / "checkpoints/step_00000006/model.safetensors")
    wb = load_file(b / "checkpoints/step_00000006/model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def test_ddp_two_gloo_processes_match_one_process(setup):
    tmp, data, cfg, single = setup
    ddp = tmp / "ddp"
    # 2 ranks x micro-batch 2 = the single process's micro-batch 4 (same windows, same global batch)
    res = _run(
        [
            "--no-progress",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--out",
            str(ddp),
            "--set",
            "train.micro_batch_size=2",
        ],
        nproc=2,
    )
    assert "x 2 ranks" in res.stderr and "ddp" in res.stderr
    assert res.stdout.count("run folder:") == 1  # rank 0 alone reports
    _compare(single, ddp, range(1, 7))
    state = json.loads((ddp / "checkpoints/step_00000006/state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert json.loads((ddp / "status.json").read_text())["state"] == "finished"


def test_fsdp_two_processes_then_resume_in_one(setup):
    tmp, data, cfg, single = setup
    run = tmp / "fsdp"
    _run(
        [
            "--no-progress",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--out",
            str(run),
            "--set",
            "train.micro_batch_size=2",
            "--set",
            "train.distributed=fsdp",
            "--max-steps",
            "3",
        ],
        nproc=2,
    )
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    # the FSDP checkpoint holds full tensors: one process picks it up with micro-batch 4
    res = _run(
        [
            "--no-progress",
            "--out",
            str(run),
            "--resume",
            "--max-steps",
            "6",
            "--set",
            "train.micro_batch_size=4",
            "--set",
            "train.distributed=ddp",
        ]
    )
    assert "resuming from" in res.stderr
    _compare(single, run, range(1, 7))


def test_every_rank_is_refused_when_another_process_holds_the_run_lock(setup, tmp_path):
    """Rank 0 tries the run lock and tells every rank the outcome before any other collective: with the lock
    held elsewhere, both ranks end at once with the same one-line error (no rank waits in a collective)."""
    import time

    _, data, cfg, _ = setup
    run = tmp_path / "locked"
    hold = (
        "import sys, time\nfrom openllm.rundir import RunLock\nRunLock(sys.argv[1]).acquire()\n"
        "print('held', flush=True)\ntime.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "openllm",
            "train",
            "--no-progress",
            "--config",
            str(cfg),
            "--data",
            str(data),
            "--out",
            str(run),
        ]
        t0 = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
        took = time.monotonic() - t0
        left = sorted(p.name for p in run.iterdir())
        lock = json.loads((run / ".lock").read_text())
    finally:
        holder.kill()
        holder.wait()
    expected = f"error: run {run} is already being trained by PID {holder.pid}"
    refused = [line for line in res.stderr.splitlines() if line.startswith(expected)]
    assert res.returncode != 0 and len(refused) == 2, res.stderr  # one line from each rank
    assert refused[0] == refused[1] and "Traceback" not in "".join(refused)
    assert took < 120, took  # seconds of start-up, not a collective's timeout
    assert left == [".lock"] and lock["pid"] == holder.pid  # nothing written, the holder's lock untouched


def _two_nodes(args, timeout=300, cwds=(None, None), check=True):
    """Two torchrun launches of one process each, joined by c10d rendezvous on loopback: two "nodes" of this
    machine, as two machines would run it (docs/training.md); ``cwds``: each node's working folder."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    launch += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"nodes{port}"]
    procs = [
        subprocess.Popen([*launch, "-m", "openllm", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=cwd)
        for cwd in cwds
    ]  # fmt: skip
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert (p.returncode == 0) == check, out + err
    return "".join(o for o, _ in outs), "".join(e for _, e in outs)


def test_two_nodes_fsdp_then_ddp_resumed_match_one_process(setup):
    """Steps 1-3 with FSDP2 on two nodes, 4-6 resumed with DDP on two nodes: one process's losses, tokens and
    final weights (2 nodes x micro-batch 2 = its micro-batch 4; issue 28)."""
    tmp, data, cfg, single = setup
    run = tmp / "nodes"
    common = ["--no-progress", "--out", str(run), "--set", "train.micro_batch_size=2"]
    out, err = _two_nodes([*common, "--config", str(cfg), "--data", str(data), "--set", "train.distributed=fsdp",
                           "--max-steps", "3"])  # fmt: skip
    assert "x 2 ranks" in err and "fsdp on 2 nodes" in err and out.count("run folder:") == 1
    # a node that does not see the run folder (here: another working folder for the same relative --out) would
    # start afresh while the other resumes: both are refused before any step
    (tmp / "elsewhere").mkdir()
    mixed = ["--no-progress", "--out", run.name, "--config", str(cfg), "--data", str(data), "--max-steps", "6"]
    mixed += ["--set", "train.micro_batch_size=2", "--set", "train.distributed=ddp"]
    _, err = _two_nodes(mixed, cwds=(tmp, tmp / "elsewhere"), check=False)
    refusal = "the processes do not see the same run: they would start from steps 0, 3 (or with other data)"
    assert err.count(f"error: {refusal}") == 2  # each node's one line (torchrun then reports the failed child)
    out, err = _two_nodes([*common, "--resume", "--max-steps", "6", "--set", "train.distributed=ddp"])
    assert "resuming from" in err and "ddp on 2 nodes" in err
    _compare(single, run, range(1, 7))
    state = json.loads((run / "checkpoints/step_00000006/state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_ddp_and_fsdp_with_the_default_recipe_match_one_process_to_bf16_rounding(setup):
    """The presets' default recipe (Muon for the blocks' matrices) under DDP: Muon orthogonalises each update in
    bfloat16 (torch.optim.Muon's arithmetic), so the last-bit differences of an all-reduced gradient become
    bf16-sized differences in the update: the losses agree to bf16's precision, not to fp32's."""
    tmp, data, cfg, _ = setup
    runs = {}
    for name, nproc, micro, mode in (
        ("muon-single", 1, 4, "ddp"),
        ("muon-ddp", 2, 2, "ddp"),
        ("muon-fsdp", 2, 2, "fsdp"),
    ):
        runs[name] = tmp / name
        args = ["--no-progress", "--config", str(cfg), "--data", str(data), "--out", str(runs[name])]
        args += ["--set", "train.recipe=speedrun", "--set", f"train.micro_batch_size={micro}"]
        _run([*args, "--set", f"train.distributed={mode}"], nproc=nproc)
    a = read_metrics(runs["muon-single"])
    for other in ("muon-ddp", "muon-fsdp"):  # FSDP2: Muon gathers each sharded matrix before orthogonalising it
        b = read_metrics(runs[other])
        assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
        assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-6)  # the same windows and initial weights
        for ra, rb in zip(a, b):
            assert rb["loss"] == pytest.approx(ra["loss"], rel=4e-3), (other, ra["step"])  # bf16: 2^-8
    state = json.loads((runs["muon-ddp"] / "checkpoints/step_00000006/state.json").read_text())
    assert state["config"]["train"]["optimizer"] == "muon" and state["world_size"] == 2
