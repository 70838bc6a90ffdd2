"""Training metrics: the ``metrics.jsonl`` writer, model FLOPs utilisation (MFU) with a table of device peak
FLOP/s, the trackers that mirror ``metrics.jsonl`` (TensorBoard, trackio, Weights & Biases: one small
:class:`Reporter` interface, chosen by ``train.report_to``), and the loss-curve plot."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from . import rundir
from .errors import MissingExtra, OpenLLMError, require
from .fsio import write_text_atomic

__all__ = [
    "finite_number",
    "MetricsWriter",
    "device_peak_flops",
    "mfu",
    "Throughput",
    "plot_loss",
    "TensorBoard",
    "RunIdentity",
    "Reporter",
    "TrackioReporter",
    "WandbReporter",
    "new_run_id",
    "check_reporters",
    "make_reporters",
    "trackio_command",
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


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is, for the trackers: logged once when a process starts reporting. ``run_id`` stays the same
    across resumes (it is recorded in every checkpoint), so a resumed run continues its tracker run."""

    run_dir: Path
    run_id: str
    config: dict[str, Any] = field(default_factory=dict)  # the run's whole Config
    facts: dict[str, Any] = field(default_factory=dict)  # world size, precision, device, data, ...
    resumed_step: int | None = None  # the checkpoint's step when resuming
    project: str = field(default_factory=lambda: tracker_project())

    @property
    def name(self) -> str:
        """The run's name in a tracker: its folder's name."""
        return self.run_dir.name or "run"

    @property
    def tracker_name(self) -> str:
        """A name unique within the project (trackio resumes a run by name; two folders may share one)."""
        return f"{self.name}-{self.run_id}"

    def summary(self) -> dict[str, Any]:
        """The identity and facts as one flat-ish mapping (what the trackers store as the run's config)."""
        return {
            "run_dir": str(self.run_dir.resolve()),
            "run_id": self.run_id,
            "resumed_step": self.resumed_step,
            **self.facts,
        }


def new_run_id() -> str:
    """A fresh run's id: 8 hex digits (W&B takes it as a run id, trackio in the run's name)."""
    return secrets.token_hex(4)


def tracker_project() -> str:
    """The tracker project runs report to: ``OPENLLM_TRACKER_PROJECT``, else ``openllm``."""
    return os.environ.get("OPENLLM_TRACKER_PROJECT") or "openllm"


def _numbers(values: dict[str, Any]) -> dict[str, float | int]:
    """The finite numeric fields of a ``metrics.jsonl`` record, ``step`` aside (trackers take it apart)."""
    return {
        k: v
        for k, v in values.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class Reporter(Protocol):
    """A tracker that mirrors ``metrics.jsonl``: made with the run's :class:`RunIdentity` (logged once then),
    given every record the trainer writes, closed at the end of the process."""

    def log(self, step: int, values: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """SummaryWriter under ``RUN/tb``; a no-op when tensorboard is not installed. A resumed run
    (``purge_step``) drops the events an earlier process wrote after its checkpoint."""

    def __init__(
        self, log_dir: str | Path, *, purge_step: int | None = None, identity: RunIdentity | None = None
    ) -> None:
        self._w = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # pragma: no cover - tensorboard is a dependency, but stay usable without it
            return
        self._w = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        if identity is not None:
            text = json.dumps({"run": identity.summary(), "config": identity.config}, indent=2, default=str)
            self._w.add_text("run", f"```\n{text}\n```", identity.resumed_step or 0)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if self._w is None:
            return
        for key, value in _numbers(values).items():
            self._w.add_scalar(f"train/{key}" if key != "val_loss" else "val/loss", value, step)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


class TrackioReporter:
    """trackio (Hugging Face's local-first tracker): the run's records in trackio's local store
    (``TRACKIO_DIR``, default ``~/.cache/huggingface/trackio``), project :func:`tracker_project`, run
    ``FOLDER-RUNID``, resumed by that name. It logs to a Space or a server only where the user's environment
    says so (``TRACKIO_SPACE_ID``, ``TRACKIO_SERVER_URL``); automatic CPU/GPU sampling is off: the run's own
    metrics are what it mirrors."""

    def __init__(self, identity: RunIdentity) -> None:
        try:
            import trackio
        except ImportError as exc:
            raise _missing("trackio") from exc
        self.project = identity.project
        # trackio prints its banner on stdout, which is the command's result; it goes with the logs instead
        with contextlib.redirect_stdout(sys.stderr):
            self._run = trackio.init(
                project=identity.project,
                name=identity.tracker_name,
                config={**identity.config, "openllm": identity.summary()},
                resume="allow",
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._run.log(_numbers(values), step=step)

    def close(self) -> None:
        import trackio

        with contextlib.redirect_stdout(sys.stderr):
            try:  # trackio.finish() also forgets the run, which trackio's exit hook would finish again
                trackio.finish()
            except RuntimeError:  # not the current run any more: finish it alone
                self._run.finish()


class WandbReporter:
    """Weights & Biases: run id :attr:`RunIdentity.run_id` (a resume continues it), name the run folder's,
    project :func:`tracker_project` (``WANDB_PROJECT`` wins). Online or offline as W&B's own settings say
    (``WANDB_MODE=offline`` keeps everything in ``WANDB_DIR``); its console capture is off, so the command's
    output stays ours."""

    def __init__(self, identity: RunIdentity) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise _missing("wandb") from exc
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or identity.project,
            name=identity.name,
            id=identity.run_id,
            resume="allow",
            config={**identity.config, "openllm": identity.summary()},
            settings=wandb.Settings(console="off"),
        )

    def log(self, step: int, values: dict[str, Any]) -> None:
        self._run.log(_numbers(values), step=step)

    def close(self) -> None:
        self._run.finish()


def _missing(module: str) -> MissingExtra:
    return MissingExtra(
        f"train.report_to {module} needs {module}, which is not installed: pip install 'openllm[track]'"
    )


def check_reporters(names: Sequence[str]) -> None:
    """Raise :class:`MissingExtra` (one line: the ``pip install``) for a named tracker whose package is not
    installed; called before training starts, on every rank."""
    for name in names:
        if name in ("trackio", "wandb"):
            try:
                require(name, "track")
            except MissingExtra as exc:
                raise _missing(name) from exc


def make_reporters(
    names: Sequence[str], identity: RunIdentity, *, tb_dir: str | Path, purge_step: int | None = None
) -> list[Reporter]:
    """The trackers ``names`` (:func:`openllm.config.report_targets`), started for ``identity``."""
    kinds: dict[str, Callable[[], Reporter]] = {
        "tensorboard": lambda: TensorBoard(tb_dir, purge_step=purge_step, identity=identity),
        "trackio": lambda: TrackioReporter(identity),
        "wandb": lambda: WandbReporter(identity),
    }
    unknown = [n for n in names if n not in kinds]
    if unknown:
        raise ValueError(f"unknown trackers {unknown}: report_to is checked by openllm.config.report_targets")
    out: list[Reporter] = []
    name = ""
    try:
        for name in names:
            out.append(kinds[name]())
    except BaseException as exc:
        for r in out:
            with contextlib.suppress(Exception):
                r.close()
        if isinstance(exc, Exception) and not isinstance(exc, OpenLLMError):
            # a tracker's own settings (W&B's mode, login, ...) are wrong: one line, before any step
            why = " ".join(str(exc).split())[:300]
            raise OpenLLMError(
                f"train.report_to {name}: {name} could not start ({type(exc).__name__}: {why}); fix its settings "
                f"or leave it out of --report-to"
            ) from exc
        raise
    return out


def trackio_command(project: str | None = None) -> str:
    """The command that opens trackio's dashboard of the runs (locally)."""
    return f'trackio show --project "{project or tracker_project()}"'


class TrainingLog:
    """Where a training run's records go (on rank 0): ``metrics.jsonl``, the trackers of ``report_to``
    (TensorBoard in ``tb_dir``, trackio, W&B; :func:`make_reporters`), the caller's ``on_log`` and, with
    ``progress``, a progress bar on stderr. A resumed run (``resumed``, from ``step``) drops what an earlier
    process logged after that step from ``metrics.jsonl`` and TensorBoard."""

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
        report_to: Sequence[str] = ("tensorboard",),
        identity: RunIdentity | None = None,
    ) -> None:
        identity = identity or RunIdentity(Path(run_dir), new_run_id(), resumed_step=step if resumed else None)
        self.reporters = make_reporters(report_to, identity, tb_dir=tb_dir, purge_step=step + 1 if resumed else None)
        self.metrics = MetricsWriter(run_dir, resume_step=step if resumed else None)
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
        for reporter in self.reporters:
            reporter.log(record["step"], record)
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
        reporters, self.reporters = self.reporters, []
        for reporter in reporters:
            reporter.close()


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
