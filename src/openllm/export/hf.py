"""Hugging Face export: a plain ``LlamaForCausalLM`` folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load without ``trust_remote_code``.

Files: ``model.safetensors`` (Llama names, split q/k/v and gate/up), ``config.json`` (model_type llama),
``generation_config.json``, the tokenizer files (``tokenizer_config.json`` with the chat template, left
padding, no ``token_type_ids`` and ``model_max_length`` = the context, so transformers 4.45 to 5.x behave alike),
and ``openllm.json`` (our full Config) so that
``openllm.load`` reads the folder back bit-exactly with the training settings it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tokenizer import CHAT_STOPS
from .shared import FINETUNE_KEY, finetune_summary, save_weights, write_tokenizer_files

__all__ = ["export_hf", "special_ids", "generation_config"]


def special_ids(loaded) -> dict[str, int | None]:
    tok = loaded.tokenizer
    if tok is None:
        return {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def generation_config(loaded) -> dict:
    """``generation_config.json``: the special ids, greedy decoding and ``max_length`` = the context. Without
    ``max_length``, ``pipeline("text-generation")`` called with no lengths refuses any prompt of 20 tokens or more
    on transformers 4.45 (its default ``max_length`` is 20) and generates 256 new tokens on 5.x, past the
    context; a ``max_length`` the model sets is the one length both respect. The price: transformers 5 logs that
    ``max_new_tokens`` takes precedence whenever a call passes it, which is what happens."""
    # ids, then eos_token_id may become a list of ids and do_sample a flag: values of several types
    generation: dict[str, Any] = {k: v for k, v in special_ids(loaded).items() if v is not None}
    # a chat stop the tokenizer spells as one token ends generation like EOS in every transformers version; one
    # of several tokens cannot be put here, nor in stop_strings: generate() without a tokenizer argument (the
    # README's call) then raises on 4.45 and 5.x, so those stay a per-call argument (docs/export.md)
    tok = loaded.tokenizer
    if tok is not None and "eos_token_id" in generation:
        extra = [ids[0] for ids in (list(tok.encode(stop)) for stop in CHAT_STOPS) if len(ids) == 1]
        eos = [generation["eos_token_id"], *dict.fromkeys(i for i in extra if i != generation["eos_token_id"])]
        generation["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    generation["do_sample"] = False
    generation["max_length"] = int(loaded.config.model.max_seq_len)
    return generation


def export_hf(loaded, out: Path) -> Path:
    from ..hf_compat import llama_config_dict, to_hf_state_dict
    from ..loading import NATIVE_FORMAT, OPENLLM_CONFIG_NAME

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, cfg = loaded.model, loaded.config
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    hf_state = to_hf_state_dict(state, cfg.model)
    save_weights(hf_state, out / "model.safetensors")

    ids = special_ids(loaded)
    llama = llama_config_dict(cfg.model, **ids)
    _write_json(out / "config.json", llama)
    _write_json(out / "generation_config.json", generation_config(loaded))
    ours = {"format": NATIVE_FORMAT, **cfg.to_dict()}
    if (finetune := finetune_summary(loaded)) is not None:
        ours[FINETUNE_KEY] = finetune
    _write_json(out / OPENLLM_CONFIG_NAME, ours)
    write_tokenizer_files(loaded, out)
    return out


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
