"""Corpus preparation: read raw text, clean it, drop and deduplicate documents, split train/val, report.

Inputs (any mix): ``.txt`` files (documents are blank-line separated paragraphs, or lines when the file has
no blank lines), ``.jsonl`` files
(one JSON object a line, the text in ``field``), ``.json`` files (an array of such objects, or one a line),
``.parquet`` files (column ``field``), folders (every such file
inside, recursively), globs, Hugging Face datasets (``hf:NAME_OR_PATH``, or a folder written by
``Dataset.save_to_disk``) through the ``datasets`` library, offline. No input: the embedded corpus
(:mod:`openllm.corpus`).

Text is UTF-8, or the encoding a byte-order mark at the file's start names (UTF-16, UTF-32: a mark is
certain, a guess at a legacy encoding is not). Cleaning, per document: undecodable UTF-8 bytes become U+FFFD and
are counted (``strict``: refused, naming the file and byte offset); Unicode NFC; every line ending becomes
``\\n``; control characters other than ``\\n`` and ``\\t`` are removed (counted); trailing spaces go and runs
of blank lines shrink to one.
Then: empty and too-short documents are dropped, exact duplicates (same cleaned text) removed, and each
document goes to ``val`` when its hash falls below ``val_fraction`` (so a document's split never depends on
the order or the rest of the corpus).

Output folder (written atomically): ``train.jsonl``, ``val.jsonl`` (``{"text": ...}`` a line), ``report.json``
and ``report.md``.
"""

from __future__ import annotations

import codecs
import glob as globlib
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from .errors import OpenLLMError
from .fsio import atomic_file, atomic_output_dir
from .hashing import sha256_file

__all__ = [
    "prepare_corpus",
    "prepare_options",
    "resolve_for_output",
    "clean_documents",
    "write_prepared",
    "Source",
    "bom_encoding",
    "sample_records",
    "clean_text",
    "format_report",
    "sha256_file",
    "TRAIN_FILE",
    "VAL_FILE",
    "REPORT_JSON",
    "REPORT_MD",
]

TRAIN_FILE, VAL_FILE, REPORT_JSON, REPORT_MD = "train.jsonl", "val.jsonl", "report.json", "report.md"
TEXT_SUFFIXES = (".txt", ".text", ".md")
FOLDER_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
TEXT_DOCS = ("auto", "paragraph", "line", "file")
_BLANK_LINE = re.compile(rb"\n[ \t\r]*\n")
_BLANK_LINE_TEXT = re.compile(r"\n[ \t\r]*\n")
# UTF-32's little-endian mark begins with UTF-16's, so it is tried first
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


# ---------------------------------------------------------------------------------------------------------------
# cleaning
# ---------------------------------------------------------------------------------------------------------------
_NEWLINES = re.compile("\r\n|[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# C0 and C1 controls except \t and \n, DEL, and the invisible BOM / zero-width no-break space
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f\ufeff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_text(text: str) -> tuple[str, int]:
    """Normalise one document; returns ``(text, control characters removed)``."""
    text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    text, n_control = _CONTROL.subn("", text)
    text = _TRAILING_SPACE.sub("\n", text + "\n")
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n").rstrip(), n_control


def _decode(data: bytes, where: str, offset: int, strict: bool) -> tuple[str, int]:
    """UTF-8 text of ``data`` and the number of bytes replaced by U+FFFD (``strict``: an error instead)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError as exc:
        if strict:
            raise OpenLLMError(
                f"{where}: invalid UTF-8 at byte offset {offset + exc.start} "
                f"(byte 0x{data[exc.start]:02x}); fix the file, or drop --strict to replace bad bytes"
            ) from exc
    parts, replaced, pos = [], 0, 0
    while True:
        try:
            parts.append(data[pos:].decode("utf-8"))
            return "".join(parts), replaced
        except UnicodeDecodeError as exc:
            parts.append(data[pos : pos + exc.start].decode("utf-8"))
            parts.append("\ufffd")
            replaced += exc.end - exc.start
            pos += exc.end


# ---------------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """One input: where it is, how to read it, and what reading it found."""

    kind: str  # txt | jsonl | parquet | hf | embedded
    name: str
    path: Path | None = None
    stats: dict[str, Any] = dc_field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": self.kind, "name": self.name}
        if self.path is not None and self.path.is_file():
            rec["bytes"] = self.path.stat().st_size
            rec["sha256"] = sha256_file(self.path)
        rec.update(self.stats)
        return rec


def _is_hf_saved_dataset(p: Path) -> bool:
    return p.is_dir() and ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file())


def _kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix == ".parquet":
        return "parquet"
    return "txt"


def resolve_inputs(inputs: Sequence[str | os.PathLike] | None) -> list[Source]:
    """Turn the user's INPUT arguments into a list of sources (files in a stable, sorted order)."""
    if not inputs:
        return [Source("embedded", "embedded:kjv")]
    sources: list[Source] = []
    for item in inputs:
        s = str(item)
        if s.startswith("hf:"):
            sources.append(Source("hf", s[3:]))
            continue
        p = Path(s).expanduser()
        if p.exists() and not p.is_file() and not p.is_dir():
            raise OpenLLMError(
                f"input {s} is not a regular file or folder (a device, pipe or socket): give "
                f"text files, folders or globs"
            )
        if p.is_file():
            sources.append(Source(_kind_of(p), str(p), p))
        elif _is_hf_saved_dataset(p):
            sources.append(Source("hf", str(p), p))
        elif p.is_dir():
            files = sorted(
                q
                for q in p.rglob("*")
                if q.is_file()
                and q.suffix.lower() in FOLDER_SUFFIXES
                and not any(part.startswith(".") for part in q.relative_to(p).parts)
                and not _is_report(q)
            )
            if not files:
                raise OpenLLMError(f"folder {p} holds no {', '.join(FOLDER_SUFFIXES)} files")
            sources.extend(Source(_kind_of(q), str(q), q) for q in files)
        elif any(c in s for c in "*?["):
            files = sorted(Path(q) for q in globlib.glob(os.path.expanduser(s), recursive=True) if Path(q).is_file())
            if not files:
                raise OpenLLMError(f"no files match {s}")
            sources.extend(Source(_kind_of(q), str(q), q) for q in files)
        else:
            raise OpenLLMError(f"input not found: {s} (give a file, folder or glob; a Hugging Face dataset as hf:NAME)")
    return sources


def _is_report(path: Path) -> bool:
    """The report of an earlier prepare-data output: describes a corpus, is not part of it."""
    return path.name in (REPORT_JSON, REPORT_MD) and (path.parent / REPORT_JSON).is_file()


def bom_encoding(path: str | os.PathLike) -> str | None:
    """The encoding the byte-order mark at the start of ``path`` names (``utf-8-sig``, ``utf-16``, ``utf-32``), or
    None when it has none."""
    with open(path, "rb") as f:
        head = f.read(4)
    return next((enc for bom, enc in _BOMS if head.startswith(bom)), None)


def _wide(path: Path) -> str | None:
    """UTF-16 or UTF-32 when the file's byte-order mark says so (NUL bytes are its text, not a binary's)."""
    enc = bom_encoding(path)
    return enc if enc in ("utf-16", "utf-32") else None


def _check_not_binary(path: Path) -> None:
    if _wide(path):
        return
    with open(path, "rb") as f:
        head = f.read(8192)
    nul = head.find(b"\x00")
    if nul >= 0 or head.startswith(b"PAR1"):
        raise OpenLLMError(
            f"{path} looks like a binary file (NUL byte at offset {max(nul, 0)}), not text; "
            "give .txt, .jsonl or .parquet files"
        )


def _wide_text(path: Path, enc: str) -> str:
    try:
        return path.read_bytes().decode(enc)
    except UnicodeDecodeError as exc:
        raise OpenLLMError(
            f"{path}: starts with a {enc.upper()} byte-order mark but is not valid {enc.upper()} (at byte offset "
            f"{exc.start}); save it as UTF-8",
            path=path,
        ) from exc


def _lines(src: Source, path: Path, strict: bool, progress) -> Iterator[str]:
    """The file's lines (each with its ``\\n``), decoded: UTF-8 with undecodable bytes as U+FFFD (counted in
    ``src.stats["replaced_bytes"]``; ``strict``: refused), or the UTF-16/32 its byte-order mark names."""
    wide = _wide(path)
    if wide:
        text = _wide_text(path, wide)
        progress(path.stat().st_size)
        src.stats["encoding"] = wide
        src.stats["replaced_bytes"] = 0
        lines = text.split("\n")  # on newlines only, as the UTF-8 reading splits its bytes
        yield from (line + "\n" for line in lines[:-1])
        if lines[-1]:
            yield lines[-1]
        return
    replaced = offset = 0
    with open(path, "rb") as f:
        for raw in f:
            if offset == 0 and raw.startswith(codecs.BOM_UTF8):
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            line, r = _decode(raw, str(path), offset, strict)
            replaced += r
            offset += len(raw)
            progress(len(raw))
            yield line
    src.stats["replaced_bytes"] = replaced


def _read_txt(src: Source, *, strict: bool, text_docs: str, progress) -> Iterator[str]:
    """Documents of a text file: paragraphs (blank-line separated), lines, or the whole file.

    ``auto``: paragraphs when the file has blank lines, else lines (WikiText-style files have none).
    """
    path = src.path
    assert path is not None
    _check_not_binary(path)
    if text_docs == "auto":
        wide = _wide(path)
        if wide:
            text_docs = "paragraph" if _BLANK_LINE_TEXT.search(_wide_text(path, wide)) else "line"
        else:
            with open(path, "rb") as f:
                text_docs = "paragraph" if _BLANK_LINE.search(f.read()) else "line"
    src.stats["text_docs"] = text_docs
    if text_docs == "file":
        yield "".join(_lines(src, path, strict, progress))
        return
    para: list[str] = []
    for line in _lines(src, path, strict, progress):
        if text_docs == "line":
            yield line
        elif line.strip():
            para.append(line)
        elif para:
            yield "".join(para)
            para = []
    if para:
        yield "".join(para)


def _json_array(src: Source, path: Path, strict: bool, progress) -> list[Any] | None:
    """The items of a ``.json`` file that holds one JSON array, or None when it is JSON Lines."""
    text = "".join(_lines(src, path, strict, progress))
    if not text.lstrip().startswith("["):
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OpenLLMError(
            f"{path}: not valid JSON ({getattr(exc, 'msg', exc)}); a .json corpus is one array of objects, or "
            "one object a line",
            path=path,
        ) from exc
    return data if isinstance(data, list) else None


def _record_text(obj: Any, field: str, where: str, path: Path) -> str:
    """The text of one record (``where``: ``FILE:LINE`` or ``FILE: item N``)."""
    if not isinstance(obj, dict):
        raise OpenLLMError(f"{where}: a JSON {type(obj).__name__}, expected an object with {field!r}", path=path)
    if field not in obj:
        keys = ", ".join(map(repr, list(obj)[:8])) or "none"
        raise OpenLLMError(f"{where}: no field {field!r} (fields: {keys}); choose one with --field", path=path)
    value = obj[field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise OpenLLMError(f"{where}: field {field!r} is a {type(value).__name__}, expected a string", path=path)
    return value


def _read_jsonl(src: Source, *, strict: bool, field: str, progress) -> Iterator[str]:
    path = src.path
    assert path is not None
    _check_not_binary(path)
    if src.kind == "json":
        items = _json_array(src, path, strict, progress)
        if items is not None:
            for i, obj in enumerate(items, 1):
                yield _record_text(obj, field, f"{path}: item {i}", path)
            return
    for lineno, line in enumerate(_lines(src, path, strict, progress if src.kind == "jsonl" else lambda n: None), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:  # JSONDecodeError, or a number past Python's digit limit (no .msg)
            raise OpenLLMError(
                f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)}); each line must be one JSON object"
            ) from exc
        yield _record_text(obj, field, f"{path}:{lineno}", path)


def sample_records(path: str | os.PathLike, limit: int = 200) -> list[Any]:
    """The first ``limit`` JSON values of a ``.jsonl`` or ``.json`` file, decoded as :func:`prepare_corpus` reads
    it (an array's items, else one value a line; lines that are not JSON are left out): what the app's field
    picker looks at."""
    p = Path(path)
    src = Source(_kind_of(p), str(p), p)
    if src.kind == "json":
        items = _json_array(src, p, False, lambda n: None)
        if items is not None:
            return items[:limit]
    out: list[Any] = []
    for line in _lines(src, p, False, lambda n: None):
        if len(out) >= limit:
            break
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _read_parquet(src: Source, *, field: str, progress) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = src.path
    assert path is not None
    with open(path, "rb") as f:
        if f.read(4) != b"PAR1":
            raise OpenLLMError(f"{path} is not a parquet file (no PAR1 header)", path=path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise OpenLLMError(f"{path}: cannot read parquet ({exc})", path=path) from exc
    names = pf.schema_arrow.names
    if field not in names:
        raise OpenLLMError(
            f"{path}: no column {field!r} (columns: {', '.join(names)}); choose one with --field", path=path
        )
    col_type = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(col_type) or pa.types.is_large_string(col_type)):
        raise OpenLLMError(f"{path}: column {field!r} has type {col_type}, expected strings", path=path)
    size, rows = path.stat().st_size, max(1, pf.metadata.num_rows)
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            yield value or ""
        progress(size * batch.num_rows // rows)


def _read_hf(src: Source, *, field: str, hf_split: str, hf_config: str | None) -> Iterator[str]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a dependency
        raise OpenLLMError("Hugging Face dataset inputs need the `datasets` package: pip install datasets") from exc
    datasets.disable_progress_bars()
    try:
        if src.path is not None:
            ds = datasets.load_from_disk(str(src.path))
        else:
            # streamed: rows are read as they are cleaned, never converted into an Arrow copy in the datasets
            # cache, so a dataset larger than memory or than the free disk goes through
            ds = datasets.load_dataset(src.name, hf_config, split=hf_split, streaming=True)
    except Exception as exc:  # datasets raises many types; all mean "cannot open this dataset"
        raise OpenLLMError(
            f"cannot load Hugging Face dataset {src.name!r} offline ({exc.__class__.__name__}: "
            f"{_first_line(exc)}); give a local path or a dataset in the cache"
        ) from exc
    if isinstance(ds, datasets.IterableDataset):
        yield from _read_hf_stream(src, ds, field=field, hf_split=hf_split)
        return
    if isinstance(ds, datasets.DatasetDict):
        if hf_split not in ds:
            raise OpenLLMError(
                f"dataset {src.name!r} has no split {hf_split!r} (splits: {', '.join(ds)}); choose one with --hf-split"
            )
        ds = ds[hf_split]
    _hf_column(src, field, ds.column_names)
    src.stats.update({"split": hf_split, "rows": ds.num_rows, "fingerprint": getattr(ds, "_fingerprint", None)})
    for start in range(0, ds.num_rows, 4096):
        for value in ds[start : start + 4096][field]:
            yield _hf_text(src, field, value)


def _hf_column(src: Source, field: str, columns) -> None:
    if field not in columns:
        raise OpenLLMError(
            f"dataset {src.name!r}: no column {field!r} (columns: {', '.join(columns)}); choose one with --field"
        )


def _hf_text(src: Source, field: str, value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise OpenLLMError(f"dataset {src.name!r}: column {field!r} holds {type(value).__name__}, expected strings")
    return value or ""


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _read_hf_stream(src: Source, ds, *, field: str, hf_split: str) -> Iterator[str]:
    rows = 0
    try:
        for row in ds:
            _hf_column(src, field, row)
            rows += 1
            yield _hf_text(src, field, row[field])
    except OpenLLMError:
        raise
    except Exception as exc:  # a data file that cannot be read mid-stream
        raise OpenLLMError(
            f"Hugging Face dataset {src.name!r}: reading row {rows + 1} failed ({exc.__class__.__name__}: "
            f"{_first_line(exc)})"
        ) from exc
    src.stats.update({"split": hf_split, "rows": rows, "streamed": True})


def _read_embedded(src: Source) -> Iterator[str]:
    from .corpus import embedded_corpus_documents, embedded_corpus_source

    info = embedded_corpus_source()
    src.stats.update({k: info[k] for k in ("package", "version", "file", "sha256", "license", "url")})
    src.stats["description"] = info["name"]
    yield from embedded_corpus_documents(verify=False)


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------
def _doc_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _val_score(digest: bytes) -> float:
    """A number in [0, 1) from the document's hash: below ``val_fraction`` means validation."""
    return int.from_bytes(digest[8:16], "little") / 2.0**64


def prepare_options(
    *,
    field: str = "text",
    min_chars: int | None = None,
    min_words: int = 0,
    val_fraction: float | None = None,
    dedupe: bool = True,
    strict: bool = False,
    text_docs: str = "auto",
    hf_split: str = "train",
    hf_config: str | None = None,
) -> dict[str, Any]:
    """The options of :func:`prepare_corpus`, checked, with the defaults of :class:`openllm.config.DataConfig`."""
    from .config import DataConfig

    defaults = DataConfig()
    min_chars = defaults.min_chars if min_chars is None else min_chars
    val_fraction = defaults.val_fraction if val_fraction is None else val_fraction
    if not 0.0 <= val_fraction < 1.0:
        raise OpenLLMError(f"val fraction must be in [0, 1), got {val_fraction}")
    if min_chars < 0 or min_words < 0:
        raise OpenLLMError("--min-chars and --min-words must be >= 0")
    if text_docs not in TEXT_DOCS:
        raise OpenLLMError(f"text documents must be one of {', '.join(TEXT_DOCS)}, got {text_docs!r}")
    return {
        "field": field,
        "min_chars": min_chars,
        "min_words": min_words,
        "val_fraction": val_fraction,
        "dedupe": dedupe,
        "strict": strict,
        "text_docs": text_docs,
        "hf_split": hf_split,
        "hf_config": hf_config,
    }


def resolve_for_output(inputs: Sequence[str | os.PathLike] | None, out_dir: str | os.PathLike) -> list[Source]:
    """:func:`resolve_inputs`, refusing an input inside the output folder."""
    sources = resolve_inputs(inputs)
    out = Path(out_dir).expanduser().resolve()
    for src in sources:
        if src.path is not None and (src.path.resolve() == out or out in src.path.resolve().parents):
            raise OpenLLMError(
                f"input {src.name} is inside --out {out_dir}: prepare-data would read its own "
                f"output; give the raw text and another --out folder"
            )
    return sources


def clean_documents(src: Source, opts: dict[str, Any], tally: dict[str, int], progress=lambda n: None) -> Iterator[str]:
    """The cleaned documents of one source that pass the length filters, in order; ``tally`` counts
    ``read``, ``chars`` (read), ``control`` (characters removed), ``empty`` and ``too_short`` as they go. This
    part depends on nothing but the source, so engines may run it for each source apart."""
    for key in ("read", "chars", "control", "empty", "too_short"):
        tally.setdefault(key, 0)
    min_chars, min_words = opts["min_chars"], opts["min_words"]
    docs = _read_source(
        src,
        field=opts["field"],
        strict=opts["strict"],
        text_docs=opts["text_docs"],
        hf_split=opts["hf_split"],
        hf_config=opts["hf_config"],
        progress=progress,
    )
    for raw in docs:
        tally["read"] += 1
        tally["chars"] += len(raw)
        text, n_control = clean_text(raw)
        tally["control"] += n_control
        if not text.strip():
            tally["empty"] += 1
            continue
        if len(text) < min_chars or (min_words and len(text.split()) < min_words):
            tally["too_short"] += 1
            continue
        yield text


def prepare_corpus(
    inputs: Sequence[str | os.PathLike] | None,
    out_dir: str | os.PathLike,
    *,
    field: str = "text",
    min_chars: int | None = None,
    min_words: int = 0,
    val_fraction: float | None = None,
    dedupe: bool = True,
    strict: bool = False,
    text_docs: str = "auto",
    hf_split: str = "train",
    hf_config: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Read, clean, filter, deduplicate and split ``inputs`` into ``out_dir``; returns the report.

    ``inputs``: files, folders, globs, ``hf:NAME`` (see module docstring); none means the embedded corpus.
    ``min_chars`` / ``min_words``: documents shorter than these (after cleaning) are dropped as too short.
    ``val_fraction``: share of documents, chosen by hash, that go to ``val.jsonl`` (at least one when there
    are two or more documents). ``text_docs``: what a document is in a text file (paragraph, line, file;
    auto: paragraphs if the file has blank lines, else lines).
    Defaults for ``min_chars`` and ``val_fraction`` come from :class:`openllm.config.DataConfig`.
    """
    from tqdm import tqdm

    opts = prepare_options(
        field=field,
        min_chars=min_chars,
        min_words=min_words,
        val_fraction=val_fraction,
        dedupe=dedupe,
        strict=strict,
        text_docs=text_docs,
        hf_split=hf_split,
        hf_config=hf_config,
    )
    sources = resolve_for_output(inputs, out_dir)
    total_bytes = sum(s.path.stat().st_size for s in sources if s.path is not None and s.path.is_file())
    bar = tqdm(
        total=total_bytes or None, unit="B", unit_scale=True, desc="preparing", disable=not progress, mininterval=0.5
    )
    try:
        return write_prepared(
            sources, out_dir, opts, lambda i, src, tally: clean_documents(src, opts, tally, bar.update)
        )
    finally:
        bar.close()


def write_prepared(
    sources: list[Source],
    out_dir: str | os.PathLike,
    opts: dict[str, Any],
    cleaned: Callable[[int, Source, dict[str, int]], Iterable[str]],
) -> dict[str, Any]:
    """Deduplicate, split and write the documents ``cleaned(i, source, tally)`` gives for each source in order
    (what :func:`clean_documents` yields and counts), then the report: the one place these rules live, whichever
    engine did the cleaning."""
    val_fraction, dedupe = opts["val_fraction"], opts["dedupe"]
    min_chars, min_words = opts["min_chars"], opts["min_words"]
    counts = {"read": 0, "kept": 0, "train": 0, "val": 0}
    dropped = {"empty": 0, "too_short": 0, "duplicate": 0}
    chars = {"read": 0, "train": 0, "val": 0, "duplicate": 0}
    nbytes = {"train": 0, "val": 0}
    control_removed = replaced = 0
    seen: set[bytes] = set()
    # the train document with the lowest hash score: moved to val if val would otherwise be empty
    best_train: tuple[float, int] | None = None

    with atomic_output_dir(out_dir, owned_marker=REPORT_JSON) as tmp:
        with (
            open(tmp / TRAIN_FILE, "w", encoding="utf-8") as ftrain,
            open(tmp / VAL_FILE, "w", encoding="utf-8") as fval,
        ):
            for i, src in enumerate(sources):
                tally: dict[str, int] = {}
                src_kept = 0
                for text in cleaned(i, src, tally):
                    digest = _doc_hash(text)
                    if dedupe:
                        if digest in seen:
                            dropped["duplicate"] += 1
                            chars["duplicate"] += len(text)
                            continue
                        seen.add(digest)
                    score = _val_score(digest)
                    split = "val" if score < val_fraction else "train"
                    line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                    (fval if split == "val" else ftrain).write(line)
                    if split == "train" and (best_train is None or score < best_train[0]):
                        best_train = (score, counts["train"])
                    counts[split] += 1
                    chars[split] += len(text)
                    nbytes[split] += len(text.encode("utf-8"))
                    src_kept += 1
                chars["read"] += tally.get("chars", 0)
                control_removed += tally.get("control", 0)
                dropped["empty"] += tally.get("empty", 0)
                dropped["too_short"] += tally.get("too_short", 0)
                src.stats.update({"documents_read": tally.get("read", 0), "documents_kept": src_kept})
                replaced += src.stats.get("replaced_bytes", 0)
        counts["read"] = sum(s.stats.get("documents_read", 0) for s in sources)
        counts["kept"] = counts["train"] + counts["val"]
        names = ", ".join(s.name for s in sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
        if counts["kept"] == 0:
            raise OpenLLMError(
                f"no documents left after cleaning {names}: read {counts['read']}, dropped "
                f"{dropped['empty']} empty, {dropped['too_short']} too short (< {min_chars} characters"
                f"{f' or < {min_words} words' if min_words else ''}), {dropped['duplicate']} duplicates; "
                "check the input and --field, or lower --min-chars"
            )
        if val_fraction > 0 and counts["val"] == 0 and counts["train"] >= 2 and best_train is not None:
            moved = _move_line(tmp / TRAIN_FILE, tmp / VAL_FILE, best_train[1])
            n = len(moved)
            counts["train"] -= 1
            counts["val"] += 1
            chars["train"] -= n
            chars["val"] += n
            nbytes["train"] -= len(moved.encode("utf-8"))
            nbytes["val"] += len(moved.encode("utf-8"))

        report = {
            "version": 1,
            "sources": [s.record() for s in sources],
            "options": {
                **{k: opts[k] for k in ("field", "min_chars", "min_words", "val_fraction", "dedupe", "strict")},
                "text_docs": opts["text_docs"],
                "normalization": "NFC",
            },
            "documents": counts,
            "characters": chars,
            "bytes": nbytes,
            "dropped": dropped,
            "duplicates": {"documents": dropped["duplicate"], "characters": chars["duplicate"]},
            "replaced_bytes": replaced,
            "control_characters_removed": control_removed,
            "files": {
                name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
                for name in (TRAIN_FILE, VAL_FILE)
            },
        }
        (tmp / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(format_report(report) + "\n", encoding="utf-8")
    return report


def _read_source(src: Source, *, field, strict, text_docs, hf_split, hf_config, progress) -> Iterable[str]:
    if src.kind == "txt":
        return _read_txt(src, strict=strict, text_docs=text_docs, progress=progress)
    if src.kind in ("jsonl", "json"):
        return _read_jsonl(src, strict=strict, field=field, progress=progress)
    if src.kind == "parquet":
        return _read_parquet(src, field=field, progress=progress)
    if src.kind == "hf":
        return _read_hf(src, field=field, hf_split=hf_split, hf_config=hf_config)
    return _read_embedded(src)


def _move_line(src_path: Path, dst_path: Path, index: int) -> str:
    """Move line ``index`` of ``src_path`` to the end of ``dst_path``; returns its document text."""
    moved = ""
    with open(src_path, encoding="utf-8") as fin, atomic_file(src_path) as fout:
        for i, line in enumerate(fin):
            if i == index:
                moved = line
            else:
                fout.write(line)
    with open(dst_path, "a", encoding="utf-8") as f:
        f.write(moved)
    return json.loads(moved)["text"]


def format_report(report: dict[str, Any]) -> str:
    """The report as a Markdown table (also readable as plain text)."""
    d, c, b, dr = report["documents"], report["characters"], report["bytes"], report["dropped"]
    rows = [
        ("documents read", f"{d['read']:,}"),
        ("documents kept", f"{d['kept']:,}"),
        ("  train", f"{d['train']:,} docs, {c['train']:,} chars, {b['train']:,} bytes"),
        ("  val", f"{d['val']:,} docs, {c['val']:,} chars, {b['val']:,} bytes"),
        ("dropped: empty", f"{dr['empty']:,}"),
        (f"dropped: too short (< {report['options']['min_chars']} chars)", f"{dr['too_short']:,}"),
        ("dropped: duplicates", f"{dr['duplicate']:,} docs, {report['duplicates']['characters']:,} chars"),
        ("invalid UTF-8 bytes replaced", f"{report['replaced_bytes']:,}"),
        ("control characters removed", f"{report['control_characters_removed']:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["# Corpus report", "", f"| {'':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    lines += ["", "Sources:", ""]
    for s in report["sources"]:
        extra = f", sha256 {s['sha256'][:16]}" if "sha256" in s else ""
        lines.append(
            f"- {s['kind']}: {s['name']} ({s.get('documents_read', 0):,} read, "
            f"{s.get('documents_kept', 0):,} kept{extra})"
        )
    return "\n".join(lines)
