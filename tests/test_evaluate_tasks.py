"""Task files: LAMBADA, HellaSwag (6 lines per item, lm-eval's cleaning), the generic jsonl format, task specs
and their errors."""

from __future__ import annotations

import json

import pytest

from openllm.errors import OpenLLMError
from openllm.evaluate.tasks import (
    lambada_split,
    load_choice_jsonl,
    load_hellaswag,
    load_lambada,
    load_task,
    resolve_tasks,
)


def test_lambada_split_matches_lm_eval_templates():
    assert lambada_split("he said hello") == ("he said", " hello")
    assert lambada_split("a\n\nb c") == ("a\n\nb", " c")  # only spaces split, as text.split(' ')


def test_hellaswag_format_and_cleaning(tmp_path):
    p = tmp_path / "hs.txt"
    p.write_text(
        "Roof: A man [header] is on a roof. he\n3\nis a.\nis [step] b.\nis c [title] d.\nstarts e.\n"
        "Cooking: She cooks.\n0\nw\nx\ny\nz\n"
    )
    t = load_hellaswag(p)
    assert t.kind == "choice" and len(t.items) == 2 and t.delimiter == " "
    a = t.items[0]
    assert a.context == "Roof: A man is on a roof. he" and a.label == 3
    assert a.choices == ["is a.", "is b.", "is c. d.", "starts e."]
    assert a.lengths == [5, 5, 8, 9]
    bad = tmp_path / "bad.txt"
    bad.write_text("ctx\n7\na\nb\nc\nd\n")
    with pytest.raises(OpenLLMError, match="label must be 0-3"):
        load_hellaswag(bad)
    short = tmp_path / "short.txt"
    short.write_text("ctx\n1\na\nb\n")
    with pytest.raises(OpenLLMError, match="multiple of 6"):
        load_hellaswag(short)


def test_hellaswag_real_file_head(shared_data):
    t = load_hellaswag(shared_data / "hellaswag_val_full.txt")
    assert len(t.items) == 10042
    first = t.items[0]
    assert first.context == "Roof shingle removal: A man is sitting on a roof. he" and first.label == 3
    assert first.choices[3] == "starts pulling up roofing on a roof."


def test_generic_jsonl_and_its_errors(tmp_path):
    p = tmp_path / "mine.jsonl"
    p.write_text(json.dumps({"context": "c", "choices": ["x", "\u00e9t\u00e9"], "label": 1}) + "\n\n")
    t = load_choice_jsonl(p)
    assert t.name == "mine" and t.items[0].lengths == [1, 5]  # UTF-8 bytes: é is two
    for row, msg in (
        ({"context": "c", "choices": ["x"], "label": 0}, "choices"),
        ({"context": "c", "choices": ["x", "y"], "label": 2}, "label"),
        ({"context": "c", "choices": ["x", "y"], "label": True}, "label"),
        ({"choices": ["x", "y"], "label": 0}, "context"),
    ):
        p.write_text(json.dumps(row) + "\n")
        with pytest.raises(OpenLLMError, match=msg):
            load_choice_jsonl(p)
    p.write_text("{not json\n")
    with pytest.raises(OpenLLMError, match="not valid JSON"):
        load_choice_jsonl(p)


def test_task_specs(tmp_path, monkeypatch):
    lam = tmp_path / "lambada_test.jsonl"
    lam.write_text(json.dumps({"text": "one two three"}) + "\n")
    monkeypatch.setenv("OPENLLM_EVAL_DATA", str(tmp_path))
    t = load_task("lambada")
    assert t.path == str(lam) and t.kind == "last_word" and t.items[0].choices == [" three"]
    gen = tmp_path / "g.jsonl"
    gen.write_text(json.dumps({"context": "c", "choices": ["x", "y"], "label": 0}) + "\n")
    names = [x.name for x in resolve_tasks(f"lambada, {gen}, other={gen}, lambada={lam}")]
    assert names == ["lambada", "g", "other", "lambada"]
    with pytest.raises(OpenLLMError, match="unknown task"):
        load_task("nosuch")
    with pytest.raises(OpenLLMError, match="does not exist"):
        load_task(f"x={tmp_path / 'missing.jsonl'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("OPENLLM_EVAL_DATA", str(empty))
    import openllm.evaluate.tasks as T

    monkeypatch.setattr(T, "_SHARED", None)
    with pytest.raises(OpenLLMError, match="OPENLLM_EVAL_DATA"):
        load_task("hellaswag")
    one_word = tmp_path / "one.jsonl"
    one_word.write_text(json.dumps({"text": "single"}) + "\n")
    with pytest.raises(OpenLLMError, match="two words"):
        load_lambada(one_word)
