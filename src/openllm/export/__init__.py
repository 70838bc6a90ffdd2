"""Exports of a trained model: ``native`` (safetensors in our names), ``hf`` (a plain LlamaForCausalLM
folder), ``onnx`` (onnxruntime, with and without past key values) and ``gguf`` (llama.cpp).

:func:`export` takes anything :func:`openllm.load` accepts, writes into a fresh temporary folder beside
``out`` and moves it into place at the end, so a failed export never leaves a half-written folder.
One format goes straight into ``out``; several go into ``out/<format>/``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import OpenLLMError
from ..fsio import follow_umask
from ..scratch import release, scratch_dir
from .shared import copy_tokenizer_files, export_state_dict, write_tokenizer_files

__all__ = [
    "FORMATS",
    "GGUF_TYPES",
    "parse_formats",
    "export",
    "check_out_dir",
    "copy_tokenizer_files",
    "write_tokenizer_files",
    "export_state_dict",
]

FORMATS = ("native", "hf", "onnx", "gguf")
GGUF_TYPES = ("f32", "f16", "q8_0")


def parse_formats(spec: str | Iterable[str]) -> list[str]:
    """``"hf,onnx"`` or ``["hf", "onnx"]`` -> ``["hf", "onnx"]``; an unknown name is a user error."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        if not name:
            continue
        if name not in FORMATS:
            raise OpenLLMError(
                f"unknown export format {raw.strip()!r}: choose from {', '.join(FORMATS)} "
                f"(several with commas, e.g. --format hf,onnx)"
            )
        if name not in out:
            out.append(name)
    if not out:
        raise OpenLLMError(f"no export format given: choose from {', '.join(FORMATS)}")
    return out


def parse_gguf_types(spec: str | Iterable[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for raw in items:
        name = raw.strip().lower()
        if name and name not in GGUF_TYPES:
            raise OpenLLMError(f"unknown GGUF type {raw.strip()!r}: choose from {', '.join(GGUF_TYPES)}")
        if name and name not in out:
            out.append(name)
    return out or ["f16"]


EXPORT_MARKER = ".openllm-export"  # says a folder is an export this command wrote, so --overwrite may replace it


def check_out_dir(out: Path, *, overwrite: bool, source: Path | None = None) -> None:
    """Refuse a non-empty output folder unless ``overwrite`` and it is an earlier export (it holds
    :data:`EXPORT_MARKER`): ``--overwrite`` never deletes files this command did not write. ``out`` never
    holds the source."""
    out = Path(out)
    if out.is_symlink():  # replacing it would replace the link, or write through it into another folder
        raise OpenLLMError(f"output {out} is a link: give the folder itself (or a new path) for --out")
    if out.exists() and not out.is_dir():
        raise OpenLLMError(f"output {out} is a file: give a folder path for --out")
    if source is not None and Path(source).exists():
        src, dst = Path(source).resolve(), out.resolve()
        if src == dst or dst in src.parents:
            raise OpenLLMError(f"output folder {out} contains the model being exported: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OpenLLMError(f"output folder {out} is not empty: choose an empty folder or pass --overwrite")
        if not (out / EXPORT_MARKER).is_file():
            raise OpenLLMError(
                f"output folder {out} holds files that are not an openllm export (no "
                f"{EXPORT_MARKER}): --overwrite only replaces an earlier export; choose another "
                f"folder"
            )


def export(
    source: Any,
    out: str | Path,
    formats: str | Sequence[str],
    *,
    overwrite: bool = False,
    gguf_types: str | Sequence[str] = ("f16",),
    hub: Any = None,
    progress: bool = True,
    license: str | None = None,
    source_url: str | None = None,
) -> dict[str, Path]:
    """Export ``source`` (a run, an export, a hub reference, or an already loaded model) into ``out``.
    ``license`` and ``source_url`` go into the GGUF metadata. Returns ``{format: folder}``."""
    from ..loading import LoadedModel, load

    fmts = parse_formats(formats)
    types = parse_gguf_types(gguf_types)
    if "gguf" in fmts:
        from .gguf import check_source_url

        check_source_url(source_url)  # before any folder is made
    out = Path(out)
    src_path = getattr(source, "path", None) if isinstance(source, LoadedModel) else Path(str(source))
    check_out_dir(out, overwrite=overwrite, source=src_path)
    loaded = source if isinstance(source, LoadedModel) else load(source, device="cpu", hub=hub)

    out.parent.mkdir(parents=True, exist_ok=True)
    # an export killed with kill -9 leaves its staging folder: the next export to the same place removes it
    cleanup = contextlib.ExitStack()
    staging = cleanup.enter_context(scratch_dir(f".{out.name}.", out.parent))
    follow_umask(staging, folder=True)  # mkdtemp's folder is private; the export is a plain folder
    try:
        folders: dict[str, Path] = {}
        for fmt in _progress(fmts, progress):
            target = staging if len(fmts) == 1 else staging / fmt
            target.mkdir(parents=True, exist_ok=True)
            if fmt == "native":
                from .native import export_native

                export_native(loaded, target)
            elif fmt == "hf":
                from .hf import export_hf

                export_hf(loaded, target)
            elif fmt == "onnx":
                from .onnx import export_onnx

                export_onnx(loaded, target)
            elif fmt == "gguf":
                from .gguf import export_gguf

                for t in types:
                    export_gguf(loaded, target, dtype=t, license=license, source_url=source_url)
            folders[fmt] = out if len(fmts) == 1 else out / fmt
        (staging / EXPORT_MARKER).write_text(
            json.dumps({"formats": fmts, "source": str(src_path)}) + "\n", encoding="utf-8"
        )
        if out.exists():
            shutil.rmtree(out)
        release(staging)
        staging.rename(out)
        return folders
    finally:
        cleanup.close()


def _progress(items: list[str], show: bool):
    if not show:
        yield from items
        return
    from tqdm import tqdm

    bar = tqdm(items, desc="export", unit="format", disable=None)
    for item in bar:
        bar.set_postfix_str(item)
        yield item
