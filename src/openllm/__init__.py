"""OpenLLM: train small Llama-shaped language models from scratch and ship them.

Kept import-light: ``import openllm`` does not import torch. ``openllm.load(...)`` imports what it needs.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "__version__"]


def load(source: Any, *, device: str = "auto", hub: Any = None):
    """Load a model, its tokenizer and its config from a run folder, a native or Hugging Face export, or a
    hub reference ``OWNER/NAME@VERSION``; see :func:`openllm.loading.load`."""
    from .loading import load as _load

    return _load(source, device=device, hub=hub)
