"""The training loop: ``train(config, data_dir=..., out_dir=...)`` (and ``openllm train``).

What one call does, in order: resolve the config (a fresh run's, or the checkpoint's when resuming), check the
data against it (vocabulary size, tokenizer checksum), set up the device and, under ``torchrun``, the process
group (DDP or FSDP2), build the model and AdamW, restore a checkpoint if there is one, then run optimizer
steps until ``max_steps``: gradient accumulation, mixed precision, clipping, the learning-rate schedule,
periodic evaluation on the val split with best-checkpoint tracking and early stopping, ``metrics.jsonl`` /
TensorBoard / progress bar, atomic checkpoints, ``status.json`` for the web app. SIGTERM / SIGINT finish the
current step, save, and end with state ``stopped``. A NaN/inf loss ends the run (state ``failed``) before the
bad update is applied, so the checkpoints on disk stay good.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import checkpoint as ckpt_mod
from . import rundir
from .config import Config, ConfigError, load_config
from .errors import OpenLLMError

__all__ = ["train", "TrainResult", "TrainingDiverged", "resolve_precision", "autocast_context"]


class TrainingDiverged(OpenLLMError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What :func:`train` returns (also what ``status.json`` says at the end)."""

    run_dir: Path
    state: str  # finished | stopped
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
    """``RUN/status.json``: state running | finished | stopped | failed, error, step, max_steps, pid, times."""

    def __init__(self, run_dir: Path, max_steps: int, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.data: dict[str, Any] = {"state": "running", "error": None, "step": 0, "max_steps": max_steps,
                                     "pid": os.getpid(), "started": _now(), "updated": _now()}

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

    def __enter__(self) -> "_StopFlag":
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


# --- config resolution --------------------------------------------------------------------------------------

def _as_config(config: Config | str | Path | Mapping[str, Any]) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config.from_dict(config)
    return load_config(config)


def _find_resume(out_dir: Path, resume: bool | str | Path | None) -> Path | None:
    if resume is None or resume is True:
        found = rundir.latest_checkpoint(out_dir)
        if resume is True and found is None:
            raise OpenLLMError(f"--resume: {out_dir} holds no checkpoint to resume from "
                               f"(nothing in {out_dir / 'checkpoints'}); leave out --resume to start the run")
        return found
    if resume is False:
        found = rundir.latest_checkpoint(out_dir)
        if found is not None:
            raise OpenLLMError(f"{out_dir} already holds checkpoints (latest {found.name}): resume it, "
                               f"or train into another --out folder")
        return None
    path = Path(resume)
    if (path / "checkpoints").is_dir():
        path = rundir.latest_checkpoint(path) or path
    if not (path / "state.json").is_file():
        raise OpenLLMError(f"--resume {resume}: not a checkpoint folder (no state.json)")
    return path


def _check_vocab(cfg: Config, meta: dict[str, Any], vocab_from_data: bool, resuming: bool) -> Config:
    data_vocab = int(meta["vocab_size"])
    if data_vocab == cfg.model.vocab_size:
        return cfg
    if vocab_from_data and not resuming:
        return cfg.replace(model={"vocab_size": data_vocab})
    raise OpenLLMError(
        f"the data was tokenized with a vocabulary of {data_vocab} tokens but model.vocab_size is "
        f"{cfg.model.vocab_size}: set model.vocab_size to {data_vocab} in the config"
        + ("" if resuming else " or pass --vocab-from-data")
    )


# --- evaluation ---------------------------------------------------------------------------------------------

@torch.no_grad()
def _evaluate(model, data, cfg: Config, seq_len: int, info, precision: str) -> float | None:
    from .distributed import all_reduce
    from .batches import SequentialWindows

    windows = SequentialWindows(data, cfg.train.micro_batch_size, seq_len, split="val",
                                max_batches=cfg.train.eval_batches, rank=info.rank,
                                world_size=info.world_size, device=info.device)
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)
    for x, y in windows:
        with autocast_context(precision, info.device):
            loss = model(x, y, return_logits=False)
        total[0] += loss.double() * y.numel()
        total[1] += y.numel()
    model.train(was_training)
    all_reduce(total, info)
    return float(total[0] / total[1]) if total[1] > 0 else None


# --- the loop -----------------------------------------------------------------------------------------------

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
    from . import distributed as D
    from .batches import RandomWindowLoader, TokenShards, read_meta

    out = Path(out_dir)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))

    # --- config: the checkpoint's when resuming, else the given one ---------------------------------------
    resume_from = _find_resume(out, resume)
    state: dict[str, Any] = {}
    if resume_from is not None:
        state = ckpt_mod.load_state(resume_from)
        cfg = Config.from_dict(state["config"])
        if config is not None:
            given = _as_config(config)
            if given.model != cfg.model:
                raise OpenLLMError(f"--config's model shape differs from the checkpoint's in {resume_from}: "
                                   f"resume without --config, or train into another --out folder")
    elif config is None:
        raise OpenLLMError(f"give a config (e.g. --config configs/tiny.json): {out} has no checkpoint to resume")
    else:
        cfg = _as_config(config)
    if overrides:
        if resume_from is not None and "model" in overrides:
            raise OpenLLMError(f"cannot change the model of a run when resuming ({resume_from}): "
                               f"train into another --out folder")
        cfg = cfg.replace(**{k: dict(v) for k, v in overrides.items()})
    train_over: dict[str, Any] = {}
    if max_steps is not None:
        train_over["max_steps"] = int(max_steps)
    if save_every is not None:
        train_over["save_every"] = int(save_every)
    if compile is not None:
        train_over["compile"] = bool(compile)
    if train_over:
        cfg = cfg.replace(train=train_over)
    tc = cfg.train

    if data_dir is None:
        data_dir = state.get("data_dir")
        if data_dir is None:
            raise OpenLLMError("give --data DIR (a folder written by `openllm tokenize`)")
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    cfg = _check_vocab(cfg, meta, vocab_from_data, resume_from is not None)
    tok_sha = meta.get("tokenizer_sha256")
    if resume_from is not None and state.get("tokenizer_sha256") and tok_sha and state["tokenizer_sha256"] != tok_sha:
        raise OpenLLMError(f"{data_dir} was tokenized with another tokenizer than the checkpoint's "
                           f"({tok_sha[:12]} vs {state['tokenizer_sha256'][:12]}): resume with the same data")
    seq_len = tc.seq_len or cfg.model.max_seq_len

    # --- devices, process group --------------------------------------------------------------------------
    info = D.init_distributed(device, mode=tc.distributed)
    dev = info.device
    precision = resolve_precision(tc.precision, dev)
    if precision == "fp16" and dev.type == "cpu":
        say("note: fp16 on CPU is slow and rarely useful; consider precision fp32 or bf16")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    main = info.is_main
    status = _Status(out, tc.max_steps, enabled=main)
    metrics_writer = tb = bar = None
    try:
        if main:
            out.mkdir(parents=True, exist_ok=True)
            rundir.clean_temporary(out)
            cfg.save(out / "config.json")
            src_tok = data_dir / "tokenizer"
            if src_tok.is_dir() and not (out / "tokenizer").exists():
                shutil.copytree(src_tok, out / "tokenizer")
            status.update(state="running", step=int(state.get("step", 0)))

        # --- model, optimizer, restore --------------------------------------------------------------------
        from .model import Transformer
        from .optim import build_optimizer, lr_at

        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        model = Transformer(cfg.model)
        if resume_from is not None:
            ckpt_mod.load_model_weights(model, resume_from)
        model.to(dev)
        raw = model
        flops_per_token = raw.flops_per_token(seq_len)
        if tc.compile and info.mode != "fsdp":
            model = torch.compile(model)
        model = D.wrap_model(model, info)
        if tc.compile and info.mode == "fsdp" and info.enabled:
            model = torch.compile(model)
        state_owner = raw  # the module whose parameters the optimizer holds (FSDP2 shards it in place)
        optimizer = build_optimizer(state_owner, tc, dev)
        scaler = torch.amp.GradScaler(dev.type, enabled=(precision == "fp16"))
        if resume_from is not None:
            opt_state = ckpt_mod.load_optimizer_state(resume_from)
            D.load_full_state(state_owner, optimizer, None, opt_state["optimizer"])
            if opt_state.get("scaler"):
                scaler.load_state_dict(opt_state["scaler"])

        shards = TokenShards(data_dir, "train")
        loader = RandomWindowLoader(shards, tc.micro_batch_size, seq_len, seed=tc.seed, rank=info.rank,
                                    world_size=info.world_size, device=dev)
        val_data = TokenShards(data_dir, "val") if "val" in meta["splits"] else None
        if resume_from is not None:
            loader.load_state_dict(state["loader"])
            rngs = state.get("rng") or []
            if rngs:
                ckpt_mod.set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
        else:
            torch.manual_seed(tc.seed + info.rank)  # dropout differs across ranks; init did not

        step = int(state.get("step", 0))
        tokens_seen = int(state.get("tokens_seen", 0))
        best_val = state.get("best_val_loss")
        best_step = state.get("best_step")
        bad_evals = int(state.get("evals_without_improvement", 0))
        last_val = state.get("val_loss")
        elapsed_before = float(state.get("elapsed_s", 0.0))
        tokens_per_step = tc.micro_batch_size * seq_len * tc.grad_accum_steps * info.world_size

        if main:
            from .metrics import MetricsWriter, TensorBoard

            metrics_writer = MetricsWriter(out, resume_step=step if resume_from else None)
            tb = TensorBoard(out / "tb", purge_step=step + 1 if resume_from else None)
            n_params = raw.num_params()
            say(f"training {cfg.name}: {n_params / 1e6:.2f}M parameters, {tc.max_steps} steps of "
                f"{tokens_per_step:,} tokens ({tc.micro_batch_size} x {seq_len} x {tc.grad_accum_steps} accum"
                f"{f' x {info.world_size} ranks' if info.enabled else ''}), {precision} on {dev}"
                f"{', compiled' if tc.compile else ''}{f', {info.mode}' if info.enabled else ''}")
            if resume_from is not None:
                say(f"resuming from {resume_from} (step {step})")
        from .metrics import device_peak_flops, mfu as _mfu

        peak = device_peak_flops(dev)
        if main and progress and step < tc.max_steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=tc.max_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                       mininterval=0.5, file=sys.stderr)

        def save(step_: int) -> Path | None:
            model_sd, optim_sd = D.full_state(state_owner, optimizer)
            rng_all = D.gather_objects(ckpt_mod.rng_state(), info)
            if not main:
                return None
            if raw.cfg.tie_embeddings:
                model_sd.pop("lm_head.weight", None)
            model_sd = {k: v.contiguous() for k, v in model_sd.items()}
            protect = {best_step} if best_step is not None else set()
            return ckpt_mod.save_checkpoint(
                out, step_, model_sd,
                {"optimizer": optim_sd, "scaler": scaler.state_dict() if scaler.is_enabled() else None},
                {
                    "step": step_, "tokens_seen": tokens_seen, "rng": rng_all, "loader": loader.state_dict(),
                    "config": cfg.to_dict(), "tokenizer_sha256": tok_sha, "data_dir": str(data_dir.resolve()),
                    "best_val_loss": best_val, "best_step": best_step, "val_loss": last_val,
                    "evals_without_improvement": bad_evals, "world_size": info.world_size,
                    "elapsed_s": elapsed_before + (time.time() - t_start), "precision": precision,
                    "time": _now(),
                },
                keep_last=tc.keep_last, protect=protect,
            )

        params = [p for p in raw.parameters()]
        model.train()
        t_start = time.time()
        t_mark, tokens_mark = time.perf_counter(), 0
        last_loss: float | None = None
        last_saved: Path | None = None
        saved_step = step if resume_from is not None else -1
        end_state, reason = "finished", "reached max_steps"

        with _StopFlag(stop_event) as stop:
            while step < tc.max_steps:
                lr = lr_at(step, tc)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                loss_sum = torch.zeros((), device=dev)
                for micro in range(tc.grad_accum_steps):
                    x, y = loader.next()
                    with D.no_grad_sync(model, info, sync=micro == tc.grad_accum_steps - 1):
                        with autocast_context(precision, dev):
                            loss = model(x, y, return_logits=False) / tc.grad_accum_steps
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach().float()
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
                if hasattr(grad_norm, "full_tensor"):
                    grad_norm = grad_norm.full_tensor()
                # one collective per step: the mean loss across ranks and whether any rank was asked to stop
                packed = torch.stack([loss_sum, torch.tensor(float(stop()), device=dev)])
                D.all_reduce(packed, info)
                loss_val = float(packed[0]) / info.world_size
                stop_now = float(packed[1]) > 0
                gn = float(grad_norm)
                if not math.isfinite(loss_val) or (not scaler.is_enabled() and not math.isfinite(gn)):
                    what = f"loss {loss_val}" if not math.isfinite(loss_val) else f"gradient norm {gn}"
                    raise TrainingDiverged(
                        f"training diverged at step {step + 1}: {what}; the update was not applied and the "
                        f"last good checkpoint is {_latest_name(out)}. Lower train.lr, raise "
                        f"train.warmup_steps or use bf16 instead of fp16, then resume"
                    )
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += tokens_per_step
                tokens_mark += tokens_per_step
                last_loss = loss_val

                do_eval = val_data is not None and (step % tc.eval_every == 0 or step == tc.max_steps)
                do_log = step % tc.log_every == 0 or step == tc.max_steps or do_eval or stop_now
                record = None
                if do_log:
                    now = time.perf_counter()
                    tps = tokens_mark / max(now - t_mark, 1e-9)
                    record = {"step": step, "loss": loss_val, "lr": lr, "grad_norm": gn,
                              "tokens_per_s": round(tps, 1), "tokens": tokens_seen}
                    m = _mfu(flops_per_token, tps, peak * info.world_size if peak else None)
                    if m is not None:
                        record["mfu"] = round(m, 5)
                if do_eval:
                    last_val = _evaluate(raw if info.mode != "fsdp" else model, val_data, cfg, seq_len, info,
                                         precision)
                    record["val_loss"] = last_val
                    if last_val is not None and (best_val is None or last_val < best_val):
                        best_val, best_step, bad_evals = last_val, step, 0
                        last_saved, saved_step = save(step), step
                        if main:
                            rundir.write_best(out, step, best_val)
                    else:
                        bad_evals += 1
                if record is not None:
                    record["elapsed_s"] = round(elapsed_before + time.time() - t_start, 3)
                    if main:
                        metrics_writer.write(record)
                        tb.log(step, record)
                        status.update(step=step, loss=loss_val, val_loss=last_val, best_val_loss=best_val,
                                      tokens_per_s=record["tokens_per_s"])
                        if on_log is not None:
                            on_log(dict(record))
                    if bar is not None:
                        post = {"loss": f"{loss_val:.4f}", "tok/s": f"{record['tokens_per_s']:,.0f}"}
                        if last_val is not None:
                            post["val"] = f"{last_val:.4f}"
                        bar.set_postfix(post, refresh=False)
                if bar is not None:
                    bar.update(1)

                early = tc.early_stop_patience and bad_evals >= tc.early_stop_patience
                if early:
                    end_state = "finished"
                    reason = (f"early stop: val loss did not improve for {bad_evals} evaluations "
                              f"(best {best_val:.4f} at step {best_step})")
                if stop_now:
                    end_state, reason = "stopped", f"stopped by {stop.signal_name or 'request'} at step {step}"
                last = step == tc.max_steps or early or stop_now
                if saved_step != step and (step % tc.save_every == 0 or last):
                    last_saved, saved_step = save(step), step
                if do_log or do_eval or saved_step == step:
                    t_mark, tokens_mark = time.perf_counter(), 0  # rate excludes eval and checkpoint time
                if early or stop_now:
                    break

        if saved_step != step:  # e.g. max_steps already reached before this call
            last_saved = save(step)
        if bar is not None:
            bar.close()
            bar = None
        elapsed = elapsed_before + time.time() - t_start
        if main:
            _finish_plots(out, cfg)
            status.update(state=end_state, step=step, reason=reason, error=None, elapsed_s=round(elapsed, 3),
                          checkpoint=str(last_saved) if last_saved else None)
            say(f"{reason}: step {step}, loss {last_loss if last_loss is not None else float('nan'):.4f}"
                + (f", val loss {last_val:.4f}" if last_val is not None else "")
                + (f", best val {best_val:.4f} at step {best_step}" if best_val is not None else ""))
        return TrainResult(run_dir=out, state=end_state, step=step, max_steps=tc.max_steps, loss=last_loss,
                           val_loss=last_val, best_val_loss=best_val, best_step=best_step,
                           tokens_seen=tokens_seen, elapsed_s=elapsed, reason=reason,
                           checkpoint=rundir.latest_checkpoint(out))
    except BaseException as exc:
        if bar is not None:
            bar.close()
        err = exc
        if _is_oom(exc):
            err = OpenLLMError(
                f"out of GPU memory with micro_batch_size {tc.micro_batch_size} x seq_len {seq_len}: set "
                f"train.micro_batch_size to {max(1, tc.micro_batch_size // 2)} and train.grad_accum_steps to "
                f"{tc.grad_accum_steps * 2} (same tokens per step), or use a shorter train.seq_len"
            )
        if main:
            if isinstance(exc, KeyboardInterrupt):
                status.update(state="stopped", error=None, reason="interrupted (no checkpoint written)")
            else:
                status.update(state="failed", error=str(err) or type(err).__name__)
            with contextlib.suppress(Exception):
                _finish_plots(out, cfg)
        if err is not exc:
            raise err from exc
        raise
    finally:
        if metrics_writer is not None:
            metrics_writer.close()
        if tb is not None:
            tb.close()
        D.shutdown(info)


def _latest_name(out: Path) -> str:
    latest = rundir.latest_checkpoint(out)
    return str(latest) if latest is not None else "none (no checkpoint was written yet)"


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in str(exc)


def _finish_plots(out: Path, cfg: Config) -> None:
    from .metrics import plot_loss

    records = rundir.read_metrics(out)
    if records:
        plot_loss(records, out / rundir.LOSS_PNG, title=f"{cfg.name}: {out.name}")
