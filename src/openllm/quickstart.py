"""``openllm quickstart``: the whole pipeline on the embedded corpus, in minutes on a laptop CPU.

embedded corpus -> prepare (clean, dedupe, split) -> tokenizer (SentencePiece, the config's vocab size) ->
tokenize (uint16 shards) -> unigram baseline -> train the ``tiny`` preset -> evaluate -> export (native,
Hugging Face) -> generate a sample. Every artefact goes under one folder; the end prints where.

The evaluation report, the exports and the samples are extras: when one of them fails the quickstart says so
and carries on (its own val-loss comparison stands).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import OpenLLMError

__all__ = ["quickstart", "unigram_baseline", "QuickstartResult"]

MARKER = ".openllm-quickstart"
SAMPLE_PROMPTS = ("In the beginning", "And the LORD said unto Moses,")


@dataclass
class QuickstartResult:
    out: Path
    val_loss: float
    unigram_loss: float
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def unigram_baseline(data_dir: str | Path, seq_len: int) -> tuple[float, int]:
    """Cross-entropy (nats/token) on the val split of a context-free model that predicts the train split's
    token frequencies (add-one smoothed). Scored on exactly the tokens :class:`SequentialWindows` scores, so
    it compares with the model's full-val loss. Returns (loss, tokens scored)."""
    from .evaluate.baselines import UnigramLM, unigram_counts
    from .batches import SequentialWindows, TokenShards

    train = TokenShards(data_dir, "train")
    logp = UnigramLM(unigram_counts(train.shards, train.vocab_size)).logp.double().numpy()
    val = SequentialWindows(data_dir, batch_size=1, seq_len=seq_len, split="val")
    n = val.num_windows * seq_len
    targets = np.asarray(val.data.stream(1, n), dtype=np.int64)
    return float(-logp[targets].mean()), n


def full_val_loss(model, data_dir: str | Path, seq_len: int, batch_size: int = 16) -> float:
    """The model's mean loss over every val window (the same tokens :func:`unigram_baseline` scores)."""
    import torch

    from .batches import SequentialWindows

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in SequentialWindows(data_dir, batch_size=batch_size, seq_len=seq_len, split="val"):
            loss = model(x, y, return_logits=False)
            total += float(loss) * y.numel()
            count += y.numel()
    return total / count


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise OpenLLMError(f"{out} exists and is not a quickstart folder: choose an empty or new --out")
        shutil.rmtree(out)  # a previous quickstart: start over
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by openllm quickstart; safe to delete\n")


def quickstart(
    out: str | Path = "runs/quickstart",
    *,
    config: str | Path = "tiny",
    max_steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
    evaluate: bool = True,
    export: bool = True,
    log: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Run the whole pipeline into ``out``; see the module docstring. ``max_steps`` shortens training (tests)."""
    from .config import load_config

    say = log or (lambda msg: print(msg, flush=True))
    t0 = time.time()
    out = Path(out)
    cfg = load_config(config)
    if max_steps is not None:
        cfg = cfg.replace(train={"max_steps": int(max_steps)})
    _prepare_out(out)
    paths: dict[str, Path] = {}
    timings: dict[str, float] = {}
    missing: list[str] = []
    total_stages = 7

    def stage(i: int, title: str) -> float:
        say(f"\n[{i}/{total_stages}] {title}  (t = {time.time() - t0:.0f}s)")
        return time.time()

    # 1. prepare ----------------------------------------------------------------------------------------
    s = stage(1, "prepare the embedded corpus (King James Bible): clean, deduplicate, split train/val")
    from .prepare import prepare_corpus

    paths["prepared"] = out / "data" / "prepared"
    report = prepare_corpus(None, paths["prepared"], val_fraction=0.02, progress=progress)
    docs = report.get("documents", {})
    say(f"    {docs.get('train', '?')} train / {docs.get('val', '?')} val documents -> {paths['prepared']}")
    timings["prepare"] = time.time() - s

    # 2. tokenizer --------------------------------------------------------------------------------------
    s = stage(2, f"train a SentencePiece tokenizer (vocab {cfg.model.vocab_size})")
    from .tokenizer import train_tokenizer

    paths["tokenizer"] = out / "tokenizer"
    tok = train_tokenizer(paths["prepared"], paths["tokenizer"], vocab_size=cfg.model.vocab_size,
                          model_type=cfg.data.tokenizer_model_type,
                          character_coverage=cfg.data.character_coverage,
                          byte_fallback=cfg.data.byte_fallback, progress=progress)
    if tok.vocab_size != cfg.model.vocab_size:
        raise OpenLLMError(f"the tokenizer has {tok.vocab_size} tokens, the config {cfg.model.vocab_size}")
    timings["tokenizer"] = time.time() - s

    # 3. tokenize ---------------------------------------------------------------------------------------
    s = stage(3, "tokenize into uint16 shards")
    from .shards import tokenize_corpus

    paths["tokens"] = out / "data" / "tokens"
    meta = tokenize_corpus(paths["prepared"], paths["tokenizer"], paths["tokens"], progress=progress)
    sp = meta["splits"]
    say(f"    {sp['train']['tokens']:,} train tokens, {sp['val']['tokens']:,} val tokens -> {paths['tokens']}")
    timings["tokenize"] = time.time() - s

    # 4. baseline ---------------------------------------------------------------------------------------
    seq_len = cfg.train.seq_len or cfg.model.max_seq_len
    s = stage(4, "unigram baseline (train token frequencies, scored on val)")
    uni, n_scored = unigram_baseline(paths["tokens"], seq_len)
    say(f"    unigram val loss {uni:.4f} nats/token over {n_scored:,} tokens "
        f"(uniform would be ln {cfg.model.vocab_size} = {math.log(cfg.model.vocab_size):.4f})")
    timings["baseline"] = time.time() - s

    # 5. train ------------------------------------------------------------------------------------------
    tc = cfg.train
    s = stage(5, f"train the {cfg.name} model: {tc.max_steps} steps of {tc.micro_batch_size} x {seq_len} tokens")
    from .train import train

    paths["run"] = out / "run"
    result = train(cfg, data_dir=paths["tokens"], out_dir=paths["run"], device=device, progress=progress,
                   resume=False, log=say)
    timings["train"] = time.time() - s

    # 6. evaluate ---------------------------------------------------------------------------------------
    s = stage(6, "evaluate on the whole val split")
    import torch

    from .checkpoint import load_model_weights
    from .model import Transformer

    model = load_model_weights(Transformer(cfg.model), result.checkpoint)
    val_loss = full_val_loss(model, paths["tokens"], seq_len)
    say(f"    model val loss {val_loss:.4f} (perplexity {math.exp(val_loss):.1f}) vs unigram {uni:.4f} "
        f"(perplexity {math.exp(uni):.1f}): {uni - val_loss:+.4f} nats/token better")
    if evaluate:
        from .evaluate import evaluate_run

        try:
            evaluate_run(paths["run"], progress=progress)
            paths["evaluation"] = paths["run"] / "evaluation.json"
            say(f"    full report (perplexity, bits per byte, baselines, generations) -> {paths['evaluation']}")
        except Exception as exc:  # the report is a bonus: the quickstart's own numbers stand
            missing.append(f"evaluate report ({type(exc).__name__}: {exc})")
            say(f"    the evaluation report failed: {type(exc).__name__}: {exc}")
    timings["evaluate"] = time.time() - s

    # 7. export + generate ------------------------------------------------------------------------------
    s = stage(7, "export (native + Hugging Face) and generate")
    samples: list[str] = []
    if export:
        from .export import export as do_export

        try:
            folders = do_export(paths["run"], out / "export", "native,hf", progress=False)
            for fmt, folder in folders.items():
                paths[f"export_{fmt}"] = Path(folder)
                say(f"    {fmt} export -> {folder}")
        except Exception as exc:
            missing.append(f"export ({type(exc).__name__}: {exc})")
            say(f"    export failed: {type(exc).__name__}: {exc}")
    try:
        from .generate import SamplingParams, generate_text

        torch.manual_seed(0)
        params = SamplingParams(max_new_tokens=40, temperature=0.8, top_k=40, seed=0)
        samples = generate_text(model, tok, list(SAMPLE_PROMPTS), params)
        for prompt, text in zip(SAMPLE_PROMPTS, samples):
            say(f"    > {prompt}{text}".replace("\n", " "))
    except Exception as exc:
        missing.append(f"generate ({type(exc).__name__}: {exc})")
        say(f"    generation is not available: {type(exc).__name__}: {exc}")
    timings["export_generate"] = time.time() - s

    seconds = time.time() - t0
    summary = {
        "val_loss": val_loss, "unigram_val_loss": uni, "improvement_nats": uni - val_loss,
        "train_steps": result.step, "train_loss": result.loss, "seconds": round(seconds, 1),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "paths": {k: str(v) for k, v in paths.items()}, "missing": missing, "samples": samples,
    }
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _print_summary(say, out, paths, val_loss, uni, seconds, missing)
    return QuickstartResult(out=out, val_loss=val_loss, unigram_loss=uni, seconds=seconds, paths=paths,
                            samples=samples, missing=missing, timings=timings)


def _print_summary(say, out: Path, paths: dict[str, Path], val_loss: float, uni: float, seconds: float,
                   missing: list[str]) -> None:
    labels = {
        "prepared": "prepared corpus (train/val jsonl + report)",
        "tokenizer": "tokenizer (SentencePiece + Hugging Face files)",
        "tokens": "tokenized shards + meta.json",
        "run": "training run (checkpoints, metrics.jsonl, loss.png, tb/)",
        "evaluation": "evaluation report",
        "export_native": "native export",
        "export_hf": "Hugging Face export (AutoModelForCausalLM)",
    }
    say(f"\nquickstart finished in {seconds:.0f}s ({seconds / 60:.1f} min). Everything is under {out}/:")
    for key, label in labels.items():
        if key in paths:
            say(f"  {label:<58} {paths[key]}")
    say(f"  {'summary':<58} {out / 'quickstart.json'}")
    verdict = "beats" if val_loss < uni else "does NOT beat"
    say(f"\nval loss {val_loss:.4f} nats/token; unigram baseline {uni:.4f}: the model {verdict} it by "
        f"{uni - val_loss:.2f} nats/token ({math.exp(uni - val_loss):.1f}x lower perplexity)")
    if missing:
        say("not done: " + "; ".join(missing))
    run = paths.get("run")
    if run is not None:
        say(f"\nnext: openllm generate {run} --prompt 'In the beginning'   |   "
            f"openllm train --config configs/tiny.json --data {paths['tokens']} --out {run} --max-steps 2000")
