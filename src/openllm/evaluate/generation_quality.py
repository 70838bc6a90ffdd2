"""Generation quality: samples for fixed prompts and seeds, and numbers that tell fluent variety from
degenerate loops: distinct-1/2 (unique word n-grams over all n-grams, pooled over samples), repetition rate
(seq-rep-4: share of a sample's word 4-grams that repeat an earlier one, averaged) and mean length (generated
tokens per sample, EOS excluded). Words are whitespace-separated, so these do not depend on the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..generate import SamplingParams, generate
from . import metrics

__all__ = ["GenerationSettings", "DEFAULT_PROMPTS", "generation_report", "text_stats"]

DEFAULT_PROMPTS = (
    "The",
    "Once upon a time",
    "In the beginning",
    "The meaning of life is",
    "First Citizen:",
)


@dataclass
class GenerationSettings:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    seeds: tuple[int, ...] = (0, 1)
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None


def text_stats(texts: list[str], token_counts: list[int] | None = None) -> dict:
    """The numbers for a list of generated texts (token_counts: generated tokens per text)."""
    ws = [metrics.words(t) for t in texts]
    out = {
        "distinct_1": metrics.distinct_n(ws, 1),
        "distinct_2": metrics.distinct_n(ws, 2),
        "repetition_rate": metrics.repetition_rate(ws, 4),
        "mean_words": metrics.mean_length(ws),
    }
    if token_counts is not None:
        out["mean_length"] = sum(token_counts) / len(token_counts) if token_counts else 0.0
    return out


def generation_report(model, tokenizer, settings: GenerationSettings | None = None) -> dict:
    """Generate ``len(prompts) x len(seeds)`` samples (one batch per seed, so a sample depends only on its
    prompt list and seed) and measure them."""
    s = settings or GenerationSettings()
    max_len = model.cfg.max_seq_len
    prompts_ids = [list(tokenizer.encode(p)) or [tokenizer.eos_id] for p in s.prompts]
    budget = max(0, min(s.max_new_tokens, max_len - max(len(p) for p in prompts_ids)))
    samples, texts, counts = [], [], []
    for seed in s.seeds:
        params = SamplingParams(
            max_new_tokens=budget,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            seed=seed,
            stop_tokens=(tokenizer.eos_id,),
        )
        outs = generate(model, prompts_ids, params) if budget else [[] for _ in prompts_ids]
        for prompt, ids in zip(s.prompts, outs):
            if ids and ids[-1] == tokenizer.eos_id:
                ids = ids[:-1]
            text = tokenizer.decode(ids)
            samples.append({"prompt": prompt, "seed": seed, "text": text, "tokens": len(ids)})
            texts.append(text)
            counts.append(len(ids))
    return {
        **text_stats(texts, counts),
        "settings": {
            "max_new_tokens": budget,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "seeds": list(s.seeds),
        },
        "samples": samples,
    }
