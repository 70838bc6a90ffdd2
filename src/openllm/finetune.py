"""Supervised fine-tuning on conversations: ``finetune(model, data, out_dir)`` (and ``openllm finetune``).

The base model is anything :func:`openllm.load` reads: a run, a checkpoint, an export (ours or a plain Llama
Hugging Face folder) or a hub reference ``OWNER/NAME@VERSION``. The conversations (JSON Lines, see
:mod:`openllm.conversations`) are rendered with the project's chat template, packed into rows of
``seq_len + 1`` tokens, and trained on with the loss on assistant tokens only and attention kept inside each
conversation (a block-diagonal mask).

Training is :class:`openllm.train.Trainer` with its public hooks extended (the model starts from the base
weights, the batches come from :class:`~openllm.conversations.PackedLoader`, the loss and the val estimate are
assistant-token losses, a checkpoint also holds the ``finetune`` record and, with LoRA, the adapters), so
checkpoints, exact resume, ``metrics.jsonl``, ``status.json``, the loss plot, stop requests and DDP are those
of ``openllm train``. The loss of a step is the mean over each micro-batch's
assistant tokens, averaged over micro-batches and ranks.

Full fine-tuning is the default. ``lora=True`` (or a dict of ``rank``, ``alpha``, ``dropout``,
``target_modules``) trains LoRA adapters through ``peft`` instead: every checkpoint's ``model.safetensors``
holds the merged weights (so evaluate, serve, export and push see a plain model), and ``optimizer.pt``
holds the adapters, which resuming puts back on top of the base weights (checked against the recorded
checksum).

Every checkpoint's ``state.json`` records ``finetune``: the base model (source, kind, step, hub reference,
checksum of its weights), the data files (path, sha256, conversations kept, dropped, truncated) and the LoRA
settings.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_mod
from . import distributed as D
from . import rundir
from .config import Config
from .conversations import PackedLoader, attention_mask, encode_conversations, pack, read_conversations
from .errors import OpenLLMError
from .fsio import read_json
from .hashing import sha256_file
from .model import Transformer
from .train import RunPlan, Trainer, TrainResult, check_out_dir, check_resume_changes, find_resume, load_resume_state

__all__ = [
    "finetune",
    "FinetuneTrainer",
    "SFT_DEFAULTS",
    "LORA_DEFAULTS",
    "weights_sha256",
    "merged_state_dict",
    "finetune_record",
    "chat_quickstart",
    "QUICKSTART_CHAT",
]

# train.* values a fine-tune starts from (the base run's pretraining schedule does not fit SFT);
# overrides win over these
SFT_DEFAULTS: dict[str, Any] = {
    "max_steps": 200,
    "lr": 1e-4,
    "min_lr": 1e-5,
    "warmup_steps": 10,
    "schedule": "cosine",
    "eval_every": 50,
    "save_every": 100,
    "log_every": 10,
    "batch_warmup_steps": 0,
    "early_stop_patience": 0,
    "micro_batch_size": 8,
    "doc_aligned": False,
    "optimizer": "adamw",
}
LORA_DEFAULTS: dict[str, Any] = {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["wqkv", "wo", "w13", "w2"]}


def weights_sha256(model: torch.nn.Module) -> str:
    """A checksum of a model's weights (names, shapes, dtypes and values, in name order), the same for the
    same weights whatever file format they came from."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name == "lm_head.weight" and getattr(getattr(model, "cfg", None), "tie_embeddings", False):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A LoRA-injected model's weights in the plain model's names, each adapter merged into its weight."""
    from peft.tuners.lora import LoraLayer

    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            layer: Any = module  # get_base_layer and get_delta_weight come from peft mixins its types do not show
            w = layer.get_base_layer().weight.detach()
            out[f"{name}.weight"] = (w + layer.get_delta_weight("default").to(w.dtype)).cpu().contiguous()
    for name, t in model.state_dict().items():
        if "lora_" in name or ".base_layer." in name:
            continue
        out[name] = t.detach().cpu().contiguous()
    return out


class MergedWeights:
    """A LoRA fine-tune's ``model`` checkpoint component: the merged weights (:func:`merged_state_dict`), so
    evaluate, serve, export and push see a plain model. Resuming rebuilds the model from the base weights
    instead, and :class:`LoraAdapters` puts the adapters back."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = merged_state_dict(self.model)
        if isinstance(self.model, Transformer) and self.model.cfg.tie_embeddings:  # (peft injects in place)
            sd.pop("lm_head.weight", None)
        return sd

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        raise OpenLLMError("merged LoRA weights cannot be split back into base weights and adapters")


class LoraAdapters:
    """The LoRA adapters of a model, a checkpoint component (kept in ``optimizer.pt``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if "lora_" in k}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if not state or unexpected or any("lora_" in k for k in missing):
            raise OpenLLMError("the checkpoint's LoRA adapters do not fit this model")


def _inject_lora(model: Transformer, lora: Mapping[str, Any]) -> Transformer:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise OpenLLMError(
            "LoRA fine-tuning needs the peft package: pip install 'openllm[finetune]' (or fine-tune "
            "every weight: leave out --lora)"
        ) from exc

    cfg = LoraConfig(
        r=int(lora["rank"]),
        lora_alpha=float(lora["alpha"]),  # type: ignore[arg-type]  # peft types it int; it scales by alpha / r
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        bias="none",
    )
    inject_adapter_in_model(cfg, model)  # in place: the same model, its LoRA layers added
    for name, p in model.named_parameters():
        p.requires_grad = "lora_" in name
    return model


class FinetuneTrainer(Trainer):
    """:class:`~openllm.train.Trainer` on packed conversations from a base model (see the module docstring)."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        base_state: dict[str, torch.Tensor],
        tokenizer,
        train_rows,
        val_rows,
        record: dict[str, Any],
        lora: dict[str, Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(plan, **kwargs)
        self.base_state, self.tokenizer = base_state, tokenizer
        self.train_rows, self.val_rows = train_rows, val_rows
        self.record, self.lora = record, lora
        if lora is not None and self.info.mode == "fsdp" and self.info.enabled:
            raise OpenLLMError("LoRA fine-tuning runs with DDP, not FSDP: set train.distributed=ddp")

    def build_model(self) -> Transformer:
        """The base model; a full fine-tune resumes the checkpoint's weights, a LoRA one adds fresh adapters
        to the base weights (resuming, the checkpoint's adapters replace them: :class:`LoraAdapters`)."""
        resuming = self.plan.resume_from is not None
        raw = Transformer(self.cfg.model)
        if self.lora is None and resuming and self.plan.resume_from is not None:
            ckpt_mod.load_model_weights(raw, self.plan.resume_from)
        else:
            raw.load_state_dict(self.base_state, strict=False)
        self.base_state = {}  # the base weights are in the model now: let them go
        return raw if self.lora is None else _inject_lora(raw, self.lora)

    def setup_run_folder(self) -> None:
        """The run folder with the config and the base model's tokenizer."""
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        rundir.clean_temporary(out)
        self.cfg.save(out / rundir.CONFIG)
        if not (out / rundir.TOKENIZER).exists():
            self.tokenizer.save(out / rundir.TOKENIZER)

    def build_data(self) -> tuple[PackedLoader, Any]:
        """Packed training conversations, and the held-out ones (or None)."""
        tc, info = self.tc, self.info
        loader = PackedLoader(
            self.train_rows,
            tc.micro_batch_size,
            seed=tc.seed,
            rank=info.rank,
            world_size=info.world_size,
            device=self.dev,
        )
        return loader, self.val_rows

    def batch_loss(self, batch) -> torch.Tensor:
        """The mean loss over a micro-batch's assistant tokens, attention kept inside each conversation."""
        x, y, seg = batch
        return self.model(x, y, return_logits=False, attn_mask=attention_mask(seg))

    def val_loss(self, model: torch.nn.Module) -> float | None:
        """The assistant-token loss over the first ``train.eval_batches`` batches of held-out conversations."""
        from .evaluate.chat import assistant_loss_sums
        from .train import autocast_context

        loader = PackedLoader(
            self.val_rows,
            self.tc.micro_batch_size,
            rank=self.info.rank,
            world_size=self.info.world_size,
            device=self.dev,
            shuffle=False,
        )
        was_training = model.training
        model.eval()
        with autocast_context(self.precision, self.dev):
            total, count = assistant_loss_sums(model, loader.epoch_batches(), max_batches=self.tc.eval_batches)
        model.train(was_training)
        sums = torch.tensor([total, count], dtype=torch.float64, device=self.dev)
        D.all_reduce(sums, self.info)
        return float(sums[0] / sums[1]) if sums[1] > 0 else None

    def checkpoint_components(self) -> dict[str, ckpt_mod.Stateful]:
        """The trainer's; with LoRA the weights are merged and the adapters kept beside the optimizer."""
        components = super().checkpoint_components()
        if self.lora is not None:
            components[ckpt_mod.MODEL] = MergedWeights(self.raw)
            components["lora"] = LoraAdapters(self.raw)
        return components

    def checkpoint_facts(self) -> dict[str, Any]:
        """The trainer's, and the ``finetune`` record (base model, data, LoRA settings)."""
        return {**super().checkpoint_facts(), "finetune": self.record}


def _sft_config(
    base: Config, overrides: Mapping[str, Mapping[str, Any]] | None, max_steps: int | None, save_every: int | None
) -> Config:
    if overrides and "model" in overrides:
        raise OpenLLMError("a fine-tune keeps the base model's shape: leave out model.* overrides")
    train = dict(SFT_DEFAULTS)
    train.update((overrides or {}).get("train", {}))
    for key, value in (("max_steps", max_steps), ("save_every", save_every)):
        if value is not None:
            train[key] = int(value)
    changes = {k: dict(v) for k, v in (overrides or {}).items() if k != "train"}
    changes["train"] = train
    return base.replace(**changes)


def _load_rows(path: Path, tokenizer, seq_len: int, too_long: str, seed: int, say):
    convs = read_conversations(path)
    examples, report = encode_conversations(tokenizer, convs, seq_len + 1, too_long=too_long)
    say(f"{path}: {report.summary()}")
    if not examples:
        raise OpenLLMError(
            f"{path}: every conversation is longer than the context of {seq_len + 1} tokens: "
            f"use --too-long truncate or a longer train.seq_len"
        )
    rows = pack(examples, seq_len + 1, pad_id=tokenizer.pad_id, seed=seed)
    info = {
        "path": str(path.resolve()),
        "sha256": sha256_file(path),
        "conversations": len(convs),
        "kept": report.kept,
        "dropped": report.dropped,
        "truncated": report.truncated,
        "rows": len(rows),
        "assistant_tokens": rows.target_tokens,
    }
    return rows, info


def finetune(
    model: str | Path | None,
    data: str | Path | None,
    out_dir: str | Path,
    *,
    val_data: str | Path | None = None,
    lora: bool | Mapping[str, Any] | None = None,
    too_long: str = "drop",
    max_steps: int | None = None,
    save_every: int | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    resume: bool | str | Path | None = None,
    device: str | None = None,
    hub: Any = None,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` on the conversations in ``data`` into the run folder ``out_dir``; see the module
    docstring. ``val_data`` (held-out conversations) gives the val-loss estimate every ``train.eval_every``
    steps. ``too_long``: drop (default), truncate or error for a conversation longer than the context.
    ``resume`` works as in :func:`openllm.train.train`; when resuming, ``model`` and ``data`` may be left out
    (the checkpoint records them) and must match the recorded ones when given. Returns the
    :class:`~openllm.train.TrainResult`."""
    from .loading import load

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    check_out_dir(out)
    resume_from = find_resume(out, resume)
    state = load_resume_state(resume_from) if resume_from is not None else {}
    prior = state.get("finetune") if resume_from is not None else None
    if resume_from is not None and not isinstance(prior, dict):
        raise OpenLLMError(
            f"{resume_from} is a checkpoint of `openllm train`, not of a fine-tune: resume it with "
            f"`openllm train`, or fine-tune into another --out folder"
        )
    if prior and not (
        isinstance(prior.get("base"), dict)
        and isinstance(prior["base"].get("source"), str)
        and isinstance(prior.get("data"), dict)
        and isinstance(prior["data"].get("path"), str)
        and isinstance(prior.get("val_data") or {}, dict)
    ):
        raise ckpt_mod.CheckpointDamaged(
            f"{resume_from}/{rundir.STATE}: its 'finetune' record lacks the base model's source or the data's "
            f"path: the file is damaged; resume from an earlier checkpoint (--resume CHECKPOINT)"
        )
    if prior:
        model = model or prior["base"]["source"]
        data = data or prior["data"]["path"]
        val_data = val_data or (prior.get("val_data") or {}).get("path")
        lora_prior = prior.get("lora")
        if lora is not None and bool(lora) != bool(lora_prior):
            raise OpenLLMError(
                f"{out} was fine-tuned {'with' if lora_prior else 'without'} LoRA: resume it the same way"
            )
        lora = lora_prior
    if model is None:
        raise OpenLLMError("give the base MODEL to fine-tune (a run, an export or OWNER/NAME@VERSION)")
    if data is None:
        raise OpenLLMError('give --data FILE: conversations as JSON Lines ({"messages": [...]} a line)')
    data, val_data = Path(data), Path(val_data) if val_data is not None else None

    loaded = load(model, device="cpu", hub=hub)  # the trainer moves the weights to its own device
    if loaded.tokenizer is None:
        raise OpenLLMError(f"{model}: no tokenizer beside the weights; a fine-tune needs the model's tokenizer")
    base_sha = weights_sha256(loaded.model)
    if prior and prior["base"].get("weights_sha256") not in (None, base_sha):
        raise OpenLLMError(
            f"the base model {model} has other weights than the ones {out} was fine-tuned from "
            f"(checksum {base_sha[:12]} vs {prior['base']['weights_sha256'][:12]})"
        )
    if resume_from is not None:
        cfg = Config.from_dict(state["config"])
        if overrides or max_steps is not None or save_every is not None:
            changes = {k: dict(v) for k, v in (overrides or {}).items()}
            if "model" in changes:
                raise OpenLLMError("cannot change the model of a run when resuming")
            for key, value in (("max_steps", max_steps), ("save_every", save_every)):
                if value is not None:
                    changes.setdefault("train", {})[key] = int(value)
            new = cfg.replace(**changes)
            check_resume_changes(cfg, new, resume_from)
            cfg = new
    else:
        cfg = _sft_config(loaded.config, overrides, max_steps, save_every)
    if lora and cfg.train.optimizer != "adamw":
        raise OpenLLMError(
            "LoRA fine-tuning trains its adapters with AdamW: leave out train.optimizer or set it to adamw"
        )
    tok = loaded.tokenizer
    if tok.vocab_size > cfg.model.vocab_size:
        raise OpenLLMError(f"the tokenizer has {tok.vocab_size} tokens, the model {cfg.model.vocab_size}")
    seq_len = cfg.seq_len

    train_rows, data_info = _load_rows(data, tok, seq_len, too_long, cfg.train.seed, say)
    val_rows, val_info = (None, None)
    if val_data is not None:
        val_rows, val_info = _load_rows(val_data, tok, seq_len, too_long, 0, say)
    if prior and prior["data"].get("sha256") != data_info["sha256"]:
        raise OpenLLMError(
            f"{data} is not the data {out} was fine-tuned on (sha256 differs): resume with the "
            f"same file, or fine-tune into another --out folder"
        )

    lora_cfg = None
    if lora:
        lora_cfg = dict(LORA_DEFAULTS)
        if isinstance(lora, Mapping):
            unknown = set(lora) - set(LORA_DEFAULTS)
            if unknown:
                raise OpenLLMError(f"unknown LoRA settings {sorted(unknown)}; known: {sorted(LORA_DEFAULTS)}")
            lora_cfg.update(lora)
        rank, alpha, dropout = lora_cfg["rank"], lora_cfg["alpha"], lora_cfg["dropout"]
        # peft raises ValueError deep in injection for these; they are the user's settings
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise OpenLLMError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
            raise OpenLLMError(f"LoRA alpha must be a positive number, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise OpenLLMError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    record = {
        "base": {
            "source": str(Path(model).resolve()) if Path(model).exists() else str(model),
            "kind": loaded.kind,
            "path": str(Path(loaded.path).resolve()),
            "step": loaded.step,
            "hub_ref": loaded.hub_ref,
            "name": loaded.config.name,
            "weights_sha256": base_sha,
            "tokenizer_sha256": getattr(tok, "sha256", None),
        },
        "data": data_info,
        "val_data": val_info,
        "lora": lora_cfg,
        "too_long": too_long,
        "chat_template": "openllm.tokenizer.CHAT_TEMPLATE",
    }
    base_state = {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}
    del loaded
    plan = RunPlan(
        cfg=cfg,
        out=out,
        data_dir=data,
        meta={"tokenizer_sha256": getattr(tok, "sha256", None), "splits": {}},
        resume_from=resume_from,
        state=state,
    )
    trainer = FinetuneTrainer(
        plan,
        base_state=base_state,
        tokenizer=tok,
        train_rows=train_rows,
        val_rows=val_rows,
        record=record,
        lora=lora_cfg,
        device=device,
        progress=progress,
        stop_event=stop_event,
        on_log=on_log,
        say=say,
    )
    return trainer.run()


def finetune_record(source: str | Path) -> dict[str, Any] | None:
    """The ``finetune`` record (base model, data, LoRA) of a fine-tuned run or checkpoint, or None."""
    src = Path(source)
    ckpt = rundir.latest_checkpoint(src) or (src if (src / rundir.STATE).is_file() else None)
    if ckpt is None:
        return None
    rec = read_json(ckpt / rundir.STATE).get("finetune")
    return rec if isinstance(rec, dict) else None


# train.* values of the quickstart's fine-tune (``openllm quickstart --chat``): a few minutes on 2 CPU cores
QUICKSTART_CHAT: dict[str, Any] = {
    "max_steps": 150,
    "lr": 5e-4,
    "min_lr": 5e-5,
    # rows of the model's whole context (None; the tiny preset pretrains on 128 of its 256): a tool-use
    # conversation (the function's JSON schema, the call, the result, the answer) is about 200 tokens; 8 rows of
    # 256 keep the tokens a step as they were
    "seq_len": None,
    "micro_batch_size": 8,
    "eval_every": 50,
    "save_every": 150,
    "warmup_steps": 10,
}


def chat_quickstart(
    out: str | Path,
    base_run: str | Path,
    *,
    device: str | None = None,
    max_steps: int | None = None,
    conversations: int = 2000,
    samples: int = 3,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The quickstart's chat part: the synthetic verse conversations into ``OUT/data/conversations``, a
    fine-tune of ``base_run`` into ``OUT/chat_run``, then the assistant-token loss of the base and the
    fine-tuned model on the held-out conversations and greedy samples through the chat template. Returns
    the evaluation (also written to ``OUT/chat_evaluation.json``)."""
    from .conversations import write_synthetic_set
    from .evaluate.chat import evaluate_chat
    from .fsio import write_json_atomic

    out = Path(out)
    data = out / "data" / "conversations"
    about = write_synthetic_set(data, conversations)
    say(
        f"    synthetic conversations (verse questions from the embedded corpus): "
        f"{about['files']['train.jsonl']['conversations']} train, {about['files']['val.jsonl']['conversations']} "
        f"held out -> {data}"
    )
    train = dict(QUICKSTART_CHAT)
    if max_steps is not None:
        train["max_steps"] = int(max_steps)
        train["save_every"] = int(max_steps)
        train["eval_every"] = max(1, min(train["eval_every"], int(max_steps)))
    run = out / "chat_run"
    result = finetune(
        base_run,
        data / "train.jsonl",
        run,
        val_data=data / "val.jsonl",
        overrides={"train": train},
        resume=False,
        device=device,
        progress=progress,
        log=say,
    )
    # the end-of-turn rate over 20 greedy replies; ``samples`` of them are printed
    ev = evaluate_chat(run, data / "val.jsonl", base=base_run, samples=max(samples, 20), device=device)
    ev["train_steps"] = result.step
    write_json_atomic(out / "chat_evaluation.json", ev)
    b, f = ev["base"], ev
    say(
        f"    assistant-token loss on {f['assistant_tokens']:,} held-out assistant tokens "
        f"({f['conversations']} conversations): base {b['assistant_loss']:.4f} -> fine-tuned "
        f"{f['assistant_loss']:.4f} (perplexity {b['assistant_ppl']:.1f} -> {f['assistant_ppl']:.1f})"
    )
    say(
        f"    greedy replies (of {len(f.get('samples', []))}) that answer and end their turn with EOS: base "
        f"{b.get('ended_turn_rate', 0):.0%}, fine-tuned {f.get('ended_turn_rate', 0):.0%}; empty: base "
        f"{b.get('empty_reply_rate', 0):.0%}, fine-tuned {f.get('empty_reply_rate', 0):.0%}"
    )
    for name, r in (("base", b), ("fine-tuned", f)):
        for s in r.get("samples", [])[:samples]:
            q = s["messages"][-1]["content"]
            say(
                f"    {name:>10} | User: {q[:60]} | Assistant: {s['reply'][:80]!r}"
                f"{' (empty)' if s.get('empty') else '' if s['ended_turn'] else ' (no EOS)'}"
            )
    return ev
