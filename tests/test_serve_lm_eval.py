"""lm-evaluation-harness's ``local-completions`` model (OpenAI completions with ``echo`` and ``logprobs``)
against ``openllm serve`` scores LAMBADA (accuracy, perplexity) and a multiple-choice task exactly as
``openllm evaluate`` does on the same items and the same model, lm-eval running offline over local task files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from openllm.evaluate import evaluate
from openllm.evaluate.harness import write_task_files
from openllm.evaluate.tasks import load_choice_jsonl, load_lambada
from openllm.serve import ServerThread, create_app

# lm-eval's Python API in a subprocess (as openllm's own harness bridge runs it): the Hugging Face libraries
# forced offline, their caches in the test's folder
_RUNNER = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
job = json.loads(sys.argv[1])
tm = TaskManager(include_path=job["include"], include_defaults=False)
res = simple_evaluate(model="local-completions", model_args=job["model_args"], tasks=job["tasks"], task_manager=tm)
with open(job["out"], "w", encoding="utf-8") as f:
    json.dump({"results": res["results"], "n-samples": res.get("n-samples", {})}, f, default=str)
"""


@pytest.mark.slow
def test_lm_eval_local_completions_against_the_server_equals_openllm_evaluate(
    evaluate_run_folder, tmp_path, shared_data
):
    pytest.importorskip("tenacity", reason="lm-eval's API models need lm-eval[api]")
    from openllm import load
    from openllm.export.hf import export_hf
    from test_evaluate_harness import _mixed_last_word_items

    loaded = load(evaluate_run_folder["run"])
    mixed = tmp_path / "mixed_lambada.jsonl"
    mixed.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in _mixed_last_word_items(loaded, evaluate_run_folder["val_docs"]))
    )
    choice = tmp_path / "choice.jsonl"
    rows = [
        {
            "context": d[:120].rsplit(" ", 1)[0],
            "choices": [d[120:160], "banana split", "LORD", "and the"],
            "label": i % 4,
        }
        for i, d in enumerate(evaluate_run_folder["val_docs"])
    ]
    choice.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # LAMBADA passages that fit the context with a token to spare: lm-eval's API models keep one position for
    # the token the server generates (max_tokens 1), so a full-context passage would be cut by one token there
    ctx = loaded.config.model.max_seq_len
    fitting = [
        line
        for line in (shared_data / "lambada_test.jsonl").read_text().splitlines()
        if len(loaded.tokenizer.encode(json.loads(line)["text"])) < ctx - 1
    ][:6]
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("\n".join(fitting) + "\n")
    tasks = [load_lambada(lambada), load_lambada(mixed, "mixed"), load_choice_jsonl(choice, "choice")]
    ours = evaluate(
        loaded, tasks=tasks, limit=6, generation=False, baselines=False, write=False, max_tokens=64, progress=False
    )["tasks"]

    names = write_task_files(tasks, tmp_path / "tasks", limit=6)
    hf = tmp_path / "hf"
    export_hf(loaded, hf)  # lm-eval tokenizes with the export's Hugging Face tokenizer
    app = create_app(loaded.model, loaded.tokenizer, model_name="under-test")
    with ServerThread(app) as server:
        out = tmp_path / "results.json"
        job = {
            "model_args": f"base_url={server.url}/v1/completions,model=under-test,tokenizer_backend=huggingface,"
            f"tokenizer={hf},max_length={ctx},num_concurrent=4,max_retries=1,"
            f"tokenized_requests=True",
            "tasks": list(names),
            "include": str(tmp_path / "tasks"),
            "out": str(out),
        }
        cache = tmp_path / "hf_cache"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_DATASETS_CACHE": str(cache / "datasets"),
            "HF_HOME": str(cache),
            "OPENAI_API_KEY": "unused",
        }
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, json.dumps(job)], capture_output=True, text=True, env=env, timeout=900
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        stats = app.state.server.engine.snapshot()
    raw = json.loads(out.read_text())["results"]
    theirs = {names[lm]: {k.split(",")[0]: v for k, v in res.items() if k.endswith(",none")} for lm, res in raw.items()}

    for name in ("lambada", "mixed"):
        assert theirs[name]["acc"] == ours[name]["acc"], name
        assert theirs[name]["perplexity"] == pytest.approx(ours[name]["ppl"], rel=1e-4), name
    assert 0 < ours["mixed"]["acc"] < 1  # the items were chosen to split
    assert theirs["choice"]["acc"] == ours["choice"]["acc"]
    assert theirs["choice"]["acc_bytes"] == ours["choice"]["acc_norm"]
    assert stats["errors"] == 0 and stats["completed"] >= 6 + 6 + 4 * 4


def test_the_documented_lm_eval_install_brings_what_the_documented_command_uses():
    """docs/serve.md's `pip install 'lm-eval[...]'` must bring transformers (its `tokenizer_backend=huggingface`
    reads our export) and the API client's packages: `lm-eval[api]` alone lacked transformers, so the documented
    command failed in the venv the docs made."""
    import re
    from importlib.metadata import requires
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "serve.md").read_text(encoding="utf-8")
    extras = set(re.search(r"pip install 'lm-eval\[([a-z,]+)\]'", doc).group(1).split(","))
    assert "tokenizer_backend=huggingface" in doc
    brought = set()
    for req in requires("lm_eval") or []:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        marker = re.search(r'extra == "([a-z]+)"', req)
        if marker is None or marker.group(1) in extras:
            brought.add(name)
    assert {"transformers", "requests", "aiohttp", "tenacity"} <= brought, sorted(brought)
