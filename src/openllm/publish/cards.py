"""Model and dataset cards (README.md): YAML metadata built with huggingface_hub's own card-data classes (so
the hub's parser accepts it), then the facts the run or the data measured, and nothing else."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..metrics import finite_number
from ..tokenizer import CHAT_STOPS
from .facts import RunFacts, without_local_paths

__all__ = ["model_card", "dataset_card", "eval_results", "val_evaluation", "data_ids", "weights_license"]

_TAGS = ["openllm", "llama", "causal-lm"]
_TASKS = {  # evaluation task -> (dataset type, dataset name, split, items in that split)
    "lambada": ("EleutherAI/lambada_openai", "LAMBADA", "test", 5153),
    "hellaswag": ("Rowan/hellaswag", "HellaSwag", "validation", 10042),
}
_TASK_METRICS = {
    "acc": ("accuracy", "accuracy"),
    "acc_norm": ("accuracy", "normalized accuracy"),
    "ppl": ("perplexity", "perplexity"),
}


def _as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict (a JSON object read from a file), else an empty one."""
    return value if isinstance(value, dict) else {}


def val_split_name(evaluation: dict[str, Any], *, repo_id: str | None = None, dataset_id: str | None = None) -> str:
    """What the card calls the text the val loss was measured on. ``openllm evaluate`` names a val split after
    the local data folder ("val split of tokens"), which says nothing to a reader: that becomes the held-out
    split of the named dataset (or of the model's training text)."""
    name = str(_as_dict(evaluation.get("dataset")).get("name") or "")
    if name and not name.startswith("val split of "):
        return name
    what = dataset_id or (f"{repo_id} training text" if repo_id else "training text")
    return f"{what} (held-out validation split)"


def _task_subset(task: str, scores: dict[str, Any]) -> tuple[str, str, str | None, str]:
    """(dataset type, dataset name, split, how many items) of a task's scores: a run of fewer items than the
    benchmark's split (``--limit``, or a sample file) is named as that subset with its size, never as the
    split; an item count that was not recorded is said."""
    dtype, dname, split, full = _TASKS.get(task, (task, task, None, None))
    n = scores.get("n") if isinstance(scores.get("n"), int) and not isinstance(scores.get("n"), bool) else None
    if n is None:
        return dtype, f"{dname} (item count not recorded)", f"{split}, item count not recorded" if split else None, ""
    if full is not None and n == full:
        return dtype, dname, split, f"{n:,} items"
    of = f" of {full:,}" if full else ""
    where = f"{split}, {n:,}{of} items" if split else f"{n:,} items"
    return dtype, f"{dname} ({n:,}-item subset)", where, f"{n:,} items"


def eval_results(
    evaluation: dict[str, Any], *, dataset_id: str | None = None, dataset_name: str | None = None
) -> list[Any]:
    """huggingface_hub EvalResults from ``evaluation.json``: val loss, perplexity, bits per byte on the
    scored text, and each task's accuracy/perplexity. Missing keys give no result."""
    from huggingface_hub import EvalResult

    out = []
    ds_name = dataset_name or val_split_name(evaluation, dataset_id=dataset_id)
    ds_type = dataset_id or ds_name
    for key, mtype, label in (
        ("val_loss", "loss", "loss (nats/token)"),
        ("perplexity", "perplexity", "perplexity"),
        ("bits_per_byte", "bits_per_byte", "bits per byte"),
    ):
        value = finite_number(evaluation.get(key))
        if value is not None:
            out.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Language modeling",
                    dataset_type=ds_type,
                    dataset_name=ds_name,
                    dataset_split="validation",
                    metric_type=mtype,
                    metric_name=label,
                    metric_value=round(value, 6),
                )
            )
    for task, scores in sorted((evaluation.get("tasks") or {}).items()):
        if not isinstance(scores, dict):
            continue
        dtype, subset, split, _ = _task_subset(task, scores)
        dname = _TASKS.get(task, (task, task))[1]
        for key, value in sorted(scores.items()):
            value = finite_number(value)
            if value is None or key not in _TASK_METRICS:
                continue
            mtype, label = _TASK_METRICS[key]
            out.append(
                EvalResult(
                    task_type="text-generation",
                    task_name=dname,
                    dataset_type=dtype,
                    dataset_name=subset,
                    dataset_split=split,
                    metric_type=mtype,
                    metric_name=f"{dname} {label}",
                    metric_value=round(value, 6),
                )
            )
    return out


def val_evaluation(facts: RunFacts) -> dict[str, Any]:
    """The run's evaluation of its own val split, or ``{}``: an evaluation of another text, or of a val split
    whose checksum is not the one this run trained beside, is not the model's validation result."""
    ev = facts.evaluation or {}
    ds = _as_dict(ev.get("dataset"))
    if ds.get("kind") != "val":
        return {}
    want = (facts.data_sources.get("val.jsonl") or {}).get("sha256")
    if want and ds.get("sha256") and ds["sha256"] != want:
        return {}
    return ev


def data_ids(facts: RunFacts, given: Iterable[str] | None = None) -> list[str]:
    """``datasets:`` of the card: the ids the user named, then the data's own provenance (a Hugging Face
    dataset by its id, the embedded corpus by the name ``prepare-data`` knows it by)."""
    out = list(given or [])
    for src in facts.provenance:
        if src.get("kind") == "hf" and src.get("name"):
            name = str(src["name"])
        elif src.get("kind") == "embedded" and src.get("name"):
            name = str(src["name"])
        else:
            continue
        if name not in out:
            out.append(name)
    return out


def weights_license(facts: RunFacts, license: str | None) -> tuple[str, str | None]:
    """(license id, license name for ``other``): the user's choice, else what the training data allows: text
    that is all public domain gives public-domain weights; anything else is stated as unknown."""
    if license:
        return license, None
    licenses = {str(src.get("license", "")).lower() for src in facts.provenance}
    if facts.provenance and licenses == {"public domain"}:
        return "other", "public-domain"
    return "other", "unknown"


def _finetune_rows(ft: dict[str, Any]) -> list[tuple[str, str]]:
    """The fine-tuning table: the base model (hub reference or source, step, weights checksum), the
    conversation data (file, sha256, conversations used), LoRA settings."""
    base, rows = ft.get("base") or {}, []
    local = base.get("source") or base.get("name") or "?"  # an export's summary keeps the name, not the path
    where = f"`{base['hub_ref']}`" if base.get("hub_ref") else f"`{Path(str(local)).name}` (local)"
    step = f", step {base['step']:,}" if isinstance(base.get("step"), int) else ""
    rows.append(("base model", where + step))
    if base.get("weights_sha256"):
        rows.append(("base weights sha256", f"`{base['weights_sha256']}`"))
    for key, label in (("data", "fine-tuning data"), ("val_data", "held-out conversations")):
        d = ft.get(key) or {}
        if d.get("path"):
            used = f", {d['kept']:,} conversations used" if isinstance(d.get("kept"), int) else ""
            dropped = f", {d['dropped']:,} longer than the context dropped" if d.get("dropped") else ""
            rows.append((label, f"`{Path(str(d['path'])).name}`{used}{dropped}"))
            if d.get("sha256"):
                rows.append((f"{label} sha256", f"`{d['sha256']}`"))
    lora = ft.get("lora")
    rows.append(
        (
            "method",
            f"LoRA rank {lora.get('rank')}, alpha {lora.get('alpha')} (merged into the weights)"
            if isinstance(lora, dict)
            else "full fine-tuning",
        )
    )
    rows.append(("loss", "assistant tokens only, conversations rendered with the chat template below"))
    return rows


def _yaml_header(data: Any) -> str:
    return "---\n" + data.to_yaml() + "\n---\n"


def _fmt_time(s: float) -> str:
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {sec:02d} s" if m else f"{s:.1f} s")


def _table(rows: Iterable[tuple[str, str]], head: tuple[str, str] = ("", "")) -> str:
    rows = list(rows)
    if not rows:
        return ""
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def model_card(
    facts: RunFacts,
    *,
    repo_id: str,
    version: str,
    license: str | None = None,
    language: str | list[str] = "en",
    datasets: list[str] | None = None,
    image_name: str | None = "loss.png",
    hub_name: str = "local",
) -> str:
    """README.md for one model version."""
    from huggingface_hub import ModelCardData

    cfg = facts.config
    model = cfg.get("model") or {}
    train = cfg.get("train") or {}
    ev = val_evaluation(facts)
    ids = data_ids(facts, datasets)
    val_name = val_split_name(ev, repo_id=repo_id, dataset_id=ids[0] if ids else None)
    license_id, license_name = weights_license(facts, license)
    base = _as_dict(facts.finetune.get("base"))
    data = ModelCardData(
        license=license_id,
        language=[language] if isinstance(language, str) else list(language),
        library_name="transformers",
        # a fine-tune started from trained weights: "from-scratch" describes its base, not it
        tags=[*_TAGS, "fine-tuned", "chat"] if base else [*_TAGS, "from-scratch"],
        datasets=ids or None,
        pipeline_tag="text-generation",
        model_name=repo_id,
        eval_results=eval_results(ev, dataset_id=ids[0] if ids else None, dataset_name=val_name) or None,
    )
    if license_name:
        data.license_name = license_name
    if base.get("hub_ref"):  # OWNER/NAME@VERSION: the Hub's base_model is the repo, the version beside it
        data.base_model, _, base_version = str(base["hub_ref"]).partition("@")
        # ModelCardData keeps any field it is given (its **kwargs); its stubs name only the common ones
        data.base_model_relation = "finetune"  # type: ignore[attr-defined]
        if base_version:
            data.base_model_version = base_version  # type: ignore[attr-defined]
    name = repo_id.split("/")[1]
    s: list[str] = [_yaml_header(data), f"# {name} ({version})\n\n"]
    intro = (
        "A small Llama-shaped language model trained from scratch with [OpenLLM](https://github.com/louischua/openllm)"
    )
    if base:
        intro = (
            "A small Llama-shaped chat model fine-tuned on conversations with "
            "[OpenLLM](https://github.com/louischua/openllm) from the base model named under Fine-tuning"
        )
    if facts.step is not None:
        intro += f", version `{version}` = training step {facts.step:,}"
    s.append(intro + ". It loads as a plain `LlamaForCausalLM` (no custom code).\n\n")

    # architecture and parameters
    arch = []
    if model:
        arch.append(
            (
                "architecture",
                "decoder-only transformer: RMSNorm, rotary position embeddings, SwiGLU, grouped-query attention"
                if model.get("n_kv_heads") not in (None, model.get("n_heads"))
                else "decoder-only transformer: RMSNorm, rotary position embeddings, SwiGLU",
            )
        )
        for key, label in (
            ("n_layers", "layers"),
            ("d_model", "width"),
            ("n_heads", "attention heads"),
            ("n_kv_heads", "key/value heads"),
            ("d_ff", "SwiGLU hidden width"),
            ("vocab_size", "vocabulary"),
            ("max_seq_len", "context length"),
            ("rope_theta", "RoPE theta"),
            ("tie_embeddings", "tied embeddings"),
        ):
            if key in model:
                arch.append((label, str(model[key])))
    if facts.params is not None:
        arch.append(("parameters", f"{facts.params:,} ({facts.params / 1e6:.1f}M)"))
        arch.append(("non-embedding parameters", f"{facts.params_non_embedding:,}"))
    if arch:
        s.append("## Model\n\n" + _table(arch, ("", "value")))
        preset = _preset_of(model)
        shape = f"the model shape of preset `{preset}`; " if preset else ""
        s.append(f"\n{shape.capitalize()}the full config is `openllm.json` in this repo.\n")

    # training
    tr = []
    for key, label in (
        ("max_steps", "max steps"),
        ("micro_batch_size", "micro batch"),
        ("grad_accum_steps", "gradient accumulation"),
        ("seq_len", "sequence length"),
        ("lr", "peak learning rate"),
        ("min_lr", "min learning rate"),
        ("schedule", "schedule"),
        ("warmup_steps", "warmup steps"),
        ("weight_decay", "weight decay"),
        ("optimizer", "optimizer"),
        ("grad_clip", "gradient clipping"),
        ("seed", "seed"),
    ):
        if train.get(key) is not None:
            tr.append((label, str(train[key])))
    if facts.step is not None:
        tr.append(("steps trained", f"{facts.step:,}"))
    if facts.tokens_seen is not None:
        tr.append(("tokens seen", f"{facts.tokens_seen:,}"))
    if tr:
        s.append("\n## Training\n\n" + _table(tr, ("setting", "value")))

    hw = []
    if facts.device:
        hw.append(("device", facts.device))
    if facts.world_size is not None:
        hw.append(("processes", str(facts.world_size)))
    if facts.precision:
        hw.append(("precision", facts.precision))
    if facts.elapsed_s is not None:
        hw.append(("training time", _fmt_time(facts.elapsed_s)))
    if facts.tokens_per_s is not None:
        hw.append(("throughput (median)", f"{facts.tokens_per_s:,.0f} tokens/s"))
    if facts.mfu is not None:
        hw.append(("MFU (median)", f"{100 * facts.mfu:.1f}%"))
    if hw:
        s.append("\n## Hardware and time\n\n" + _table(hw, ("", "value")))

    prov = []
    for fname, info in sorted(facts.data_sources.items()):
        if info.get("sha256"):
            prov.append((f"data `{fname}` sha256", f"`{info['sha256']}`"))
    for split, info in sorted(facts.data_splits.items()):
        if info.get("tokens") is not None:
            docs = f", {info['documents']:,} documents" if isinstance(info.get("documents"), int) else ""
            prov.append((f"{split} split", f"{info['tokens']:,} tokens{docs}"))
    total = sum(finite_number(m.get("weight")) or 0.0 for m in facts.data_mixture)
    for part in facts.data_mixture:
        # a folder is named by its last part: the rest is the publisher's layout
        name = Path(str(part.get("data_dir", "?"))).name
        weight = finite_number(part.get("weight"))
        train_src = (part.get("sources") or {}).get("train.jsonl") or {}
        prov.append(
            (
                f"mixture part `{name}`",
                (f"weight {weight:g} ({weight / total:.1%} of the windows)" if weight and total else "weight ?")
                + (f", {part['train_tokens']:,} train tokens" if isinstance(part.get("train_tokens"), int) else "")
                + (f", meta.json sha256 `{part['meta_sha256']}`" if part.get("meta_sha256") else "")
                + (f", train.jsonl sha256 `{train_src['sha256']}`" if train_src.get("sha256") else ""),
            )
        )
    if facts.tokenizer_sha256:
        prov.append(("tokenizer.model sha256", f"`{facts.tokenizer_sha256}`"))
    if facts.code_commit:
        when = "recorded by the run" if facts.code_commit_origin == "run" else "at push time"
        prov.append(("code commit", f"`{facts.code_commit}` ({when})"))
    for src in facts.provenance:
        # a local file is named by its file name: its folder is the publisher's, not something a reader can open
        local = src.get("kind") in ("txt", "jsonl", "json", "parquet", "csv")
        label = Path(str(src.get("name", "?"))).name if local else str(src.get("name", "?"))
        what = label if local else (src.get("description") or src.get("name") or src.get("kind"))
        where = ", ".join(
            Path(str(src[k])).name if k == "file" and Path(str(src[k])).is_absolute() else str(src[k])
            for k in ("package", "version", "file")
            if src.get(k)
        )
        size = f", {src['bytes']:,} bytes" if isinstance(src.get("bytes"), int) else ""
        prov.append(
            (
                f"source `{label}`",
                f"{what}"
                + (f" ({where})" if where else "")
                + size
                + (f", sha256 `{src['sha256']}`" if src.get("sha256") else "")
                + (f", license: {src['license']}" if src.get("license") else ""),
            )
        )
    if license_name == "public-domain":
        prov.append(("weights license", "public domain, as all the training text is (choose another with `--license`)"))
    elif license_name == "unknown":
        prov.append(
            (
                "weights license",
                "not stated: the training data's license is not recorded; state it with `openllm hub push --license`",
            )
        )
    if prov:
        s.append("\n## Data and code\n\n" + _table(prov, ("", "value")))
    if base:
        s.append("\n## Fine-tuning\n\n" + _table(_finetune_rows(facts.finetune), ("", "value")))

    # metrics
    met = []
    if facts.final_loss is not None:
        met.append(("final training loss", f"{facts.final_loss:.4f}"))
    batches = train.get("eval_batches")
    est = (
        f"validation loss estimate ({batches} val batches, during training)"
        if batches
        else "validation loss estimate (during training)"
    )
    if facts.final_val_loss is not None:
        met.append((f"final {est}", f"{facts.final_val_loss:.4f}"))
    if facts.best_val_loss is not None:
        at = f" (step {facts.best_step:,})" if isinstance(facts.best_step, int) else ""
        met.append((f"best {est}", f"{facts.best_val_loss:.4f}{at}"))
    how = f"every token of the {val_name}" if ev else "every val token"
    if ev.get("window"):
        how += f", window {ev['window']}, stride {ev.get('stride')}"
    for key, label, fmt in (
        ("val_loss", "validation loss", "{:.4f}"),
        ("perplexity", "perplexity", "{:.2f}"),
        ("bits_per_byte", "bits per byte", "{:.4f}"),
    ):
        if finite_number(ev.get(key)) is not None:
            met.append((f"{label} ({how})", fmt.format(ev[key])))
    for task, scores in sorted((ev.get("tasks") or {}).items()):
        if isinstance(scores, dict):
            size = _task_subset(task, scores)[3]
            for key in ("acc", "acc_norm", "ppl"):
                if finite_number(scores.get(key)) is not None:
                    met.append((f"{task} {_TASK_METRICS[key][1]}{f' ({size})' if size else ''}", f"{scores[key]:.4f}"))
    if met:
        s.append("\n## Metrics\n\n" + _table(met, ("metric", "value")))
        if ev:
            s.append("\nEvaluation details are in `evaluation.json`.\n")
    others = []
    for other in facts.other_evaluations:
        ods = _as_dict(other.get("dataset"))
        if finite_number(other.get("val_loss")) is None:
            continue
        sha = f" (sha256 `{ods['sha256'][:16]}…`)" if ods.get("sha256") else ""
        others.append(
            (
                f"text file `{ods.get('name', '?')}`{sha}",
                f"loss {other['val_loss']:.4f}, perplexity {other.get('perplexity') or float('nan'):.2f}",
            )
        )
    if others:
        s.append(
            "\n## Other evaluations\n\nScored with `openllm evaluate --text FILE`; these texts are not "
            "datasets of the hub and are not in the model index.\n\n" + _table(others, ("text", "result"))
        )
    if image_name:
        s.append(f"\n## Loss curve\n\n![loss curve]({image_name})\n")

    # usage
    ref = f"{repo_id}@{version}"
    stops = json.dumps(list(CHAT_STOPS))
    s.append(f"""
## Usage

With Transformers (the repository is a plain Llama checkpoint):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{repo_id}", revision="{version}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}", revision="{version}")
ids = tok("Once upon a time", return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=40)[0]))

# conversations go through the chat template the tokenizer carries (also in the GGUF export)
messages = [{{"role": "user", "content": "Who created the heaven and the earth?"}}]
prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = tok(prompt, return_tensors="pt")
# the reply ends at </s> or where the model starts the next turn
out = model.generate(**inputs, max_new_tokens=60, stop_strings={stops}, tokenizer=tok)
```

With OpenLLM:

```bash
openllm generate {ref} --prompt "Once upon a time"{"" if hub_name == "local" else " --hub " + hub_name}
openllm hub pull {ref} --out ./{name}-{version}
```

```python
import openllm
m = openllm.load("{ref}")
```
""")
    seen = f"{facts.tokens_seen:,} tokens" if facts.tokens_seen is not None else "a small corpus"
    if base:
        kept = _as_dict(facts.finetune.get("data")).get("kept")
        convs = f"{kept:,} conversations" if isinstance(kept, int) else "a small set of conversations"
        s.append(f"""
## Limitations

This is a small base model fine-tuned on {convs} to answer in the chat format above. It answers in the
style of those conversations, knows only what its base model's training text held, has no safety tuning, and
states false things fluently; it reproduces its data's biases. Use it for research and teaching, not for
decisions or facts.
""")
        return "".join(s)
    s.append(f"""
## Limitations

This is a small model trained from scratch on {seen}. It continues text in the style of its training data;
it is not instruction-tuned, has no safety tuning, and states false things fluently. Its knowledge is limited
to the training data, and it reproduces that data's biases. Use it for research and teaching, not for
decisions or facts.
""")
    return "".join(s)


def _preset_of(model: dict[str, Any]) -> str | None:
    """The shipped preset whose model section ``model`` is, if any. The config's ``name`` is not that: the app
    and ``--set name=`` give it the run's name."""
    from ..config import load_config, preset_names

    for name in preset_names():
        try:
            shape = load_config(name).to_dict()["model"]
        except Exception:  # a preset this version cannot read names nothing
            continue
        if all(model.get(k) == v for k, v in shape.items()):
            return name
    return None


def dataset_card(
    *,
    repo_id: str,
    files: dict[str, dict[str, Any]],
    stats: dict[str, Any],
    license: str = "other",
    language: str | list[str] = "en",
    source: str | None = None,
    report_md: str | None = None,
    report: dict[str, Any] | None = None,
) -> str:
    """README.md for a dataset repo: size, documents, tokens, source, license, checksums, the prepare report."""
    from huggingface_hub import DatasetCardData

    total = sum(int(f["bytes"]) for f in files.values())
    data = DatasetCardData(
        license=license,
        language=[language] if isinstance(language, str) else list(language),
        pretty_name=repo_id.split("/")[1],
        tags=["openllm", "text"],
        task_categories=["text-generation"],
        size_categories=[_size_category(stats)],
    )
    name = repo_id.split("/")[1]
    s = [
        _yaml_header(data),
        f"# {name}\n\nTraining text for [OpenLLM](https://github.com/louischua/openllm) "
        f"language models, uploaded with `openllm data upload`.\n",
    ]
    rows = [("files", str(len(files))), ("size", f"{total:,} bytes")]
    for key, label in (
        ("documents", "documents"),
        ("tokens", "tokens"),
        ("vocab_size", "vocabulary size"),
        ("lines", "lines"),
        ("characters", "characters"),
    ):
        if isinstance(stats.get(key), int):
            rows.append((label, f"{stats[key]:,}"))
    for split, info in sorted((stats.get("splits") or {}).items()):
        parts = [f"{info[k]:,} {k}" for k in ("documents", "tokens") if isinstance(info.get(k), int)]
        if parts:
            rows.append((f"{split} split", ", ".join(parts)))
    if source:
        rows.append(("source", source))
    rows.append(("license", license))
    s.append("\n## Summary\n\n" + _table(rows, ("", "value")))
    s.append("\n## Files and checksums\n\n| file | bytes | sha256 |\n|---|---|---|\n")
    s.extend(f"| `{p}` | {f['bytes']:,} | `{f['sha256']}` |\n" for p, f in sorted(files.items()))
    s.append("\n`SHA256SUMS` in this repo holds the same checksums (`sha256sum -c SHA256SUMS`).\n")
    if report_md:
        s.append("\n## Preparation report\n\n" + _demote(_file_names(report_md.strip())) + "\n")
    elif report:
        public = without_local_paths(report)
        s.append("\n## Preparation report\n\n```json\n" + json.dumps(public, indent=2)[:20000] + "\n```\n")
    s.append(f"""
## Usage

```bash
git clone <local hub>/datasets/{repo_id}.git      # the local hub: any git client
```

```python
from huggingface_hub import snapshot_download     # the Hugging Face hub
folder = snapshot_download("{repo_id}", repo_type="dataset")
```
""")
    return "".join(s)


# an absolute local path inside text (/home/me/x.txt, ~/x, C:\\x): not a URL's path, not a relative a/b
_PATH_IN_TEXT = re.compile(r"(?<![\w:/\\.~-])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\`|()\[\]]+[/\\])+([^\s/\\`|()\[\]]+)")


def _file_names(text: str) -> str:
    """``text`` with each absolute local path cut to its file name: the card is published, the publisher's
    folders are not."""
    return _PATH_IN_TEXT.sub(r"\1", text)


def _demote(md: str) -> str:
    """Headings of an embedded report one level below the card's."""
    return "\n".join("##" + ln if ln.startswith("#") else ln for ln in md.splitlines())


def _size_category(stats: dict[str, Any]) -> str:
    n = stats.get("documents") or stats.get("lines") or 0
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
    ):
        if n < limit:
            return label
    return "10M<n<100M"
