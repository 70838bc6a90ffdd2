"""What the Monitor tab shows, computed from a run's files: progress, ETA, throughput, loss curves, the log's
tail and the memory in use. No Gradio here; :mod:`ui` only displays these."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, report_targets
from ..metrics import finite_number, trackio_command
from ..rundir import CONFIG, TB, read_metrics

__all__ = [
    "Progress",
    "progress",
    "format_duration",
    "loss_figure",
    "tail_log",
    "memory_usage",
    "format_progress",
    "dashboard_commands",
]


@dataclass
class Progress:
    step: int
    max_steps: int | None
    fraction: float  # 0..1
    tokens_per_s: float | None
    eta_s: float | None
    loss: float | None
    val_loss: float | None
    lr: float | None


def _tokens_per_step(run_dir: Path) -> int | None:
    try:
        cfg = Config.from_dict(json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8")))
        return cfg.train.micro_batch_size * cfg.train.grad_accum_steps * cfg.seq_len
    except (OSError, ValueError):
        return None


def progress(
    run_dir: Path, status: dict[str, Any] | None = None, metrics: list[dict[str, Any]] | None = None
) -> Progress:
    """Step/total, ETA (remaining steps x tokens per step / recent tokens per second) and the last values."""
    metrics = read_metrics(run_dir) if metrics is None else metrics
    status = status or {}
    step = max([int(status.get("step") or 0)] + [int(r["step"]) for r in metrics])
    max_steps = status.get("max_steps")
    if not max_steps:
        try:
            cfg = json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
            max_steps = cfg["train"]["max_steps"]
        except (OSError, ValueError, KeyError, TypeError):
            max_steps = None
    max_steps = int(max_steps) if max_steps else None
    train = [r for r in metrics if finite_number(r.get("loss")) is not None]
    vals = [r for r in metrics if finite_number(r.get("val_loss")) is not None]
    recent = [x for x in (finite_number(r.get("tokens_per_s")) for r in train[-5:]) if x]
    tps = sum(recent) / len(recent) if recent else None
    eta = None
    per_step = _tokens_per_step(run_dir)
    if tps and per_step and max_steps:
        eta = max(0, max_steps - step) * per_step / tps
    fraction = min(1.0, step / max_steps) if max_steps else 0.0
    return Progress(
        step=step,
        max_steps=max_steps,
        fraction=fraction,
        tokens_per_s=tps,
        eta_s=eta,
        loss=finite_number(train[-1]["loss"]) if train else None,
        val_loss=finite_number(vals[-1]["val_loss"]) if vals else None,
        lr=finite_number(train[-1].get("lr")) if train else None,
    )


def dashboard_commands(run_dir: Path) -> list[str]:
    """The commands that open the dashboards of the trackers a run reports to (its ``train.report_to``):
    trackio's (``trackio show``) and TensorBoard's, run where the run's files are."""
    try:
        cfg = json.loads((Path(run_dir) / CONFIG).read_text(encoding="utf-8"))
        names = report_targets(cfg["train"].get("report_to", "tensorboard"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError):
        return []
    out = []
    if "trackio" in names:
        out.append(trackio_command())
    if "tensorboard" in names:
        out.append(f"tensorboard --logdir {Path(run_dir) / TB}")
    return out


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def format_progress(p: Progress) -> dict[str, str]:
    """Short strings for the UI's stat boxes."""
    total = f"{p.max_steps:,}" if p.max_steps else "?"
    return {
        "step": f"{p.step:,} / {total} ({100 * p.fraction:.0f}%)",
        "eta": format_duration(p.eta_s),
        "tokens_per_s": f"{p.tokens_per_s:,.0f}" if p.tokens_per_s else "–",
        "loss": f"{p.loss:.4f}" if p.loss is not None else "–",
        "val_loss": f"{p.val_loss:.4f}" if p.val_loss is not None else "–",
    }


def loss_figure(metrics: list[dict[str, Any]], title: str = ""):
    """A matplotlib Figure with the training loss and the validation loss against the step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # 5.2 in wide with 13-14 pt text: still about 11 px text when a phone shows it 330 px wide
    fig = Figure(figsize=(5.2, 3.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    train = [(r["step"], finite_number(r.get("loss"))) for r in metrics if finite_number(r.get("loss")) is not None]
    val = [
        (r["step"], finite_number(r.get("val_loss"))) for r in metrics if finite_number(r.get("val_loss")) is not None
    ]
    if train:
        ax.plot(*zip(*train), color="#2563eb", linewidth=1.6, label="training loss")
    if val:
        ax.plot(
            *zip(*val), color="#ea580c", linewidth=1.8, marker="o", markersize=4, label="validation loss (estimate)"
        )
    if not train and not val:
        ax.text(
            0.5, 0.5, "no metrics yet", ha="center", va="center", transform=ax.transAxes, color="#6b7280", fontsize=12
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step", fontsize=14)
    ax.set_ylabel("loss (nats / token)", fontsize=14)
    ax.tick_params(labelsize=13)
    if title:
        ax.set_title(title, fontsize=14)
    ax.grid(True, alpha=0.3)
    if train or val:
        ax.legend(loc="upper right", frameon=False, fontsize=13)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def tail_log(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a log; a progress bar redrawn with carriage returns counts as one line
    (its latest state)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    out = []
    for raw in data.split("\n"):
        latest = [seg for seg in raw.split("\r") if seg.strip()]
        if latest:
            out.append(latest[-1].rstrip())
    return "\n".join(out[-lines:])


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def memory_usage(pid: int | None = None) -> dict[str, str]:
    """RAM of the training process tree (when ``pid`` runs) and of the machine; GPU memory where an NVIDIA GPU
    and nvidia-smi are present."""
    import psutil

    out: dict[str, str] = {}
    vm = psutil.virtual_memory()
    out["ram"] = f"{_fmt_bytes(vm.used)} of {_fmt_bytes(vm.total)} ({vm.percent:.0f}%)"
    if pid:
        try:
            root = psutil.Process(pid)
            rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            out["training"] = _fmt_bytes(rss)
        except Exception:
            pass
    out["gpu"] = _gpu_memory() or "no GPU"
    return out


def _gpu_memory() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        res = subprocess.run(
            [exe, "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    parts = []
    for i, line in enumerate(res.stdout.strip().splitlines()):
        try:
            used, total = (float(x) for x in line.split(","))
        except ValueError:
            continue
        parts.append(f"GPU{i} {used / 1024:.1f} of {total / 1024:.1f} GiB")
    return "; ".join(parts) or None
