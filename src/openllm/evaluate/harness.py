"""lm-evaluation-harness on our Hugging Face export, offline, with tasks defined over local files.

Each task (LAMBADA-format, HellaSwag, generic jsonl) is written as the items we score ourselves (after
``--limit``) into a jsonl file, plus a task YAML that loads it through ``dataset_path: json`` and
``dataset_kwargs.data_files`` (no download). LAMBADA-format tasks use lm-eval's own ``lambada_openai``
templates over ``{"text": ...}`` lines; choice tasks are ``multiple_choice`` over ``{"context", "choices",
"label"}`` lines. lm-eval runs in a subprocess (its Python API, ``simple_evaluate``) with the Hugging Face libraries
forced offline and their caches inside a temporary folder, so nothing is fetched and nothing shared is
written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..device import AUTO, resolve_device
from ..errors import OpenLLMError
from .tasks import Task, resolve_tasks

__all__ = ["run_harness", "write_task_files", "lm_eval_version", "harness_mismatches"]

_LAST_WORD_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_CHOICE_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: {delimiter}
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_bytes
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

# lm-eval's metric names -> ours (our acc_norm divides by UTF-8 bytes: lm-eval's acc_bytes)
# runs in the subprocess: lm-eval's Python API with only our task folder indexed (indexing its thousands of
# built-in task files would take longer than scoring a few items)
# Each task is its own simple_evaluate call on one loaded model, with lm-eval's logits cache off: its numbers
# must not depend on which tasks share a call (batched together, cached continuations changed LAMBADA
# log-likelihoods when tasks were mixed).
_RUNNER = """
import json, sys
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
job = json.loads(sys.argv[1])
tm = TaskManager(include_path=job["include"], include_defaults=False)
lm = HFLM(**job["model_args"], device=job["device"], batch_size=job["batch_size"])
out = {"results": {}, "n-samples": {}, "samples": {}}
for task in job["tasks"]:
    res = simple_evaluate(model=lm, tasks=[task], task_manager=tm, log_samples=job["log_samples"])
    out["results"].update(res["results"])
    out["n-samples"].update(res.get("n-samples", {}))
    if job["log_samples"]:
        out["samples"].update({t: [{k: v for k, v in r.items() if k not in ("resps", "filtered_resps", "arguments")}
                                   for r in rows] for t, rows in res.get("samples", {}).items()})
with open(job["out"], "w", encoding="utf-8") as f:
    json.dump(out, f, default=str)
"""

_METRICS = {"acc": "acc", "perplexity": "ppl", "acc_norm": "acc_norm_chars", "acc_bytes": "acc_norm"}


def lm_eval_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:
        return None


def _lm_name(task: Task) -> str:
    safe = "".join(ch if ch.isalnum() else "_" for ch in task.name)
    return f"openllm_{safe}"


def write_task_files(tasks: Sequence[Task], folder: Path, *, limit: int | None = None) -> dict[str, str]:
    """Data + YAML for each task in ``folder``; returns {lm-eval task name: our task name}."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for task in tasks:
        t = task.head(limit)
        lm = _lm_name(t)
        data = folder / f"{lm}.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for item in t.items:
                if t.kind == "last_word":
                    # context + " " + last word: the original LAMBADA line, which the YAML splits again
                    row: dict[str, Any] = {"text": item.context + t.delimiter + item.choices[0]}
                else:
                    row = {"context": item.context, "choices": item.choices, "label": item.label}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        template = _LAST_WORD_YAML if t.kind == "last_word" else _CHOICE_YAML
        (folder / f"{lm}.yaml").write_text(
            template.format(task=lm, path=json.dumps(str(data)), delimiter=json.dumps(t.delimiter)), encoding="utf-8"
        )
        names[lm] = t.name
    return names


def harness_mismatches(ours: dict[str, dict], theirs: dict[str, dict], *, rel: float = 1e-3) -> list[str]:
    """Where lm-eval's figure for a task differs from ours beyond tolerance (accuracies by more than half an
    item, perplexities by more than ``rel``), one sentence each."""
    out = []
    for task, mine in sorted(ours.items()):
        other = theirs.get(task) or {}
        n = mine.get("n") or other.get("n") or 1
        for key in ("acc", "acc_norm", "ppl"):
            a, b = mine.get(key), other.get(key)
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                continue
            bad = abs(a - b) > 0.5 / n if key != "ppl" else abs(a - b) > rel * max(abs(a), abs(b), 1e-12)
            if bad:
                out.append(f"{task} {key}: lm-eval gives {b:.6g}, openllm {a:.6g} on the same {n} items")
    return out


def _hf_folder(loaded, workdir: Path) -> Path:
    """The Hugging Face export of ``loaded`` (the folder itself when it already is one)."""
    if loaded.kind == "hf" and (Path(loaded.path) / "config.json").is_file():
        return Path(loaded.path)
    from ..export.hf import export_hf

    out = workdir / "hf"
    export_hf(loaded, out)
    return out


def run_harness(
    loaded,
    *,
    tasks: Sequence[str] | str | Sequence[Task] = (),
    limit: int | None = None,
    batch_size: int = 8,
    device: str = AUTO,
    workdir: str | Path | None = None,
    keep_samples: bool = False,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run lm-eval on ``loaded``'s Hugging Face export over ``tasks``; returns
    ``{"lm_eval_version", "tasks": {name: {acc, ppl | acc_norm, n}}}`` (+ ``samples`` with keep_samples:
    per task, lm-eval's per-item metrics in item order)."""
    if lm_eval_version() is None:
        raise OpenLLMError("lm-evaluation-harness is not installed: pip install 'lm-eval>=0.4'")
    task_objs = resolve_tasks(tasks)
    if not task_objs:
        raise OpenLLMError("--harness needs --tasks (e.g. --tasks lambada --limit 100)")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="openllm-lmeval-")
        workdir = tmp.name
    work = Path(workdir)
    try:
        names = write_task_files(task_objs, work / "tasks", limit=limit)
        hf = _hf_folder(loaded, work)
        max_len = loaded.config.model.max_seq_len
        out_file = work / "lm_eval_results.json"
        job = {
            "model_args": {
                "pretrained": str(hf),
                "tokenizer": str(hf),
                "dtype": "float32",
                "add_bos_token": False,
                "max_length": max_len,
                "trust_remote_code": False,
                "logits_cache": False,
            },
            "tasks": list(names),
            "include": str(work / "tasks"),
            "device": resolve_device(device),
            "batch_size": batch_size,
            "log_samples": keep_samples,
            "out": str(out_file),
        }
        cache = work / "hf_cache"
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
            "HF_EVALUATE_OFFLINE": "1",
        }
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, json.dumps(job)], capture_output=True, text=True, env=env, timeout=timeout
        )
        if proc.returncode != 0 or not out_file.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            raise OpenLLMError("lm-eval failed: " + " | ".join(tail))
        raw = json.loads(out_file.read_text(encoding="utf-8"))
        results: dict[str, Any] = {"lm_eval_version": lm_eval_version(), "tasks": {}}
        n_samples = raw.get("n-samples", {})
        for lm, ours in names.items():
            res = raw.get("results", {}).get(lm, {})
            entry: dict[str, Any] = {}
            for key, value in res.items():
                metric, _, filt = key.partition(",")
                if metric in _METRICS and filt == "none" and isinstance(value, (int, float)):
                    entry[_METRICS[metric]] = float(value)
            entry["n"] = int((n_samples.get(lm) or {}).get("effective", 0)) or None
            results["tasks"][ours] = entry
        if keep_samples:
            results["samples"] = {
                ours: sorted(raw.get("samples", {}).get(lm, []), key=lambda r: r.get("doc_id", 0))
                for lm, ours in names.items()
            }
        return results
    finally:
        if tmp is not None:
            tmp.cleanup()
