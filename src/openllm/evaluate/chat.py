"""Evaluation of a chat model on held-out conversations.

- **assistant-token loss** (and perplexity): the mean cross-entropy over the tokens the model has to write
  (each assistant turn after ``Assistant:`` and its EOS), with the conversation rendered by the project's chat
  template, packed one conversation per attention block (:mod:`openllm.conversations`); summed over every
  assistant token of the file, so long and short answers count per token.
- **samples**: for the first conversations, the prompt up to the last assistant turn through
  ``Tokenizer.encode_chat`` (the server's path), a greedy reply, the reference, and whether the reply ended
  its turn with EOS after a non-empty reply (``ended_turn``: it answered in the template instead of running
  on); an empty reply (``empty``, EOS first) is not an ended turn.

:func:`evaluate_chat` scores a model and, given ``base``, the base model on the same conversations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..conversations import PackedLoader, attention_mask, encode_conversations, pack, read_conversations
from ..device import AUTO, resolve_device
from ..errors import OpenLLMError

__all__ = ["assistant_loss_sums", "chat_loss", "chat_samples", "run_task_chat", "evaluate_chat"]


@torch.no_grad()
def assistant_loss_sums(model, batches: Iterable, *, max_batches: int | None = None) -> tuple[float, int]:
    """(summed cross-entropy, token count) over the assistant tokens of ``(x, y, segments)`` batches."""
    total, count = 0.0, 0
    for i, (x, y, seg) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        logits = model(x, attn_mask=attention_mask(seg))
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
        count += int((y != -100).sum())
    return total, count


def chat_loss(
    model,
    tokenizer,
    conversations,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    too_long: str = "drop",
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Assistant-token loss and perplexity of ``model`` on ``conversations`` (a list of
    :class:`~openllm.conversations.Conversation`)."""
    seq_len = seq_len or model.cfg.max_seq_len
    device = device or next(model.parameters()).device  # where the model is, unless told
    examples, report = encode_conversations(tokenizer, conversations, seq_len, too_long=too_long)
    if not examples:
        raise OpenLLMError(f"no conversation fits the context of {seq_len} tokens")
    rows = pack(examples, seq_len, pad_id=tokenizer.pad_id)
    loader = PackedLoader(rows, batch_size, device=device, shuffle=False)
    was_training = model.training
    model.eval()
    try:
        total, count = assistant_loss_sums(model, loader.epoch_batches())
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    return {
        "assistant_loss": loss,
        "assistant_ppl": math.exp(min(loss, 50.0)),
        "assistant_tokens": count,
        "conversations": report.kept,
        "dropped": report.dropped,
        "truncated": report.truncated,
    }


def chat_samples(model, tokenizer, conversations, *, n: int = 5, max_new_tokens: int = 64) -> list[dict[str, Any]]:
    """Greedy replies to the first ``n`` conversations' last user turn (see the module docstring)."""
    from ..generate import SamplingParams, generate

    out = []
    for conv in conversations[:n]:
        msgs = conv.messages
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        prompt = tokenizer.encode_chat(msgs[:last], add_generation_prompt=True, tools=conv.tools)
        room = model.cfg.max_seq_len - len(prompt)
        if room <= 0:
            continue
        params = SamplingParams(
            max_new_tokens=min(max_new_tokens, room), temperature=0.0, stop_tokens=(tokenizer.eos_id,)
        )
        ids = generate(model, [prompt], params)[0]
        eos = bool(ids) and ids[-1] == tokenizer.eos_id
        reply = tokenizer.decode(ids[:-1] if eos else ids).strip()
        # an EOS with nothing before it is no answer: counted as ended, it made a silent model look fine-tuned
        out.append(
            {
                "messages": msgs[:last],
                "reference": msgs[last]["content"],
                "reply": reply,
                "ended_turn": eos and bool(reply),
                "empty": not reply,
            }
        )
    return out


def run_task_chat(
    model, tokenizer, task, *, max_len: int, limit: int | None = None, batch_size: int | None = None
) -> dict:
    """A task scored in chat form: each item's context is the user turn, each choice the assistant's reply
    (``User: CONTEXT\nAssistant: CHOICE``, the reply tokenized as in training); the prediction is the choice
    with the highest log-likelihood (``acc``), or per byte (``acc_norm``), as :func:`~.tasks.run_task` does in
    base form. A last-word task scores whether the greedy reply is the word (``acc``) and its perplexity."""
    from ..conversations import encode_rendered
    from .tasks import run_task

    prompts: dict[str, list[int]] = {}

    def encode(item, choice: str):
        if item.context not in prompts:
            prompts[item.context] = tokenizer.encode_chat(
                [{"role": "user", "content": item.context}], add_generation_prompt=True
            )
        return prompts[item.context], encode_rendered(tokenizer, " " + choice.strip())

    return run_task(model, tokenizer, task, max_len=max_len, limit=limit, batch_size=batch_size, encode=encode)


def _tasks(lm, tasks, limit) -> dict[str, Any]:
    from .tasks import resolve_tasks, run_task

    out: dict[str, Any] = {}
    max_len = lm.config.model.max_seq_len
    for task in resolve_tasks(tasks):
        out[task.name] = {
            "base_form": run_task(lm.model, lm.tokenizer, task, max_len=max_len, limit=limit),
            "chat_form": run_task_chat(lm.model, lm.tokenizer, task, max_len=max_len, limit=limit),
        }
    return out


def _score(
    source, conversations, *, seq_len, samples, max_new_tokens, device, hub, tasks=(), limit=None
) -> dict[str, Any]:
    from ..loading import load

    lm = load(source, device=device, hub=hub)
    if lm.tokenizer is None:
        raise OpenLLMError(f"{source}: no tokenizer beside the weights")
    t0 = time.perf_counter()
    res = {
        "model": str(source),
        "step": lm.step,
        **chat_loss(
            lm.model, lm.tokenizer, conversations, seq_len=seq_len or lm.config.model.max_seq_len, device=device
        ),
    }
    if samples:
        res["samples"] = chat_samples(lm.model, lm.tokenizer, conversations, n=samples, max_new_tokens=max_new_tokens)
        n = max(len(res["samples"]), 1)
        res["ended_turn_rate"] = sum(s["ended_turn"] for s in res["samples"]) / n
        res["empty_reply_rate"] = sum(s["empty"] for s in res["samples"]) / n
    if tasks:
        res["tasks"] = _tasks(lm, tasks, limit)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def evaluate_chat(
    model,
    data: str | Path,
    *,
    base=None,
    samples: int = 5,
    max_new_tokens: int = 64,
    seq_len: int | None = None,
    tasks=(),
    limit: int | None = None,
    device: str | None = AUTO,
    hub: Any = None,
) -> dict[str, Any]:
    """Score ``model`` (anything :func:`openllm.load` takes) on the conversations in ``data``; with ``base``,
    the base model on the same conversations under ``"base"``. ``tasks`` (names or files, as ``openllm
    evaluate --tasks``; ``limit`` items each) are scored in base and chat form under ``"tasks"``."""
    convs = read_conversations(data)
    kw = dict(
        seq_len=seq_len,
        samples=samples,
        max_new_tokens=max_new_tokens,
        device=resolve_device(device),
        hub=hub,
        tasks=tasks,
        limit=limit,
    )
    out = {"data": str(data), **_score(model, convs, **kw)}
    if base is not None:
        out["base"] = _score(base, convs, **kw)
    return out
