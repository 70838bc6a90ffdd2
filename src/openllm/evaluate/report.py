"""Evaluation results as files and tables: ``evaluation.json`` (read by the model card; see
docs/evaluation.md for its keys) and a markdown table with the baselines beside the model's numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..fsio import write_json_atomic

__all__ = ["write_json", "markdown", "fmt"]


def _clean(x: Any) -> Any:
    """JSON has no inf/nan: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(results: dict, path: str | Path) -> Path:
    """Write results as JSON (inf/nan as null) atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, _clean(results))
    return path


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "inf"
        if abs(x) >= 1e5:
            return f"{x:.3g}"
        return f"{x:.{digits}f}"
    return str(x)


def _rows(results: dict) -> list[tuple[str, Any, Any, Any, Any]]:
    """(metric, model, random-init, unigram, uniform/chance)."""
    b = results.get("baselines") or {}
    ri, un, ch = b.get("random_init") or {}, b.get("unigram") or {}, b.get("chance") or {}
    rows = []
    if results.get("val_loss") is not None:
        for key, label in (
            ("val_loss", "loss (nats/token)"),
            ("perplexity", "perplexity"),
            ("bits_per_byte", "bits per byte"),
        ):
            rows.append((label, results.get(key), ri.get(key), un.get(key), ch.get(key)))
    for name, m in (results.get("tasks") or {}).items():
        rtask = (ri.get("tasks") or {}).get(name, {})
        utask = (un.get("tasks") or {}).get(name, {})
        ctask = (ch.get("tasks") or {}).get(name, {})
        for key in ("acc", "acc_norm", "ppl"):
            if key in m:
                rows.append((f"{name} {key} (n={m.get('n')})", m[key], rtask.get(key), utask.get(key), ctask.get(key)))
    return rows


def markdown(results: dict) -> str:
    """The results as markdown: metrics with baselines, generation quality, lm-eval parity, samples."""
    ds = results.get("dataset") or {}
    lines = [f"## Evaluation of {results.get('source', '?')}", ""]
    meta = []
    if ds:
        meta.append(
            f"data: {ds.get('name', '?')} ({fmt(results.get('tokens'))} tokens, "
            f"{fmt(results.get('bytes'))} bytes; window {results.get('window')}, stride {results.get('stride')})"
        )
    if results.get("params") is not None:
        meta.append(f"parameters: {fmt(results['params'])}")
    if results.get("step") is not None:
        meta.append(f"step: {fmt(results['step'])}")
    if results.get("tokens_seen") is not None:
        meta.append(f"tokens seen: {fmt(results['tokens_seen'])}")
    if not ds:
        meta.append("no val loss: this model records no tokenized data folder; pass --text FILE or --data DIR")
    lines += [f"- {m}" for m in meta] + [""]
    rows = _rows(results)
    if rows:
        lines += ["| metric | model | random-init | unigram | uniform / chance |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r[0]} | {fmt(r[1])} | {fmt(r[2])} | {fmt(r[3])} | {fmt(r[4])} |" for r in rows]
        lines.append("")
    gen = results.get("generation")
    if gen:
        s = gen.get("settings", {})
        lines += [
            f"### Generation ({len(gen.get('samples', []))} samples: temperature {s.get('temperature')}, "
            f"top-k {s.get('top_k')}, up to {s.get('max_new_tokens')} tokens, seeds {s.get('seeds')})",
            "",
            "| distinct-1 | distinct-2 | repetition rate (seq-rep-4) | mean length (tokens) |",
            "|---:|---:|---:|---:|",
            f"| {fmt(gen.get('distinct_1'))} | {fmt(gen.get('distinct_2'))} | {fmt(gen.get('repetition_rate'))} "
            f"| {fmt(gen.get('mean_length'), 1)} |",
            "",
        ]
        first_seed = (s.get("seeds") or [None])[0]
        for smp in (x for x in gen.get("samples", []) if x.get("seed") == first_seed):
            text = (smp["prompt"] + smp["text"]).replace("\n", " ").replace("|", "\\|")
            lines.append(f"- seed {smp['seed']}: `{text[:200]}`")
        lines.append("")
    h = results.get("harness")
    if h:
        lines += [
            f"### lm-evaluation-harness {h.get('lm_eval_version', '')} (on the Hugging Face export)",
            "",
            "| task | metric | lm-eval | ours |",
            "|---|---|---:|---:|",
        ]
        for task, m in (h.get("tasks") or {}).items():
            ours = (results.get("tasks") or {}).get(task, {})
            for key, v in m.items():
                if key != "n":
                    lines.append(f"| {task} | {key} | {fmt(v)} | {fmt(ours.get(key))} |")
        lines.append("")
    return "\n".join(lines)
