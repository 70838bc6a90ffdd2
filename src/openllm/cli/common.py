"""Options and policies that several commands share, defined once so that their names, defaults and help read
the same in every command. Nothing here imports torch: building a parser stays fast."""

from __future__ import annotations

import argparse
import os

from ..device import AUTO, DEVICE_HELP
from ..errors import OpenLLMError

__all__ = [
    "HUB_HELP",
    "DEVICE_HELP",
    "SET_HELP",
    "add_hub_option",
    "add_device_option",
    "add_config_overrides",
    "utf8_text",
    "output_file",
    "no_file_above",
    "cpu_thread_policy",
]

HUB_HELP = (
    "the hub that OWNER/NAME repositories live on: local (default: $OPENLLM_HUB or "
    "~/.cache/openllm/hub), hf (the Hugging Face hub, token from HF_TOKEN), a folder (a local hub there), "
    "or a git URL (git://, http(s)://, ssh://, file://); see docs/hub.md"
)
SET_HELP = (
    "override a config field, e.g. --set train.lr=3e-4 or --set model.n_layers=2 (JSON values, bare words "
    "for text; repeatable)"
)


def add_hub_option(parser: argparse.ArgumentParser) -> None:
    """``--hub SPEC`` (default None: ``openllm.hub.get_hub``'s default)."""
    parser.add_argument("--hub", default=None, metavar="HUB", help=HUB_HELP)


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default ``auto``); commands resolve it with :func:`openllm.device.resolve_device`."""
    parser.add_argument("--device", default=AUTO, help=DEVICE_HELP)


def add_config_overrides(parser: argparse.ArgumentParser) -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable) into ``args.set``, applied with
    :func:`openllm.config.apply_overrides` (or parsed with :func:`openllm.config.parse_overrides`)."""
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help=SET_HELP)


def cpu_thread_policy() -> None:
    """Call before torch loads OpenMP: idle threads sleep instead of spinning. On a CPU shared with other busy
    processes, spinning threads starve their own team mates (measured on 2 shared cores: 5.5 s per tiny step
    spinning, 1.2 s sleeping); on an idle machine it costs little. An explicit OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def utf8_text(value: str, option: str) -> str:
    """An argument as text; bytes that are not UTF-8 (kept by Python as surrogates) are a one-line error."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start].encode("utf-8", "surrogateescape")
        raise OpenLLMError(
            f"{option} is not UTF-8 text (byte 0x{bad.hex()} at character {exc.start}): pass "
            f"UTF-8, e.g. by setting a UTF-8 locale in the terminal"
        ) from exc
    return value


def output_file(value: str | None, option: str) -> str | None:
    """A file a command will write (``--json FILE``), checked before any work: a folder, a path under a file, or
    a folder that does not exist is a one-line error, instead of a failed rename after the work is done."""
    if value is None:
        return None
    from pathlib import Path

    path = Path(value)
    if path.is_dir():
        raise OpenLLMError(f"{option} {value} is a folder: give a file name, e.g. {path / 'result.json'}")
    parent = path.parent
    no_file_above(value, option)
    if not parent.is_dir():
        raise OpenLLMError(f"{option} {value}: the folder {parent} does not exist; create it or choose another path")
    return value


def no_file_above(value: str, option: str) -> str:
    """An output path none of whose parents is a file (``--out notes.txt/x``): a one-line error naming the file,
    before any work, instead of the ``FileExistsError`` that creating the folders would raise after it."""
    from pathlib import Path

    for p in Path(value).parents:
        if p.exists() and not p.is_dir():
            raise OpenLLMError(f"{option} {value}: {p} is a file, not a folder; choose another path")
    return value
