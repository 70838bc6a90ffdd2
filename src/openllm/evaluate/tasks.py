"""Downstream tasks scored by log-likelihood, read from local files: LAMBADA (last-word accuracy and
perplexity), HellaSwag (4-way choice: acc and acc_norm), and a generic jsonl format for your own tasks.

Scoring follows lm-evaluation-harness exactly, so our numbers equal its numbers on the same model and items
(tests/test_evaluate_harness.py): a (context, continuation) pair is encoded as ``encode(context +
continuation)`` split after ``len(encode(context))`` tokens (trailing spaces of the context move to the
continuation first), no BOS is added, the input is the last ``max_len + 1`` tokens minus the final one, and
the continuation is "greedy" when the argmax at each of its positions is its token.

Generic task file (one JSON object a line)::

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "label": 0}

The continuation scored for each choice is ``" " + choice`` (lm-eval's default target delimiter); acc picks
the highest log-likelihood, acc_norm the highest log-likelihood per UTF-8 byte of the choice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import OpenLLMError
from . import metrics
from .perplexity import auto_batch_size, model_device, model_vocab_size, target_logprobs

__all__ = [
    "Item",
    "Task",
    "encode_pair",
    "loglikelihoods",
    "load_lambada",
    "load_hellaswag",
    "load_choice_jsonl",
    "load_task",
    "run_task",
    "BUILTIN_TASKS",
]

# where a checkout's test data lives (REPO/../shared/data); users pass their own path as NAME=PATH, or set
# OPENLLM_EVAL_DATA. A shallow install location (the Space's training/) simply has no such folder.
_HERE = Path(__file__).resolve()
_SHARED = _HERE.parents[4] / "shared" / "data" if len(_HERE.parents) > 4 else None
BUILTIN_TASKS = {
    "lambada": "lambada_test.jsonl",
    "hellaswag": "hellaswag_val_full.txt",
}


@dataclass
class Item:
    context: str
    choices: list[str]  # as written; the scored continuation is task.delimiter + choice
    label: int = 0

    @property
    def lengths(self) -> list[int]:
        """acc_norm's normaliser: UTF-8 bytes of each choice (delimiter excluded), as lm-eval's acc_bytes;
        equal to lm-eval's acc_norm (characters) on ASCII text."""
        return [len(c.encode("utf-8")) for c in self.choices]


@dataclass
class Task:
    """``kind``: "last_word" (one continuation; acc = greedy match, ppl over items) or "choice"."""

    name: str
    kind: str
    items: list[Item]
    path: str = ""
    delimiter: str = " "  # between context and choice, lm-eval's target_delimiter

    def head(self, limit: int | None) -> Task:
        if limit is None:
            return self
        return Task(self.name, self.kind, self.items[:limit], self.path, self.delimiter)


# --- encoding and scoring -------------------------------------------------------------------------------


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer.encode(context + continuation))
    ctx = list(tokenizer.encode(context)) if context else []
    if not ctx:
        # an empty context needs one token to condition on: lm-eval's prefix token (BOS, else EOS)
        prefix = getattr(tokenizer, "bos_id", None)
        prefix = prefix if prefix is not None and prefix >= 0 else tokenizer.eos_id
        return [prefix], whole
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def loglikelihoods(
    model,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    max_len: int,
    batch_size: int | None = None,
    progress: bool = False,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), is_greedy)`` per ``(context_ids, continuation_ids)``."""
    if any(not cont for _, cont in requests):
        raise ValueError("a continuation encodes to no tokens")
    device = model_device(model)
    vocab = model_vocab_size(model)
    inputs = []
    for ctx, cont in requests:
        ids = (list(ctx) + list(cont))[-(max_len + 1) :]
        inputs.append((ids[:-1], ids[len(ids) - len(cont) :]))
    # longest first, so a batch pads little and the first batch shows the worst memory use
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(inputs)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    pos = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=desc, unit="req", leave=False, disable=None)
    try:
        while pos < len(order):
            longest = len(inputs[order[pos]][0])
            bs = batch_size or auto_batch_size(longest, vocab, device)
            chunk = order[pos : pos + bs]
            x = torch.zeros((len(chunk), longest), dtype=torch.long)
            y = torch.zeros((len(chunk), longest), dtype=torch.long)
            for r, i in enumerate(chunk):
                inp, cont = inputs[i]
                # right padding: a causal model never looks right
                x[r, : len(inp)] = torch.tensor(inp)
                y[r, len(inp) - len(cont) : len(inp)] = torch.tensor(cont)
            logp, hit = target_logprobs(model, x.to(device), y.to(device))
            logp, hit = logp.double().cpu(), hit.cpu()
            for r, i in enumerate(chunk):
                inp, cont = inputs[i]
                span = slice(len(inp) - len(cont), len(inp))
                results[i] = (float(logp[r, span].sum()), bool(hit[r, span].all()))
            pos += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


def run_task(
    model,
    tokenizer,
    task: Task,
    *,
    max_len: int,
    limit: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    encode=None,
) -> dict:
    """Metrics of one task: last_word -> {acc, ppl, n}; choice -> {acc, acc_norm, n}. ``encode(item, choice)``
    gives the (context ids, continuation ids) to score; the default is the base form (context, delimiter,
    choice)."""
    task = task.head(limit)
    if not task.items:
        raise OpenLLMError(f"task {task.name!r} has no items")
    if encode is None:

        def encode(item: Item, choice: str):
            return encode_pair(tokenizer, item.context, task.delimiter + choice)

    requests, owners = [], []
    for k, item in enumerate(task.items):
        for c in item.choices:
            requests.append(encode(item, c))
            owners.append(k)
    scored = loglikelihoods(model, requests, max_len=max_len, batch_size=batch_size, progress=progress, desc=task.name)
    per_item: list[list[tuple[float, bool]]] = [[] for _ in task.items]
    for k, s in zip(owners, scored):
        per_item[k].append(s)
    n = len(task.items)
    if task.kind == "last_word":
        lls = [s[0][0] for s in per_item]
        return {"acc": metrics.accuracy(s[0][1] for s in per_item), "ppl": metrics.item_perplexity(lls), "n": n}
    hits, hits_norm = [], []
    for item, item_scores in zip(task.items, per_item):
        lls = [ll for ll, _ in item_scores]
        hits.append(metrics.choice_prediction(lls) == item.label)
        hits_norm.append(metrics.choice_prediction(lls, item.lengths) == item.label)
    return {"acc": metrics.accuracy(hits), "acc_norm": metrics.accuracy(hits_norm), "n": n}


# --- task files -----------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OpenLLMError(f"{path}:{lineno}: not valid JSON ({exc.msg})", path=path) from exc
            if not isinstance(row, dict):
                raise OpenLLMError(f"{path}:{lineno}: expected a JSON object", path=path)
            rows.append(row)
    return rows


def lambada_split(text: str) -> tuple[str, str]:
    """LAMBADA's (context, target) as lm-eval's lambada_openai: split on the last space; target = " " + word."""
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


def load_lambada(path: str | Path, name: str = "lambada") -> Task:
    """One ``{"text": ...}`` a line; the target is the last (space-separated) word."""
    path = Path(path)
    items = []
    for lineno, row in enumerate(_read_jsonl(path), 1):
        text = row.get("text")
        if not isinstance(text, str) or " " not in text.strip():
            raise OpenLLMError(f'{path}: item {lineno} needs a "text" string of at least two words')
        ctx, target = lambada_split(text)
        items.append(Item(ctx, [target], 0))
    return Task(name, "last_word", items, str(path), delimiter="")


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag ``preprocess``: WikiHow's bracketed artifacts out."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: str | Path, name: str = "hellaswag") -> Task:
    """Six lines per item: ``activity_label: context``, the gold label (0-3), then the four endings."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise OpenLLMError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)", path=path)
    items = []
    for k in range(0, len(lines), 6):
        ctx, label, endings = lines[k], lines[k + 1].strip(), lines[k + 2 : k + 6]
        if label not in {"0", "1", "2", "3"}:
            raise OpenLLMError(f"{path}:{k + 2}: the label must be 0-3, got {label!r}", path=path)
        choices = [_hellaswag_clean(e) for e in endings]
        items.append(Item(_hellaswag_clean(ctx), choices, int(label)))
    return Task(name, "choice", items, str(path))


def load_choice_jsonl(path: str | Path, name: str | None = None) -> Task:
    """The generic format: ``{"context": str, "choices": [str, ...], "label": int}`` a line."""
    path = Path(path)
    items = []
    for lineno, row in enumerate(_read_jsonl(path), 1):
        ctx, choices, label = row.get("context"), row.get("choices"), row.get("label")
        if (
            not isinstance(ctx, str)
            or not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise OpenLLMError(
                f'{path}: item {lineno} needs "context" (string) and "choices" (a list of at '
                "least two non-empty strings)"
            )
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise OpenLLMError(f'{path}: item {lineno}: "label" must be an index into choices, got {label!r}')
        items.append(Item(ctx, list(choices), label))
    return Task(name or path.stem, "choice", items, str(path))


def _builtin_path(name: str) -> Path:
    """The task's file in $OPENLLM_EVAL_DATA, else in the repository's ../shared/data (a checkout's test data)."""
    folders = [Path(os.environ["OPENLLM_EVAL_DATA"])] if os.environ.get("OPENLLM_EVAL_DATA") else []
    for folder in folders + ([_SHARED] if _SHARED is not None else []):
        p = folder / BUILTIN_TASKS[name]
        if p.is_file():
            return p
    raise OpenLLMError(
        f"task {name!r} needs its data file {BUILTIN_TASKS[name]}: pass it as {name}=PATH "
        "or set OPENLLM_EVAL_DATA to the folder that holds it"
    )


def load_task(spec: str) -> Task:
    """``lambada``, ``hellaswag``, ``NAME=PATH`` (NAME lambada/hellaswag picks that format, anything else
    the generic one) or ``PATH.jsonl`` (generic format, named after the file)."""
    spec = spec.strip()
    name, _, path = spec.partition("=")
    if not path:
        if name in BUILTIN_TASKS:
            path = str(_builtin_path(name))
        elif name.endswith(".jsonl") or Path(name).is_file():
            name, path = Path(name).stem, name
        else:
            raise OpenLLMError(
                f"unknown task {spec!r}: use lambada, hellaswag, NAME=PATH or a .jsonl file "
                'of {"context", "choices", "label"} lines'
            )
    p = Path(path).expanduser()
    if not p.is_file():
        raise OpenLLMError(f"task file {p} does not exist")
    if name == "lambada":
        return load_lambada(p, name)
    if name == "hellaswag":
        return load_hellaswag(p, name)
    return load_choice_jsonl(p, name)


def parse_task_list(specs: str | Iterable[str] | None) -> list[str]:
    if not specs:
        return []
    if isinstance(specs, str):
        specs = [specs]
    out: list[str] = []
    for s in specs:
        out.extend(x for x in (p.strip() for p in s.split(",")) if x)
    return out


def resolve_tasks(tasks) -> list[Task]:
    """Task objects from a comma-separated string, a list of specs/strings, or Task objects."""
    out: list[Task] = []
    for spec in [tasks] if isinstance(tasks, str) else list(tasks or ()):
        out += [spec] if isinstance(spec, Task) else [load_task(s) for s in parse_task_list(spec)]
    return out
