"""Checking a corpus when the user chooses it, before anything starts: that it exists, its size, how many
documents are left after the library's cleaning (:func:`openllm.prepare.prepare_corpus`, run for real into a
temporary folder), a preview of a few of them, and the fields of a ``.jsonl``/``.json``/``.parquet`` file for the
field picker. No Gradio here.

Stricter than ``openllm prepare-data`` in one way: bytes that are not UTF-8 (a Latin-1 file) are what prepare-data
replaces by U+FFFD and counts in its report; the app, which trains without showing that report, refuses them with
that count and how to convert the file. Text with a byte-order mark (UTF-16, UTF-32) is read in its encoding by
both. A small corpus is also tried with the form's smallest vocabulary, so that "too small" is said here, with
the numbers, instead of by a failed run."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path

from ..config import DataConfig
from ..errors import OpenLLMError
from ..fsio import read_jsonl
from ..prepare import sample_records

__all__ = ["CorpusCheck", "check_corpus", "record_fields", "app_words"]

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
# up to this many characters a corpus is tried with the smallest vocabulary (a second or so); a larger one has
# far more distinct pieces than that vocabulary
VOCAB_PROBE_CHARS = 2_000_000
# the library's messages name command-line options; the app's user knows the form's fields
_APP_WORDS = [
    ("try --vocab-size", "try a Vocabulary size of"),
    ("choose one with --field", "pick it under Text field"),
    ("check the input and --field, or lower --min-chars", "check the file and the Text field"),
    ("--vocab-size", "Vocabulary size"),
    ("--field", "Text field"),
    ("--max-steps", "Steps"),
    ("--min-chars", "the minimum length"),
]


def app_words(msg: str) -> str:
    """A library message with command-line options replaced by the app's names for them."""
    for cli, app in _APP_WORDS:
        msg = msg.replace(cli, app)
    return msg


@dataclass
class CorpusCheck:
    """What the Train tab shows about a chosen corpus; ``ok`` False means Start would fail on it."""

    ok: bool
    problem: str | None = None
    size_bytes: int = 0
    files: int = 0
    documents: int = 0
    characters: int = 0
    dropped: dict = _field(default_factory=dict)
    preview: list[str] = _field(default_factory=list)
    fields: list[str] = _field(default_factory=list)  # text fields of .jsonl/.parquet records
    field: str | None = None


def record_fields(path: Path, limit: int = 200) -> list[str]:
    """The fields holding strings in the first records of a ``.jsonl``/``.json`` or ``.parquet`` file (the most
    common first)."""
    counts: dict[str, int] = {}
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
        except Exception as exc:
            raise OpenLLMError(f"{path.name} cannot be read as parquet ({exc})") from exc
        return [f.name for f in schema if str(f.type) in ("string", "large_string", "string_view")]
    try:
        records = sample_records(path, limit)  # as training reads it: a .json array, a byte-order mark
    except OpenLLMError as exc:
        raise OpenLLMError(app_words(str(exc)), path=path) from exc
    for obj in records:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if isinstance(v, str):
                    counts[k] = counts.get(k, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))


def _first_invalid_utf8(path: Path) -> int | None:
    try:
        Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    except OSError:
        return None
    return None


def _encoding_problem(report: dict) -> str | None:
    """What to say when reading replaced bytes that are not UTF-8 (prepare-data's count, per file)."""
    bad = [s for s in report.get("sources", []) if s.get("replaced_bytes")]
    if not bad:
        return None
    total = sum(int(s["replaced_bytes"]) for s in bad)
    first = Path(bad[0]["name"])
    at = _first_invalid_utf8(first)
    where = f" (the first at byte offset {at:,})" if at is not None else ""
    others = f" and {len(bad) - 1} other file(s)" if len(bad) > 1 else ""
    return (
        f"{first.name}{others}: {total:,} bytes are not valid UTF-8{where}, so they would become U+FFFD "
        "replacement characters: the file is in another encoding, probably Latin-1 or Windows-1252. Save it "
        f"as UTF-8 (for example `iconv -f latin1 -t utf-8 {first.name} > utf8-{first.name}`) and choose it again"
    )


def _vocab_problem(prepared: Path, tmp: Path) -> str | None:
    """Whether the corpus can train a tokenizer of the form's smallest vocabulary; what to say if not."""
    from ..tokenizer import train_tokenizer

    floor = DataConfig().tokenizer_vocab_floor()
    try:
        train_tokenizer(prepared, tmp, vocab_size=floor, progress=False, threads=1)
    except OpenLLMError as exc:
        most = re.search(r"at most ([\d,]+)", str(exc))
        if most is None:
            return app_words(str(exc))
        return (
            f"the corpus is too small for the smallest Vocabulary size the form allows ({floor}): its text has "
            f"room for at most {most.group(1)} tokenizer pieces; add more text (more varied text helps most)"
        )
    return None


def check_corpus(
    path: str | Path | None, field: str | None = None, *, preview_docs: int = 3, max_bytes: int = 200_000_000
) -> CorpusCheck:
    """Check ``path`` (a file or folder) the way training will read it; ``field`` is the text field of
    records (default ``text``, or the only string field there is)."""
    if path is None or not str(path).strip():
        return CorpusCheck(False, "no file chosen yet")
    p = Path(path)
    if not p.exists():
        return CorpusCheck(False, f"{p.name} does not exist")
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    size = sum(x.stat().st_size for x in files)
    out = CorpusCheck(False, size_bytes=size, files=len(files))
    if size == 0:
        out.problem = "the corpus is empty (0 bytes): choose a file with text in it"
        return out
    if size > max_bytes:  # too big to check in the browser's time; training will read it
        out.ok, out.problem = True, None
        return out
    records = [x for x in files if x.suffix.lower() in RECORD_SUFFIXES]
    if records:
        try:
            out.fields = record_fields(records[0])
        except OpenLLMError as exc:
            out.problem = app_words(str(exc))
            return out
        if not out.fields:
            out.problem = f"{records[0].name} has no text fields (no record with a string value)"
            return out
        field = field if field else ("text" if "text" in out.fields or len(out.fields) != 1 else out.fields[0])
        if field not in out.fields:
            out.field = field
            out.problem = (
                f"{records[0].name} has no text field {field!r}; its text fields: "
                f"{', '.join(out.fields)}: pick one under Text field"
            )
            return out
        out.field = field
    from ..prepare import prepare_corpus

    with tempfile.TemporaryDirectory(prefix="openllm-corpus-check-") as tmp:
        try:
            report = prepare_corpus([str(p)], Path(tmp) / "prepared", field=out.field or "text", progress=False)
        except (OpenLLMError, OSError, ValueError) as exc:
            out.problem = app_words(str(exc))
            return out
        encoding = _encoding_problem(report)
        if encoding is not None:
            out.problem = encoding
            return out
        docs = report.get("documents", {})
        out.documents = int(docs.get("kept", 0))
        out.characters = int(sum(v for k, v in report.get("characters", {}).items() if k in ("train", "val")))
        out.dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
        for rec in read_jsonl(Path(tmp) / "prepared" / "train.jsonl")[:preview_docs]:
            text = str(rec.get("text", ""))
            out.preview.append(text[:300] + ("…" if len(text) > 300 else ""))
        if out.documents >= 2 and out.characters <= VOCAB_PROBE_CHARS:
            vocab = _vocab_problem(Path(tmp) / "prepared", Path(tmp) / "tokenizer")
            if vocab is not None:
                out.problem = vocab
                return out
    if out.documents < 2:
        out.problem = (
            f"only {out.documents} document is left after cleaning; training needs at least 2 (one "
            "for training, one to measure the validation loss): add more text"
        )
        return out
    out.ok = True
    return out
