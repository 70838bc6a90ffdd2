"""``get_hub(spec)``: the hub that ``--hub local|hf|PATH|URL`` names."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import Hub

__all__ = ["get_hub", "HUB_HELP"]

HUB_HELP = ("where repositories live: 'local' (default: $OPENLLM_HUB or ~/.cache/openllm/hub), 'hf' (the "
            "Hugging Face hub, token from HF_TOKEN), a folder (a local hub there), or a git URL "
            "(git://, http(s)://, file:// base of a hub served over git)")


def get_hub(spec: Any = None) -> Hub:
    """``None``/``"local"`` -> LocalHub at the default root; ``"hf"`` -> HfHub; a ``git://``, ``http(s)://``
    or ``file://`` URL -> LocalHub(url=...); any other string or Path -> LocalHub(root=...); a Hub -> itself.
    ``$OPENLLM_HUB_SPEC`` sets the default when spec is None."""
    if isinstance(spec, Hub):
        return spec
    if spec is None:
        spec = os.environ.get("OPENLLM_HUB_SPEC") or "local"
    from .local import LocalHub

    if isinstance(spec, Path):
        return LocalHub(root=spec)
    text = str(spec).strip()
    if text in ("", "local"):
        return LocalHub()
    if text.lower() in ("hf", "huggingface", "hugging-face"):
        from .hf import HfHub

        return HfHub()
    if text.startswith(("git://", "http://", "https://", "ssh://", "file://")):
        return LocalHub(url=text)
    return LocalHub(root=text)
