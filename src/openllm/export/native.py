"""Native export: ``model.safetensors`` (our parameter names), ``config.json`` (``{"format": "openllm",
...Config}``) and the tokenizer files. ``openllm.load`` reads it back bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

from .shared import FINETUNE_KEY, export_state_dict, finetune_summary, save_weights, write_tokenizer_files

__all__ = ["export_native"]


def export_native(loaded, out: Path) -> Path:
    from ..loading import NATIVE_FORMAT

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(export_state_dict(loaded.model), out / "model.safetensors")
    config = {"format": NATIVE_FORMAT, **loaded.config.to_dict()}
    if (finetune := finetune_summary(loaded)) is not None:
        config[FINETUNE_KEY] = finetune
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    write_tokenizer_files(loaded, out)
    return out
