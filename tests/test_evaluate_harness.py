"""lm-evaluation-harness parity: our LAMBADA accuracy and perplexity, and our multiple-choice acc/acc_norm,
equal lm-eval's on the same tiny model (its Hugging Face export) and the same items, lm-eval running offline
over local task files."""

from __future__ import annotations

import json

import pytest

from openllm.evaluate import evaluate, markdown
from openllm.evaluate.harness import write_task_files
from openllm.evaluate.tasks import Item, Task, encode_pair, load_choice_jsonl, load_lambada, loglikelihoods

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixed_last_word_items(loaded, docs, want: int = 4) -> list[str]:
    """LAMBADA-format lines cut from the val documents so that the model greedily gets ``want`` of them
    right and ``want`` wrong (a parity test on an all-zero accuracy would prove little)."""
    tok, model = loaded.tokenizer, loaded.model
    hits, misses = [], []
    for doc in docs:
        words = doc.replace("\n", " ").split(" ")
        for k in range(8, len(words), 3):
            if not words[k].isalpha():
                continue
            ctx, target = " ".join(words[max(0, k - 30) : k]), " " + words[k]
            ((_, greedy),) = loglikelihoods(model, [encode_pair(tok, ctx, target)], max_len=128)
            bucket = hits if greedy else misses
            if len(bucket) < want:
                bucket.append(ctx + target)
            if len(hits) >= want and len(misses) >= want:
                return [x for pair in zip(hits, misses) for x in pair]
    pytest.skip("the tiny model predicts no word greedily")


@pytest.mark.slow
def test_our_task_numbers_equal_lm_eval_on_the_hf_export(evaluate_run_folder, tmp_path, shared_data):
    from openllm import load

    built_run = evaluate_run_folder
    loaded = load(built_run["run"])
    mixed = tmp_path / "mixed_lambada.jsonl"
    mixed.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in _mixed_last_word_items(loaded, built_run["val_docs"]))
    )
    choice = tmp_path / "choice.jsonl"
    rows = [
        {
            "context": d[:120].rsplit(" ", 1)[0],
            "choices": [d[120:160], "banana split", "LORD", "and the"],
            "label": i % 4,
        }
        for i, d in enumerate(built_run["val_docs"])
    ]
    choice.write_text("".join(json.dumps(r) + "\n" for r in rows))

    tasks = [
        load_lambada(shared_data / "lambada_test.jsonl"),
        load_lambada(mixed, "mixed"),
        load_choice_jsonl(choice, "choice"),
    ]
    res = evaluate(
        loaded,
        tasks=tasks,
        limit=6,
        harness=True,
        generation=False,
        baselines=False,
        write=False,
        max_tokens=64,
        progress=False,
    )
    ours, theirs = res["tasks"], res["harness"]["tasks"]

    for name in ("lambada", "mixed"):
        assert theirs[name]["n"] == ours[name]["n"] == 6
        assert theirs[name]["acc"] == ours[name]["acc"], name
        assert theirs[name]["ppl"] == pytest.approx(ours[name]["ppl"], rel=1e-4), name
    assert 0 < ours["mixed"]["acc"] < 1  # the items were chosen to split
    assert theirs["choice"]["n"] == ours["choice"]["n"] == 4
    assert theirs["choice"]["acc"] == ours["choice"]["acc"]
    assert theirs["choice"]["acc_norm"] == ours["choice"]["acc_norm"]  # bytes (lm-eval's acc_bytes)
    assert theirs["choice"]["acc_norm_chars"] == ours["choice"]["acc_norm"]  # ASCII: chars == bytes
    table = markdown(res)
    assert "lm-evaluation-harness" in table and "| mixed | acc |" in table


def test_task_files_for_lm_eval_round_trip_the_items(tmp_path):
    """What lm-eval reads: LAMBADA lines rebuilt exactly (context + " " + word), choices without the
    delimiter, the delimiter in the YAML."""
    src = tmp_path / "l.jsonl"
    texts = ['He said "hello there\n\nfriend"', "one two  three"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    lam = load_lambada(src)
    ch = Task("my task", "choice", [Item("ctx", ["a", "b c"], 1)])
    names = write_task_files([lam, ch], tmp_path / "tasks", limit=None)
    assert names == {"openllm_lambada": "lambada", "openllm_my_task": "my task"}
    rebuilt = [json.loads(x)["text"] for x in (tmp_path / "tasks" / "openllm_lambada.jsonl").read_text().splitlines()]
    assert rebuilt == texts
    row = json.loads((tmp_path / "tasks" / "openllm_my_task.jsonl").read_text())
    assert row == {"context": "ctx", "choices": ["a", "b c"], "label": 1}
    yaml = (tmp_path / "tasks" / "openllm_my_task.yaml").read_text()
    assert "dataset_path: json" in yaml and 'target_delimiter: " "' in yaml and "output_type: multiple_choice" in yaml


def test_harness_mismatches_name_the_task_and_both_figures():
    from openllm.evaluate.harness import harness_mismatches

    ours = {"lambada": {"acc": 0.25, "ppl": 148.07, "n": 40}, "choice": {"acc": 0.5, "acc_norm": 0.5, "n": 4}}
    same = {"lambada": {"acc": 0.25, "ppl": 148.0701, "n": 40}, "choice": {"acc": 0.5, "acc_norm": 0.5, "n": 4}}
    assert harness_mismatches(ours, same) == []
    off = {"lambada": {"acc": 0.25, "ppl": 265.8, "n": 40}, "choice": {"acc": 0.75, "acc_norm": 0.5, "n": 4}}
    assert harness_mismatches(ours, off) == [
        "choice acc: lm-eval gives 0.75, openllm 0.5 on the same 4 items",
        "lambada ppl: lm-eval gives 265.8, openllm 148.07 on the same 40 items",
    ]


@pytest.mark.slow
def test_harness_numbers_do_not_depend_on_which_tasks_share_a_call(evaluate_run_folder, shared_data):
    """40 LAMBADA items scored alone and beside a choice task give the same numbers (lm-eval's logits cache
    and cross-task batching used to change 4 of them)."""
    from openllm import load
    from openllm.evaluate.harness import run_harness

    loaded = load(evaluate_run_folder["run"])
    lam = load_lambada(shared_data / "lambada_test.jsonl")
    # choices that share LAMBADA's contexts: lm-eval's logits cache groups requests by context
    items = lam.head(40).items
    choice = Task("choice", "choice", [Item(it.context, [it.choices[0], " and", " the"], 0) for it in items[:20]])
    alone = run_harness(loaded, tasks=[lam], limit=40)["tasks"]["lambada"]
    mixed = run_harness(loaded, tasks=[choice, lam], limit=40)["tasks"]["lambada"]
    assert alone == mixed and alone["n"] == 40
