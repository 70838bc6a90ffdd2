"""The Help tab's text, read from the user guide so that there is one copy of the instructions.

From a source checkout the guide is ``docs/app.md`` (``src/openllm/../../docs/app.md``); in the built Space
the build copies it to ``HELP.md`` beside ``training/`` (``training/../HELP.md``).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["help_candidates", "load_help", "FALLBACK"]

_PKG_DIR = Path(__file__).resolve().parent.parent

FALLBACK = """## Help is not available

The user guide for this app (`docs/app.md` in the OpenLLM repository, `HELP.md` in the Space) was not found
beside this installation. In short: **Train** starts a run, **Monitor** follows it, **Generate** tries a model,
**Models** pushes runs to a hub and downloads versions.
"""


def help_candidates(pkg_dir: Path = _PKG_DIR) -> list[Path]:
    # the Space's copy first: in a checkout src/HELP.md does not exist, while a Space's grandparent folder is
    # not ours and could hold an unrelated docs/app.md
    return [pkg_dir.parent / "HELP.md", pkg_dir.parent.parent / "docs" / "app.md"]


def load_help(pkg_dir: Path = _PKG_DIR) -> str:
    """The guide's Markdown (its first '# ' title and its ``help:skip`` sections dropped), or FALLBACK."""
    for path in help_candidates(pkg_dir):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        # what only makes sense in the repository (screenshots of the app itself) is marked to be left out
        text = re.sub(r"<!-- help:skip -->.*?<!-- /help:skip -->", "", text, flags=re.S)
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        return "\n".join(lines).strip() + "\n"
    return FALLBACK
