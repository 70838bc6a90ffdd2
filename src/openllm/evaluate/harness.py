"""lm-evaluation-harness on our Hugging Face export, offline, with tasks defined over local files.

Each task (LAMBADA-format, HellaSwag, generic jsonl) is written as the items we score ourselves (after
``--limit``) into a jsonl file, plus a task YAML that loads it through ``dataset_path: json`` and
``dataset_kwargs.data_files`` (no download). LAMBADA-format tasks use lm-eval's own ``lambada_openai``
templates over ``{"text": ...}`` lines; choice tasks are ``multiple_choice`` over ``{"context", "choices",
"label"}`` lines. lm-eval runs in a subprocess (``python -m lm_eval run``) with the Hugging Face libraries
forced offline and their caches inside a temporary folder, so nothing is fetched and nothing shared is
written.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from ..errors import OpenLLMError
from .tasks import Task, load_task, parse_task_list

__all__ = ["run_harness", "write_task_files", "lm_eval_version"]

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
                    row = {"text": item.context + t.delimiter + item.choices[0]}
                else:
                    row = {"context": item.context, "choices": item.choices, "label": item.label}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        template = _LAST_WORD_YAML if t.kind == "last_word" else _CHOICE_YAML
        (folder / f"{lm}.yaml").write_text(
            template.format(task=lm, path=json.dumps(str(data)), delimiter=json.dumps(t.delimiter)),
            encoding="utf-8")
        names[lm] = t.name
    return names


def _hf_folder(loaded, workdir: Path) -> Path:
    """The Hugging Face export of ``loaded`` (the folder itself when it already is one)."""
    if loaded.kind == "hf" and (Path(loaded.path) / "config.json").is_file():
        return Path(loaded.path)
    from ..export.hf import export_hf

    out = workdir / "hf"
    export_hf(loaded, out)
    return out


def run_harness(loaded, *, tasks: Sequence[str] | str | Sequence[Task] = (), limit: int | None = None,
                batch_size: int = 8, device: str = "cpu", workdir: str | Path | None = None,
                keep_samples: bool = False, timeout: float | None = None) -> dict[str, Any]:
    """Run lm-eval on ``loaded``'s Hugging Face export over ``tasks``; returns
    ``{"lm_eval_version", "tasks": {name: {acc, ppl | acc_norm, n}}}`` (+ ``samples`` with keep_samples:
    per task, lm-eval's per-item metrics in item order)."""
    if lm_eval_version() is None:
        raise OpenLLMError("lm-evaluation-harness is not installed: pip install 'lm-eval>=0.4'")
    task_objs: list[Task] = []
    for t in ([tasks] if isinstance(tasks, str) else list(tasks)):
        task_objs += [t] if isinstance(t, Task) else [load_task(s) for s in parse_task_list(t)]
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
        out_dir = work / "out"
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={hf},tokenizer={hf},dtype=float32,add_bos_token=False,"
                               f"max_length={max_len},trust_remote_code=False",
               "--tasks", ",".join(names), "--include_path", str(work / "tasks"), "--device", device,
               "--batch_size", str(batch_size), "--output_path", str(out_dir), "--log_samples",
               "--verbosity", "WARNING"]
        cache = work / "hf_cache"
        env = {**os.environ,
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_DATASETS_CACHE": str(cache / "datasets"), "HF_HOME": str(cache),
               "HF_EVALUATE_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
            raise OpenLLMError("lm-eval failed: " + " | ".join(tail))
        found = sorted(glob.glob(str(out_dir / "**" / "results_*.json"), recursive=True))
        if not found:
            raise OpenLLMError(f"lm-eval wrote no results under {out_dir}")
        raw = json.loads(Path(found[-1]).read_text(encoding="utf-8"))
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
            results["samples"] = {}
            for lm, ours in names.items():
                files = sorted(glob.glob(str(out_dir / "**" / f"samples_{lm}_*.jsonl"), recursive=True))
                rows = []
                if files:
                    with open(files[-1], encoding="utf-8") as f:
                        rows = [json.loads(line) for line in f if line.strip()]
                rows.sort(key=lambda r: r.get("doc_id", 0))
                results["samples"][ours] = rows
        return results
    finally:
        if tmp is not None:
            tmp.cleanup()
