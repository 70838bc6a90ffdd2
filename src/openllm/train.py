"""The training loop: ``train(config, data_dir=..., out_dir=...)`` (and ``openllm train``).

One call runs four phases:

1. **resolve** (:func:`resolve_run`): the config, built once: a fresh run's, or the checkpoint's when
   resuming; ``overrides`` and the ``max_steps`` / ``save_every`` / ``compile`` arguments on top; the
   vocabulary checked against the data (or taken from it); the tokenizer checked against the checkpoint's.
2. **set up** (:meth:`Trainer.setup`): device and, under ``torchrun``, the process group (DDP or FSDP2), the
   run folder, the model and optimizer, the batch loaders, and, when resuming, the checkpoint's components
   (:meth:`Trainer.checkpoint_components`): the weights as the model is built, then the optimizer, scaler,
   schedule, loader position, RNG states and progress, each through its ``load_state_dict``.
3. **fit** (:meth:`Trainer.fit`): optimizer steps until ``max_steps``, the :class:`StepPlan` saying which
   steps log, evaluate, save and read the loss on the host: gradient accumulation, mixed precision, clipping,
   the learning-rate schedule, a periodic val-loss *estimate* on ``eval_batches`` batches with best-checkpoint
   tracking and early stopping, ``metrics.jsonl`` / TensorBoard / progress bar,
   atomic checkpoints, ``status.json`` for the web app. SIGTERM / SIGINT finish the current step, save, and
   end with state ``stopped`` (one that arrives during setup ends the run before its first step). A NaN/inf
   loss ends the run (state ``diverged``) before the bad update is applied (with ``train.check_every`` > 1:
   at the next host read, before any checkpoint), so the checkpoints on disk stay good. The optimizer is
   AdamW or Muon + AdamW (:mod:`openllm.optim`); the fused training kernels (:mod:`openllm.kernels`) are
   switched on here when asked for.
4. **finish** (:meth:`Trainer.finish`): the final checkpoint, ``status.json``, the loss plot; a run whose
   loss ended above ln(vocab_size) (:func:`openllm.rundir.divergence`) is recorded as ``diverged``.

``status.json``'s states follow :data:`openllm.rundir.TRANSITIONS`; rank 0 holds the run lock
(:class:`openllm.rundir.RunLock`) from the start of setup to the end, and under ``torchrun`` every rank learns
whether it got it before any other collective.

The run folder's layout (checkpoints, latest/best, status, metrics) belongs to :mod:`openllm.rundir`. The
val-loss figure for reports is ``openllm evaluate``'s (every val token, window/stride), not the estimate.

Resuming is exact: a checkpoint holds the weights, the optimizer (and fp16 loss-scaler) state, every RNG state
and the data loader position, so a run killed at any point and resumed reproduces the uninterrupted run's
losses bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch

from . import checkpoint as ckpt_mod
from . import distributed as D
from . import rundir
from .batches import DataMixture, SequentialWindows, TokenShards, read_meta, training_loader
from .config import Config, TrainConfig, load_config, report_targets
from .errors import OpenLLMError
from .metrics import (
    RunIdentity,
    Throughput,
    TrainingLog,
    check_reporters,
    device_peak_flops,
    new_run_id,
    plot_loss,
)
from .model import Transformer
from .optim import LRSchedule, build_optimizer

__all__ = [
    "train",
    "TrainResult",
    "TrainingDiverged",
    "resolve_precision",
    "autocast_context",
    "resolve_run",
    "RunPlan",
    "check_out_dir",
    "find_resume",
    "TrainState",
    "Step",
    "StepPlan",
    "Trainer",
]


class TrainingDiverged(OpenLLMError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`train` returns (also what ``status.json`` says at the end). ``val_loss`` and
    ``best_val_loss`` are the in-training estimates over ``train.eval_batches`` val batches."""

    run_dir: Path
    state: str  # finished | stopped | diverged (finished, but its loss ended above ln(vocab_size))
    step: int
    max_steps: int
    loss: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    reason: str = ""
    checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None  # why the run counts as diverged (state ``diverged``), with what to change


# --- precision ----------------------------------------------------------------------------------------------


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- run folder helpers -------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Status:
    """This process's side of ``RUN/status.json``, written through :func:`openllm.rundir.move` (the one writer)
    when ``enabled`` (the lock holder); ``state`` is what this process last recorded."""

    def __init__(self, run_dir: Path, max_steps: int, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.state = rundir.NEW
        self.max_steps = max_steps

    def move(self, state: str, **fields: Any) -> None:
        """Go to ``state`` with ``fields`` (an impossible transition is a bug: rundir.InvalidTransition)."""
        if self.enabled:
            rundir.move(self.run_dir, state, max_steps=self.max_steps, pid=os.getpid(), **fields)
        self.state = state

    def update(self, **fields: Any) -> None:
        self.move(self.state, **fields)


class _StopFlag:
    """Set by SIGTERM/SIGINT (main thread only) or by the caller's ``stop_event``; a second SIGINT aborts."""

    def __init__(self, stop_event: threading.Event | None) -> None:
        self.requested = False
        self.signal_name = ""
        self.stop_event = stop_event
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __call__(self) -> bool:
        return self.requested or (self.stop_event is not None and self.stop_event.is_set())

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# --- phase 1: resolve the config, once -----------------------------------------------------------------


@dataclass
class RunPlan:
    """What a run is, decided before any device work: the one config it uses, the data it reads and the
    checkpoint it resumes from (``resume_from`` None and ``state`` empty for a fresh run)."""

    cfg: Config
    out: Path
    data_dir: Path
    meta: dict[str, Any]
    resume_from: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)  # the checkpoint's state.json
    mixture: DataMixture | None = None  # several token folders with weights (data_dir is the first one's)

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.meta.get("tokenizer_sha256")


def resolve_run(
    config: Config | str | Path | Mapping[str, Any] | None,
    data_dir: str | Path | Mapping[str | Path, float] | None,
    out_dir: str | Path,
    *,
    resume: bool | str | Path | None = None,
    max_steps: int | None = None,
    save_every: int | None = None,
    compile: bool | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    vocab_from_data: bool = False,
) -> RunPlan:
    """The run :func:`train` would do with these arguments (see there), checked against the data and the
    checkpoint; raises :class:`OpenLLMError` for what the user must fix."""
    out = Path(out_dir)
    check_out_dir(out)
    resume_from = find_resume(out, resume)
    state = load_resume_state(resume_from) if resume_from is not None else {}
    resuming = resume_from is not None

    given: Config | None = None
    if resuming:
        base = Config.from_dict(state["config"])
        if config is not None:
            given = _as_config(config)
            if given.model != base.model:
                raise OpenLLMError(
                    f"--config's model shape differs from the checkpoint's in {resume_from}: "
                    f"resume without --config, or train into another --out folder"
                )
    elif config is None:
        raise OpenLLMError(f"give a config (e.g. --config tiny): {out} has no checkpoint to resume")
    else:
        base = _as_config(config)

    changes = {k: dict(v) for k, v in (overrides or {}).items()}
    if resuming and "model" in changes:
        raise OpenLLMError(
            f"cannot change the model of a run when resuming ({resume_from}): train into another --out folder"
        )
    for key, value, kind in (
        ("max_steps", max_steps, int),
        ("save_every", save_every, int),
        ("compile", compile, bool),
    ):  # compile=None leaves train.compile as it is (unset: on CUDA only)
        if value is not None:
            changes.setdefault("train", {})[key] = kind(value)

    mixture = None
    if isinstance(data_dir, Mapping):
        mixture = DataMixture(data_dir)
    elif data_dir is None and state.get("data_mixture"):
        mixture = DataMixture.from_facts(state["data_mixture"])  # the checkpoint's mixture, read again
    if mixture is not None:
        data_dir = mixture.parts[0].data_dir
    elif data_dir is None:
        data_dir = state.get("data_dir")
        if data_dir is None:
            raise OpenLLMError("give --data DIR (a folder written by `openllm tokenize`)")
    data_dir = Path(cast("str | Path", data_dir))  # a mixture's is its first folder's, set above
    meta = mixture.meta if mixture is not None else read_meta(data_dir)
    vocab = changes.get("model", {}).get("vocab_size", base.model.vocab_size)
    data_vocab = int(meta["vocab_size"])
    if data_vocab != vocab:
        if not vocab_from_data or resuming:
            raise OpenLLMError(
                f"the data was tokenized with a vocabulary of {data_vocab} tokens but model.vocab_size is "
                f"{vocab}: set model.vocab_size to {data_vocab} in the config"
                + ("" if resuming else " or pass --vocab-from-data")
            )
        changes.setdefault("model", {})["vocab_size"] = data_vocab
    tok_sha, ckpt_sha = meta.get("tokenizer_sha256"), state.get("tokenizer_sha256")
    if resuming and ckpt_sha and tok_sha and ckpt_sha != tok_sha:
        raise OpenLLMError(
            f"{data_dir} was tokenized with another tokenizer than the checkpoint's "
            f"({tok_sha[:12]} vs {ckpt_sha[:12]}): resume with the same data"
        )

    cfg = base.replace(**changes) if changes else base
    if resume_from is not None:
        if given is not None:
            _check_given_config(given, base, changes, resume_from)
        check_resume_changes(base, cfg, resume_from)
    return RunPlan(
        cfg=cfg, out=out, data_dir=data_dir, meta=meta, resume_from=resume_from, state=state, mixture=mixture
    )


def load_resume_state(ckpt: Path) -> dict[str, Any]:
    """``state.json`` of the checkpoint a run resumes from, with the fields resuming reads checked, so a
    damaged one is named (:class:`~openllm.checkpoint.CheckpointDamaged`) before anything is written."""
    state = ckpt_mod.load_state(ckpt)
    path = ckpt / rundir.STATE
    if not isinstance(state.get("config"), dict):
        raise ckpt_mod.CheckpointDamaged(
            f"{path}: 'config' must be the run's config as an object, found {state.get('config')!r}: the file "
            f"is damaged; resume from an earlier checkpoint (--resume CHECKPOINT)"
        )

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    # the JSON parts the components restore, checked here because they are restored after the run folder's
    # config.json and status.json are written (a wrong type there raised TypeError inside a component)
    checks = {
        "data_dir": lambda v: v is None or isinstance(v, str),
        "run_id": lambda v: v is None or isinstance(v, str),
        "data_mixture": lambda v: (
            v is None
            or (isinstance(v, list) and all(isinstance(f, dict) and isinstance(f.get("data_dir"), str) for f in v))
        ),
        "tokenizer_sha256": lambda v: v is None or isinstance(v, str),
        "tokens_seen": lambda v: v is None or is_int(v),
        "best_step": lambda v: v is None or is_int(v),
        "evals_without_improvement": lambda v: v is None or is_int(v),
        "val_loss": lambda v: v is None or is_num(v),
        "best_val_loss": lambda v: v is None or is_num(v),
        "elapsed_s": lambda v: v is None or is_num(v),
        "scheduler": lambda v: v is None or (isinstance(v, dict) and is_int(v.get("steps"))),
        "loader": lambda v: v is None or (isinstance(v, dict) and is_int(v.get("position"))),
        "rng": lambda v: v is None or (isinstance(v, list) and all(_rng_form(r) for r in v)),
    }
    for key, ok in checks.items():
        if key in state and not ok(state[key]):
            raise ckpt_mod.CheckpointDamaged(
                f"{path}: {key!r} has the wrong form ({str(state[key])[:60]}): the file is damaged; resume from "
                f"an earlier checkpoint (--resume CHECKPOINT)"
            )
    return state


def _rng_form(r: Any) -> bool:
    """Whether one rank's RNG state has the form :func:`openllm.checkpoint.set_rng_state` reads."""
    return (
        isinstance(r, dict)
        and isinstance(r.get("python"), list)
        and len(r["python"]) == 3
        and isinstance(r["python"][1], list)
        and isinstance(r.get("numpy"), list)
        and len(r["numpy"]) == 5
        and isinstance(r.get("torch"), str)
    )


def check_resume_changes(old: Config, new: Config, ckpt: Path) -> None:
    """Refuse settings a resumed run cannot change: its data stream is a position in the stream that the seed,
    the window length and document alignment define, so under others the position means nothing."""
    diffs = [
        f"{key} {a!r} -> {b!r}"
        for key, a, b in (
            ("train.seed", old.train.seed, new.train.seed),
            ("train.seq_len", old.seq_len, new.seq_len),
            ("train.doc_aligned", old.train.doc_aligned, new.train.doc_aligned),
        )
        if a != b
    ]
    if diffs:
        raise OpenLLMError(
            f"cannot resume {ckpt} with {', '.join(diffs)}: the checkpoint's data stream depends on it; "
            f"leave it out, or train into another --out folder (nothing was written)"
        )
    # the optimizer's state is a component of the checkpoint: another optimizer has none to take over
    if old.train.optimizer != new.train.optimizer:
        via = (
            f" (train.recipe {old.train.recipe!r} -> {new.train.recipe!r} sets it)"
            if old.train.recipe != new.train.recipe
            else ""
        )
        raise OpenLLMError(
            f"cannot resume {ckpt} with train.optimizer {old.train.optimizer!r} -> {new.train.optimizer!r}{via}: "
            f"the checkpoint holds {old.train.optimizer}'s state; leave it out, or train into another --out folder "
            f"(nothing was written)"
        )


def _check_given_config(given: Config, base: Config, changes: Mapping[str, Any], ckpt: Path) -> None:
    """A --config given when resuming must agree with the checkpoint's config in every training setting the
    command line does not set itself (--max-steps, --set): applying it silently would differ from what the
    user asked, ignoring it silently too, so the differing settings are named."""
    set_here = {f"train.{k}" for k in changes.get("train", {})}
    diffs = [
        f"{key} {getattr(base.train, key.split('.')[1])!r} vs {getattr(given.train, key.split('.')[1])!r}"
        for key in (f"train.{f}" for f in base.train.__dataclass_fields__)
        if key not in set_here and getattr(base.train, key.split(".")[1]) != getattr(given.train, key.split(".")[1])
    ]
    if diffs:
        raise OpenLLMError(
            f"--config differs from the config of {ckpt} in {', '.join(diffs)} (checkpoint vs --config): resume "
            f"without --config, change a setting deliberately with --set (e.g. --set train.lr=...), or train "
            f"into another --out folder"
        )


def _as_config(config: Config | str | Path | Mapping[str, Any]) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config.from_dict(config)
    return load_config(config)


def check_out_dir(out: Path) -> None:
    """Refuse ``out`` as a run folder (:class:`OpenLLMError`, nothing written) when it is a file, lies under a
    file, or is a non-empty folder that is not a run: a run folder belongs to its run."""
    if out.exists() and not out.is_dir():
        raise OpenLLMError(f"--out {out} is a file, not a folder: choose a new or empty folder for the run")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise OpenLLMError(f"--out {out}: {parent} is a file, not a folder; choose another path")
    # the run lock's files (left by a process killed before it wrote anything) do not make a folder a run's
    if out.is_dir() and any(p.name not in rundir.LOCK_FILES for p in out.iterdir()) and not rundir.is_run(out):
        raise OpenLLMError(
            f"--out {out} is not empty and holds no training run (no checkpoints/, config.json "
            f"or status.json of a run): choose a new or empty folder; nothing was written"
        )


def find_resume(out_dir: Path, resume: bool | str | Path | None) -> Path | None:
    """The checkpoint a run into ``out_dir`` resumes from, or None for a fresh run; ``resume`` as in
    :func:`train`. Damaged checkpoints are skipped with a warning (the newest intact one is used); raises
    :class:`OpenLLMError` when ``resume`` cannot be honoured."""
    if resume is None or resume is True:
        found = ckpt_mod.latest_intact_checkpoint(out_dir, warn=_warn)
        latest = rundir.latest_checkpoint(out_dir)
        if found is None and latest is not None:
            raise OpenLLMError(
                f"every checkpoint in {out_dir / rundir.CHECKPOINTS} is damaged (see above): "
                f"train into another --out folder, or restore a checkpoint"
            )
        if resume is True and found is None:
            raise OpenLLMError(
                f"--resume: {out_dir} holds no checkpoint to resume from "
                f"(nothing in {out_dir / 'checkpoints'}); leave out --resume to start the run"
            )
        return found
    if resume is False:
        found = rundir.latest_checkpoint(out_dir)
        if found is not None:
            raise OpenLLMError(
                f"{out_dir} already holds checkpoints (latest {found.name}): resume it, "
                f"or train into another --out folder"
            )
        return None
    path = Path(resume)
    if (path / rundir.CHECKPOINTS).is_dir():
        path = rundir.latest_checkpoint(path) or path
    if not (path / rundir.STATE).is_file():
        raise OpenLLMError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    ckpt_mod.verify_checkpoint(path)  # a checkpoint named by the user is used as it is, or refused
    return path


def resolve_compile(tc: TrainConfig, device: torch.device) -> bool:
    """Whether the run compiles its model: ``train.compile``, or when it is not set, on CUDA only (on CPU the
    compile takes longer than it saves in a run of the tiny preset's length: docs/training.md)."""
    return tc.compile if tc.compile is not None else device.type == "cuda"


def fit_micro_batch(cfg: Config, seq_len: int, precision: str, free: int) -> tuple[Config, str | None]:
    """``cfg`` with its micro-batch halved (and gradient accumulation doubled: the same tokens per step) until
    the training memory estimate (flash attention: a GPU's) fits 90% of ``free`` bytes, and why; ``cfg`` itself
    when it fits."""
    from .model import train_memory_bytes

    tc, before = cfg.train, cfg.train.micro_batch_size
    micro, accum = tc.micro_batch_size, tc.grad_accum_steps

    def need(m: int) -> int:
        return train_memory_bytes(
            cfg.model, micro_batch=m, seq_len=seq_len, precision=precision, attention_scores=False
        )["total"]

    while micro % 2 == 0 and need(micro) > 0.9 * free:
        micro, accum = micro // 2, accum * 2
    if micro == before:
        return cfg, None
    why = f"micro-batch {before} needs about {need(before) / 2**30:.0f} GiB, {free / 2**30:.0f} GiB is free"
    return cfg.replace(train={"micro_batch_size": micro, "grad_accum_steps": accum}), why


def choices_line(cfg: Config, device: torch.device, compiles: bool, fitted: str | None) -> str:
    """One line saying what the run chose where the user did not have to, and why."""
    tc = cfg.train
    if tc.optimizer == "muon":
        opt = f"Muon (lr {tc.muon_lr:g}) for the blocks' matrices, AdamW (lr {tc.lr:g}) for embeddings, head, norms"
    else:
        opt = f"AdamW (lr {tc.lr:g})"
    parts = [
        f"recipe {tc.recipe}: {opt}, {tc.schedule} schedule, {'tied' if cfg.model.tie_embeddings else 'untied'} head",
        ("compiled" if compiles else "not compiled")
        + ("" if tc.compile is not None else f" (train.compile unset: {'on' if compiles else 'off'} on {device.type})"),
        f"loss read on the host every {tc.check_every} step{'s' if tc.check_every > 1 else ''}",
    ]
    if fitted:
        parts.append(
            f"micro-batch {tc.micro_batch_size} x {tc.grad_accum_steps} accumulation, the same tokens a step ({fitted})"
        )
    return "; ".join(parts)


def _check_memory(cfg: Config, seq_len: int, precision: str, device: torch.device) -> None:
    """Refuse, before allocating, a model and micro-batch whose estimated training memory is more than the
    device has free; the estimate errs high, so only a clear excess (over 1.25x) is refused
    (``OPENLLM_SKIP_MEMORY_CHECK=1`` skips the check)."""
    from .model import train_memory_bytes

    if os.environ.get("OPENLLM_SKIP_MEMORY_CHECK") == "1":
        return
    need = train_memory_bytes(
        cfg.model,
        micro_batch=cfg.train.micro_batch_size,
        seq_len=seq_len,
        precision=precision,
        attention_scores=device.type != "cuda",
    )
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        import psutil

        free = psutil.virtual_memory().available
    else:
        return
    if need["total"] > 1.25 * free:
        gib = 1 << 30
        raise OpenLLMError(
            f"this run needs about {need['total'] / gib:.1f} GiB on {device} (weights, gradients and optimizer "
            f"{need['states'] / gib:.1f} GiB, activations of a micro-batch of {cfg.train.micro_batch_size} x "
            f"{seq_len} tokens {need['activations'] / gib:.1f} GiB) but {free / gib:.1f} GiB is free: lower "
            f"train.micro_batch_size (raise train.grad_accum_steps to keep the batch), train.seq_len or the model "
            f"size"
        )


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- the in-training val-loss estimate ----------------------------------------------------------------


@torch.no_grad()
def estimate_val_loss(
    model, data: TokenShards, cfg: Config, seq_len: int, info: D.DistInfo, precision: str
) -> float | None:
    """Mean loss over the first ``train.eval_batches`` val batches (non-overlapping windows, shared across
    ranks): cheap enough to run every ``eval_every`` steps, and what ``metrics.jsonl``'s ``val_loss``,
    ``best.json`` and early stopping use. It is an estimate; ``openllm evaluate`` scores every val token."""
    windows = SequentialWindows(
        data,
        cfg.train.micro_batch_size,
        seq_len,
        split="val",
        max_batches=cfg.train.eval_batches,
        rank=info.rank,
        world_size=info.world_size,
        device=info.device,
    )
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)
    for x, y in windows:
        with autocast_context(precision, info.device):
            loss = model(x, y, return_logits=False)
        total[0] += loss.double() * y.numel()
        total[1] += y.numel()
    model.train(was_training)
    D.all_reduce(total, info)
    return float(total[0] / total[1]) if total[1] > 0 else None


# --- the run's progress and the step plan ------------------------------------------------------------


@dataclass
class TrainState:
    """The run's progress, a checkpoint component (its keys sit at the top of ``state.json``): updates done,
    tokens seen, the val-loss estimates, early stopping's count and the training time so far."""

    step: int = 0
    tokens_seen: int = 0
    val_loss: float | None = None  # the latest estimate
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    elapsed_before: float = 0.0  # training seconds of the processes before this one
    started: float = field(default_factory=time.time)  # when this process started training

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def record_eval(self, val_loss: float | None) -> bool:
        """Record a val-loss estimate of the current step; whether it is a new best."""
        self.val_loss = val_loss
        if val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss):
            self.best_val_loss, self.best_step, self.evals_without_improvement = val_loss, self.step, 0
            return True
        self.evals_without_improvement += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "elapsed_s": self.elapsed(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state.get("step", 0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.val_loss = state.get("val_loss")
        self.best_val_loss = state.get("best_val_loss")
        self.best_step = state.get("best_step")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.started = time.time()


@dataclass(frozen=True)
class Step:
    """What the loop does around optimizer update ``number`` (1-based); made by :class:`StepPlan`."""

    number: int
    accum: int  # micro-batches
    tokens: int  # tokens trained on, over every rank
    read_host: bool  # bring the loss to the host (checking it finite) after the update
    log: bool
    evaluate: bool
    save: bool
    last: bool  # max_steps reached, or the run ends here (see ending)

    def ending(self) -> Step:
        """This step as the run's last (a stop request, early stopping): it logs and saves. Only a step that
        reads the host can end the run early: that is when a stop request or a val loss becomes known."""
        if not self.read_host:
            raise ValueError(f"step {self.number} does not read the host: the run cannot end there")
        return replace(self, log=True, save=True, last=True)


class StepPlan:
    """The one place that decides, for every update, its micro-batches (``batch_warmup_steps`` grows them
    from 1), and whether it logs, evaluates, saves and reads the loss on the host.

    Every step that logs, evaluates, saves or ends the run reads the host, so what it records or writes was
    checked finite; the others keep the loss on the device, read every ``check_every`` steps."""

    def __init__(self, tc: TrainConfig, *, seq_len: int, world_size: int = 1, evaluates: bool = True) -> None:
        self.tc, self.evaluates = tc, evaluates
        self.tokens_per_step = tc.micro_batch_size * seq_len * tc.grad_accum_steps * world_size

    def accum(self, number: int) -> int:
        """Micro-batches in update ``number`` (1-based): ``grad_accum_steps``, or, during
        ``batch_warmup_steps``, a number growing linearly from 1 (small batches first)."""
        tc = self.tc
        if number > tc.batch_warmup_steps:
            return tc.grad_accum_steps
        return max(1, math.ceil(tc.grad_accum_steps * number / tc.batch_warmup_steps))

    def __call__(self, number: int) -> Step:
        tc = self.tc
        last = number >= tc.max_steps
        evaluate = self.evaluates and (number % tc.eval_every == 0 or last)
        log = number % tc.log_every == 0 or last or evaluate
        save = number % tc.save_every == 0 or last
        accum = self.accum(number)
        return Step(
            number=number,
            accum=accum,
            tokens=self.tokens_per_step * accum // tc.grad_accum_steps,
            read_host=log or save or number % tc.check_every == 0,
            log=log,
            evaluate=evaluate,
            save=save,
            last=last,
        )


# --- phases 2-4: set up, fit, finish -------------------------------------------------------------------


class Trainer:
    """One run of a :class:`RunPlan`: :meth:`setup`, :meth:`fit`, :meth:`finish` (or :meth:`fail`), then
    :meth:`close`. Creating it picks the device and, under ``torchrun``, joins the process group.

    What a checkpoint holds is the dict of :meth:`checkpoint_components` (each gives and takes a
    ``state_dict``), saved and restored by a :class:`openllm.checkpoint.Checkpointer`; which steps log,
    evaluate, save and read the loss on the host is the :class:`StepPlan`'s to say.

    Another kind of training (:class:`openllm.finetune.FinetuneTrainer`) extends the public hooks:
    :meth:`build_model`, :meth:`build_data`, :meth:`batch_loss`, :meth:`val_loss`, :meth:`setup_run_folder`,
    :meth:`checkpoint_components` and :meth:`checkpoint_facts`."""

    lock: rundir.RunLock | None = None  # rank 0's hold on the run folder (rundir.RunLock), from setup()

    def __init__(
        self,
        plan: RunPlan,
        *,
        device: str | None = None,
        progress: bool = True,
        stop_event: threading.Event | None = None,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.plan, self.cfg, self.tc, self.out = plan, plan.cfg, plan.cfg.train, plan.out
        self.progress, self.on_log, self.say = progress, on_log, say
        self.stop = _StopFlag(stop_event)  # SIGTERM/SIGINT handling, from the start of setup() to close()

        self.info = D.init_distributed(device, mode=self.tc.distributed)
        self.dev, self.main = self.info.device, self.info.is_main
        self.precision = resolve_precision(self.tc.precision, self.dev)
        self.compiles = resolve_compile(self.tc, self.dev)
        self.fitted: str | None = None  # why the micro-batch was halved to fit the GPU, if it was
        # one process only: under torchrun each rank would measure its own free memory and might choose another
        # micro-batch; a resumed run keeps the micro-batch its loader position counts in
        if plan.resume_from is None and self.dev.type == "cuda" and not self.info.enabled:
            free = torch.cuda.mem_get_info(self.dev)[0]
            cfg, self.fitted = fit_micro_batch(plan.cfg, plan.seq_len, self.precision, free)
            if cfg is not plan.cfg:
                self.plan = plan = replace(plan, cfg=cfg)
                self.cfg, self.tc = cfg, cfg.train
        if self.precision == "fp16" and self.dev.type == "cpu":
            say("note: fp16 on CPU is slow and rarely useful; consider precision fp32 or bf16")
        if self.dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.status = _Status(self.out, self.tc.max_steps, enabled=self.main)
        self.log: TrainingLog | None = None  # rank 0's, from setup()

        # the progress is known before setup (status.json, the first log lines); setup() restores it again
        # with every other component of the checkpoint
        self.state = TrainState()
        if plan.resume_from is not None:
            self.state.load_state_dict(plan.state)
        self.last_loss: float | None = None
        self._bad: torch.Tensor | None = None  # non-finite seen since the last host read (stays on the device)
        self.end_state, self.reason = "finished", "reached max_steps"
        self.run_id = plan.state.get("run_id") or new_run_id()  # the trackers' run: the same across resumes

    @property
    def step(self) -> int:
        """Optimizer updates done (the checkpoint's step)."""
        return self.state.step

    @property
    def seq_len(self) -> int:
        return self.plan.seq_len

    # --- setup ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        """The run lock, run folder, model and optimizer, data, then the checkpoint's state when resuming.

        From here to :meth:`close` SIGTERM/SIGINT ask the run to stop: one that arrives during setup ends the
        run (state ``stopped``) before its first step, with nothing to save."""
        plan, tc = self.plan, self.tc
        self.stop.__enter__()
        error = None
        if self.main:
            try:  # one training per run folder, whoever starts it; held until close()
                self.lock = rundir.RunLock(self.out).acquire()
            except OpenLLMError as exc:
                self.main = False  # the run belongs to the process that holds it: leave its files alone
                error = str(exc)
            else:
                # a resume records itself once its checkpoint has loaded (below), unless the app queued it: the
                # queued status is already this run's, and its failure belongs there
                queued = rundir.recorded_state(rundir.read_status(self.out)) == rundir.QUEUED
                if plan.resume_from is None or queued:
                    self.status.move(rundir.PREPARING, step=self.step, phase="setting up training")
        if error is None:
            try:
                _check_memory(plan.cfg, self.seq_len, self.precision, self.dev)
                check_reporters(report_targets(tc.report_to))  # a missing tracker package, before any work
            except OpenLLMError as exc:
                error = str(exc)
        # before any other collective: under torchrun every rank learns whether rank 0 got the lock (and
        # every rank's memory check), so all of them end with the same message instead of waiting for rank 0
        error = D.first_error(error, self.info)
        if error is None:  # (the same on every rank) on several nodes, every one must resume the same checkpoint
            seen = D.differing((self.step, plan.tokenizer_sha256), self.info)
            if seen is not None:
                error = (
                    f"the processes do not see the same run: they would start from steps "
                    f"{', '.join(str(s) for s in sorted({s for s, _ in seen}))} (or with other data): every node "
                    f"must see the same --out folder (a shared filesystem) and the same --data"
                )
        if error is not None:
            raise OpenLLMError(error)
        if self.main and plan.resume_from is None:
            self.setup_run_folder()

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        raw = self.build_model()
        raw.to(self.dev)
        if tc.fused_loss != "off" or tc.fused_ops:
            from .kernels import apply_kernels

            apply_kernels(raw, tc.fused_loss, tc.fused_ops, self.dev)
        self.raw = raw  # the module whose parameters the optimizer holds (FSDP2 shards it in place)
        model: torch.nn.Module = raw
        # torch.compile gives an nn.Module for a module, though its signature says a callable
        if self.compiles and self.info.mode != "fsdp":
            model = cast(torch.nn.Module, torch.compile(model))
        model = D.wrap_model(model, self.info)
        if self.compiles and self.info.mode == "fsdp" and self.info.enabled:
            model = cast(torch.nn.Module, torch.compile(model))
        self.model = model
        self.optimizer = build_optimizer(raw, tc, self.dev)
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=(self.precision == "fp16"))
        self.lr_schedule = LRSchedule(self.optimizer, tc)
        self.loader, self.val_data = self.build_data()
        self.step_plan = StepPlan(
            tc, seq_len=self.seq_len, world_size=self.info.world_size, evaluates=self.val_data is not None
        )
        self.checkpointer = ckpt_mod.Checkpointer(
            self.out, self.checkpoint_components(), writer=self.main, keep_last=tc.keep_last
        )
        if plan.resume_from is not None:
            self.checkpointer.load(plan.resume_from, plan.state)
            # only now does a resume touch the run folder: one that fails while its checkpoint is read (a
            # damaged or mismatched part nothing checked before) leaves config.json and status.json as they
            # were (issue 24); meanwhile the held lock makes the run read as preparing
            if self.main:
                if self.status.state == rundir.NEW:
                    self.status.move(rundir.PREPARING, step=self.step, phase="setting up training")
                self.setup_run_folder()
        else:
            torch.manual_seed(tc.seed + self.info.rank)  # dropout differs across ranks; init did not

        peak = device_peak_flops(self.dev)
        self.throughput = Throughput(raw.flops_per_token(self.seq_len), peak * self.info.world_size if peak else None)
        error = None
        if self.main:
            try:
                self._setup_logging()
            except OpenLLMError as exc:  # a tracker that cannot start: every rank ends with its message
                error = str(exc)
        error = D.first_error(error, self.info)
        if error is not None:
            raise OpenLLMError(error)

    # --- hooks: what another kind of training (openllm.finetune) extends ------------------------------

    def build_model(self) -> Transformer:
        """The model to train, on the CPU (setup moves, compiles and wraps it), with the checkpoint's weights
        when resuming: the weights are the one component :meth:`checkpoint_components` does not restore."""
        raw = Transformer(self.cfg.model)
        if self.plan.resume_from is not None:
            ckpt_mod.load_model_weights(raw, self.plan.resume_from)
        return raw

    def build_data(self) -> tuple[Any, Any]:
        """The training loader (``next()`` gives a batch for :meth:`batch_loss`; ``state_dict()`` and
        ``load_state_dict()`` resume it exactly) and the val data for :meth:`val_loss` (None: no evaluation)."""
        plan, tc = self.plan, self.tc
        loader = training_loader(
            plan.mixture if plan.mixture is not None else TokenShards(plan.data_dir, "train"),
            tc.micro_batch_size,
            self.seq_len,
            seed=tc.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            device=self.dev,
            doc_aligned=tc.doc_aligned,
        )
        return loader, TokenShards(plan.data_dir, "val") if "val" in plan.meta["splits"] else None

    def batch_loss(self, batch) -> torch.Tensor:
        """The mean loss of one micro-batch from the training loader."""
        x, y = batch
        return self.model(x, y, return_logits=False)

    def val_loss(self, model: torch.nn.Module) -> float | None:
        """The val-loss estimate of ``model`` over the val data (the same on every rank; a collective)."""
        return estimate_val_loss(model, self.val_data, self.cfg, self.seq_len, self.info, self.precision)

    def checkpoint_components(self) -> dict[str, ckpt_mod.Stateful]:
        """What a checkpoint holds, by name (:class:`openllm.checkpoint.Checkpointer` says which file holds
        which). Every component but ``model`` is restored when resuming, RNG last but one: nothing that
        draws random numbers runs after it."""
        return {
            ckpt_mod.MODEL: ckpt_mod.ModelWeights(self.raw),
            "optimizer": D.FullOptimizerState(self.raw, self.optimizer),
            "scaler": self.scaler,
            "scheduler": self.lr_schedule,
            "loader": self.loader,
            "rng": ckpt_mod.RNGState(
                self.info.rank, self.info.world_size, lambda state: D.gather_objects(state, self.info)
            ),
            ckpt_mod.PROGRESS: self.state,
        }

    def checkpoint_facts(self) -> dict[str, Any]:
        """What ``state.json`` records about the run besides its components' states (read, not restored)."""
        return {
            "config": self.cfg.to_dict(),
            "tokenizer_sha256": self.plan.tokenizer_sha256,
            "run_id": self.run_id,
            **({"data_mixture": self.plan.mixture.facts()} if self.plan.mixture is not None else {}),
            "data_dir": str(self.plan.data_dir.resolve()),
            "world_size": self.info.world_size,
            "precision": self.precision,
            "time": _now(),
        }

    def setup_run_folder(self) -> None:
        """Create the run folder (rank 0, holding the run lock): config, tokenizer, no temporary leftovers."""
        out, data_dir = self.out, self.plan.data_dir
        out.mkdir(parents=True, exist_ok=True)
        rundir.clean_temporary(out)
        self.cfg.save(out / rundir.CONFIG)
        src_tok = data_dir / "tokenizer"  # tokenize --out keeps the tokenizer the shards were made with
        if src_tok.is_dir() and not (out / rundir.TOKENIZER).exists():
            shutil.copytree(src_tok, out / rundir.TOKENIZER)

    def _setup_logging(self) -> None:
        tc, info, resume_from = self.tc, self.info, self.plan.resume_from
        self.say(
            f"training {self.cfg.name}: {self.raw.num_params() / 1e6:.2f}M parameters, {tc.max_steps} steps "
            f"of {self.step_plan.tokens_per_step:,} tokens ({tc.micro_batch_size} x {self.seq_len} x "
            f"{tc.grad_accum_steps} accum{f' x {info.world_size} ranks' if info.enabled else ''}), "
            f"{self.precision} on {self.dev}{', compiled' if self.compiles else ''}"
            f"{f', {info.mode}' if info.enabled else ''}{f' on {info.nodes} nodes' if info.nodes > 1 else ''}"
        )
        self.say(choices_line(self.cfg, self.dev, self.compiles, self.fitted))
        if resume_from is not None:
            self.say(f"resuming from {resume_from} (step {self.step})")
        if self.plan.mixture is not None:
            self.say(f"data mixture: {self.plan.mixture.describe()}")
        self.log = TrainingLog(  # its progress bar goes below the lines above
            self.out,
            self.out / rundir.TB,
            step=self.step,
            max_steps=tc.max_steps,
            resumed=resume_from is not None,
            progress=self.progress,
            on_log=self.on_log,
            report_to=report_targets(tc.report_to),
            identity=RunIdentity(
                self.out,
                self.run_id,
                config=self.cfg.to_dict(),
                facts={k: v for k, v in self.checkpoint_facts().items() if k not in ("config", "time")},
                resumed_step=self.step if resume_from is not None else None,
            ),
        )

    # --- fit -----------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Optimizer steps until ``max_steps``, early stopping or a stop request (signal or ``stop_event``)."""
        tc, st, stop = self.tc, self.state, self.stop
        # a stop asked during setup (on any rank) ends the run before its first step
        if D.any_rank(stop(), self.info):
            self.end_state = "stopped"
            self.reason = f"stopped by {stop.signal_name or 'request'} during setup, before step {self.step + 1}" + (
                "" if self.plan.resume_from is not None else "; nothing was trained or saved"
            )
            return
        if self.main:
            self.status.move(rundir.TRAINING, step=self.step)
        self.model.train()
        st.started = time.time()
        self.throughput.restart()
        while st.step < tc.max_steps:
            when = self.step_plan(st.step + 1)
            lr = self.lr_schedule.step()
            loss, grad_norm, stop_now = self._optimizer_step(when)
            st.step += 1
            st.tokens_seen += when.tokens
            self.throughput.add(when.tokens)
            if loss is not None:
                self.last_loss = loss
            if stop_now:
                when = when.ending()

            record = self._record(lr, loss, grad_norm) if when.log else {}
            if when.evaluate:  # an evaluation step logs too
                record["val_loss"] = self._evaluate()
                if tc.early_stop_patience and st.evals_without_improvement >= tc.early_stop_patience:
                    when = when.ending()
                    self.end_state = "finished"
                    self.reason = (
                        f"early stop: the val loss estimate did not improve for {st.evals_without_improvement} "
                        f"evaluations (best {st.best_val_loss:.4f} at step {st.best_step})"
                    )
            if stop_now:
                self.end_state = "stopped"
                self.reason = f"stopped by {stop.signal_name or 'request'} at step {st.step}"
            if record:
                self._log(record)
            if self.log is not None:
                self.log.advance()
            if when.save and self.checkpointer.step != st.step:
                self._save()
            if when.log or when.save:
                self.throughput.restart()  # the rate excludes eval and checkpoint time
            if when.last:
                break

    def _optimizer_step(self, when: Step) -> tuple[float | None, float | None, bool]:
        """One optimizer step over ``when.accum`` micro-batches; returns the loss (mean over ranks), the
        gradient norm and whether any rank was asked to stop (None, None, False on steps that do not read the
        host, see ``train.check_every``). Raises :class:`TrainingDiverged` on a non-finite loss or gradient norm:
        before the update is applied when ``check_every`` is 1, else at the next read, before any
        checkpoint can hold the bad weights."""
        tc, dev, info, scaler, accum = self.tc, self.dev, self.info, self.scaler, when.accum
        loss_sum = torch.zeros((), device=dev)
        for micro in range(accum):
            batch = self.loader.next()
            with D.no_grad_sync(self.model, info, sync=micro == accum - 1):
                with autocast_context(self.precision, dev):
                    loss = self.batch_loss(batch) / accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        if scaler.is_enabled():
            scaler.unscale_(self.optimizer)
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.raw.parameters()), clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        # the finite check stays on the device between reads: no host sync on those steps
        bad = ~torch.isfinite(loss_sum)
        if not scaler.is_enabled():
            bad = bad | ~torch.isfinite(grad_norm)
        self._bad = bad if self._bad is None else self._bad | bad
        if not when.read_host:
            scaler.step(self.optimizer)
            scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return None, None, False
        # one collective per read: the mean loss across ranks, whether any rank was asked to stop or diverged
        packed = torch.stack([loss_sum, torch.tensor(float(self.stop()), device=dev), self._bad.float()])
        D.all_reduce(packed, info)
        self._bad = None
        loss_val = float(packed[0]) / info.world_size
        stop_now = float(packed[1]) > 0
        gn = float(grad_norm)
        if float(packed[2]) > 0:
            what = (
                f"loss {loss_val}"
                if not math.isfinite(loss_val)
                else f"gradient norm {gn}"
                if not math.isfinite(gn)
                else "a non-finite loss or gradient norm"
            )
            applied = (
                "the update was not applied" if tc.check_every == 1 else f"seen within the last {tc.check_every} steps"
            )
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: {what} ({applied}); the last good checkpoint is "
                f"{_latest_name(self.out)}. Lower train.lr, raise train.warmup_steps or use bf16 instead of "
                f"fp16, then resume"
            )
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_val, gn, stop_now

    def _evaluate(self) -> float | None:
        """The val-loss estimate now; a new best is checkpointed and recorded in ``best.json``."""
        val = self.val_loss(self.raw if self.info.mode != "fsdp" else self.model)
        if self.state.record_eval(val) and val is not None:
            self._save()
            if self.main:
                rundir.write_best(self.out, self.step, val)
        return val

    def _record(self, lr: float, loss: float | None, grad_norm: float | None) -> dict[str, Any]:
        rates = self.throughput.rates()
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        record.update(tokens_per_s=rates.pop("tokens_per_s"), tokens=self.state.tokens_seen, **rates)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        record["elapsed_s"] = round(self.state.elapsed(), 3)
        val = self.state.val_loss
        if self.log is not None:
            self.log.write(record, val)
        if self.main:
            self.status.update(
                step=self.step,
                loss=record["loss"],
                val_loss=val,
                best_val_loss=self.state.best_val_loss,
                tokens_per_s=record["tokens_per_s"],
            )

    def _save(self) -> None:
        """A checkpoint of the current step (every rank takes part; rank 0 writes it)."""
        best = self.state.best_step
        self.checkpointer.save(self.step, self.checkpoint_facts(), protect={best} if best is not None else set())

    # --- finish --------------------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """The last checkpoint (when the loop did not just write it), ``status.json``, the loss plot.

        A finished run whose loss ended above ln(vocab_size) (:func:`openllm.rundir.divergence`) is recorded
        as ``diverged``, with the rule's warning (what to change) in ``status.json`` and said as one line."""
        # e.g. max_steps already reached before this call; a fresh run stopped during setup has nothing to save
        if self.checkpointer.step != self.step and self.step > 0:
            self._save()
        if self.log is not None:
            self.log.close_bar()
        st = self.state
        elapsed = st.elapsed()
        warning = diverged = None
        if self.main:
            _finish_plots(self.out, self.cfg)
            if self.end_state == "finished":
                metrics = rundir.read_metrics(self.out)
                warning = rundir.divergence(metrics, self.cfg.model.vocab_size, self.cfg.to_dict())
                if warning is not None:
                    self.end_state = rundir.DIVERGED
                    diverged = rundir.divergence_fields(metrics)
            latest = self.checkpointer.last or rundir.latest_checkpoint(self.out)
            self.status.move(
                self.end_state,
                step=self.step,
                reason=self.reason,
                error=None,
                warning=warning,
                diverged=diverged,
                elapsed_s=round(elapsed, 3),
                checkpoint=str(latest) if latest else None,
            )
            self.say(
                f"{self.reason}: step {self.step}"
                + (f", loss {self.last_loss:.4f}" if self.last_loss is not None else "")
                + (
                    f", val loss estimate {st.val_loss:.4f} ({self.tc.eval_batches} batches)"
                    if st.val_loss is not None
                    else ""
                )
                + (f", best {st.best_val_loss:.4f} at step {st.best_step}" if st.best_val_loss is not None else "")
            )
            if warning is not None:
                self.say(f"warning: {warning}")
        return TrainResult(
            run_dir=self.out,
            state=self.end_state,
            step=self.step,
            max_steps=self.tc.max_steps,
            loss=self.last_loss,
            val_loss=st.val_loss,
            best_val_loss=st.best_val_loss,
            best_step=st.best_step,
            tokens_seen=st.tokens_seen,
            elapsed_s=elapsed,
            reason=self.reason,
            checkpoint=rundir.latest_checkpoint(self.out),
            warning=warning,
        )

    def fail(self, exc: BaseException) -> BaseException:
        """Record a failed (or interrupted) run in ``status.json`` (a NaN/inf loss as ``diverged``, with the
        divergence rule's warning, also said as one line); returns the error to raise (an
        :class:`OpenLLMError` with the fix for running out of GPU memory, else ``exc``). Only the process that
        holds the run lock writes."""
        if self.log is not None:
            self.log.close_bar()
        err = exc
        if _is_oom(exc):
            tc = self.tc
            err = OpenLLMError(
                f"out of GPU memory with micro_batch_size {tc.micro_batch_size} x seq_len {self.seq_len}: set "
                f"train.micro_batch_size to {max(1, tc.micro_batch_size // 2)} and train.grad_accum_steps to "
                f"{tc.grad_accum_steps * 2} (same tokens per step), or use a shorter train.seq_len"
            )
        # the lock holder records how an active run ended (once: an error after finish() wrote the end stays out)
        if self.main and self.lock is not None and self.lock.held and self.status.state in rundir.ACTIVE_STATES:
            if isinstance(exc, KeyboardInterrupt):
                self.status.move(rundir.STOPPED, error=None, reason="interrupted (no checkpoint written)")
            elif isinstance(exc, TrainingDiverged) and self.status.state == rundir.TRAINING:
                warning = rundir.divergence([{"loss": float("nan")}], None, self.cfg.to_dict())
                # the update that went non-finite is the one after the last completed step
                diverged = {"step": self.step + 1, "loss": None, "cause": rundir.NON_FINITE}
                self.status.move(rundir.DIVERGED, error=str(err), warning=warning, diverged=diverged)
                self.say(f"warning: {warning}")
            else:
                self.status.move(rundir.FAILED, error=str(err) or type(err).__name__, error_type=type(err).__name__)
            with contextlib.suppress(Exception):
                _finish_plots(self.out, self.cfg)
        return err

    def run(self) -> TrainResult:
        """:meth:`setup`, :meth:`fit` and :meth:`finish`; on any error :meth:`fail` records it (and may turn it into
        the error to raise); :meth:`close` always."""
        try:
            self.setup()
            self.fit()
            return self.finish()
        except BaseException as exc:
            err = self.fail(exc)
            if err is not exc:
                raise err from exc
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Close the metrics files, release the run lock, leave the process group and put back the signal
        handlers that were there before :meth:`setup`."""
        try:
            if self.log is not None:
                self.log.close()
            if self.lock is not None:
                self.lock.release()
            D.shutdown(self.info)
        finally:
            self.stop.__exit__(None, None, None)


# --- the entry point -----------------------------------------------------------------------------------


def train(
    config: Config | str | Path | Mapping[str, Any] | None = None,
    data_dir: str | Path | Mapping[str | Path, float] | None = None,
    out_dir: str | Path = "runs/run",
    *,
    max_steps: int | None = None,
    save_every: int | None = None,
    resume: bool | str | Path | None = None,
    device: str | None = None,
    compile: bool | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    vocab_from_data: bool = False,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a model; see the module docstring. Returns when the run finished or was stopped.

    ``resume``: None (default) resumes from the run folder's latest checkpoint when there is one; True
    requires one; False refuses a folder that already has checkpoints; a path names a checkpoint (or run).
    ``config`` may be left out when resuming (the checkpoint holds the full config). ``overrides`` are
    config sections to change, e.g. ``{"train": {"lr": 1e-3}}``. Raises :class:`TrainingDiverged` on a
    NaN/inf loss and :class:`OpenLLMError` for user errors; ``status.json`` says ``failed`` in both cases.
    """
    plan = resolve_run(
        config,
        data_dir,
        out_dir,
        resume=resume,
        max_steps=max_steps,
        save_every=save_every,
        compile=compile,
        overrides=overrides,
        vocab_from_data=vocab_from_data,
    )
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    return Trainer(plan, device=device, progress=progress, stop_event=stop_event, on_log=on_log, say=say).run()


def _latest_name(out: Path) -> str:
    latest = rundir.latest_checkpoint(out)
    return str(latest) if latest is not None else "none (no checkpoint was written yet)"


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)


def _finish_plots(out: Path, cfg: Config) -> None:
    records = rundir.read_metrics(out)
    if records:
        plot_loss(records, out / rundir.LOSS_PNG, title=f"{cfg.name}: {out.name}")
