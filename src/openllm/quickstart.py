"""``openllm quickstart``: the whole pipeline on the embedded corpus, in minutes on a laptop CPU.

embedded corpus -> prepare (clean, dedupe, split) -> tokenizer (SentencePiece, the config's vocab size) ->
tokenize (uint16 shards) -> unigram baseline -> train the ``tiny`` preset -> evaluate -> export (native,
Hugging Face) -> generate a sample. Every artefact goes under one folder; the end prints where.

The val loss it reports is :mod:`openllm.evaluate`'s (every val token, window/stride), on the model
:func:`openllm.load` loads from the run; the unigram baseline is scored on the same tokens. Every step it
runs must succeed: a failing step ends the quickstart with an :class:`OpenLLMError` naming the step.
``evaluate=False`` leaves out the report's extras (generations, baselines, ``evaluation.json``), not the val
loss; ``export=False`` leaves out the exports.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .errors import OpenLLMError
from .fsio import write_json_atomic
from .rundir import EVALUATION

__all__ = ["quickstart", "unigram_baseline", "QuickstartResult", "STEPS"]

MARKER = ".openllm-quickstart"
SAMPLE_PROMPTS = ("In the beginning", "And the LORD said unto Moses,")
STEPS = ("prepare", "tokenizer", "tokenize", "baseline", "train", "evaluate", "export_generate")


@dataclass
class QuickstartResult:
    """What :func:`quickstart` did. ``val_loss`` is ``openllm evaluate``'s figure; ``missing`` names the steps
    left out on request (``export=False``, ``evaluate=False``)."""

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
    token frequencies (add-one smoothed), scored on the tokens ``openllm evaluate`` scores: its
    ``baselines.unigram`` figure. Returns (loss, tokens scored)."""
    from .evaluate.baselines import unigram_val_score

    score = unigram_val_score(data_dir, window=seq_len)
    return score.loss, score.tokens


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
    config: str | Path | Config = "tiny",
    max_steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
    evaluate: bool = True,
    export: bool = True,
    chat: bool = False,
    chat_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> QuickstartResult:
    """Run the whole pipeline into ``out``; see the module docstring. ``max_steps`` shortens training (tests).
    ``chat=True`` adds a last step: fine-tune the run on synthetic conversations and compare base and fine-tuned
    on held-out ones (:func:`openllm.finetune.chat_quickstart`; ``chat_steps`` shortens it).
    Raises :class:`OpenLLMError` naming the step that failed."""
    from .config import load_config

    say = log or (lambda msg: print(msg, flush=True))
    t0 = time.time()
    out = Path(out)
    cfg = load_config(config)
    if max_steps is not None:
        cfg = cfg.replace(train={"max_steps": int(max_steps)})
    cfg.validate(new_tokenizer=True)  # before anything is written: quickstart trains the config's tokenizer
    _prepare_out(out)
    paths: dict[str, Path] = {}
    timings: dict[str, float] = {}
    missing = (["evaluation report (generations, baselines, evaluation.json)"] if not evaluate else []) + (
        ["export"] if not export else []
    )

    steps = STEPS + ("chat",) if chat else STEPS

    @contextlib.contextmanager
    def stage(name: str, title: str) -> Iterator[None]:
        i = steps.index(name) + 1
        say(f"\n[{i}/{len(steps)}] {title}  (t = {time.time() - t0:.0f}s)")
        s = time.time()
        try:
            yield
        except Exception as exc:  # one line naming the step; KeyboardInterrupt passes through
            detail = str(exc).strip() or type(exc).__name__
            if not isinstance(exc, OpenLLMError):
                detail = f"{type(exc).__name__}: {detail}"
            raise OpenLLMError(f"quickstart step {i}/{len(steps)} ({name}) failed: {detail}") from exc
        finally:
            timings[name] = time.time() - s

    with stage("prepare", "prepare the embedded corpus (King James Bible): clean, deduplicate, split train/val"):
        from .prepare import prepare_corpus

        paths["prepared"] = out / "data" / "prepared"
        report = prepare_corpus(None, paths["prepared"], val_fraction=0.02, progress=progress)
        docs = report.get("documents", {})
        say(f"    {docs.get('train', '?')} train / {docs.get('val', '?')} val documents -> {paths['prepared']}")

    with stage("tokenizer", f"train a SentencePiece tokenizer (vocab {cfg.model.vocab_size})"):
        from .tokenizer import train_tokenizer

        paths["tokenizer"] = out / "tokenizer"
        tok = train_tokenizer(
            paths["prepared"],
            paths["tokenizer"],
            vocab_size=cfg.model.vocab_size,
            model_type=cfg.data.tokenizer_model_type,
            character_coverage=cfg.data.character_coverage,
            byte_fallback=cfg.data.byte_fallback,
            progress=progress,
        )
        if tok.vocab_size != cfg.model.vocab_size:
            raise OpenLLMError(f"the tokenizer has {tok.vocab_size} tokens, the config {cfg.model.vocab_size}")

    with stage("tokenize", "tokenize into uint16 shards"):
        from .shards import tokenize_corpus

        paths["tokens"] = out / "data" / "tokens"
        meta = tokenize_corpus(paths["prepared"], paths["tokenizer"], paths["tokens"], progress=progress)
        sp = meta["splits"]
        say(f"    {sp['train']['tokens']:,} train tokens, {sp['val']['tokens']:,} val tokens -> {paths['tokens']}")

    seq_len = cfg.seq_len
    with stage("baseline", "unigram baseline (train token frequencies, scored on val)"):
        uni, n_scored = unigram_baseline(paths["tokens"], seq_len)
        say(
            f"    unigram val loss {uni:.4f} nats/token over {n_scored:,} tokens "
            f"(uniform would be ln {cfg.model.vocab_size} = {math.log(cfg.model.vocab_size):.4f})"
        )

    tc = cfg.train
    with stage(
        "train", f"train the {cfg.name} model: {tc.max_steps} steps of {tc.micro_batch_size} x {seq_len} tokens"
    ):
        from .train import train

        paths["run"] = out / "run"
        result = train(
            cfg, data_dir=paths["tokens"], out_dir=paths["run"], device=device, progress=progress, resume=False, log=say
        )

    with stage("evaluate", "evaluate on the whole val split"):
        from .device import resolve_device
        from .evaluate import evaluate as run_evaluation
        from .loading import load

        loaded = load(paths["run"], device=resolve_device(device))
        results = run_evaluation(loaded, generation=evaluate, baselines=evaluate, write=evaluate, progress=progress)
        val_loss = results["val_loss"]
        say(
            f"    model val loss {val_loss:.4f} (perplexity {math.exp(val_loss):.1f}, "
            f"{results['bits_per_byte']:.3f} bits per byte) over {results['tokens']:,} tokens, window "
            f"{results['window']} stride {results['stride']}"
        )
        say(f"    vs unigram {uni:.4f} (perplexity {math.exp(uni):.1f}): {uni - val_loss:+.4f} nats/token better")
        if evaluate:
            paths["evaluation"] = paths["run"] / EVALUATION
            say(f"    full report (perplexity, bits per byte, baselines, generations) -> {paths['evaluation']}")

    title = "export (native + Hugging Face) and generate" if export else "generate"
    with stage("export_generate", title):
        if export:
            from .export import export as do_export

            for fmt, folder in do_export(paths["run"], out / "export", "native,hf", progress=False).items():
                paths[f"export_{fmt}"] = Path(folder)
                say(f"    {fmt} export -> {folder}")
        import torch

        from .generate import SamplingParams, generate_text

        torch.manual_seed(0)
        params = SamplingParams(max_new_tokens=40, temperature=0.8, top_k=40, seed=0)
        if loaded.tokenizer is None:  # the quickstart trained one into the run: its absence is a bug
            raise RuntimeError(f"{paths['run']} has no tokenizer after the quickstart wrote one")
        samples = generate_text(loaded.model, loaded.tokenizer, list(SAMPLE_PROMPTS), params)
        for prompt, text in zip(SAMPLE_PROMPTS, samples):
            say(f"    > {prompt}{text}".replace("\n", " "))

    chat_eval = None
    if chat:
        with stage("chat", "fine-tune on synthetic conversations (SFT), then base vs fine-tuned on held-out ones"):
            from .finetune import chat_quickstart

            chat_eval = chat_quickstart(
                out, paths["run"], device=device, max_steps=chat_steps, progress=progress, say=say
            )
            paths["chat_run"] = out / "chat_run"

    seconds = time.time() - t0
    summary = {
        "val_loss": val_loss,
        "unigram_val_loss": uni,
        "improvement_nats": uni - val_loss,
        "val_tokens": results["tokens"],
        "window": results["window"],
        "stride": results["stride"],
        "train_steps": result.step,
        "train_loss": result.loss,
        "train_val_loss_estimate": result.val_loss,
        "seconds": round(seconds, 1),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "paths": {k: str(v) for k, v in paths.items()},
        "missing": missing,
        "samples": samples,
    }
    if chat_eval is not None:
        summary["chat"] = {
            "assistant_loss": chat_eval["assistant_loss"],
            "base_assistant_loss": chat_eval["base"]["assistant_loss"],
            "assistant_tokens": chat_eval["assistant_tokens"],
            "train_steps": chat_eval["train_steps"],
        }
    write_json_atomic(out / "quickstart.json", summary)
    _print_summary(say, out, paths, val_loss, uni, seconds, missing)
    return QuickstartResult(
        out=out,
        val_loss=val_loss,
        unigram_loss=uni,
        seconds=seconds,
        paths=paths,
        samples=samples,
        missing=missing,
        timings=timings,
    )


def _print_summary(
    say, out: Path, paths: dict[str, Path], val_loss: float, uni: float, seconds: float, missing: list[str]
) -> None:
    labels = {
        "prepared": "prepared corpus (train/val jsonl + report)",
        "tokenizer": "tokenizer (SentencePiece + Hugging Face files)",
        "tokens": "tokenized shards + meta.json",
        "run": "training run (checkpoints, metrics.jsonl, loss.png, tb/)",
        "evaluation": "evaluation report",
        "export_native": "native export",
        "export_hf": "Hugging Face export (AutoModelForCausalLM)",
        "chat_run": "fine-tuned chat run (--chat; chat_evaluation.json beside)",
    }
    say(f"\nquickstart finished in {seconds:.0f}s ({seconds / 60:.1f} min). Everything is under {out}/:")
    for key, label in labels.items():
        if key in paths:
            say(f"  {label:<58} {paths[key]}")
    say(f"  {'summary':<58} {out / 'quickstart.json'}")
    verdict = "beats" if val_loss < uni else "does NOT beat"
    say(
        f"\nval loss {val_loss:.4f} nats/token; unigram baseline {uni:.4f}: the model {verdict} it by "
        f"{uni - val_loss:.2f} nats/token ({math.exp(uni - val_loss):.1f}x lower perplexity)"
    )
    if missing:
        say("left out on request: " + "; ".join(missing))
    run = paths.get("run")
    if run is not None:
        say(
            f"\nnext: openllm generate {run} --prompt 'In the beginning'   |   "
            f"openllm train --config tiny --data {paths['tokens']} --out {run} --max-steps 2000"
        )
