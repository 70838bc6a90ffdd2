"""Evaluation: val loss, perplexity and bits per byte over a whole split or text file, generation quality,
downstream tasks (LAMBADA, HellaSwag, your own jsonl), random-init / unigram / chance baselines, and
lm-evaluation-harness on the Hugging Face export. See docs/evaluation.md.

:func:`evaluate` takes anything :func:`openllm.load` accepts; :func:`evaluate_run` is the quickstart's entry
point and also writes ``RUN/evaluation.json`` (the file the model card reads).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..device import AUTO, resolve_device
from ..errors import OpenLLMError
from ..rundir import CONFIG, EVALUATION, EVALUATIONS, STATE
from .report import markdown, write_json

__all__ = ["evaluate", "evaluate_run", "evaluate_loaded", "find_data_dir", "markdown", "write_json"]


def evaluate_run(run_dir: str | Path, *, tasks: Sequence[str] | str = (), limit: int | None = None, **kwargs) -> dict:
    """Evaluate a run folder's latest checkpoint on its val split (plus ``tasks``), write
    ``RUN/evaluation.json`` and return the results. Keyword arguments as :func:`evaluate`."""
    kwargs.setdefault("progress", False)
    return evaluate(run_dir, tasks=tasks, limit=limit, write=True, **kwargs)


def evaluate(
    source: Any,
    *,
    text: str | Path | None = None,
    data: str | Path | None = None,
    tasks: Sequence[str] | str = (),
    limit: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    generation: bool = True,
    gen_settings=None,
    baselines: bool = True,
    harness: bool = False,
    harness_batch_size: int = 8,
    batch_size: int | None = None,
    device: str = AUTO,
    json_path: str | Path | None = None,
    write: bool = True,
    progress: bool = True,
    hub: Any = None,
) -> dict:
    """Evaluate a run, an export or a hub reference and return the results dict (docs/evaluation.md).

    ``text``: score this UTF-8 file instead of the val split. ``data``: the tokenized data folder (default:
    the one the run trained on). ``tasks``: names/paths as ``openllm evaluate --tasks``. ``limit``: first N
    items of each task. ``window``/``stride``: the perplexity windows (default: the model's training
    sequence length, stride = window / 2). ``write``: for a run folder, write ``RUN/evaluation.json``.
    """
    from ..loading import LoadedModel, load
    from .tasks import resolve_tasks

    if limit is not None and limit < 1:
        raise OpenLLMError(f"--limit must be at least 1, got {limit}")
    if text is not None:  # before the model loads
        from .perplexity import check_text_file

        check_text_file(text)
    # read the task files before loading the model: a typo fails in a second, not after the load
    task_list = resolve_tasks(tasks)
    if harness and not task_list:
        raise OpenLLMError("--harness needs --tasks (e.g. --tasks lambada,hellaswag --limit 100)")
    device = resolve_device(device)
    loaded = source if isinstance(source, LoadedModel) else load(source, device=device, hub=hub)
    results = evaluate_loaded(
        loaded,
        text=text,
        data=data,
        tasks=task_list,
        limit=limit,
        window=window,
        stride=stride,
        max_tokens=max_tokens,
        generation=generation,
        gen_settings=gen_settings,
        baselines=baselines,
        batch_size=batch_size,
        progress=progress,
    )
    if harness:
        from .harness import harness_mismatches, run_harness

        results["harness"] = run_harness(
            loaded, tasks=task_list, limit=limit, batch_size=harness_batch_size, device=device
        )
        results["harness"]["mismatches"] = harness_mismatches(results["tasks"], results["harness"]["tasks"])
    written = []
    if write and loaded.hub_ref is None and loaded.kind in ("run", "native", "hf"):
        # beside the weights the model card is made from: the run folder, or a local export folder (never a
        # hub download's cache)
        folder = Path(loaded.info.get("run", loaded.path)) if loaded.kind == "run" else Path(loaded.path)
        written.append(str(write_json(results, folder / evaluation_file(results))))
    if json_path is not None:
        written.append(str(write_json(results, json_path)))
    results["written"] = written
    return results


def evaluation_file(results: dict) -> str:
    """Where a model folder keeps these results: ``evaluation.json`` for its own val split (what the model
    card reports), ``evaluations/text-NAME-SHA.json`` for a text file (listed in the card as what it is)."""
    ds = results.get("dataset")
    if not isinstance(ds, dict):
        ds = {}
    if ds.get("kind") != "text":
        return EVALUATION
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(str(ds.get("name"))).stem)[:40]
    return f"{EVALUATIONS}/text-{stem}-{str(ds.get('sha256'))[:12]}.json"


def evaluate_loaded(
    loaded,
    *,
    text=None,
    data=None,
    tasks: Sequence[Any] | str = (),
    limit: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    max_tokens: int | None = None,
    generation: bool = True,
    gen_settings=None,
    baselines: bool = True,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict:
    """The evaluation itself, on a :class:`openllm.loading.LoadedModel`."""
    from . import metrics
    from . import perplexity as ppl
    from . import tasks as T
    from .baselines import random_init_like, unigram_from_data

    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    if tok is None:
        raise OpenLLMError(f"{loaded.source} has no tokenizer (tokenizer.model): evaluation needs one")
    if limit is not None and limit < 1:
        raise OpenLLMError(f"--limit must be at least 1, got {limit}")
    t0 = time.time()
    max_len = cfg.model.max_seq_len
    for name, value in (
        ("--window", window),
        ("--stride", stride),
        ("--batch-size", batch_size),
        ("--max-tokens", max_tokens),
    ):
        if value is not None and value < 1:
            raise OpenLLMError(f"{name} must be at least 1 (or left out for the default), got {value}")
    window = window or min(cfg.seq_len, max_len)
    if not 1 <= window <= max_len:
        raise OpenLLMError(f"--window must be between 1 and the model's context {max_len}, got {window}")
    stride = stride or max(1, window // 2)
    if not 1 <= stride <= window:
        raise OpenLLMError(f"--stride must be between 1 and the window {window}, got {stride}")
    data_dir = Path(data) if data else find_data_dir(loaded)
    if data_dir is not None:
        _check_same_tokenizer(data_dir, tok)
    task_list = T.resolve_tasks(tasks)

    results: dict[str, Any] = {
        "source": loaded.hub_ref or loaded.source,
        "kind": loaded.kind,
        "step": loaded.step,
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "tokens_seen": _tokens_seen(loaded),
        "vocab_size": cfg.model.vocab_size,
    }

    # --- the text we score ------------------------------------------------------------------------------
    if text is not None:
        et = ppl.text_file_text(text, tok)
    elif data_dir is not None:
        et = ppl.val_split_text(data_dir, tok, max_tokens=max_tokens)
    else:
        et = None
    models = {"model": model}
    if baselines:
        fresh = random_init_like(model)
        if fresh is not None:
            models["random_init"] = fresh
        if data_dir is not None and (Path(data_dir) / "meta.json").is_file():
            try:
                unigram = unigram_from_data(data_dir, cfg.model.vocab_size)
                models["unigram"] = unigram.to(next(model.parameters()).device)
            except OpenLLMError:
                pass  # no train split: no unigram baseline

    scores: dict[str, dict] = {name: {} for name in models}
    if et is not None:
        if et.tokens_scored < 1:
            raise OpenLLMError(f"{et.name} has no tokens to score")
        for name, m in models.items():
            s = ppl.score_stream(
                m,
                et.tokens,
                window=window,
                stride=stride,
                batch_size=batch_size,
                progress=progress,
                desc=f"perplexity ({name})",
            )
            scores[name].update(
                val_loss=s.loss, perplexity=s.perplexity, bits_per_byte=metrics.bits_per_byte(s.nll, et.n_bytes)
            )
        results.update(scores["model"])
        results.update(
            tokens=et.tokens_scored,
            bytes=et.n_bytes,
            window=window,
            stride=stride,
            dataset={
                "name": et.name,
                "kind": et.kind,
                "path": et.path,
                "documents": et.documents,
                "bytes_from": et.bytes_from,
                "sha256": et.sha256,
            },
        )
    else:
        results.update(
            val_loss=None,
            perplexity=None,
            bits_per_byte=None,
            tokens=0,
            bytes=0,
            window=window,
            stride=stride,
            dataset=None,
        )

    # --- downstream tasks -------------------------------------------------------------------------------
    results["tasks"] = {}
    for name in models:
        scores[name]["tasks"] = {}
    for task in task_list:
        for name, m in models.items():
            scores[name]["tasks"][task.name] = T.run_task(
                m, tok, task, max_len=max_len, limit=limit, batch_size=batch_size, progress=progress
            )
        results["tasks"][task.name] = {**scores["model"]["tasks"][task.name], "path": task.path}

    # --- generation -------------------------------------------------------------------------------------
    if generation:
        from .generation_quality import generation_report

        results["generation"] = generation_report(model, tok, gen_settings)
    else:
        results["generation"] = None

    # --- baselines ---------------------------------------------------------------------------------------
    results["baselines"] = {name: scores[name] for name in models if name != "model"}
    results["baselines"]["chance"] = _chance(cfg.model.vocab_size, et, task_list, limit)
    results["seconds"] = round(time.time() - t0, 2)
    from .. import __version__

    results["openllm_version"] = __version__
    results["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return results


def _check_same_tokenizer(data_dir: Path, tok) -> None:
    from ..batches import read_meta

    want = read_meta(data_dir).get("tokenizer_sha256")
    have = getattr(tok, "sha256", None)
    if want and have and want != have:
        raise OpenLLMError(
            f"{data_dir} was tokenized with another tokenizer ({want[:12]}) than the model's "
            f"({have[:12]}): pass the model's own data with --data, or --text FILE"
        )


def _chance(vocab: int, et, task_list, limit) -> dict:
    """Uniform guessing: loss ln V, perplexity V; a choice task's acc is the mean of 1 / #choices."""
    out: dict[str, Any] = {"tasks": {}}
    if et is not None:
        loss = math.log(vocab)
        out.update(
            val_loss=loss, perplexity=float(vocab), bits_per_byte=loss * et.tokens_scored / math.log(2) / et.n_bytes
        )
    for task in task_list:
        items = task.head(limit).items
        if task.kind == "choice":
            acc = sum(1 / len(i.choices) for i in items) / len(items)
            out["tasks"][task.name] = {"acc": acc, "acc_norm": acc}
        else:
            out["tasks"][task.name] = {"acc": 0.0}
    return out


def _tokens_seen(loaded) -> int | None:
    state = Path(loaded.path) / STATE
    if state.is_file():
        try:
            v = json.loads(state.read_text(encoding="utf-8")).get("tokens_seen")
            return int(v) if isinstance(v, (int, float)) else None
        except (OSError, ValueError):
            return None
    v = (loaded.info or {}).get("tokens_seen")
    return int(v) if isinstance(v, (int, float)) else None


def _data_dir_candidates(obj: Any, depth: int = 0) -> Iterable[str]:
    if depth > 4:
        return
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for key in ("data_dir", "data", "dataset", "tokenized"):
            if key in obj:
                yield from _data_dir_candidates(obj[key], depth + 1)
        for v in obj.values():
            yield from _data_dir_candidates(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            yield from _data_dir_candidates(v, depth + 1)


def find_data_dir(loaded) -> Path | None:
    """The tokenized data folder a run trained on: the first path recorded in the run's config.json or the
    checkpoint's state.json that holds a ``meta.json``; None when there is none (an export)."""
    places = []
    run = loaded.info.get("run") if loaded.kind == "run" else None
    if loaded.kind == "checkpoint":
        run = str(Path(loaded.path).parent.parent)
    if run:
        places += [Path(run) / CONFIG, Path(run) / "run.json"]
    places.append(Path(loaded.path) / STATE)
    for p in places:
        if not p.is_file():
            continue
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for cand in _data_dir_candidates(raw):
            if len(cand) > 4096 or "\n" in cand:
                continue
            d = Path(cand).expanduser()
            if not d.is_absolute() and run:
                d = Path(run) / d
            try:
                if (d / "meta.json").is_file():
                    return d
            except OSError:
                continue
    return None
