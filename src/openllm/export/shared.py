"""Helpers shared by the export formats: the tokenizer files of a folder and our state dict as saved."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..fsio import follow_umask

__all__ = ["copy_tokenizer_files", "write_tokenizer_files", "export_state_dict", "save_weights", "finetune_summary"]

FINETUNE_KEY = "finetune"  # in an export's openllm.json / native config.json: what a fine-tune was tuned from

_TOKENIZER_EXTRA = ("special_tokens_map.json", "added_tokens.json")


def copy_tokenizer_files(loaded, out: Path) -> list[str]:
    """Copy the tokenizer files (``tokenizer*`` and the Hugging Face side files) into ``out``."""
    src = loaded.tokenizer_dir
    if src is None:
        return []
    copied = []
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and (f.name.startswith("tokenizer") or f.name in _TOKENIZER_EXTRA):
            shutil.copy2(f, Path(out) / f.name)
            copied.append(f.name)
    return copied


def write_tokenizer_files(loaded, out: Path) -> list[str]:
    """The tokenizer files for a Hugging Face style folder: the source's files, with ``tokenizer_config.json``
    rewritten from :func:`openllm.tokenizer.hf_tokenizer_config` (chat template, left padding, no
    ``token_type_ids``, ``model_max_length`` = the model's context), also for tokenizers saved before those
    settings existed."""
    import json

    from ..tokenizer import hf_tokenizer_config, write_hf_files

    copied = copy_tokenizer_files(loaded, out)
    if loaded.tokenizer is None:
        return copied
    ctx = loaded.config.model.max_seq_len
    model_file = getattr(loaded.tokenizer, "model_path", None)
    if "tokenizer.json" not in copied and model_file is not None and Path(model_file).is_file():
        write_hf_files(model_file, out, model_max_length=ctx)
        return sorted(set(copied) | {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    path = Path(out) / "tokenizer_config.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    sp = (
        {"sentencepiece_sha256": loaded.tokenizer.sha256, "vocab_size": loaded.tokenizer.vocab_size}
        if model_file is not None
        else {}
    )
    new = hf_tokenizer_config(model_max_length=ctx, **sp)
    path.write_text(json.dumps({**old, **new}, indent=2) + "\n", encoding="utf-8")
    return sorted(set(copied) | {"tokenizer_config.json"})


def export_state_dict(model) -> dict:
    """Our state dict, contiguous, CPU, with the tied head left out (it is the embedding)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def save_weights(state: dict, path: Path) -> None:
    """safetensors' ``save_file`` (metadata ``format: pt``, which transformers requires), the file then given the
    mode every other file of the export has: safetensors writes it private (0600), so a web server or another
    user could read the folder's config but not its weights."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt"})
    follow_umask(path)


def finetune_summary(loaded) -> dict | None:
    """What an export keeps of a fine-tune's record (``openllm finetune`` writes it into each checkpoint's
    ``state.json``; an export carries this summary in its config file, so an export of an export still knows):
    the base model's name, hub reference, step and weights checksum, and the method. None for a model trained
    from scratch. Local paths are left out: they name the publisher's folders, not anything a reader can fetch."""
    from ..fsio import read_json
    from ..rundir import STATE

    record = loaded.info.get(FINETUNE_KEY) if isinstance(loaded.info, dict) else None
    if record is None and loaded.kind in ("run", "checkpoint"):
        record = read_json(Path(loaded.path) / STATE).get(FINETUNE_KEY)
    if not isinstance(record, dict):
        return None
    base = record.get("base")
    if not isinstance(base, dict):
        base = {}
    keep = {k: base[k] for k in ("name", "hub_ref", "step", "weights_sha256") if base.get(k) is not None}
    lora = record.get("lora")
    method = record.get("method") or ("lora" if isinstance(lora, dict) else "full")
    return {"base": keep, "method": method}
