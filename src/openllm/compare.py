"""``openllm compare A B ...``: runs or models side by side (parameters, tokens seen, losses, the numbers in
their ``evaluation.json``) and their loss curves (from ``RUN/metrics.jsonl``) in one PNG.

Nothing is recomputed unless asked (``evaluate_missing``): the table shows what each run measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import rundir
from .errors import OpenLLMError
from .metrics import finite_number

__all__ = ["describe", "compare", "plot_loss_curves", "markdown_table"]


def describe(source: str | Path, *, evaluate_missing: bool = False, hub: Any = None, **eval_kwargs) -> dict:
    """One column of the comparison: what the source is, its size, its training and its evaluation."""
    path = Path(str(source)).expanduser()
    out: dict[str, Any] = {"source": str(source), "name": path.name if path.exists() else str(source)}
    run_dir = path if path.is_dir() and (path / rundir.CHECKPOINTS).is_dir() else None
    evaluation = None
    if run_dir is not None:
        # a run: the summary the model card shows, read from its files; no need to load the weights
        from .publish.facts import collect_facts

        facts = collect_facts(run_dir)
        out["kind"] = "run"
        out["step"], out["tokens_seen"] = facts.step, facts.tokens_seen
        out["train_loss"], out["best_val_loss"] = facts.final_loss, facts.best_val_loss
        if facts.config:
            out["config"] = facts.config.get("name")
        if facts.params is not None:
            out["params"], out["params_non_embedding"] = facts.params, facts.params_non_embedding
        evaluation = facts.evaluation or None
        if evaluation is None and evaluate_missing and facts.kind == "run":
            from .evaluate import evaluate

            evaluation = evaluate(run_dir, hub=hub, progress=False, **eval_kwargs)
    else:
        from .loading import load

        loaded = load(source, device="cpu", hub=hub)  # read for its counts only
        out["kind"] = loaded.kind
        out["step"] = loaded.step
        out["params"] = loaded.model.num_params()
        out["params_non_embedding"] = loaded.model.num_params(non_embedding=True)
        out["config"] = loaded.config.name
        out["tokens_seen"] = (loaded.info or {}).get("tokens_seen")
        evaluation = rundir.read_evaluation(loaded.path) or None
        if evaluation is None and evaluate_missing:
            from .evaluate import evaluate

            evaluation = evaluate(loaded, write=False, progress=False, **eval_kwargs)
    if evaluation:
        for key in ("val_loss", "perplexity", "bits_per_byte"):
            out[key] = finite_number(evaluation.get(key))
        ds = evaluation.get("dataset") or {}
        out["eval_dataset"] = ds.get("name") if isinstance(ds, dict) else None
        out["tasks"] = {
            name: {k: v for k, v in m.items() if k in ("acc", "acc_norm", "ppl", "n")}
            for name, m in (evaluation.get("tasks") or {}).items()
            if isinstance(m, dict)
        }
    return out


PLOT_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg", "webp")


def plot_path(path: str | Path) -> Path:
    """Where ``--plot PATH`` writes: a folder gets ``loss_curves.png`` inside it; a file must have an image
    extension matplotlib writes."""
    path = Path(path)
    if path.is_dir():
        return path / "loss_curves.png"
    ext = path.suffix.lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise OpenLLMError(
            f"--plot {path}: unknown image type {path.suffix or '(no extension)'!r}; use one of "
            + ", ".join(f".{e}" for e in PLOT_FORMATS)
        )
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise OpenLLMError(f"--plot {path}: {parent} is a file, not a folder")
    return path


def plot_loss_curves(runs: Sequence[tuple[str, list[dict]]], path: str | Path) -> Path:
    """Train loss (lines) and val loss (dots joined by dashes) of each run on one chart; the x axis is tokens
    seen when every run logs them, else steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(name, rows) for name, rows in runs if rows]
    if not runs:
        raise OpenLLMError("none of the sources has a metrics.jsonl to plot: --plot needs run folders")
    by_tokens = all(all(finite_number(r.get("tokens")) is not None for r in rows if "loss" in r) for _, rows in runs)
    xkey = "tokens" if by_tokens else "step"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for i, (name, rows) in enumerate(runs):
        color = f"C{i % 10}"
        tr = [
            (r[xkey], r["loss"])
            for r in rows
            if finite_number(r.get("loss")) is not None and finite_number(r.get(xkey)) is not None
        ]
        va = [
            (r[xkey], r["val_loss"])
            for r in rows
            if finite_number(r.get("val_loss")) is not None and finite_number(r.get(xkey)) is not None
        ]
        if tr:
            ax.plot(*zip(*tr), color=color, lw=1.2, alpha=0.8, label=f"{name} train")
        if va:
            ax.plot(*zip(*va), color=color, lw=1.2, ls="--", marker="o", ms=3, label=f"{name} val")
    ax.set_xlabel("tokens seen" if by_tokens else "step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("loss curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = plot_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(x: Any) -> str:
    from .evaluate.report import fmt

    return fmt(x)


def markdown_table(models: Sequence[dict]) -> str:
    """One column per model, one row per number."""
    rows: list[tuple[str, list[Any]]] = [
        ("kind", [m.get("kind") for m in models]),
        ("config", [m.get("config") for m in models]),
        ("parameters", [m.get("params") for m in models]),
        ("non-embedding parameters", [m.get("params_non_embedding") for m in models]),
        ("step", [m.get("step") for m in models]),
        ("tokens seen", [m.get("tokens_seen") for m in models]),
        ("last train loss", [m.get("train_loss") for m in models]),
        ("best val loss (training)", [m.get("best_val_loss") for m in models]),
        ("eval data", [m.get("eval_dataset") for m in models]),
        ("val loss", [m.get("val_loss") for m in models]),
        ("perplexity", [m.get("perplexity") for m in models]),
        ("bits per byte", [m.get("bits_per_byte") for m in models]),
    ]
    task_names = sorted({t for m in models for t in (m.get("tasks") or {})})
    for t in task_names:
        for key in ("acc", "acc_norm", "ppl"):
            vals = [((m.get("tasks") or {}).get(t) or {}).get(key) for m in models]
            if any(v is not None for v in vals):
                rows.append((f"{t} {key}", vals))
    rows = [(label, vals) for label, vals in rows if any(v is not None for v in vals)]
    head = "| | " + " | ".join(m["name"] for m in models) + " |"
    sep = "|---|" + "---:|" * len(models)
    return "\n".join([head, sep] + [f"| {label} | " + " | ".join(_fmt(v) for v in vals) + " |" for label, vals in rows])


def compare(
    sources: Sequence[str | Path],
    *,
    plot: str | Path | None = None,
    evaluate_missing: bool = False,
    hub: Any = None,
    **eval_kwargs,
) -> dict:
    """Describe every source; with ``plot``, draw their loss curves there. Returns
    ``{"models": [...], "table": markdown, "plot": path or None}``."""
    if not sources:
        raise OpenLLMError("compare needs at least one run or model")
    if plot is not None:
        plot = plot_path(plot)  # a bad --plot fails before anything is loaded
    models = [describe(s, evaluate_missing=evaluate_missing, hub=hub, **eval_kwargs) for s in sources]
    # two sources with one folder name (run1/final, run2/final) get their parent's name too
    names = [m["name"] for m in models]
    for m in models:
        if names.count(m["name"]) > 1 and Path(m["source"]).exists():
            m["name"] = f"{Path(m['source']).resolve().parent.name}/{m['name']}"
    out: dict[str, Any] = {"models": models, "table": markdown_table(models), "plot": None}
    if plot is not None:
        curves = [(m["name"], rundir.read_metrics(m["source"])) for m in models if m.get("kind") == "run"]
        out["plot"] = str(plot_loss_curves(curves, plot))
    return out
