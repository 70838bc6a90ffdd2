"""openllm compare: runs and an export side by side (parameters, tokens seen, losses, evaluation.json) and
their loss curves in a PNG."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli
from openllm.compare import compare, markdown_table
from openllm.rundir import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture()
def two_runs(evaluate_run_folder, tmp_path):
    """The shared run, and a copy whose curve is shifted and that has no evaluation.json."""
    run = evaluate_run_folder["run"]
    other = tmp_path / "other" / "run"
    shutil.copytree(run, other)
    (other / "evaluation.json").unlink(missing_ok=True)
    rows = read_metrics(run)
    (other / "metrics.jsonl").write_text(
        "".join(
            json.dumps({**r, "loss": r["loss"] + 0.5, **({"val_loss": r["val_loss"] + 0.5} if "val_loss" in r else {})})
            + "\n"
            for r in rows
        )
        + '{"step": 61, "loss": 1.0'
    )  # a torn last line, as from a run still writing
    (run / "evaluation.json").write_text(
        json.dumps(
            {
                "val_loss": 2.5,
                "perplexity": 12.18,
                "bits_per_byte": 1.1,
                "dataset": {"name": "val split of data"},
                "tasks": {"lambada": {"acc": 0.25, "ppl": 99.0, "n": 4}},
            }
        )
    )
    return run, other


def test_compare_runs_and_an_export_with_a_plot(two_runs, tmp_path):
    from openllm import load
    from openllm.export import export

    run, other = two_runs
    hf = tmp_path / "hf"
    export(run, hf, "hf", progress=False)
    png = tmp_path / "curves.png"
    res = compare([run, other, hf], plot=png)
    a, b, c = res["models"]
    params = load(run).model.num_params()
    assert a["params"] == b["params"] == c["params"] == params
    assert a["kind"] == "run" and c["kind"] == "hf"
    assert a["tokens_seen"] == 60 * 512 and a["step"] == 60
    assert b["train_loss"] == pytest.approx(a["train_loss"] + 0.5)
    assert b["best_val_loss"] == pytest.approx(a["best_val_loss"] + 0.5)
    assert a["val_loss"] == 2.5 and a["tasks"]["lambada"]["acc"] == 0.25 and "val_loss" not in b
    # two folders both named "run": told apart by their parents
    assert a["name"] != b["name"] and b["name"] == "other/run"
    table = res["table"]
    assert table.splitlines()[0].count("|") == 5
    assert "| perplexity | 12.1800 | - | - |" in table and "| lambada acc | 0.2500 | - | - |" in table
    assert f"| parameters | {params:,} | {params:,} | {params:,} |" in table
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_markdown_table_leaves_out_rows_nobody_has():
    t = markdown_table([{"name": "a", "params": 10}, {"name": "b", "params": 20, "perplexity": 3.0}])
    assert "| parameters | 10 | 20 |" in t and "| perplexity | - | 3.0000 |" in t and "tokens seen" not in t


def test_cli_compare(two_runs, tmp_path):
    run, other = two_runs
    png, js = tmp_path / "c.png", tmp_path / "c.json"
    p = run_cli("compare", str(run), str(other), "--plot", str(png), "--json", str(js), env={"OMP_NUM_THREADS": "1"})
    assert "| tokens seen |" in p.stdout and png.is_file()
    assert len(json.loads(js.read_text())["models"]) == 2
    p = run_cli("compare", str(tmp_path / "missing"), check=False, env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 2 and "Traceback" not in p.stderr
