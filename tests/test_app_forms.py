"""The app's form validation and workspace sandbox (no browser, no Gradio)."""

from __future__ import annotations

import os

import pytest

from openllm.app.forms import (
    CORPUS_EMBEDDED,
    CORPUS_UPLOAD,
    CORPUS_WORKSPACE,
    FormError,
    parse_hub_ref,
    parse_push_form,
    parse_sampling_form,
    parse_train_form,
    preset_fields,
    recipe_fields,
)
from openllm.app.workspace import Workspace, WorkspaceError, check_name


def _form(**over):
    values = {
        **preset_fields("tiny"),
        "preset": "tiny",
        "run_name": "r1",
        "corpus_kind": CORPUS_EMBEDDED,
        "corpus_path": "",
        "upload": None,
    }
    values.update(over)
    return values


def test_preset_fields_round_trip_to_the_preset_config():
    req = parse_train_form(_form())
    assert req.run_name == "r1" and req.corpus_kind == "embedded"
    cfg = req.config
    assert cfg.model.d_model == 192 and cfg.model.vocab_size == 4096
    from openllm.config import load_config

    tiny = load_config("tiny")
    assert cfg.train.lr == tiny.train.lr and cfg.train.max_steps == tiny.train.max_steps and cfg.name == "r1"


def test_overrides_reach_the_config():
    req = parse_train_form(
        _form(
            lr="0.001",
            max_steps=30.0,
            batch_size=4,
            grad_accum=2,
            schedule="wsd",
            weight_decay=0,
            grad_clip=0.5,
            warmup_steps=3,
            vocab_size=512,
            eval_every=5,
            save_every=10,
        )
    )
    t = req.config.train
    assert (t.lr, t.max_steps, t.micro_batch_size, t.grad_accum_steps, t.schedule) == (0.001, 30, 4, 2, "wsd")
    assert (t.weight_decay, t.grad_clip, t.warmup_steps, t.eval_every, t.save_every) == (0, 0.5, 3, 5, 10)
    assert t.min_lr <= t.lr
    assert req.config.model.vocab_size == 512 and req.vocab_size == 512


@pytest.mark.parametrize(
    "field,value,label,words",
    [
        ("lr", 0, "Learning rate", "greater than 0"),
        ("lr", -1e-3, "Learning rate", "greater than 0"),
        ("lr", "abc", "Learning rate", "must be a number"),
        ("lr", None, "Learning rate", "required"),
        ("lr", float("nan"), "Learning rate", "finite"),
        ("max_steps", 10.5, "Steps", "whole number"),
        ("max_steps", "12.25", "Steps", "whole number"),
        ("max_steps", 0, "Steps", "at least 1"),
        ("batch_size", -2, "Batch size", "at least 1"),
        ("grad_accum", 1.5, "Gradient accumulation", "whole number"),
        ("weight_decay", -0.1, "Weight decay", "0 or more"),
        ("grad_clip", -1, "Gradient clipping", "0 or more"),
        ("warmup_steps", -1, "Warmup steps", "must be 0 or more"),
        ("vocab_size", 10, "Vocabulary size", "at least"),
        ("optimizer", "sgd", "Optimizer", "choose one of"),
        ("schedule", "linear", "Scheduler", "choose one of"),
        ("preset", "huge", "Preset", "choose one of"),
        ("run_name", "../escape", "Run name", "not allowed"),
        ("run_name", "", "Run name", "required"),
        ("eval_every", 0, "Evaluate every", "at least 1"),
    ],
)
def test_bad_fields_name_the_field(field, value, label, words):
    with pytest.raises(FormError) as err:
        parse_train_form(_form(**{field: value}))
    assert err.value.field == label
    assert str(err.value).startswith(label) and words in str(err.value)


def test_the_form_follows_the_configs_rules_and_offers_its_choices():
    # the CLI trains with warmup longer than the run (the rate never peaks), any positive learning rate and
    # Muon: the app's form takes them too (it refused them once, with rules of its own)
    from openllm.app.schema import TRAIN_FIELDS
    from openllm.config import setting

    cfg = parse_train_form(_form(warmup_steps=10_000, lr=2.0, optimizer="muon")).config
    assert (cfg.train.warmup_steps, cfg.train.lr, cfg.train.optimizer) == (10_000, 2.0, "muon")
    offered = {f.key: f.setting.choices for f in TRAIN_FIELDS}
    assert offered["train.optimizer"] == setting("train.optimizer").choices == ("adamw", "muon")
    assert offered["train.schedule"] == ("cosine", "wsd", "constant")
    with pytest.raises(FormError, match=r"^Vocabulary size: must be at least 324 to train a tokenizer, got 323$"):
        parse_train_form(_form(vocab_size=323))


def test_the_form_offers_the_recipe_and_a_switch_fills_in_what_it_sets():
    from openllm.app.schema import TRAIN_FIELDS
    from openllm.config import load_config

    offered = {f.key: f.setting.choices for f in TRAIN_FIELDS}
    assert offered["train.recipe"] == ("speedrun", "classic") and "train.muon_lr" in offered
    medium = {**preset_fields("medium"), "preset": "medium"}
    assert medium["recipe"] == "speedrun" and medium["optimizer"] == "muon"
    changed = recipe_fields("medium", "classic")  # what the UI fills in when the user picks classic
    assert changed == {
        "recipe": "classic",
        "lr": pytest.approx(6e-4),
        "optimizer": "adamw",
        "schedule": "cosine",
        "min_lr": None,
    }
    cfg = parse_train_form(_form(**{**medium, **changed, "vocab_size": 4096})).config
    assert (cfg.train.optimizer, cfg.model.tie_embeddings, cfg.model.zero_init_proj) == ("adamw", True, False)
    # the model size's preset gives the shape only: the head follows the form's recipe
    cfg = parse_train_form(_form(**{**medium, "model_size": "tiny", "vocab_size": 4096})).config
    assert cfg.model.d_model == load_config("tiny").model.d_model and cfg.model.tie_embeddings is False


def test_corpus_choices():
    with pytest.raises(FormError, match="Corpus path"):
        parse_train_form(_form(corpus_kind=CORPUS_WORKSPACE, corpus_path=" "))
    with pytest.raises(FormError, match="Upload"):
        parse_train_form(_form(corpus_kind=CORPUS_UPLOAD, upload=None))
    with pytest.raises(FormError, match="Corpus"):
        parse_train_form(_form(corpus_kind="somewhere"))
    req = parse_train_form(_form(corpus_kind=CORPUS_WORKSPACE, corpus_path="corpora/a.txt"))
    assert (req.corpus_kind, req.corpus_path) == ("workspace", "corpora/a.txt")


def test_model_size_changes_only_the_shape():
    req = parse_train_form(_form(model_size="small", vocab_size=1024))
    assert req.config.model.d_model == 512 and req.config.model.vocab_size == 1024
    assert req.config.train.lr == 0.009  # still the tiny preset's training settings
    assert (req.config.train.seq_len or 0) <= req.config.model.max_seq_len


def test_sampling_form():
    ok = parse_sampling_form(
        dict(prompt="Hi", max_new_tokens=5.0, temperature=0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=None)
    )
    p = ok.params
    assert (p.max_new_tokens, p.temperature, p.top_k, p.top_p, p.seed) == (5, 0.0, None, None, None)
    ok = parse_sampling_form(
        dict(prompt="Hi", max_new_tokens=5, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.1, seed=3)
    )
    assert (ok.params.top_k, ok.params.top_p, ok.params.seed) == (20, 0.9, 3)
    bad = [
        ({"prompt": "  "}, "Prompt"),
        ({"max_new_tokens": 2.5}, "Max new tokens"),
        ({"temperature": -1}, "Temperature"),
        ({"top_p": 0}, "Top-p"),
        ({"top_k": -3}, "Top-k"),
        ({"repetition_penalty": 0}, "Repetition penalty"),
        ({"seed": 1.5}, "Seed"),
    ]
    for over, label in bad:
        values = dict(prompt="Hi", max_new_tokens=5, temperature=1, top_k=0, top_p=1, repetition_penalty=1, seed=None)
        values.update(over)
        with pytest.raises(FormError) as err:
            parse_sampling_form(values)
        assert err.value.field == label


def test_push_and_hub_ref_forms():
    req = parse_push_form(dict(run_name="r1", repo="me/tiny", version="v1"))
    assert (req.run_name, req.repo, req.version) == ("r1", "me/tiny", "v1")
    assert parse_push_form(dict(run_name="r1", repo="me/tiny", version=" ")).version is None
    for repo in ["", "tiny", "../x/y", "/abs/x", "me/../x", "me/x/y"]:
        with pytest.raises(FormError, match="Repository"):
            parse_push_form(dict(run_name="r1", repo=repo, version="v1"))
    with pytest.raises(FormError, match="Version"):
        parse_push_form(dict(run_name="r1", repo="me/x", version="../v"))
    with pytest.raises(FormError, match="Run"):
        parse_push_form(dict(run_name="../r", repo="me/x", version="v"))
    assert parse_hub_ref("me/tiny@7k") == ("me/tiny", "7k")
    for ref in ["me/tiny", "../x@1", "me/tiny@../1", "/etc/passwd@1"]:
        with pytest.raises(FormError):
            parse_hub_ref(ref)


# --- the sandbox --------------------------------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path):
    w = Workspace(tmp_path / "ws")
    (w.corpora_dir / "ok.txt").write_text("hello\n")
    (tmp_path / "secret.txt").write_text("outside\n")
    return w


def test_paths_inside_the_workspace_resolve(ws):
    assert ws.resolve("corpora/ok.txt") == ws.corpora_dir / "ok.txt"
    assert ws.resolve(str(ws.corpora_dir / "ok.txt")) == ws.corpora_dir / "ok.txt"  # absolute but inside
    assert ws.resolve("corpora/../corpora/ok.txt") == ws.corpora_dir / "ok.txt"
    assert ws.corpus_files() == ["corpora/ok.txt"]


@pytest.mark.parametrize("path", ["../secret.txt", "corpora/../../secret.txt", "/etc/passwd", "~/.bashrc", "..", "/"])
def test_paths_outside_are_refused(ws, path):
    with pytest.raises(WorkspaceError, match="outside the app's workspace"):
        ws.resolve(path, must_exist=False)


def test_symlinks_out_of_the_workspace_are_refused(ws, tmp_path):
    os.symlink(tmp_path / "secret.txt", ws.corpora_dir / "link.txt")
    os.symlink(tmp_path, ws.corpora_dir / "linkdir")
    for p in ["corpora/link.txt", "corpora/linkdir/secret.txt"]:
        with pytest.raises(WorkspaceError, match="outside"):
            ws.resolve(p)
    assert "corpora/link.txt" not in ws.corpus_files()
    # a symlink that stays inside is fine
    os.symlink(ws.corpora_dir / "ok.txt", ws.corpora_dir / "inner.txt")
    assert ws.resolve("corpora/inner.txt") == ws.corpora_dir / "ok.txt"


def test_bad_path_text(ws):
    for p, words in [("", "required"), ("a\x00b", "control"), ("corpora/missing.txt", "does not exist")]:
        with pytest.raises(WorkspaceError, match=words):
            ws.resolve(p)
    with pytest.raises(WorkspaceError, match="not a file"):
        ws.resolve("corpora", kind="file")


def test_names():
    assert check_name(" run-1.a_b ") == "run-1.a_b"
    for bad in ["", "..", "../x", "a/b", "-x", ".hidden", "a..b", "x" * 65, "a b"]:
        with pytest.raises(WorkspaceError):
            check_name(bad)


def test_run_names_skip_symlinked_runs(ws, tmp_path):
    (ws.runs_dir / "real").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", ws.runs_dir / "sneaky")
    assert ws.run_names() == ["real"]


# --- config files: save, load, an earlier run's settings, the time estimate (issue 17) ------------------------


def test_a_saved_config_loads_back_into_the_same_form_and_names_what_the_form_cannot_hold(tmp_path):
    from openllm.app.forms import config_fields

    cfg = parse_train_form(
        _form(lr=0.002, max_steps=77, batch_size=3, optimizer="adamw", schedule="wsd", grad_clip=0.5, warmup_steps=7)
    ).config
    cfg.save(tmp_path / "config.json")
    fields, lost = config_fields(tmp_path / "config.json")
    assert lost == []
    again = parse_train_form({**_form(), **fields}).config
    assert again.to_dict() == cfg.to_dict()
    # settings outside the form are named, with the value the form will use instead
    cfg.replace(train={"seed": 5}).save(tmp_path / "seeded.json")
    assert config_fields(tmp_path / "seeded.json")[1] == ["train.seed: 5 -> 1337"]
    # a model shape that is no preset cannot be represented: refused with the way to train it
    cfg.replace(model={"d_model": 200, "n_heads": 4, "n_kv_heads": 4}).save(tmp_path / "odd.json")
    with pytest.raises(FormError, match=r"Config file: its model \(d_model=200.*openllm train --config FILE"):
        config_fields(tmp_path / "odd.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(FormError, match="Config file: "):
        config_fields(tmp_path / "broken.json")


def test_time_estimate_comes_from_an_earlier_run_of_the_same_size_or_is_not_given(tmp_path):
    import json

    from openllm.app.estimate import estimate_time

    ws = Workspace(tmp_path / "ws")
    cfg = parse_train_form(_form(max_steps=100, batch_size=4)).config  # 4 x 1 x 256 tokens a step
    tokens = 100 * 4 * 1 * (cfg.train.seq_len or cfg.model.max_seq_len)
    est = estimate_time(ws, cfg)
    assert est.seconds is None and est.tokens == tokens and "no time estimate yet" in est.describe()
    for name, over, speeds in [
        ("other-size", {"model_size": "small"}, [10.0, 10.0]),
        ("same", {"max_steps": 50}, [999.0, 2000.0, 1000.0, 1000.0]),
    ]:
        run = ws.run_dir(name)
        run.mkdir(parents=True)
        parse_train_form(_form(batch_size=4, **over)).config.save(run / "config.json")
        with open(run / "metrics.jsonl", "w") as f:
            for i, s in enumerate(speeds, 1):
                f.write(json.dumps({"step": i, "loss": 5.0, "tokens_per_s": s}) + "\n")
    est = estimate_time(ws, cfg)
    # the median of run 'same' after its first step (2000, 1000, 1000): the other size's speed is not used
    assert est.based_on == "same" and est.tokens_per_s == 1000.0 and est.same_batch
    assert est.seconds == tokens / 1000.0
    assert "from run same's measured 1,000 tokens/s on this machine (same batch shape)" in est.describe()
