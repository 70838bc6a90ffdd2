"""How long a training config will take on this machine, from what earlier runs measured: the tokens per
second logged in ``metrics.jsonl`` by runs of the same model size in this workspace. No run of that size
measured yet means no estimate (never a guessed number)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..config import Config, load_config
from ..rundir import CONFIG, read_metrics
from .workspace import Workspace

__all__ = ["TimeEstimate", "estimate_time"]


@dataclass
class TimeEstimate:
    """``seconds`` for ``tokens`` at ``tokens_per_s``, measured by run ``based_on`` (None: nothing to go by)."""

    tokens: int
    tokens_per_s: float | None
    based_on: str | None
    same_batch: bool = False

    @property
    def seconds(self) -> float | None:
        return self.tokens / self.tokens_per_s if self.tokens_per_s else None

    def describe(self) -> str:
        if not self.tokens_per_s:
            return (
                "no time estimate yet: no run of this model size has been trained in this workspace, so "
                "there is no measured speed to go by (the Monitor tab shows the ETA once training runs)"
            )
        batch = "same batch shape" if self.same_batch else "another batch shape, so a rougher guide"
        return (
            f"about {_duration(self.seconds or 0)} of training, from run {self.based_on}'s measured "
            f"{self.tokens_per_s:,.0f} tokens/s on this machine ({batch}); data preparation and evaluation "
            "come on top"
        )


def _duration(s: float) -> str:
    s = round(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _shape(cfg: Config) -> dict:
    return dict(cfg.model.__dict__)


def estimate_time(ws: Workspace, cfg: Config) -> TimeEstimate:
    """The time ``cfg``'s training takes at the median tokens/s that the newest run of the same model (shape
    and vocabulary) measured in this workspace, preferring one with the same batch shape."""
    t = cfg.train
    tokens = t.micro_batch_size * t.grad_accum_steps * cfg.seq_len * t.max_steps
    best: tuple[int, str, float] | None = None
    for name in ws.run_names():  # newest first
        run = ws.run_dir(name)
        if not (run / CONFIG).is_file():
            continue
        try:
            other = load_config(run / CONFIG)
        except Exception:
            continue
        if _shape(other) != _shape(cfg):
            continue
        speeds = [
            float(r["tokens_per_s"])
            for r in read_metrics(run)
            if isinstance(r.get("tokens_per_s"), (int, float))
            and r["tokens_per_s"] > 0
            and isinstance(r.get("step"), int)
            and r["step"] > 1
        ]  # step 1 includes start-up
        if len(speeds) < 2:
            continue
        ot = other.train
        same = (ot.micro_batch_size, ot.grad_accum_steps, ot.seq_len) == (
            t.micro_batch_size,
            t.grad_accum_steps,
            t.seq_len,
        )
        rank = 0 if same else 1
        if best is None or rank < best[0]:
            best = (rank, name, statistics.median(speeds))
    if best is None:
        return TimeEstimate(tokens, None, None)
    return TimeEstimate(tokens, best[2], best[1], same_batch=best[0] == 0)
