"""openllm tokenize on datatrove (local, Ray, Slurm): the same bytes as the built-in path, resumable after a kill."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from openllm.dataengine import tokenize_on_engine, work_dir_for
from openllm.errors import MissingExtra, OpenLLMError
from openllm.prepare import prepare_corpus
from openllm.shards import tokenize_corpus
from openllm.tokenizer import train_tokenizer

pytest.importorskip("datatrove")

# small ranges and shards, so a small corpus still makes many tasks and several shards per split
CHUNK, SHARD = 16 << 10, 40_000


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Prepared chapters of the embedded corpus, a tokenizer, and the built-in path's output for CHUNK/SHARD."""
    from openllm.corpus import embedded_corpus_documents

    root = tmp_path_factory.mktemp("engine")
    docs = [d for _, d in zip(range(150), embedded_corpus_documents())]
    (root / "raw.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    prepare_corpus([root / "raw.jsonl"], root / "data", val_fraction=0.05, progress=False)
    train_tokenizer(root / "data", root / "tok", vocab_size=512, progress=False)
    tokenize_corpus(
        root / "data", root / "tok", root / "builtin", workers=2, shard_tokens=SHARD, chunk_bytes=CHUNK, progress=False
    )
    return root


def test_unknown_executor_and_foreign_work_folder_are_refused(tmp_path):
    with pytest.raises(OpenLLMError, match="--executor must be one of local, ray, slurm"):
        tokenize_on_engine(tmp_path, tmp_path, tmp_path / "out", executor="spark")
    assert work_dir_for(tmp_path / "out") == tmp_path.resolve() / "out.datatrove"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("hidden,executor,extra", [("datatrove", "local", "data"), ("ray", "ray", "ray")])
def test_a_missing_engine_names_the_extra(hidden, executor, extra, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, hidden, None)  # as if the extra were not installed
    with pytest.raises(
        MissingExtra, match=rf"needs {hidden}, which is not installed: pip install 'openllm\[{extra}\]'"
    ):
        tokenize_on_engine(tmp_path, tmp_path, tmp_path / "out", executor=executor)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_local_executor_writes_the_builtin_bytes(corpus, tmp_path):
    assert _checksums(corpus / "builtin")  # shards, meta.json, tokenizer/
    args = ["tokenize", "--data", str(corpus / "data"), "--tokenizer", str(corpus / "tok"), "--workers", "2"]
    run_cli(*args, "--shard-tokens", "20000", "--out", str(tmp_path / "builtin"), "--quiet")
    proc = run_cli(*args, "--shard-tokens", "20000", "--out", str(tmp_path / "dt"), "--executor", "local", "--quiet")
    assert "wrote" in proc.stdout
    meta = json.loads((tmp_path / "dt" / "meta.json").read_text())
    assert len(meta["splits"]["train"]["shards"]) > 1
    assert _checksums(tmp_path / "dt") == _checksums(tmp_path / "builtin")
    assert not work_dir_for(tmp_path / "dt").exists()  # the work folder goes once the output is written
    # another engine's folder where the work folder belongs is refused, not emptied
    (tmp_path / "other.datatrove").mkdir()
    (tmp_path / "other.datatrove" / "keep.txt").write_text("theirs")
    proc = run_cli(*args, "--out", str(tmp_path / "other"), "--executor", "local", check=False)
    assert proc.returncode != 0 and "is not an openllm datatrove work folder" in proc.stderr
    assert (tmp_path / "other.datatrove" / "keep.txt").read_text() == "theirs"


@pytest.mark.slow
def test_prepare_data_local_executor_writes_the_builtin_bytes(corpus, tmp_path):
    """Several files of several kinds, duplicates across them, a bad byte and a control character: the report
    and both splits match plain prepare-data byte for byte (deduplication keeps the same first copies)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = (corpus / "raw.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (raw / "a.jsonl").write_text("".join(lines[:60]), encoding="utf-8")
    (raw / "b.jsonl").write_text("".join(lines[40:120]), encoding="utf-8")  # 20 duplicates of a.jsonl
    (raw / "c.txt").write_bytes(b"A paragraph with a bad byte \xff here.\n\nAnd one\x07 with a bell.\n\nx\n")
    args = ["prepare-data", str(raw), "--val-fraction", "0.1", "--min-chars", "2", "--json"]
    plain = run_cli(*args, "--out", str(tmp_path / "plain"))
    proc = run_cli(*args, "--out", str(tmp_path / "dt"), "--executor", "local", "--workers", "2")
    assert json.loads(proc.stdout) == json.loads(plain.stdout)
    report = json.loads(plain.stdout)
    assert report["dropped"]["duplicate"] == 20 and report["replaced_bytes"] == 1 and len(report["sources"]) == 3
    assert _checksums(tmp_path / "dt") == _checksums(tmp_path / "plain")
    assert not work_dir_for(tmp_path / "dt").exists()


_KILLED_RUN = """
import sys
from openllm.dataengine import tokenize_on_engine
root, out = sys.argv[1], sys.argv[2]
tokenize_on_engine(root + "/data", root + "/tok", out, workers=2, shard_tokens={shard}, chunk_bytes={chunk},
                   keep_work=True, progress=False)
"""


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_tasks(corpus, tmp_path):
    out = tmp_path / "tokens"
    work = work_dir_for(out)
    done = work / "logs" / "completions"
    code = _KILLED_RUN.format(shard=SHARD, chunk=CHUNK)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(corpus), str(out)],
        start_new_session=True,  # its own process group: the kill takes the pool's workers too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(done.glob("*")) if done.is_dir() else []) < 3:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    finished = sorted(p.name for p in done.iterdir())
    n_tasks = json.loads((work / "plan.json").read_text())["tasks"]
    assert 3 <= len(finished) < n_tasks, "the kill should land mid-run"
    assert not out.exists()
    logs = {name: (work / "logs" / "logs" / f"task_{name}.log").stat().st_mtime_ns for name in finished}

    meta = tokenize_on_engine(
        corpus / "data",
        corpus / "tok",
        out,
        workers=2,
        shard_tokens=SHARD,
        chunk_bytes=CHUNK,
        keep_work=True,
        progress=False,
    )
    assert meta["splits"]["train"]["tokens"] > 0
    # datatrove skipped the finished tasks: their logs were not rewritten; every task is now marked done
    assert {name: (work / "logs" / "logs" / f"task_{name}.log").stat().st_mtime_ns for name in finished} == logs
    assert len(list(done.iterdir())) == n_tasks
    assert _checksums(out) == _checksums(corpus / "builtin")


@pytest.mark.slow
def test_ray_executor_on_a_local_cluster_writes_the_builtin_bytes(corpus, tmp_path):
    ray = pytest.importorskip("ray")
    from openllm.dataengine import prepare_on_engine

    lines = (corpus / "raw.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    raw = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    raw[0].write_text("".join(lines[:90]), encoding="utf-8")
    raw[1].write_text("".join(lines[60:]), encoding="utf-8")  # 30 duplicates of a.jsonl
    prepare_corpus(raw, tmp_path / "prepared", val_fraction=0.1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tokenize_on_engine(
            corpus / "data",
            corpus / "tok",
            tmp_path / "ray",
            executor="ray",
            workers=2,
            shard_tokens=SHARD,
            chunk_bytes=CHUNK,
            tasks=4,
            keep_work=True,
            progress=False,
        )
        report = prepare_on_engine(raw, tmp_path / "ray-prepared", executor="ray", workers=2, val_fraction=0.1)
    finally:
        ray.shutdown()
    assert _checksums(tmp_path / "ray") == _checksums(corpus / "builtin")
    assert sorted(p.name for p in (work_dir_for(tmp_path / "ray") / "logs" / "completions").iterdir()) == [
        f"{r:05d}" for r in range(4)
    ]
    assert report is not None and report["dropped"]["duplicate"] == 30
    assert _checksums(tmp_path / "ray-prepared") == _checksums(tmp_path / "prepared")


_SBATCH = """#!/bin/sh
# stands in for Slurm's sbatch: keeps the arguments and the script, answers as sbatch does
n=$(ls "$SUBMITTED" | wc -l)
for a in "$@"; do last="$a"; done
cp "$last" "$SUBMITTED/$n.slurm"
echo "$*" > "$SUBMITTED/$n.args"
echo "Submitted batch job $((100 + n))"
"""
_SCONTROL = """#!/bin/sh
# stands in for `scontrol show hostnames NODELIST` inside a job (a one-node list: itself)
echo "$3"
"""


@pytest.mark.slow
def test_slurm_submission_scripts_and_their_jobs(corpus, tmp_path, monkeypatch):
    """The scripts datatrove hands to sbatch: an array of encode tasks, then the merge after them. Then each array
    task and the merge run as Slurm would start them (the pickled executor, SLURM_ARRAY_TASK_ID set)."""
    import dill

    bin_dir, submitted = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    submitted.mkdir()
    for name, script in (("sbatch", _SBATCH), ("scontrol", _SCONTROL)):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITTED", str(submitted))
    out = tmp_path / "tokens"
    result = tokenize_on_engine(
        corpus / "data",
        corpus / "tok",
        out,
        executor="slurm",
        workers=2,
        shard_tokens=SHARD,
        chunk_bytes=CHUNK,
        tasks=3,
        slurm={"partition": "cpu", "time": "01:00:00", "venv_path": "/opt/venv/bin/activate"},
        progress=False,
    )
    assert result is None and not out.exists()
    work = work_dir_for(out)
    scripts = {p.stem: p.read_text() for p in submitted.glob("*.slurm")}
    args = {p.stem: p.read_text() for p in submitted.glob("*.args")}
    encode = next(k for k, s in scripts.items() if "logs/executor.pik" in s and "merge-logs" not in s)
    merge = next(k for k, s in scripts.items() if "merge-logs/executor.pik" in s)
    assert "#SBATCH --array=0-2" in scripts[encode] and "#SBATCH --partition=cpu" in scripts[encode]
    assert "#SBATCH --time=01:00:00" in scripts[encode] and "source /opt/venv/bin/activate" in scripts[encode]
    assert f"launch_pickled_pipeline {work}/logs/executor.pik" in scripts[encode]
    assert "#SBATCH --job-name=openllm-tokenize-merge" in scripts[merge]
    assert f"--dependency=afterok:{100 + int(encode)}" in args[merge]  # the merge waits for the encode array

    def run_as_slurm(pickled: Path, task: int) -> None:
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        monkeypatch.setenv("SLURM_NODELIST", "node1")  # what Slurm sets in every job
        with open(pickled, "rb") as f:
            dill.load(f).run()

    for task in range(3):
        run_as_slurm(work / "logs" / "executor.pik", task)
    run_as_slurm(work / "merge-logs" / "executor.pik", 0)
    assert _checksums(out) == _checksums(corpus / "builtin")
    assert not (work / "parts").exists()
