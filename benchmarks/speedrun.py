"""Speedrun: tokens and wall time to a fixed val loss, AdamW vs Muon vs Muon + recipe; plus the MFU and peak
memory of ``openllm train`` with and without the fused kernels, and a GPU parity check of those kernels.

Subcommands (run from the repository root with ``PYTHONPATH=src``):

``prepare --out DATA``
    The fixed corpus, assembled offline: the embedded King James Bible (``openllm.corpus``) plus, when the
    folder exists, Tiny Shakespeare, WikiText-2 (test) and LAMBADA (test) from ``../shared/data``. Each
    input's sha256 is recorded; ``openllm prepare-data`` splits documents by hash (5% to val, the fixed
    held-out split), an 8,192-piece BPE tokenizer is trained on the train split and both splits are
    tokenized. ``DATA/corpus.json`` names the inputs and the sha256 of the train and val token streams.
``run --data DATA --out OUT``
    Trains each config (``small``, ``medium`` shapes, vocabulary from the data) with each variant from the
    same seed for the same number of steps, evaluates the whole val split every ``--eval-every`` steps, and
    reports tokens and training wall time to the target val loss (``TARGETS``: fixed per config; evaluation
    and compilation excluded), tokens/s and MFU (second half of the run). Writes ``OUT/speedrun.json``
    and the curves ``OUT/speedrun.png``.
``mfu --data DATA --out OUT``
    ``openllm train`` itself (``openllm.train.train``) on the medium preset for a few dozen steps, plain and
    with each fused option: median tokens/s after compilation, MFU and peak GPU memory.
``check-kernels``
    GPU: every fused path against the plain one (loss and gradients, bf16 autocast).
``plot --results OUT/speedrun.json``
    Redraw the PNG (and print the table) from saved results (several files merge), e.g. for another
    ``--target``.

Variants start from the preset moved to the classic recipe (``train.recipe=classic``): ``adamw`` (AdamW and
cosine, tied head), ``muon`` (only ``train.optimizer=muon``), Muon with recipe parts joined by ``+`` (``wsd``
schedule, ``untied`` head, ``zero``-initialised projections, ``doc``-aligned windows, ``bw`` batch-size warmup,
``lrN``: N times the AdamW learning rate of the embeddings, head and norms), ``recipe`` =
``muon+wsd+untied+zero+lr3`` (chosen from the small ablations), and ``default``: the preset as it ships (its
``train.recipe``, today ``speedrun``, the same settings as ``recipe``).

``run --seeds 1337,1,2`` repeats every (config, variant) per seed (weights and data order) and reports the mean
and the spread (min-max) of the ratios to AdamW of the same seed. ``prepare --corpus dictionaries`` assembles a
second corpus that shares no text with the first: every entry of GCIDE that is Webster's Revised Unabridged
Dictionary (1913) alone (public domain; entries that cite WordNet or later additions are left out), The Devil's
Dictionary (Bierce, 1906) and the Jargon File 4.4.7 (placed in the public domain), read from Debian's
``dict-gcide``, ``dict-devil`` and ``dict-jargon`` packages (``apt-get install dict-gcide dict-devil
dict-jargon``; the sha256 of each file is recorded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SHARED_FILES = ["tinyshakespeare.txt", "wikitext2_raw_test.txt", "lambada_test.jsonl"]

# a variant is a base optimizer plus recipe parts joined by '+', e.g. muon+wsd+untied
RECIPE_PARTS = {
    "wsd": ({"schedule": "wsd", "decay_fraction": 0.4, "min_lr": 0.0}, {}),
    "untied": ({}, {"tie_embeddings": False}),
    "zero": ({}, {"zero_init_proj": True}),
    "doc": ({"doc_aligned": True}, {}),
    "bw": ({"batch_warmup_steps": None}, {}),  # None: a tenth of the run
}
ALIASES = {"recipe": "muon+wsd+untied+zero+lr3"}  # chosen from the small ablations (benchmarks/gpu.md)


def variant_overrides(name: str) -> tuple[dict, dict]:
    """(train overrides, model overrides) of a variant name such as ``muon+wsd+lr3``."""
    base, *parts = ALIASES.get(name, name).split("+")
    if base not in ("adamw", "muon"):
        raise SystemExit(f"unknown base optimizer {base!r} in variant {name!r}")
    train, model = {"optimizer": base}, {}
    for part in parts:
        if part.startswith("lr"):  # lrN: N times the preset's AdamW learning rate (embeddings, head, norms)
            train["lr_mult"] = float(part[2:])
            continue
        t, m = RECIPE_PARTS[part]
        train.update(t)
        model.update(m)
    return train, model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _openllm(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "openllm", *args], check=True)


# --- prepare ------------------------------------------------------------------------------------------------


DICTD = Path("/usr/share/dictd")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # dictd's index numbers
DICTIONARIES = {
    "gcide": "GCIDE 0.48: Webster's Revised Unabridged Dictionary (1913) entries only (public domain)",
    "devil": "The Devil's Dictionary, Ambrose Bierce, 1906 (public domain)",
    "jargon": "The Jargon File 4.4.7 (placed in the public domain by its editor)",
}


def _dictd_entries(name: str) -> list[str]:
    """The entries of a dictd dictionary (``.index`` + dictzip ``.dict.dz``), each once, in file order."""
    import gzip

    def num(text: str) -> int:
        n = 0
        for ch in text:
            n = n * 64 + _B64.index(ch)
        return n

    body = gzip.open(DICTD / f"{name}.dict.dz").read()
    spans = set()
    for line in (DICTD / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        word, off, size = line.split("\t")[:3]
        if not word.startswith("00-database"):
            spans.add((num(off), num(size)))
    return [body[o : o + n].decode("utf-8", errors="replace").strip() for o, n in sorted(spans)]


def _dictionary_corpus(raw: Path) -> tuple[list[Path], list[dict]]:
    import re

    inputs, sources = [], []
    for name, what in DICTIONARIES.items():
        if not (DICTD / f"{name}.dict.dz").is_file():
            raise SystemExit(f"{DICTD}/{name}.dict.dz is missing: apt-get install dict-{name}")
        entries = _dictd_entries(name)
        if name == "gcide":  # Webster 1913 alone: every source tag of the entry is [1913 Webster]
            entries = [e for e in entries if set(re.findall(r"\[([^\]]+)\]\s*$", e, re.M)) == {"1913 Webster"}]
        path = raw / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps({"text": e}) + "\n")
        inputs.append(path)
        sources.append({"file": path.name, "what": what, "source_sha256": _sha256(DICTD / f"{name}.dict.dz")})
    return inputs, sources


def prepare(out: Path, vocab: int, shared: Path, corpus: str = "mixed") -> dict:
    from openllm.corpus import EMBEDDED_CORPUS, write_embedded_corpus

    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if corpus == "dictionaries":
        inputs, sources = _dictionary_corpus(raw)
    else:
        inputs = [write_embedded_corpus(raw / "kjv.jsonl")]
        sources = [
            {
                "file": "kjv.jsonl",
                "what": f"embedded corpus ({EMBEDDED_CORPUS['package']} {EMBEDDED_CORPUS['version']})",
            }
        ]
        for name in SHARED_FILES:
            src = shared / name
            if src.is_file():
                shutil.copyfile(src, raw / name)
                inputs.append(raw / name)
                sources.append({"file": name, "what": f"{shared}/{name}"})
    for s in sources:
        s["sha256"] = _sha256(raw / s["file"])
        s["bytes"] = (raw / s["file"]).stat().st_size
    _openllm("prepare-data", *map(str, inputs), "--out", str(out / "prepared"), "--val-fraction", "0.05", "--quiet")
    _openllm(
        "train-tokenizer",
        "--data",
        str(out / "prepared"),
        "--vocab-size",
        str(vocab),
        "--out",
        str(out / "tokenizer"),
        "--seed",
        "0",
        "--quiet",
    )
    _openllm(
        "tokenize",
        "--data",
        str(out / "prepared"),
        "--tokenizer",
        str(out / "tokenizer"),
        "--out",
        str(out / "tokens"),
        "--quiet",
    )
    meta = json.loads((out / "tokens" / "meta.json").read_text())
    info = {"corpus": corpus, "sources": sources, "vocab_size": meta["vocab_size"], "splits": {}}
    for split in ("train", "val"):
        h = hashlib.sha256()
        for name in meta["splits"][split]["shards"]:
            h.update((out / "tokens" / name).read_bytes())
        info["splits"][split] = {
            "tokens": meta["splits"][split]["tokens"],
            "documents": meta["splits"][split].get("documents"),
            "sha256": h.hexdigest(),
        }
    (out / "corpus.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(raw)
    print(json.dumps(info, indent=2))
    return info


# --- run ----------------------------------------------------------------------------------------------------


def _config(preset: str, variant: str, vocab: int, steps: int, micro: int, accum: int, seq: int, seed: int):
    from openllm.config import load_config

    shipped = load_config(preset)
    run = {"max_steps": steps, "micro_batch_size": micro, "grad_accum_steps": accum, "seq_len": seq, "seed": seed}
    run.update(warmup_steps=max(1, steps // 20), compile=True)
    shape = {"vocab_size": vocab, "max_seq_len": max(seq, shipped.model.max_seq_len)}
    if variant == "default":  # the preset as a user gets it
        return shipped.replace(model=shape, train=run)
    cfg = shipped.replace(train={"recipe": "classic"})  # every other variant is a change to the classic recipe
    t_over, m_over = variant_overrides(variant)
    train = {
        "max_steps": steps,
        "micro_batch_size": micro,
        "grad_accum_steps": accum,
        "seq_len": seq,
        "warmup_steps": max(1, steps // 20),
        "compile": True,
        "seed": seed,
    }
    for k, val in t_over.items():
        if k == "lr_mult":
            train["lr"] = cfg.train.lr * val
            train["min_lr"] = train.get("min_lr", cfg.train.min_lr * val if cfg.train.min_lr else None)
        else:
            train[k] = max(1, steps // 10) if (k == "batch_warmup_steps" and val is None) else val
    if train.get("batch_warmup_steps") and accum == 1:
        train.pop("batch_warmup_steps")
    if "lr" in train and train["optimizer"] == "muon":
        train["muon_lr"] = cfg.train.muon_lr  # Muon's own rate stays; lrN moves AdamW's alone
    return cfg.replace(model={**shape, **m_over}, train=train)


def _val_loss(model, val, seq: int, batch: int, dev, precision, max_batches: int | None = None) -> float:
    import torch

    from openllm.batches import SequentialWindows
    from openllm.train import autocast_context

    total, n = torch.zeros((), dtype=torch.float64, device=dev), 0
    model.eval()
    with torch.no_grad():
        for x, y in SequentialWindows(val, batch, seq, device=dev, max_batches=max_batches):
            with autocast_context(precision, dev):
                loss = model(x, y, return_logits=False)
            total += loss.double() * y.numel()
            n += y.numel()
    model.train()
    return float(total) / n


def run_one(data: Path, preset: str, variant: str, args, log, seed: int = 1337) -> dict:
    import torch

    from openllm.batches import RandomWindowLoader, TokenShards
    from openllm.kernels import apply_kernels
    from openllm.metrics import device_peak_flops
    from openllm.model import Transformer
    from openllm.optim import build_optimizer, lr_at, set_lr
    from openllm.train import autocast_context, resolve_precision

    meta = json.loads((data / "meta.json").read_text())
    cfg = _config(preset, variant, meta["vocab_size"], args.steps, args.micro, args.accum, args.seq, seed)
    tc = cfg.train
    dev = torch.device(args.device)
    precision = resolve_precision("auto", dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(tc.seed)
    raw = Transformer(cfg.model).to(dev)
    if dev.type == "cuda" and args.fused:
        apply_kernels(raw, fused_loss="liger" if args.fused == "liger" else "chunked", device=dev)
    model = torch.compile(raw) if (dev.type == "cuda" and not args.no_compile) else raw
    opt = build_optimizer(raw, tc, dev)
    loader = RandomWindowLoader(
        TokenShards(data, "train"), tc.micro_batch_size, args.seq, seed=tc.seed, device=dev, doc_aligned=tc.doc_aligned
    )
    val = TokenShards(data, "val")
    fpt = raw.flops_per_token(args.seq)
    peak = device_peak_flops(dev)
    params = list(raw.parameters())
    curve, tokens, train_s = [], 0, 0.0
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for step in range(tc.max_steps):
        accum = tc.grad_accum_steps
        if step < tc.batch_warmup_steps:
            accum = max(1, math.ceil(tc.grad_accum_steps * (step + 1) / tc.batch_warmup_steps))
        set_lr(opt, lr_at(step, tc))
        for _ in range(accum):
            x, y = loader.next()
            with autocast_context(precision, dev):
                loss = model(x, y, return_logits=False) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += accum * tc.micro_batch_size * args.seq
        if (step + 1) % args.eval_every == 0 or step + 1 == tc.max_steps:
            sync()
            train_s += time.perf_counter() - t0
            vl = _val_loss(raw, val, args.seq, args.eval_batch, dev, precision, args.val_batches)
            curve.append(
                {
                    "step": step + 1,
                    "tokens": tokens,
                    "train_s": round(train_s, 3),
                    "val_loss": vl,
                    "loss": float(loss.detach()) * accum,
                }
            )
            log(f"{preset}/{variant}/seed {seed} step {step + 1} tokens {tokens:,} val {vl:.4f} ({train_s:.1f}s)")
            if not math.isfinite(vl):
                break
            sync()
            t0 = time.perf_counter()
    # throughput after compilation: the second half of the run's training time
    half = [c for c in curve if c["step"] > tc.max_steps // 2]
    if len(half) >= 2:
        tps = (half[-1]["tokens"] - half[0]["tokens"]) / max(half[-1]["train_s"] - half[0]["train_s"], 1e-9)
    else:
        tps = tokens / max(train_s, 1e-9)
    out = {
        "config": preset,
        "variant": variant,
        "seed": seed,
        "params": raw.num_params(),
        "flops_per_token": fpt,
        "steps": tc.max_steps,
        "tokens_per_step": tc.grad_accum_steps * tc.micro_batch_size * args.seq,
        "train": {
            k: getattr(tc, k)
            for k in ("optimizer", "lr", "muon_lr", "schedule", "warmup_steps", "batch_warmup_steps", "doc_aligned")
        },
        "model": {"tie_embeddings": cfg.model.tie_embeddings, "zero_init_proj": cfg.model.zero_init_proj},
        "curve": curve,
        "best_val": min(c["val_loss"] for c in curve),
        "tokens_per_s": tps,
        "mfu": (fpt * tps / peak) if peak else None,
        "peak_mem_gib": (torch.cuda.max_memory_allocated(dev) / 2**30) if dev.type == "cuda" else None,
    }
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    return out


def to_target(result: dict, target: float) -> dict | None:
    """The first evaluation whose val loss is at or below ``target``, with ``tokens`` and ``train_s`` (training
    seconds to there, evaluation excluded, and compilation too: the first interval, which holds it, is counted
    at the run's steady tokens/s)."""
    curve = result["curve"]
    for c in curve:
        if c["val_loss"] <= target:
            first = curve[0]
            secs = c["train_s"] - first["train_s"] + first["tokens"] / result["tokens_per_s"]
            return {**c, "train_s": secs}
    return None


def report(results: list[dict], target: float | dict, png: Path | None) -> str:
    targets = target if isinstance(target, dict) else {r["config"]: target for r in results}
    targets = {c: t for c, t in targets.items() if c in {r["config"] for r in results}}
    lines = [
        "targets: " + ", ".join(f"{c} {t}" for c, t in targets.items()),
        "",
        "| config | variant | params | tokens to target | x AdamW | train s to target | x AdamW | best val "
        "| tokens/s | MFU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["config"]: to_target(r, targets[r["config"]]) for r in results if r["variant"] == "adamw"}
    for r in results:
        hit = to_target(r, targets[r["config"]])
        b = base.get(r["config"])
        ratio_t = f"{hit['tokens'] / b['tokens']:.2f}" if hit and b else "-"
        ratio_s = f"{hit['train_s'] / b['train_s']:.2f}" if hit and b else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        lines.append(
            f"| {r['config']} | {r['variant']} | {r['params'] / 1e6:.1f}M | "
            f"{hit['tokens']:,} | {ratio_t} | {hit['train_s']:.1f} | {ratio_s} | "
            if hit
            else f"| {r['config']} | {r['variant']} | {r['params'] / 1e6:.1f}M | not reached | - | - | - | "
        )
        lines[-1] += f"{r['best_val']:.4f} | {r['tokens_per_s']:,.0f} | {mfu} |"
    text = "\n".join(lines)
    if png is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        configs = sorted({r["config"] for r in results}, key=[r["config"] for r in results].index)
        fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.2), squeeze=False)
        colors = {v: f"C{i}" for i, v in enumerate(dict.fromkeys(r["variant"] for r in results))}
        for ax, c in zip(axes[0], configs):
            labelled = set()
            for r in results:  # one colour per variant, one line per seed
                if r["config"] == c:
                    seeds = sum(x["config"] == c and x["variant"] == r["variant"] for x in results)
                    label = (
                        None if r["variant"] in labelled else r["variant"] + (f" ({seeds} seeds)" if seeds > 1 else "")
                    )
                    labelled.add(r["variant"])
                    ax.plot(
                        [p["tokens"] / 1e6 for p in r["curve"]],
                        [p["val_loss"] for p in r["curve"]],
                        color=colors[r["variant"]],
                        label=label,
                    )
            ax.axhline(targets[c], color="grey", ls="--", lw=1, label=f"target {targets[c]}")
            lo = min(p["val_loss"] for r in results if r["config"] == c for p in r["curve"])
            ax.set_ylim(lo - 0.1, lo + 2.0)
            ax.set_xlabel("training tokens (millions)")
            ax.set_ylabel("val loss (nats/token)")
            ax.set_title(c)
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    return text


TARGETS = {"tiny": 5.0, "small": 4.0, "medium": 4.2}  # fixed val losses (nats/token) on the prepared corpus


def _targets(text: str) -> dict[str, float]:
    """``small=4.0,medium=4.2`` (or one number for every config) over the fixed :data:`TARGETS`."""
    if not text:
        return dict(TARGETS)
    if "=" not in text:
        return {c: float(text) for c in TARGETS}
    return {**TARGETS, **{c: float(t) for c, t in (item.split("=") for item in text.split(","))}}


def cmd_run(args) -> None:
    args.target = _targets(args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    results = []
    seeds = [int(x) for x in str(args.seeds).split(",")]
    for preset in args.configs.split(","):
        for seed in seeds:
            for variant in args.variants.split(","):
                results.append(run_one(data, preset, variant, args, lambda m: print(m, flush=True), seed))
                (out / "speedrun.json").write_text(
                    json.dumps({"target": args.target, "args": vars(args), "results": results}, indent=1)
                )
    text = report([r for r in results if r["seed"] == seeds[0]], args.target, out / "speedrun.png")
    print(text if len(seeds) == 1 else text + "\n\n" + seed_report(results, args.target))


def cmd_seeds(args) -> None:
    """The seed table of saved results (``run --seeds``), for another ``--target``."""
    results = []
    for path in args.results:
        results += json.loads(Path(path).read_text())["results"]
    print(seed_report(results, _targets(args.target)))


def seed_report(results: list[dict], target: float | dict) -> str:
    """Per (config, variant) over seeds: how many seeds reached the target; mean and min-max of tokens and training
    seconds to it as a ratio to AdamW of the same seed (seeds where both reached it), and of the best val loss."""
    targets = target if isinstance(target, dict) else {r["config"]: target for r in results}
    lines = [
        "| config | variant | reached target | tokens to target x AdamW: mean (min-max) | train s x AdamW: mean "
        "(min-max) | best val: mean (min-max) |",
        "|---|---|---:|---|---|---|",
    ]
    base = {(r["config"], r["seed"]): to_target(r, targets[r["config"]]) for r in results if r["variant"] == "adamw"}
    keys = list(dict.fromkeys((r["config"], r["variant"]) for r in results))

    def spread(xs: list[float], fmt: str) -> str:
        if not xs:
            return "-"
        return f"{sum(xs) / len(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"

    for config, variant in keys:
        rows = [r for r in results if (r["config"], r["variant"]) == (config, variant)]
        tok, sec = [], []
        for r in rows:
            hit, b = to_target(r, targets[config]), base.get((config, r["seed"]))
            if hit and b:
                tok.append(hit["tokens"] / b["tokens"])
                sec.append(hit["train_s"] / b["train_s"])
        best = [r["best_val"] for r in rows]
        reached = sum(to_target(r, targets[config]) is not None for r in rows)
        lines.append(  # the ratios: over the seeds where both this variant and AdamW reached the target
            f"| {config} | {variant} | {reached}/{len(rows)} | {spread(tok, '.2f')} | {spread(sec, '.2f')} | "
            f"{spread(best, '.4f')} |"
        )
    return "\n".join(lines)


def cmd_plot(args) -> None:
    results = []
    for path in args.results:
        results += json.loads(Path(path).read_text())["results"]
    target = _targets(args.target)
    png = Path(args.png) if args.png else Path(args.results[0]).with_suffix(".png")
    print(report(results, target, png))


# --- mfu through openllm train --------------------------------------------------------------------------------

_CLASSIC = {"recipe": "classic", "check_every": 1}  # AdamW, cosine, tied head, the host reading every step
MFU_VARIANTS = {
    "default": {},  # the preset as it ships (today: the speedrun recipe, check_every 5)
    "plain": dict(_CLASSIC),
    "check_every": {**_CLASSIC, "check_every": 5},
    "chunked": {**_CLASSIC, "check_every": 5, "fused_loss": "chunked"},
    "liger_ce": {**_CLASSIC, "check_every": 5, "fused_loss": "liger"},
    "liger_all": {**_CLASSIC, "check_every": 5, "fused_loss": "liger", "fused_ops": True},
    "muon": {**_CLASSIC, "check_every": 5, "optimizer": "muon"},
    "muon_liger_ce": {**_CLASSIC, "check_every": 5, "optimizer": "muon", "fused_loss": "liger"},
    "default_liger_ce": {"fused_loss": "liger"},
}


def cmd_mfu(args) -> None:
    import torch

    from openllm.rundir import read_metrics
    from openllm.train import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if args.data == "random":  # the preset's 32,000-token vocabulary, as in the earlier throughput runs
        data = out / "random_tokens"
        data.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        splits = {}
        for split, n in (("train", 8_000_000), ("val", 200_000)):
            rng.integers(0, 32000, n, dtype=np.uint16).tofile(data / f"{split}_000.bin")
            splits[split] = {"shards": [f"{split}_000.bin"], "tokens": n, "documents": 1}
        (data / "meta.json").write_text(
            json.dumps(
                {"vocab_size": 32000, "dtype": "uint16", "eos_id": 3, "tokenizer_sha256": None, "splits": splits}
            )
        )
    rows = []
    for name in args.variants.split(","):
        base, _, at = name.partition("@")  # NAME@64: the variant at micro-batch 64
        over = dict(MFU_VARIANTS[base])
        micro = int(at) if at else args.batch
        train_over = {
            "micro_batch_size": micro,
            "grad_accum_steps": 1,
            "max_steps": args.steps,
            "log_every": 5,
            "eval_every": 100000,
            "save_every": 100000,
            "warmup_steps": 10,
            **({} if base.startswith("default") else {"compile": True}),  # default: compile left unset (CUDA: on)
            **over,
        }
        if args.optimizer:
            train_over["optimizer"] = args.optimizer
        torch.cuda.reset_peak_memory_stats()
        run = out / f"mfu_{name}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.time()
        train(
            args.config,
            data_dir=data,
            out_dir=run,
            overrides={"train": train_over},
            vocab_from_data=True,
            progress=False,
            log=lambda m: print(m, flush=True),
        )
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
        recs = [
            r for r in read_metrics(run) if r["step"] > args.skip and "tokens_per_s" in r and r["step"] < args.steps
        ]
        tps = float(np.median([r["tokens_per_s"] for r in recs]))
        mfu = float(np.median([r["mfu"] for r in recs])) if recs and "mfu" in recs[0] else None
        rows.append(
            {
                "variant": name,
                "overrides": over,
                "micro_batch": micro,
                "tokens_per_s": tps,
                "mfu": mfu,
                "peak_mem_gib": peak_mem,
                "wall_s": time.time() - t0,
                "final_loss": read_metrics(run)[-1]["loss"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        (out / "mfu.json").write_text(json.dumps(rows, indent=1))
    print("| variant | micro-batch | tokens/s | MFU | peak memory | loss at end |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['micro_batch']} | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['mfu']:.1f}% | {r['peak_mem_gib']:.1f} GiB | {r['final_loss']:.4f} |"
        )


# --- kernel parity on the GPU --------------------------------------------------------------------------------


def cmd_check_kernels(args) -> None:
    import torch

    from openllm.config import ModelConfig
    from openllm.kernels import apply_kernels, chunked_linear_cross_entropy, liger_linear_cross_entropy
    from openllm.model import Transformer

    dev = torch.device("cuda")
    torch.manual_seed(0)
    rel = lambda a, b: float((a.float() - b.float()).norm() / b.float().norm())
    results = {}
    # the loss alone: (tokens x width) hidden states against a (vocab x width) head, bf16 autocast
    x = torch.randn(8192, 768, device=dev, requires_grad=True)
    w = (torch.randn(32000, 768, device=dev) * 0.02).requires_grad_()
    t = torch.randint(0, 32000, (8192,), device=dev)
    t[:100] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = torch.nn.functional.cross_entropy((x @ w.t()).float(), t)
    g_ref = torch.autograd.grad(ref, (x, w))
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    exact = torch.nn.functional.cross_entropy(x64 @ w64.t(), t)
    g_exact = torch.autograd.grad(exact, (x64, w64))
    for name, fn in (
        ("plain_bf16", None),
        ("chunked", chunked_linear_cross_entropy),
        ("liger", liger_linear_cross_entropy),
    ):
        if fn is None:
            loss, g = ref, g_ref
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(x, w, t)
            g = torch.autograd.grad(loss, (x, w))
        results[f"ce/{name}"] = {
            "loss_abs_err_vs_fp64": abs(float(loss) - float(exact)),
            "grad_x_rel_vs_fp64": rel(g[0], g_exact[0]),
            "grad_w_rel_vs_fp64": rel(g[1], g_exact[1]),
            "grad_x_rel_vs_plain": rel(g[0], g_ref[0]),
            "grad_w_rel_vs_plain": rel(g[1], g_ref[1]),
        }
    # whole model: plain vs each fused option, one forward/backward in bf16 autocast
    cfg = ModelConfig(vocab_size=32000, d_model=768, n_layers=4, n_heads=12, d_ff=2560, max_seq_len=1024)
    idx = torch.randint(0, 32000, (8, 1024), device=dev)
    grads = {}
    for name, kw in (
        ("plain", {}),
        ("chunked", {"fused_loss": "chunked"}),
        ("liger_ce", {"fused_loss": "liger"}),
        ("liger_ops", {"fused_ops": True}),
        ("liger_all", {"fused_loss": "liger", "fused_ops": True}),
    ):
        torch.manual_seed(1)
        m = Transformer(cfg).to(dev)
        apply_kernels(m, device=dev, **kw)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(idx, idx.roll(-1, 1), return_logits=False)
        loss.backward()
        grads[name] = (float(loss), {n: p.grad.detach().clone() for n, p in m.named_parameters()})
    base_loss, base = grads["plain"]
    for name, (loss, g) in grads.items():
        if name == "plain":
            continue
        worst = max(rel(g[n], base[n]) for n in base)
        results[f"model/{name}"] = {
            "loss": loss,
            "plain_loss": base_loss,
            "loss_rel": abs(loss - base_loss) / base_loss,
            "worst_grad_rel_vs_plain": worst,
        }
    ok = all(v.get("worst_grad_rel_vs_plain", 0) < 2e-2 and v.get("loss_rel", 0) < 1e-2 for v in results.values())
    for k, v in results.items():
        print(k, json.dumps({a: (round(b, 7) if isinstance(b, float) else b) for a, b in v.items()}))
    print(
        "kernel parity (loss rel < 1e-2, gradients rel < 2e-2 against the plain bf16 path):", "PASS" if ok else "FAIL"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--corpus", default="mixed", choices=("mixed", "dictionaries"))
    r = sub.add_parser("run")
    r.add_argument("--data", required=True, help="the tokens/ folder written by prepare")
    r.add_argument("--out", required=True)
    r.add_argument("--configs", default="small")
    r.add_argument("--variants", default="adamw,muon,recipe")
    r.add_argument("--seeds", default="1337", help="comma-separated: every variant per seed")
    r.add_argument("--steps", type=int, default=400)
    r.add_argument("--micro", type=int, default=16)
    r.add_argument("--accum", type=int, default=2)
    r.add_argument("--seq", type=int, default=1024)
    r.add_argument("--eval-every", type=int, default=10)
    r.add_argument("--eval-batch", type=int, default=32)
    r.add_argument(
        "--val-batches", type=int, default=None, help="cap on val batches per evaluation (default: the whole val split)"
    )
    r.add_argument(
        "--target",
        default="",
        help="val loss to reach: one number, or per config (default small=4.0,medium=4.2,tiny=5.0)",
    )
    r.add_argument("--device", default="cuda")
    r.add_argument("--fused", default="", help="'', chunked or liger: the fused loss for every variant")
    r.add_argument("--no-compile", action="store_true")
    m = sub.add_parser("mfu")
    m.add_argument("--data", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--config", default="medium")
    m.add_argument("--batch", type=int, default=32)
    m.add_argument("--steps", type=int, default=40)
    m.add_argument("--skip", type=int, default=15, help="log records up to this step are compile warm-up")
    m.add_argument("--variants", default=",".join(MFU_VARIANTS))
    m.add_argument("--optimizer", default="")
    k = sub.add_parser("check-kernels")
    k.add_argument("--out", default="")
    sd = sub.add_parser("seeds")
    sd.add_argument("--results", required=True, nargs="+")
    sd.add_argument("--target", default="", help="a loss, or per config: small=4.0,medium=4.2")
    pl = sub.add_parser("plot")
    pl.add_argument("--results", required=True, nargs="+")
    pl.add_argument("--target", default="", help="a loss, or per config: small=4.0,medium=4.2")
    pl.add_argument("--png", default="")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(Path(args.out), args.vocab, Path(args.shared), args.corpus)
    elif args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "mfu":
        cmd_mfu(args)
    elif args.cmd == "seeds":
        cmd_seeds(args)
    elif args.cmd == "check-kernels":
        cmd_check_kernels(args)
    else:
        cmd_plot(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
