"""What the Evaluate, Export and Compare tabs do: evaluate a run with the library's evaluator (results saved
with the run), export it into the workspace and as a zip, and draw several runs' curves on one plot.
No Gradio here."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import OpenLLMError
from ..metrics import finite_number
from ..rundir import latest_checkpoint, read_evaluation, read_metrics
from .forms import FormError
from .models import workspace_run
from .workspace import Workspace, WorkspaceError

__all__ = ["EXPORT_CHOICES", "evaluate_run", "evaluation_markdown", "export_run", "compare_figure", "curves_figure"]

# what the Export tab offers -> (export format, gguf type)
EXPORT_CHOICES = {
    "Hugging Face (safetensors)": ("hf", None),
    "ONNX": ("onnx", None),
    "GGUF f16": ("gguf", "f16"),
    "GGUF q8_0": ("gguf", "q8_0"),
    "native (safetensors)": ("native", None),
}


def _run_dir(ws: Workspace, run: str | None) -> Path:
    name, run_dir = workspace_run(ws, run)
    if latest_checkpoint(run_dir) is None:
        raise FormError("Run", f"{name!r} has no checkpoint yet")
    return run_dir


def evaluate_run(
    ws: Workspace, run: str, *, limit: int | None = None, task_file: str | None = None, tasks: list[str] | None = None
) -> dict[str, Any]:
    """Evaluate the run's latest checkpoint on its val split (loss, perplexity, bits per byte, with the
    baselines) plus ``tasks`` (names such as lambada) and an uploaded task file; the results are saved as
    ``RUN/evaluation.json`` (what the model card reports)."""
    from ..evaluate import evaluate_run as _evaluate

    run_dir = _run_dir(ws, run)
    if limit is not None and limit < 1:
        raise FormError("Limit", f"must be at least 1, got {limit}")
    names = list(tasks or [])
    if task_file:
        if not Path(task_file).is_file():
            raise FormError("Task file", "the uploaded file is gone; upload it again")
        names.append(str(task_file))
    return _evaluate(run_dir, tasks=names, limit=limit, generation=False)


def evaluation_markdown(ws: Workspace, run: str | None) -> str:
    """The run's saved evaluation as markdown, or a line saying there is none."""
    from ..evaluate import markdown

    if not run:
        return ""
    try:
        results = read_evaluation(ws.run_dir(run))
    except WorkspaceError:
        return ""
    return markdown(results) if results else f"Run {run} has not been evaluated yet."


def export_run(ws: Workspace, run: str, choice: str) -> tuple[Path, Path]:
    """Export the run's latest checkpoint as ``choice`` (a key of EXPORT_CHOICES) into
    ``WORKSPACE/exports/RUN-FORMAT/`` and zip it into ``downloads/``; returns (folder, zip)."""
    from ..export import export

    run_dir = _run_dir(ws, run)
    if choice not in EXPORT_CHOICES:
        raise FormError("Format", f"choose one of {', '.join(EXPORT_CHOICES)}")
    fmt, gguf_type = EXPORT_CHOICES[choice]
    tag = fmt + (f"-{gguf_type}" if gguf_type else "")
    out = ws.root / "exports" / f"{run_dir.name}-{tag}"
    out.parent.mkdir(exist_ok=True)
    try:
        export(run_dir, out, [fmt], overwrite=True, gguf_types=[gguf_type or "f16"], progress=False)
    except ImportError as exc:
        raise OpenLLMError(
            f"the {choice} export needs a package this installation lacks ({exc.name}); install openllm's export extra"
        ) from exc
    archive = Path(shutil.make_archive(str(ws.downloads_dir / out.name), "zip", root_dir=out))
    return out, archive


def _figure(height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(5.2, height), dpi=110, layout="constrained")


def compare_figure(ws: Workspace, runs: list[str]):
    """Training loss (lines) and val loss (dots) of several runs against the step, on one plot."""
    fig = _figure(3.2)
    ax = fig.add_subplot()
    colors = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#4b5563"]
    drawn = False
    for i, run in enumerate(runs or []):
        metrics = read_metrics(ws.run_dir(run))
        color = colors[i % len(colors)]
        train = [(r["step"], finite_number(r.get("loss"))) for r in metrics if finite_number(r.get("loss")) is not None]
        val = [
            (r["step"], finite_number(r.get("val_loss")))
            for r in metrics
            if finite_number(r.get("val_loss")) is not None
        ]
        if train:
            ax.plot(*zip(*train), color=color, linewidth=1.5, label=run)
            drawn = True
        if val:
            ax.plot(*zip(*val), color=color, linestyle="none", marker="o", markersize=4)
            drawn = True
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "choose runs with metrics",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#6b7280",
            fontsize=13,
        )
    else:
        ax.legend(frameon=False, fontsize=13)
    _style(ax, "loss (nats / token)")
    ax.set_title("loss: training (lines), validation (dots)", fontsize=13)
    return fig


def curves_figure(ws: Workspace, run: str | None):
    """The learning rate and the gradient norm of one run against the step."""
    fig = _figure(4.4)
    ax_lr, ax_gn = fig.subplots(2, 1, sharex=True)
    metrics = read_metrics(ws.run_dir(run)) if run else []
    lr = [(r["step"], finite_number(r.get("lr"))) for r in metrics if finite_number(r.get("lr")) is not None]
    gn = [
        (r["step"], finite_number(r.get("grad_norm"))) for r in metrics if finite_number(r.get("grad_norm")) is not None
    ]
    if lr:
        ax_lr.plot(*zip(*lr), color="#16a34a", linewidth=1.6)
    if gn:
        ax_gn.plot(*zip(*gn), color="#9333ea", linewidth=1.2)
    _style(ax_lr, "learning rate")
    _style(ax_gn, "gradient norm")
    ax_gn.set_xlabel("step", fontsize=14)
    if run:
        ax_lr.set_title(f"{run}: learning rate, gradient norm", fontsize=13)
    return fig


def _style(ax, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel, fontsize=14)
    ax.tick_params(labelsize=13)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
