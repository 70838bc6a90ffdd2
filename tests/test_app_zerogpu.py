"""ZeroGPU (openllm.app.zerogpu), tested at the ``spaces`` package's boundary: installed outside a Space,
its ``@spaces.GPU`` is a pass-through, so the app's own code (the chunk budget, the resume between chunks, the
durations it asks for) runs for real on CPU with the chunk budget forced small."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from openllm import rundir
from openllm.app import zerogpu as Z
from openllm.errors import OpenLLMError

sys.path.insert(0, str(Path(__file__).parent))

import spaces  # noqa: F401  (openllm[app] brings it; the boundary under test)


def test_zerogpu_is_read_as_the_spaces_package_reads_it(monkeypatch):
    from spaces.config import Config

    assert Z.on_zerogpu() is Config.zero_gpu is False  # this machine is no ZeroGPU Space
    assert Z.chunk_policy({}) is None  # a job process trains, as before
    monkeypatch.setattr(Config, "zero_gpu", True)  # what spaces concludes from SPACES_ZERO_GPU=true
    assert Z.on_zerogpu() and Z.chunk_policy({"SPACES_ZERO_GPU": "true"}) == Z.ChunkPolicy()
    forced = Z.chunk_policy({"OPENLLM_ZEROGPU": "1", "OPENLLM_ZEROGPU_CHUNK_S": "3", "OPENLLM_ZEROGPU_MARGIN_S": "1"})
    assert forced == Z.ChunkPolicy(3.0, 1.0) and (forced.budget_s, forced.hard_s) == (2.0, 2.5)
    with pytest.raises(OpenLLMError, match="OPENLLM_ZEROGPU_CHUNK_S='x' is not a number of seconds"):
        Z.chunk_policy({"OPENLLM_ZEROGPU": "1", "OPENLLM_ZEROGPU_CHUNK_S": "x"})
    with pytest.raises(OpenLLMError, match="must be longer than OPENLLM_ZEROGPU_MARGIN_S"):
        Z.chunk_policy({"OPENLLM_ZEROGPU": "1", "OPENLLM_ZEROGPU_CHUNK_S": "10", "OPENLLM_ZEROGPU_MARGIN_S": "10"})


def test_gpu_calls_ask_for_a_duration_computed_from_the_work():
    # off ZeroGPU spaces.GPU hands the function back: the call runs here, with the duration as its first argument
    assert Z._gpu(Z._run_call) is Z._run_call
    assert Z.gpu_call(Z.generation_seconds(100), divmod, 7, 2) == (3, 1)
    assert list(Z.gpu_stream(Z.generation_seconds(5), iter, [1, 2])) == [1, 2]
    # the duration spaces reads: the first argument, whole seconds within ZeroGPU's range
    assert Z._duration(61.2, "anything") == 62
    assert Z._clamp(Z.generation_seconds(16)) == Z.MIN_CALL_S  # a short reply asks for the default minute
    assert Z._clamp(Z.generation_seconds(2000)) == Z.LOAD_S + 2000 * Z.TOKEN_S
    assert Z._clamp(Z.generation_seconds(10**6)) == Z.MAX_CALL_S
    assert Z.evaluation_seconds(tasks=2) > Z.evaluation_seconds(tasks=1) > Z.evaluation_seconds(val_tokens=1000)


@pytest.mark.slow
def test_a_run_trained_in_many_small_chunks_has_the_losses_of_one_uninterrupted_run(tmp_path, one_thread):
    from openllm.train import train
    from test_train import quiet, random_data, tiny_cfg

    steps = 400
    data = random_data(tmp_path / "data", vocab_size=64, train_tokens=40000, val_tokens=2000)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(tiny_cfg(max_steps=steps, save_every=steps, eval_every=100, keep_last=2)))
    train(cfg, data, tmp_path / "whole", **quiet())

    policy = Z.ChunkPolicy(duration_s=0.6, margin_s=0.3)  # each chunk trains about 0.3 s, then saves
    said: list[str] = []
    run = tmp_path / "chunked"
    out = Z.train_in_chunks(
        run,
        "train",
        dict(config=str(cfg), data_dir=str(data), out_dir=str(run)),
        dict(config=None, out_dir=str(run), resume=True, max_steps=steps),
        policy,
        say=said.append,
    )
    assert out == {"state": "finished", "step": steps}
    chunks = len(said) + 1
    assert chunks >= 5, said  # many chunks, each one resumed from the last one's checkpoint
    whole = {r["step"]: r for r in rundir.read_metrics(tmp_path / "whole")}
    parts = {r["step"]: r for r in rundir.read_metrics(run)}
    assert sorted(whole) == sorted(parts) == list(range(1, steps + 1))
    for step, r in whole.items():
        assert (parts[step]["loss"], parts[step]["grad_norm"]) == (r["loss"], r["grad_norm"]), step
        if "val_loss" in r:
            assert parts[step]["val_loss"] == r["val_loss"], step
    from safetensors.torch import load_file

    wa = load_file(rundir.checkpoint_dir(tmp_path / "whole", steps) / rundir.WEIGHTS)
    wb = load_file(rundir.checkpoint_dir(run, steps) / rundir.WEIGHTS)
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert rundir.run_state(run).state == "finished"
    print(f"{chunks} chunks")


@pytest.mark.slow
def test_the_apps_runner_trains_in_chunks_in_its_own_process_stops_and_continues(tmp_path, one_thread):
    """On ZeroGPU the job runs inside the app's process (only it can ask for the GPU): Start, Stop (no signal
    to the app itself: the stop-request file) and Continue, the run active from one chunk to the next."""
    import os
    import time

    from openllm.app.forms import TrainRequest
    from openllm.app.runner import Runner
    from openllm.app.workspace import Workspace
    from openllm.config import Config
    from test_batches import random_data
    from test_train import tiny_cfg

    ws = Workspace(tmp_path / "ws")
    random_data(ws.corpora_dir / "tokens", vocab_size=64, train_tokens=40000, val_tokens=2000)
    runner = Runner(ws, chunks=Z.ChunkPolicy(duration_s=2.0, margin_s=0.8))
    total = 1000  # several chunks even where the tiny model trains 200 steps inside one chunk
    config = Config.from_dict(tiny_cfg(max_steps=total, save_every=total, eval_every=50))
    runner.start(TrainRequest("z", config, "workspace", "corpora/tokens", vocab_size=64))
    log = ws.job_dir("z") / "log.txt"
    deadline = time.time() + 240
    while not (rundir.checkpoint_steps(ws.run_dir("z")) and "== chunk" in log.read_text()):
        assert time.time() < deadline and runner.status("z").state not in ("failed", "finished"), runner.status("z")
        time.sleep(0.05)
    st = runner.status("z")
    assert st.active and st.pid == os.getpid() and not st.external, st  # between chunks too: nothing else starts
    runner.stop("z")  # a signal would stop the app: the request file reaches the chunk instead
    assert runner.wait(120)
    st = runner.status("z")
    assert st.state == "stopped" and 0 < st.step < total, st
    assert runner.continue_run("z", total - rundir.checkpoint_steps(ws.run_dir("z"))[-1]) == total
    assert runner.wait(240) and runner.status("z").state == "finished", log.read_text()
    assert [r["step"] for r in rundir.read_metrics(ws.run_dir("z"))] == list(range(1, total + 1))


def test_on_zerogpu_the_gpu_functions_are_decorated_before_the_server_starts(monkeypatch):
    from spaces.config import Config

    monkeypatch.setattr(Z, "_decorated", {})
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not Z.prepare() and Z._decorated == {}  # not a ZeroGPU Space: nothing to do
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(Config, "zero_gpu", False)  # (spaces read the environment when it was imported)
    assert not Z.prepare()
    monkeypatch.setattr(Z, "_decorate", lambda fn: ("decorated", fn))  # spaces' real wrapper needs its device API
    monkeypatch.setattr(Config, "zero_gpu", True)
    assert Z.prepare() and sorted(Z._decorated) == ["_run_call", "_run_stream", "_train_chunk"]
