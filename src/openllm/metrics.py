"""Training metrics: the ``metrics.jsonl`` writer, model FLOPs utilisation (MFU) with a table of device peak
FLOP/s, TensorBoard logging, and the loss-curve plot."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import rundir
from .fsio import write_text_atomic

__all__ = [
    "finite_number",
    "MetricsWriter",
    "device_peak_flops",
    "mfu",
    "Throughput",
    "plot_loss",
    "TensorBoard",
    "TrainingLog",
]


def finite_number(x: Any) -> float | None:
    """A metric value as a float, or None when it is missing, not a number (a bool is not one), NaN or
    infinite: what every table and card shows instead of guessing."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


# Dense (no sparsity) bf16/fp16 tensor-core peak FLOP/s, from the vendors' data sheets. Matched in order
# against torch.cuda.get_device_name(); the first hit wins, so specific names come before general ones.
PEAK_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / NVL
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def device_peak_flops(device: Any = None) -> float | None:
    """Peak FLOP/s of ``device`` for MFU, or None when unknown (CPUs, unlisted GPUs).
    ``OPENLLM_PEAK_FLOPS`` (a number, e.g. ``989e12``) overrides the table."""
    env = os.environ.get("OPENLLM_PEAK_FLOPS")
    if env:
        return float(env)
    import torch

    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the device peak (None when the peak is unknown)."""
    if not peak:
        return None
    return flops_per_token * tokens_per_s / peak


class Throughput:
    """Training tokens per second since the last :meth:`restart` and the MFU they give (``peak``: the FLOP/s
    of every device together, None when unknown). The loop restarts it after logging, evaluating and saving, so
    the rate counts training time only."""

    def __init__(self, flops_per_token: float, peak: float | None) -> None:
        self.flops_per_token, self.peak = flops_per_token, peak
        self.restart()

    def restart(self) -> None:
        self.since, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rates(self) -> dict[str, float]:
        """``tokens_per_s``, and ``mfu`` where the peak is known: the fields of a ``metrics.jsonl`` record."""
        tps = self.tokens / max(time.perf_counter() - self.since, 1e-9)
        out = {"tokens_per_s": round(tps, 1)}
        m = mfu(self.flops_per_token, tps, self.peak)
        if m is not None:
            out["mfu"] = round(m, 5)
        return out


class MetricsWriter:
    """Appends one JSON object a line to the run's ``metrics.jsonl``; flushed after every line so readers (the
    web app, ``openllm compare``) see progress live."""

    def __init__(self, run_dir: str | Path, *, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / rundir.METRICS
        if resume_step is not None and self.path.exists():
            # a resumed run repeats the steps after its checkpoint: drop the lines it will write again
            keep = [r for r in rundir.read_metrics(run_dir) if int(r["step"]) <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: v for k, v in record.items() if v is not None}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoard:
    """SummaryWriter under ``RUN/tb``; a no-op when tensorboard is not installed."""

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        self._w = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # pragma: no cover - tensorboard is a dependency, but stay usable without it
            return
        self._w = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if self._w is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and key != "step" and math.isfinite(value):
                self._w.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", value, step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


class TrainingLog:
    """Where a training run's records go (on rank 0): ``metrics.jsonl``, TensorBoard in ``tb_dir``, the caller's
    ``on_log`` and, with ``progress``, a progress bar on stderr. A resumed run (``resumed``, from ``step``)
    drops what an earlier process logged after that step from both logs."""

    def __init__(
        self,
        run_dir: str | Path,
        tb_dir: str | Path,
        *,
        step: int,
        max_steps: int,
        resumed: bool,
        progress: bool,
        on_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.metrics = MetricsWriter(run_dir, resume_step=step if resumed else None)
        self.tb = TensorBoard(tb_dir, purge_step=step + 1 if resumed else None)
        self.on_log = on_log
        self.bar = None
        if progress and step < max_steps:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=max_steps,
                initial=step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
                file=sys.stderr,
            )

    def write(self, record: dict[str, Any], val_estimate: float | None) -> None:
        """One record (``step``, ``loss``, ``tokens_per_s``, ...) to every sink; the bar also shows the latest
        val-loss estimate."""
        self.metrics.write(record)
        self.tb.log(record["step"], record)
        if self.on_log is not None:
            self.on_log(dict(record))
        if self.bar is not None:
            post = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
            if val_estimate is not None:
                post["val~"] = f"{val_estimate:.4f}"  # ~: the estimate over eval_batches batches
            self.bar.set_postfix(post, refresh=False)

    def advance(self) -> None:
        """One more optimizer step on the bar."""
        if self.bar is not None:
            self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        self.metrics.close()
        self.tb.close()


def plot_loss(records: Iterable[dict[str, Any]], out: str | Path, *, title: str = "") -> Path | None:
    """Train (and val, where present) loss against step as a PNG; None when there is nothing to plot."""
    records = list(records)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val", linewidth=1.5, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
