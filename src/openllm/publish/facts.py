"""What a run, a checkpoint or an export measured: the one summary of a run that the model card and
``openllm compare`` show. Only values found in its files; anything absent stays absent (the card never
guesses)."""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import rundir
from ..fsio import read_json
from ..hashing import sha256_file
from ..metrics import finite_number

__all__ = ["RunFacts", "collect_facts", "code_commit", "without_local_paths"]

_LOCAL_PATH = re.compile(r"^(~?/|[A-Za-z]:[\\/])[^\s/\\]")  # /home/..., ~/x, C:\x; not "/ is a slash"


@dataclass
class RunFacts:
    """Everything the model card may state. ``None`` / empty means: not measured, not shown."""

    source: Path
    kind: str  # run | export
    config: dict[str, Any] = field(default_factory=dict)  # the full Config (model/train/data/name)
    step: int | None = None
    tokens_seen: int | None = None
    elapsed_s: float | None = None
    precision: str | None = None
    world_size: int | None = None
    device: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    final_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # of the run's own val split (evaluation.json)
    other_evaluations: list[dict[str, Any]] = field(default_factory=list)  # e.g. a text file's
    provenance: list[dict[str, Any]] = field(default_factory=list)  # where the prepared text came from
    finetune: dict[str, Any] = field(default_factory=dict)  # a fine-tune's base model and data (state.json)
    tokenizer_sha256: str | None = None
    data_sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> {sha256, bytes}
    data_splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> {tokens, documents}
    # a run on several token folders: each one's folder, weight, meta.json sha256, train tokens, sources
    data_mixture: list[dict[str, Any]] = field(default_factory=list)
    code_commit: str | None = None
    code_commit_origin: str | None = None  # "run" (recorded at training) or "push" (git rev-parse at push)
    params: int | None = None
    params_non_embedding: int | None = None
    loss_image: Path | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def code_commit(start: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the work tree holding this package (None outside a git checkout)."""
    here = start or Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", out) else None


def without_local_paths(value: Any) -> Any:
    """A copy of ``value`` (JSON: evaluation.json, a card's facts) in which every string that is a local absolute
    path (``/home/me/data/tokens``, ``C:\\data``, ``~/x``) is cut to its last part: published files must not carry
    the publisher's folder layout (user names, private folders), and the last part still says which file."""
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    if isinstance(value, str) and _LOCAL_PATH.match(value) and "\n" not in value:
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or value
    return value


def _param_counts(model_cfg: dict[str, Any]) -> tuple[int | None, int | None]:
    from ..config import ModelConfig
    from ..model import param_report

    try:
        known = {k: v for k, v in model_cfg.items() if k in ModelConfig.__dataclass_fields__}
        report = param_report(ModelConfig(**known))
    except Exception:  # an unreadable config: the card leaves the counts out
        return None, None
    return report["params"], report["params_non_embedding"]


def collect_facts(source: str | Path, *, count_params: bool = True) -> RunFacts:
    """Facts from a run folder (config.json + checkpoints/: its latest complete checkpoint), one checkpoint
    folder of a run, or an export folder (openllm.json / config.json). ``count_params=False`` skips building
    the model on the meta device (no torch import)."""
    src = Path(source)
    run, ckpt = src, rundir.latest_checkpoint(src)
    if ckpt is None and rundir.step_of(src) is not None and rundir.is_complete(src):
        run, ckpt = src.parent.parent, src  # RUN/checkpoints/step_N
    facts = RunFacts(source=src, kind="run" if ckpt is not None else "export")
    state: dict[str, Any] = {}
    if ckpt is not None:
        state = read_json(ckpt / rundir.STATE)
        cfg = read_json(run / rundir.CONFIG) or state.get("config") or {}
        facts.step = int(state["step"]) if isinstance(state.get("step"), int) else rundir.step_of(ckpt)
    else:
        cfg = read_json(src / "openllm.json") or read_json(src / "config.json")
        cfg = {k: v for k, v in cfg.items() if k != "format"}
        for key in ("step", "training_step"):
            if isinstance(cfg.get(key), int):
                facts.step = cfg[key]
    facts.config = cfg if isinstance(cfg.get("model"), dict) else {}
    if facts.config and count_params:
        facts.params, facts.params_non_embedding = _param_counts(facts.config["model"])

    facts.elapsed_s = finite_number(state.get("elapsed_s"))
    facts.precision = state.get("precision") if isinstance(state.get("precision"), str) else None
    facts.world_size = state.get("world_size") if isinstance(state.get("world_size"), int) else None
    facts.status = rundir.read_status(run)
    for d in (state, facts.status):
        for key in ("device_name", "device", "hardware", "gpu"):
            if isinstance(d.get(key), str) and d[key]:
                facts.device = facts.device or d[key]
        for key in ("code_commit", "git_commit", "commit"):
            if isinstance(d.get(key), str) and re.fullmatch(r"[0-9a-f]{7,40}", d[key]):
                facts.code_commit, facts.code_commit_origin = d[key], "run"
    if facts.code_commit is None:
        facts.code_commit = code_commit()
        facts.code_commit_origin = "push" if facts.code_commit else None

    metrics = rundir.read_metrics(run)
    if facts.step is not None:
        metrics = [r for r in metrics if not isinstance(r.get("step"), int) or r["step"] <= facts.step]
    elif ckpt is None and (run / rundir.CHECKPOINTS).is_dir():  # a run before its first checkpoint
        facts.step = next((r["step"] for r in reversed(metrics) if isinstance(r.get("step"), int)), None)
    facts.metrics = metrics
    facts.tokens_seen = state.get("tokens_seen") if isinstance(state.get("tokens_seen"), int) else None
    if facts.tokens_seen is None:  # the metrics log counts them too
        facts.tokens_seen = next((r["tokens"] for r in reversed(metrics) if isinstance(r.get("tokens"), int)), None)
    losses = [r for r in metrics if finite_number(r.get("loss")) is not None]
    vals = [r for r in metrics if finite_number(r.get("val_loss")) is not None]
    if losses:
        facts.final_loss = finite_number(losses[-1]["loss"])
    if vals:
        facts.final_val_loss = finite_number(vals[-1]["val_loss"])
        best = min(vals, key=lambda r: r["val_loss"])
        facts.best_val_loss, facts.best_step = finite_number(best["val_loss"]), best.get("step")
    speeds = [s for s in (finite_number(r.get("tokens_per_s")) for r in metrics) if s]
    if speeds:
        facts.tokens_per_s = statistics.median(speeds[len(speeds) // 5 :] or speeds)  # past the warm-up
    mfus = [m for m in (finite_number(r.get("mfu")) for r in metrics) if m is not None]
    if mfus:
        facts.mfu = statistics.median(mfus)
    if facts.device is None:
        for r in metrics:
            if isinstance(r.get("device"), str):
                facts.device = r["device"]

    # the run's evaluation.json and loss.png describe its latest checkpoint, not an older one
    whole_run = src == run or ckpt == rundir.latest_checkpoint(run)
    evaluation = rundir.read_evaluation(run)
    if whole_run or (facts.step is not None and evaluation.get("step") == facts.step):
        facts.evaluation = evaluation
        facts.other_evaluations = rundir.read_other_evaluations(run)
    tok_model = next(
        (p for p in (run / rundir.TOKENIZER / "tokenizer.model", src / "tokenizer.model") if p.is_file()), None
    )
    facts.tokenizer_sha256 = state.get("tokenizer_sha256") or (sha256_file(tok_model) if tok_model else None)
    if isinstance(state.get("finetune"), dict):
        facts.finetune = state["finetune"]
    elif isinstance(cfg.get("finetune"), dict):  # an export keeps the fine-tune's summary in its config
        facts.finetune = cfg["finetune"]
    data_dir = state.get("data_dir")
    if isinstance(data_dir, str) and (Path(data_dir) / "meta.json").is_file():
        meta = read_json(Path(data_dir) / "meta.json")
        facts.data_sources = {k: v for k, v in (meta.get("sources") or {}).items() if isinstance(v, dict)}
        facts.data_splits = {
            k: {"tokens": v.get("tokens"), "documents": v.get("documents")}
            for k, v in (meta.get("splits") or {}).items()
            if isinstance(v, dict)
        }
        facts.provenance = [p for p in (meta.get("prepared_from") or []) if isinstance(p, dict)]
    mixture = state.get("data_mixture")
    if isinstance(mixture, list) and all(isinstance(part, dict) for part in mixture):
        facts.data_mixture = mixture
        # the main folder's val split is the run's; its train split and sources are one part of the mixture's
        facts.data_splits = {k: v for k, v in facts.data_splits.items() if k != "train"}
        facts.data_sources = {k: v for k, v in facts.data_sources.items() if k.startswith("val")}
    image = run / rundir.LOSS_PNG
    facts.loss_image = image if whole_run and image.is_file() else None
    return facts
