"""The training loop: ``train(config, data_dir=..., out_dir=...)`` (and ``openllm train``).

One call runs four phases:

1. **resolve** (:func:`resolve_run`): the config, built once: a fresh run's, or the checkpoint's when
   resuming; ``overrides`` and the ``max_steps`` / ``save_every`` / ``compile`` arguments on top; the
   vocabulary checked against the data (or taken from it); the tokenizer checked against the checkpoint's.
2. **set up** (:meth:`Trainer.setup`): device and, under ``torchrun``, the process group (DDP or FSDP2), the
   run folder, the model and optimizer, the batch loaders, and the checkpoint's weights, optimizer, loader
   position and RNG states when resuming.
3. **fit** (:meth:`Trainer.fit`): optimizer steps until ``max_steps``: gradient accumulation, mixed
   precision, clipping, the learning-rate schedule, a periodic val-loss *estimate* on ``eval_batches``
   batches with best-checkpoint tracking and early stopping, ``metrics.jsonl`` / TensorBoard / progress bar,
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_mod
from . import distributed as D
from . import rundir
from .batches import RandomWindowLoader, SequentialWindows, TokenShards, read_meta
from .config import Config, load_config
from .errors import OpenLLMError
from .metrics import MetricsWriter, TensorBoard, device_peak_flops, mfu, plot_loss
from .model import Transformer
from .optim import build_optimizer, lr_at, set_lr

__all__ = [
    "train",
    "TrainResult",
    "TrainingDiverged",
    "resolve_precision",
    "autocast_context",
    "resolve_run",
    "RunPlan",
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


# what status.json says for an active state (with its phase); ``running`` is what readers have always seen
_WRITTEN = {rundir.PREPARING: ("preparing", "setting up training"), rundir.TRAINING: ("running", "training")}


class _Status:
    """``RUN/status.json``: state preparing | running (training) | finished | stopped | failed | diverged,
    error, warning, step, max_steps, pid, times. :meth:`move` changes the state along
    :data:`openllm.rundir.TRANSITIONS` (``machine`` is the state in the state machine's words)."""

    def __init__(self, run_dir: Path, max_steps: int, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.machine = rundir.NEW
        self.data: dict[str, Any] = {
            "state": "running",
            "error": None,
            "step": 0,
            "max_steps": max_steps,
            "pid": os.getpid(),
            "started": _now(),
            "updated": _now(),
        }

    def begin(self) -> None:
        """Take over the run's state from its status.json (called once the run lock is held): an active state
        recorded by another process is a process that died without recording its end."""
        previous = rundir.read_status(self.run_dir)
        recorded = rundir.run_state(self.run_dir).recorded
        if recorded in rundir.ACTIVE_STATES and previous.get("pid") != os.getpid():
            recorded = rundir.FAILED
        self.machine = recorded

    def move(self, state: str, **fields: Any) -> None:
        """Go to ``state`` (one of :data:`openllm.rundir.STATES`; an impossible transition is a bug and raises)
        and write status.json with ``fields``."""
        if state != self.machine:
            rundir.check_transition(self.machine, state)
            self.machine = state
        written, phase = _WRITTEN.get(state, (state, None))
        self.update(state=written, phase=phase, **fields)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.data["updated"] = _now()
        self.data["updated_unix"] = time.time()
        if self.enabled:
            rundir.write_status(self.run_dir, self.data)


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

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.meta.get("tokenizer_sha256")


def resolve_run(
    config: Config | str | Path | Mapping[str, Any] | None,
    data_dir: str | Path | None,
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
    _check_out(out)
    resume_from = _find_resume(out, resume)
    state = ckpt_mod.load_state(resume_from) if resume_from is not None else {}
    resuming = resume_from is not None

    if resuming:
        base = Config.from_dict(state["config"])
        if config is not None and _as_config(config).model != base.model:
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
    ):
        if value is not None:
            changes.setdefault("train", {})[key] = kind(value)

    if data_dir is None:
        data_dir = state.get("data_dir")
        if data_dir is None:
            raise OpenLLMError("give --data DIR (a folder written by `openllm tokenize`)")
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
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
    return RunPlan(cfg=cfg, out=out, data_dir=data_dir, meta=meta, resume_from=resume_from, state=state)


def _as_config(config: Config | str | Path | Mapping[str, Any]) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config.from_dict(config)
    return load_config(config)


def _check_out(out: Path) -> None:
    """A run folder belongs to its run: refuse a file, or a non-empty folder that is not a run."""
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


def _find_resume(out_dir: Path, resume: bool | str | Path | None) -> Path | None:
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


# --- phases 2-4: set up, fit, finish -------------------------------------------------------------------


class Trainer:
    """One run of a :class:`RunPlan`: :meth:`setup`, :meth:`fit`, :meth:`finish` (or :meth:`fail`), then
    :meth:`close`. Creating it picks the device and, under ``torchrun``, joins the process group."""

    lock: rundir.RunLock | None = None  # rank 0's hold on the run folder (rundir.RunLock), from setup()
    stop: _StopFlag | None = None  # SIGTERM/SIGINT handling, from the start of setup() to close()

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
        self.seq_len = plan.seq_len
        self.progress, self.stop_event, self.on_log, self.say = progress, stop_event, on_log, say

        self.info = D.init_distributed(device, mode=self.tc.distributed)
        self.dev, self.main = self.info.device, self.info.is_main
        self.precision = resolve_precision(self.tc.precision, self.dev)
        if self.precision == "fp16" and self.dev.type == "cpu":
            say("note: fp16 on CPU is slow and rarely useful; consider precision fp32 or bf16")
        if self.dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.status = _Status(self.out, self.tc.max_steps, enabled=self.main)
        self.metrics_writer: MetricsWriter | None = None
        self.tb: TensorBoard | None = None
        self.bar = None

        # progress so far: the checkpoint's when resuming; all of it goes back into the next checkpoint
        st = plan.state
        self.step = int(st.get("step", 0))
        self.tokens_seen = int(st.get("tokens_seen", 0))
        self.best_val: float | None = st.get("best_val_loss")
        self.best_step: int | None = st.get("best_step")
        self.bad_evals = int(st.get("evals_without_improvement", 0))
        self.last_val: float | None = st.get("val_loss")
        self.elapsed_before = float(st.get("elapsed_s", 0.0))
        self.last_loss: float | None = None
        self.last_saved: Path | None = None
        self.saved_step = self.step if plan.resume_from is not None else -1
        self.end_state, self.reason = "finished", "reached max_steps"
        self.t_start = time.time()
        self.tokens_per_step = self.tc.micro_batch_size * self.seq_len * self.tc.grad_accum_steps * self.info.world_size

    # --- setup ---------------------------------------------------------------------------------------

    def setup(self) -> None:
        """The run lock, run folder, model and optimizer, data, then the checkpoint's state when resuming.

        From here to :meth:`close` SIGTERM/SIGINT ask the run to stop: one that arrives during setup ends the
        run (state ``stopped``) before its first step, with nothing to save."""
        plan, tc, resuming = self.plan, self.tc, self.plan.resume_from is not None
        self.stop = _StopFlag(self.stop_event).__enter__()
        error = None
        if self.main:
            try:  # one training per run folder, whoever starts it; held until close()
                self.lock = rundir.RunLock(self.out).acquire()
            except OpenLLMError as exc:
                self.main = False  # the run belongs to the process that holds it: leave its files alone
                error = str(exc)
            else:
                self.status.begin()
                self.status.move(rundir.PREPARING, step=self.step)
        if error is None:
            try:
                _check_memory(plan.cfg, self.seq_len, self.precision, self.dev)
            except OpenLLMError as exc:
                error = str(exc)
        # before any other collective: under torchrun every rank learns whether rank 0 got the lock (and
        # every rank's memory check), so all of them end with the same message instead of waiting for rank 0
        error = D.first_error(error, self.info)
        if error is not None:
            raise OpenLLMError(error)
        if self.main:
            self._setup_run_folder()

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        raw = self._build_model()
        raw.to(self.dev)
        if tc.fused_loss != "off" or tc.fused_ops:
            from .kernels import apply_kernels

            apply_kernels(raw, tc.fused_loss, tc.fused_ops, self.dev)
        self.raw = raw  # the module whose parameters the optimizer holds (FSDP2 shards it in place)
        self.params = list(raw.parameters())
        self.flops_per_token = raw.flops_per_token(self.seq_len)
        model = raw
        if tc.compile and self.info.mode != "fsdp":
            model = torch.compile(model)
        model = D.wrap_model(model, self.info)
        if tc.compile and self.info.mode == "fsdp" and self.info.enabled:
            model = torch.compile(model)
        self.model = model
        self.optimizer = build_optimizer(raw, tc, self.dev)
        self.scaler = torch.amp.GradScaler(self.dev.type, enabled=(self.precision == "fp16"))
        if resuming:
            opt_state = ckpt_mod.load_optimizer_state(plan.resume_from)
            D.load_full_state(raw, self.optimizer, None, opt_state["optimizer"])
            if opt_state.get("scaler"):
                self.scaler.load_state_dict(opt_state["scaler"])

        self._build_data()
        if resuming:
            self.loader.load_state_dict(plan.state["loader"])
            rngs = plan.state.get("rng") or []
            if rngs:
                ckpt_mod.set_rng_state(rngs[self.info.rank] if len(rngs) == self.info.world_size else rngs[0])
        else:
            torch.manual_seed(tc.seed + self.info.rank)  # dropout differs across ranks; init did not

        self.peak = device_peak_flops(self.dev)
        if self.main:
            self._setup_logging()

    # hooks a fine-tuning trainer (openllm.finetune) overrides: the model, the data, a batch's loss, the val
    # estimate and what goes into a checkpoint
    def _build_model(self) -> torch.nn.Module:
        """The model to train, with the checkpoint's weights when resuming (on the CPU; setup moves it)."""
        raw = Transformer(self.cfg.model)
        if self.plan.resume_from is not None:
            ckpt_mod.load_model_weights(raw, self.plan.resume_from)
        return raw

    def _build_data(self) -> None:
        """``self.loader`` (``next()``, ``state_dict()``, ``load_state_dict()``) and ``self.val_data``."""
        plan, tc = self.plan, self.tc
        self.loader = RandomWindowLoader(
            TokenShards(plan.data_dir, "train"),
            tc.micro_batch_size,
            self.seq_len,
            seed=tc.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            device=self.dev,
            doc_aligned=tc.doc_aligned,
        )
        self.val_data = TokenShards(plan.data_dir, "val") if "val" in plan.meta["splits"] else None

    def _batch_loss(self, batch) -> torch.Tensor:
        """The mean loss of one micro-batch from ``self.loader``."""
        x, y = batch
        return self.model(x, y, return_logits=False)

    def _val_loss(self, model) -> float | None:
        return estimate_val_loss(model, self.val_data, self.cfg, self.seq_len, self.info, self.precision)

    def _checkpoint_parts(self, model_sd: dict, optim: dict, state: dict) -> tuple[dict, dict, dict]:
        """The weights, optimizer file and state.json of a checkpoint, as :meth:`_save` writes them."""
        return model_sd, optim, state

    def _setup_run_folder(self) -> None:
        out, data_dir = self.out, self.plan.data_dir
        out.mkdir(parents=True, exist_ok=True)
        rundir.clean_temporary(out)
        self.cfg.save(out / "config.json")
        src_tok = data_dir / "tokenizer"
        if src_tok.is_dir() and not (out / "tokenizer").exists():
            shutil.copytree(src_tok, out / "tokenizer")

    def _setup_logging(self) -> None:
        tc, info, resume_from = self.tc, self.info, self.plan.resume_from
        self.metrics_writer = MetricsWriter(self.out, resume_step=self.step if resume_from else None)
        self.tb = TensorBoard(self.out / "tb", purge_step=self.step + 1 if resume_from else None)
        self.say(
            f"training {self.cfg.name}: {self.raw.num_params() / 1e6:.2f}M parameters, {tc.max_steps} steps "
            f"of {self.tokens_per_step:,} tokens ({tc.micro_batch_size} x {self.seq_len} x "
            f"{tc.grad_accum_steps} accum{f' x {info.world_size} ranks' if info.enabled else ''}), "
            f"{self.precision} on {self.dev}{', compiled' if tc.compile else ''}"
            f"{f', {info.mode}' if info.enabled else ''}"
        )
        if resume_from is not None:
            self.say(f"resuming from {resume_from} (step {self.step})")
        if self.progress and self.step < tc.max_steps:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=tc.max_steps,
                initial=self.step,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=0.5,
                file=sys.stderr,
            )

    # --- fit -----------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Optimizer steps until ``max_steps``, early stopping or a stop request (signal or ``stop_event``)."""
        tc = self.tc
        stop = self.stop if self.stop is not None else _StopFlag(self.stop_event)
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
        self.t_start = time.time()
        self._restart_rate()
        while self.step < tc.max_steps:
            lr = lr_at(self.step, tc)
            accum = self._accum_at(self.step)
            loss, grad_norm, stop_now = self._optimizer_step(lr, stop, accum)
            self.step += 1
            tokens = self.tokens_per_step * accum // tc.grad_accum_steps
            self.tokens_seen += tokens
            self.tokens_mark += tokens
            if loss is not None:
                self.last_loss = loss
            step = self.step

            do_eval = self.val_data is not None and (step % tc.eval_every == 0 or step == tc.max_steps)
            do_log = step % tc.log_every == 0 or step == tc.max_steps or do_eval or stop_now
            record = self._record(lr, loss, grad_norm) if do_log else None
            if do_eval:
                record["val_loss"] = self._evaluate()
            if record is not None:
                self._log(record)
            if self.bar is not None:
                self.bar.update(1)

            early = bool(tc.early_stop_patience and self.bad_evals >= tc.early_stop_patience)
            if early:
                self.end_state = "finished"
                self.reason = (
                    f"early stop: the val loss estimate did not improve for {self.bad_evals} "
                    f"evaluations (best {self.best_val:.4f} at step {self.best_step})"
                )
            if stop_now:
                self.end_state = "stopped"
                self.reason = f"stopped by {stop.signal_name or 'request'} at step {step}"
            last = step == tc.max_steps or early or stop_now
            if self.saved_step != step and (step % tc.save_every == 0 or last):
                self._save()
            if do_log or do_eval or self.saved_step == step:
                self._restart_rate()  # the rate excludes eval and checkpoint time
            if early or stop_now:
                break

    def _accum_at(self, step: int) -> int:
        """Micro-batches in update ``step`` (0-based): ``grad_accum_steps``, or, during
        ``batch_warmup_steps``, a number growing linearly from 1 (small batches first)."""
        tc = self.tc
        if step >= tc.batch_warmup_steps:
            return tc.grad_accum_steps
        return max(1, math.ceil(tc.grad_accum_steps * (step + 1) / tc.batch_warmup_steps))

    def _reads_host(self, step: int) -> bool:
        """Whether update number ``step`` (1-based) reads the loss on the host: every ``check_every`` steps and
        on every step that logs, evaluates, saves or ends the run (so those see checked values)."""
        tc = self.tc
        return (
            step % tc.check_every == 0
            or step % tc.log_every == 0
            or step % tc.save_every == 0
            or step >= tc.max_steps
            or (self.val_data is not None and step % tc.eval_every == 0)
        )

    def _optimizer_step(self, lr: float, stop: _StopFlag, accum: int) -> tuple[float, float, bool]:
        """One optimizer step over ``accum`` micro-batches; returns the loss (mean over ranks), the gradient
        norm and whether any rank was asked to stop (None, None, False on steps that do not read the host,
        see ``train.check_every``). Raises :class:`TrainingDiverged` on a non-finite loss or gradient norm:
        before the update is applied when ``check_every`` is 1, else at the next read, before any
        checkpoint can hold the bad weights."""
        tc, dev, info, scaler = self.tc, self.dev, self.info, self.scaler
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=dev)
        for micro in range(accum):
            batch = self.loader.next()
            with D.no_grad_sync(self.model, info, sync=micro == accum - 1):
                with autocast_context(self.precision, dev):
                    loss = self._batch_loss(batch) / accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        if scaler.is_enabled():
            scaler.unscale_(self.optimizer)
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        # the finite check stays on the device between reads: no host sync on those steps
        bad = ~torch.isfinite(loss_sum)
        if not scaler.is_enabled():
            bad = bad | ~torch.isfinite(grad_norm)
        self._bad = bad if getattr(self, "_bad", None) is None else self._bad | bad
        if not self._reads_host(self.step + 1):
            scaler.step(self.optimizer)
            scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            return None, None, False
        # one collective per read: the mean loss across ranks, whether any rank was asked to stop or diverged
        packed = torch.stack([loss_sum, torch.tensor(float(stop()), device=dev), self._bad.float()])
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
        model = self.raw if self.info.mode != "fsdp" else self.model
        self.last_val = self._val_loss(model)
        if self.last_val is not None and (self.best_val is None or self.last_val < self.best_val):
            self.best_val, self.best_step, self.bad_evals = self.last_val, self.step, 0
            self._save()
            if self.main:
                rundir.write_best(self.out, self.step, self.best_val)
        else:
            self.bad_evals += 1
        return self.last_val

    def _restart_rate(self) -> None:
        self.t_mark, self.tokens_mark = time.perf_counter(), 0

    def _elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def _record(self, lr: float, loss: float, grad_norm: float) -> dict[str, Any]:
        tps = self.tokens_mark / max(time.perf_counter() - self.t_mark, 1e-9)
        record = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": round(tps, 1),
            "tokens": self.tokens_seen,
        }
        m = mfu(self.flops_per_token, tps, self.peak * self.info.world_size if self.peak else None)
        if m is not None:
            record["mfu"] = round(m, 5)
        return record

    def _log(self, record: dict[str, Any]) -> None:
        record["elapsed_s"] = round(self._elapsed(), 3)
        if self.main:
            self.metrics_writer.write(record)
            self.tb.log(self.step, record)
            self.status.update(
                step=self.step,
                loss=record["loss"],
                val_loss=self.last_val,
                best_val_loss=self.best_val,
                tokens_per_s=record["tokens_per_s"],
            )
            if self.on_log is not None:
                self.on_log(dict(record))
        if self.bar is not None:
            post = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
            if self.last_val is not None:
                post["val~"] = f"{self.last_val:.4f}"  # ~: the estimate over eval_batches batches
            self.bar.set_postfix(post, refresh=False)

    def _save(self) -> None:
        """A checkpoint of the current step (every rank takes part; rank 0 writes it)."""
        model_sd, optim_sd = D.full_state(self.raw, self.optimizer)
        rng_all = D.gather_objects(ckpt_mod.rng_state(), self.info)
        self.saved_step = self.step
        if not self.main:
            return
        if self.raw.cfg.tie_embeddings:
            model_sd.pop("lm_head.weight", None)
        model_sd = {k: v.contiguous() for k, v in model_sd.items()}
        plan = self.plan
        model_sd, optim, state = self._checkpoint_parts(
            model_sd,
            {"optimizer": optim_sd, "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None},
            {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "rng": rng_all,
                "loader": self.loader.state_dict(),
                "config": self.cfg.to_dict(),
                "tokenizer_sha256": plan.tokenizer_sha256,
                "data_dir": str(plan.data_dir.resolve()),
                "best_val_loss": self.best_val,
                "best_step": self.best_step,
                "val_loss": self.last_val,
                "evals_without_improvement": self.bad_evals,
                "world_size": self.info.world_size,
                "elapsed_s": self._elapsed(),
                "precision": self.precision,
                "time": _now(),
            },
        )
        self.last_saved = ckpt_mod.save_checkpoint(
            self.out,
            self.step,
            model_sd,
            optim,
            state,
            keep_last=self.tc.keep_last,
            protect={self.best_step} if self.best_step is not None else set(),
        )

    # --- finish --------------------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """The last checkpoint (when the loop did not just write it), ``status.json``, the loss plot.

        A finished run whose loss ended above ln(vocab_size) (:func:`openllm.rundir.divergence`) is recorded
        as ``diverged``, with the rule's warning (what to change) in ``status.json`` and said as one line."""
        # e.g. max_steps already reached before this call; a fresh run stopped during setup has nothing to save
        if self.saved_step != self.step and self.step > 0:
            self._save()
        self._close_bar()
        elapsed = self._elapsed()
        warning = None
        if self.main:
            _finish_plots(self.out, self.cfg)
            if self.end_state == "finished":
                warning = rundir.divergence(
                    rundir.read_metrics(self.out), self.cfg.model.vocab_size, self.cfg.to_dict()
                )
                if warning is not None:
                    self.end_state = rundir.DIVERGED
            latest = self.last_saved or rundir.latest_checkpoint(self.out)
            self.status.move(
                self.end_state,
                step=self.step,
                reason=self.reason,
                error=None,
                warning=warning,
                elapsed_s=round(elapsed, 3),
                checkpoint=str(latest) if latest else None,
            )
            self.say(
                f"{self.reason}: step {self.step}"
                + (f", loss {self.last_loss:.4f}" if self.last_loss is not None else "")
                + (
                    f", val loss estimate {self.last_val:.4f} ({self.tc.eval_batches} batches)"
                    if self.last_val is not None
                    else ""
                )
                + (f", best {self.best_val:.4f} at step {self.best_step}" if self.best_val is not None else "")
            )
            if warning is not None:
                self.say(f"warning: {warning}")
        return TrainResult(
            run_dir=self.out,
            state=self.end_state,
            step=self.step,
            max_steps=self.tc.max_steps,
            loss=self.last_loss,
            val_loss=self.last_val,
            best_val_loss=self.best_val,
            best_step=self.best_step,
            tokens_seen=self.tokens_seen,
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
        self._close_bar()
        err = exc
        if _is_oom(exc):
            tc = self.tc
            err = OpenLLMError(
                f"out of GPU memory with micro_batch_size {tc.micro_batch_size} x seq_len {self.seq_len}: set "
                f"train.micro_batch_size to {max(1, tc.micro_batch_size // 2)} and train.grad_accum_steps to "
                f"{tc.grad_accum_steps * 2} (same tokens per step), or use a shorter train.seq_len"
            )
        # the lock holder records how an active run ended (once: an error after finish() wrote the end stays out)
        if self.main and self.lock is not None and self.lock.held and self.status.machine in rundir.ACTIVE_STATES:
            if isinstance(exc, KeyboardInterrupt):
                self.status.move(rundir.STOPPED, error=None, reason="interrupted (no checkpoint written)")
            elif isinstance(exc, TrainingDiverged) and self.status.machine == rundir.TRAINING:
                warning = rundir.divergence([{"loss": float("nan")}], None, self.cfg.to_dict())
                self.status.move(rundir.DIVERGED, error=str(err), warning=warning)
                self.say(f"warning: {warning}")
            else:
                self.status.move(rundir.FAILED, error=str(err) or type(err).__name__)
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
            if self.metrics_writer is not None:
                self.metrics_writer.close()
            if self.tb is not None:
                self.tb.close()
            if self.lock is not None:
                self.lock.release()
            D.shutdown(self.info)
        finally:
            if self.stop is not None:
                self.stop.__exit__(None, None, None)
                self.stop = None

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- the entry point -----------------------------------------------------------------------------------


def train(
    config: Config | str | Path | Mapping[str, Any] | None = None,
    data_dir: str | Path | None = None,
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
