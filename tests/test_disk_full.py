"""A full disk (here: a real kernel file-size limit, `ulimit -f`, which fails writes with EFBIG just as a full
disk fails them with ENOSPC) gives a one-line error with the fix, and loses nothing: outputs are atomic and the
previous checkpoint stays usable."""

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_batches import random_data

LIMIT = 200_000  # bytes: larger than any log or metrics file here, smaller than a checkpoint's weights


def openllm(*args: str, limit: int | None = None) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "openllm", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=cap if limit else None,
        timeout=300,
    )


def test_prepare_data_on_a_full_disk_leaves_nothing(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: " + "words of the corpus " * 20 for i in range(3000)))
    out = tmp_path / "prepared"
    res = openllm("prepare-data", str(corpus), "--out", str(out), "--quiet", limit=LIMIT)
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "File too large" in err and "free some space" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name not in ("corpus.txt",)]


@pytest.fixture(scope="module")
def trained_to_4(tmp_path_factory):
    """(config, data, run): a micro model trained 4 steps by the real command, one checkpoint at step 4 (bigger
    than LIMIT). Both full-disk tests resume a copy of it: one training start (seconds) instead of two."""
    tmp_path = tmp_path_factory.mktemp("trained")
    data = random_data(tmp_path / "data", vocab_size=64, train_tokens=20000, val_tokens=2000)
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {
                "name": "micro",
                "model": {"vocab_size": 64, "d_model": 96, "n_layers": 2, "n_heads": 4, "max_seq_len": 32},
                "train": {
                    "micro_batch_size": 4,
                    "seq_len": 32,
                    "max_steps": 4,
                    "warmup_steps": 1,
                    "eval_every": 4,
                    "eval_batches": 1,
                    "save_every": 4,
                    "log_every": 1,
                },
            }
        )
    )
    run = tmp_path / "run"
    res = openllm("train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--no-progress")
    assert res.returncode == 0, res.stderr
    return cfg, data, run


@pytest.mark.slow
def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path, trained_to_4):
    cfg, data, trained = trained_to_4
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    common = ("train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--no-progress")
    first = run / "checkpoints" / "step_00000004"
    assert (first / "model.safetensors").stat().st_size > LIMIT  # so the next save cannot fit

    res = openllm(*common, "--max-steps", "8", limit=LIMIT)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    err = res.stderr.strip().splitlines()[-1]  # the lines before it are the run's own progress messages
    assert err.startswith("error: "), res.stderr
    assert "could not write checkpoint step 8" in err and "step_00000004 is intact" in err
    assert "free some space" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step_00000004"]
    assert json.loads((run / "status.json").read_text())["state"] == "failed"

    # room again: the same command resumes from step 4 and finishes
    assert openllm(*common, "--max-steps", "8").returncode == 0
    assert json.loads((run / "checkpoints" / "step_00000008" / "state.json").read_text())["step"] == 8


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real file system that fills up: a 4 MB tmpfs (needs root, as CI's container has; skipped otherwise)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_checkpoint_on_a_really_full_disk_is_the_disk_full_message(small_tmpfs, trained_to_4):
    """ENOSPC from a real file system, not a file-size limit: torch.save's writer words it "unexpected pos",
    with the errno only in the exception's context; the error must still be the disk-full one (exit 2)."""
    cfg, data, trained = trained_to_4
    run = small_tmpfs / "run"
    shutil.copytree(trained, run)
    common = ("train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--no-progress")
    first = run / "checkpoints" / "step_00000004"
    ckpt_bytes = sum(f.stat().st_size for f in first.iterdir())
    assert ckpt_bytes > 4_000_000 - ckpt_bytes - 200_000, ckpt_bytes  # a second checkpoint cannot fit

    res = openllm(*common, "--max-steps", "8")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "unexpected pos" not in res.stderr, res.stderr
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "could not write checkpoint step 8" in err, res.stderr
    assert "No space left on device" in err and "free some space" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step_00000004"]


def test_a_full_disk_wrapped_by_a_library_is_the_disk_full_message(monkeypatch, capsys):
    """Wherever ENOSPC surfaces (here: a RuntimeError raised while handling it, as torch.save does), the CLI says
    the disk is full, not the wrapper's words alone, and exits 2."""
    import errno

    import openllm.cli.info as info
    from openllm.cli import main

    def run(args):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(info, "run", run)
    assert main(["info", "tiny"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "No space left on device" in line and "free some space" in line
