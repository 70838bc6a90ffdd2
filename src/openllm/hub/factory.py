"""``get_hub(spec)``: the hub that ``--hub local|hf|PATH|URL`` names."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .base import Hub
from .errors import HubError

__all__ = ["get_hub", "HUB_HELP", "URL_SCHEMES"]

# the URL schemes git's own transports take (the local hub hands the URL to git as it is)
URL_SCHEMES = ("file", "git", "http", "https", "ssh")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
HUB_HELP = (
    "where repositories live: 'local' (default: $OPENLLM_HUB or ~/.cache/openllm/hub), 'hf' (the "
    "Hugging Face hub, token from HF_TOKEN), a folder (a local hub there), or a git URL "
    "(file://, git://, http(s)://, ssh:// base of a hub served over git)"
)


def get_hub(spec: Any = None) -> Hub:
    """``None``/``"local"`` -> LocalHub at the default root; ``"hf"`` -> HfHub; a ``file://``, ``git://``,
    ``http(s)://`` or ``ssh://`` URL -> LocalHub(url=...); any other ``scheme://`` is refused (HubError, before
    anything is created); any other string or Path -> LocalHub(root=...); a Hub -> itself.
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
    m = _SCHEME.match(text)
    if m:
        if m.group(1).lower() not in URL_SCHEMES:  # else it would become a folder named 'ftp:'
            accepted = ", ".join(f"{s}://" for s in URL_SCHEMES)
            raise HubError(
                f"unknown hub URL scheme '{m.group(1)}://': a hub is 'local', 'hf', a folder, or a git URL ({accepted})"
            )
        return LocalHub(url=m.group(1).lower() + text[len(m.group(1)) :])
    return LocalHub(root=text)
