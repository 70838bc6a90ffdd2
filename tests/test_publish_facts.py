"""collect_facts: the one summary of what a run measured (for the card and for ``openllm compare``), read from
the run folder's files; a checkpoint folder is summarised as that checkpoint, not as the run's latest."""

from __future__ import annotations

import json
from pathlib import Path

from openllm.config import Config, ModelConfig
from openllm.model import Transformer, param_report
from openllm.publish.facts import collect_facts

MODEL = ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128)


def _run(root: Path, steps: tuple[int, ...] = (500, 1000), metrics_to: int = 1200) -> Path:
    """A run folder by hand (weights are not read): config, complete checkpoints, a metrics log with the
    tokens seen, an evaluation and a loss curve of the latest checkpoint."""
    cfg = Config(model=MODEL, name="facts-test").validate()
    root.mkdir(parents=True)
    cfg.save(root / "config.json")
    for s in steps:
        ck = root / "checkpoints" / f"step_{s:08d}"
        ck.mkdir(parents=True)
        (ck / "model.safetensors").write_bytes(b"")
        (ck / "state.json").write_text(json.dumps({"step": s, "config": cfg.to_dict()}))
    with open(root / "metrics.jsonl", "w") as f:
        for s in range(100, metrics_to + 1, 100):
            rec = {"step": s, "loss": 6.0 - s / 1000, "tokens": s * 256}
            if s % 500 == 0:
                rec["val_loss"] = 6.2 - s / 1000
            f.write(json.dumps(rec) + "\n")
    if steps:
        (root / "evaluation.json").write_text(json.dumps({"step": max(steps), "val_loss": 5.0}))
        (root / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    return root


def test_a_run_is_summarised_at_its_latest_checkpoint(tmp_path):
    facts = collect_facts(_run(tmp_path / "run"))
    assert facts.kind == "run" and facts.step == 1000
    assert facts.tokens_seen == 1000 * 256  # state.json has none: the metrics log at that step
    assert facts.final_loss == 5.0 and facts.best_val_loss == 5.2 and facts.best_step == 1000
    assert all(r["step"] <= 1000 for r in facts.metrics)  # not what came after the checkpoint
    assert facts.evaluation == {"step": 1000, "val_loss": 5.0} and facts.loss_image is not None
    assert facts.config["name"] == "facts-test"


def test_an_older_checkpoint_folder_is_summarised_as_itself(tmp_path):
    run = _run(tmp_path / "run")
    facts = collect_facts(run / "checkpoints" / "step_00000500")
    assert facts.kind == "run" and facts.step == 500 and facts.config["name"] == "facts-test"
    assert facts.tokens_seen == 500 * 256 and facts.final_loss == 5.5 and facts.best_val_loss == 5.7
    # the run's evaluation.json and loss.png are of step 1000: not this checkpoint's
    assert facts.evaluation == {} and facts.loss_image is None
    latest = collect_facts(run / "checkpoints" / "step_00001000")
    assert latest.step == 1000 and latest.evaluation["val_loss"] == 5.0


def test_a_run_before_its_first_checkpoint(tmp_path):
    run = _run(tmp_path / "run", steps=(), metrics_to=300)
    (run / "checkpoints").mkdir()
    facts = collect_facts(run)
    assert facts.step == 300 and facts.tokens_seen == 300 * 256 and facts.final_loss == 5.7


def test_parameter_counts_are_the_models(tmp_path):
    facts = collect_facts(_run(tmp_path / "run"))
    model = Transformer(MODEL)
    assert facts.params == model.num_params() == param_report(MODEL)["params"]
    assert facts.params_non_embedding == model.num_params(non_embedding=True)
    assert collect_facts(_run(tmp_path / "r2"), count_params=False).params is None


def test_an_export_folder(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    cfg = Config(model=MODEL, name="exported").validate().to_dict()
    (export / "openllm.json").write_text(json.dumps({"format": "openllm", "step": 7000, **cfg}))
    (export / "config.json").write_text(json.dumps({"model_type": "llama"}))
    facts = collect_facts(export)
    assert facts.kind == "export" and facts.step == 7000 and facts.config["name"] == "exported"
    assert "format" not in facts.config and facts.params == Transformer(MODEL).num_params()
    assert facts.metrics == [] and facts.final_loss is None and facts.tokens_seen is None


def test_published_facts_carry_no_local_path():
    """evaluation.json as `openllm evaluate` writes it names the run, the data folder and the task files by
    absolute path; what is pushed keeps only their last part (issue 24)."""
    from openllm.publish.facts import without_local_paths

    ev = {
        "source": "/home/alice/runs/tiny",
        "dataset": {"name": "val split of tokens", "path": "/home/alice/data/tokens/", "kind": "val"},
        "tasks": {"lambada": {"acc": 0.5, "n": 200, "path": "C:\\Users\\alice\\lambada.jsonl"}},
        "generation": [{"prompt": "/ is a slash", "text": "a\n/b"}],
        "files": ["~/x/y.txt"],
    }
    out = without_local_paths(ev)
    assert out["source"] == "tiny" and out["dataset"]["path"] == "tokens" and out["files"] == ["y.txt"]
    assert out["tasks"]["lambada"] == {"acc": 0.5, "n": 200, "path": "lambada.jsonl"}
    assert out["dataset"]["name"] == "val split of tokens" and out["generation"] == ev["generation"]
    assert "alice" not in json.dumps(out)
