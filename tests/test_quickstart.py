"""The quickstart end to end through the real command, with a smaller model than the tiny preset so that it
takes seconds (the full-size run is timed by hand: see docs/training.md)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from openllm.quickstart import STEPS, unigram_baseline

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import write_shards

# one thread: on a shared CI box two OpenMP threads wait on each other when the other core is busy
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

SMALL = {
    "name": "quick-test",
    "model": {
        "vocab_size": 1024,
        "d_model": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_kv_heads": 2,
        "d_ff": 192,
        "max_seq_len": 64,
    },
    "train": {
        "micro_batch_size": 16,
        "seq_len": 64,
        "max_steps": 150,
        "lr": 0.005,
        "min_lr": 0.0005,
        "warmup_steps": 15,
        "eval_every": 75,
        "eval_batches": 4,
        "save_every": 75,
        "log_every": 25,
    },
}


def test_unigram_baseline_by_hand(tmp_path):
    # train: token 0 three times, token 1 once (vocab 4, add-one): p = (4/8, 2/8, 1/8, 1/8)
    data = write_shards(
        tmp_path / "d", {"train": [np.array([0, 0, 0, 1])], "val": [np.array([2, 0, 1, 0, 3])]}, vocab_size=4
    )
    loss, n = unigram_baseline(data, seq_len=2)
    # every val token is scored (openllm evaluate puts a document-start EOS before the stream): [2, 0, 1, 0, 3]
    expected = -(np.log(1 / 8) + np.log(4 / 8) + np.log(2 / 8) + np.log(4 / 8) + np.log(1 / 8)) / 5
    assert n == 5 and loss == pytest.approx(expected)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    cfg = tmp_path / "quick.json"
    cfg.write_text(json.dumps(SMALL))
    out = tmp_path / "qs"
    res = run_cli(
        "quickstart",
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--device",
        "cpu",
        "--no-progress",
        env=ONE_THREAD,
        timeout=600,
    )
    text = res.stdout
    for stage in range(1, 8):
        assert f"[{stage}/7]" in text
    summary = json.loads((out / "quickstart.json").read_text())
    # every step ran, and every output it promised is there
    assert summary["missing"] == [] and set(summary["timings_s"]) == set(STEPS), summary
    paths = {k: Path(v) for k, v in summary["paths"].items()}
    assert set(paths) == {"prepared", "tokenizer", "tokens", "run", "evaluation", "export_native", "export_hf"}
    for key in ("prepared", "tokenizer", "tokens", "run"):
        assert paths[key].is_dir() and str(paths[key]) in text
    assert summary["train_steps"] == 150
    run = out / "run"
    for name in (
        "config.json",
        "metrics.jsonl",
        "status.json",
        "loss.png",
        "checkpoints/best.json",
        "tokenizer",
        "evaluation.json",
    ):
        assert (run / name).exists(), name
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (paths["export_hf"] / name).is_file(), name
    assert (paths["export_native"] / "config.json").is_file()
    assert len(summary["samples"]) == 2
    # one val loss: the summary's is the evaluation report's (every val token, window/stride), and the unigram
    # baseline is scored on the same tokens
    report = json.loads(paths["evaluation"].read_text())
    assert report["val_loss"] == summary["val_loss"] and report["tokens"] == summary["val_tokens"]
    assert report["baselines"]["unigram"]["val_loss"] == pytest.approx(summary["unigram_val_loss"], rel=1e-9)
    # the model must beat the unigram baseline by a wide margin, and both numbers are printed
    assert summary["unigram_val_loss"] - summary["val_loss"] > 0.5, summary
    assert f"unigram baseline {summary['unigram_val_loss']:.4f}" in text and "beats it" in text
    # a second quickstart into the same folder starts over instead of failing; a step that fails ends the
    # quickstart with a non-zero exit and one line naming the step (here training diverges)
    (out / "run" / "marker").write_text("x")
    diverging = tmp_path / "diverging.json"
    diverging.write_text(json.dumps({**SMALL, "train": {**SMALL["train"], "lr": 1e30, "min_lr": 1e29}}))
    bad = run_cli(
        "quickstart",
        "--out",
        str(out),
        "--config",
        str(diverging),
        "--max-steps",
        "3",
        "--device",
        "cpu",
        "--no-evaluate-report",
        "--no-export",
        "--no-progress",
        check=False,
        env=ONE_THREAD,
        timeout=600,
    )
    assert "[5/7]" in bad.stdout and "[6/7]" not in bad.stdout and not (out / "run" / "marker").exists()
    assert bad.returncode == 2, bad.stderr
    assert "quickstart step 5/7 (train) failed: training diverged" in bad.stderr
    assert len(bad.stderr.strip().splitlines()[-1]) > 0 and not (out / "quickstart.json").exists()
    # a folder that is not a quickstart's is refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    bad = run_cli("quickstart", "--out", str(other), check=False)
    assert bad.returncode == 2 and "not a quickstart folder" in bad.stderr
    assert (other / "precious.txt").read_text() == "keep me"
