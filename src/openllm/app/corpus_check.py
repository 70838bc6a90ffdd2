"""Checking a corpus when the user chooses it, before anything starts: that it exists, its size, how many
documents are left after the library's cleaning (:func:`openllm.prepare.prepare_corpus`, run for real into a
temporary folder), a preview of a few of them, and the fields of a ``.jsonl``/``.parquet`` file for the field
picker. No Gradio here."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path

from ..errors import OpenLLMError
from ..fsio import read_jsonl

__all__ = ["CorpusCheck", "check_corpus", "record_fields", "app_words"]

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
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
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= limit:
                break
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if isinstance(v, str):
                        counts[k] = counts.get(k, 0) + 1
    return sorted(counts, key=lambda k: (-counts[k], k))


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
        docs = report.get("documents", {})
        out.documents = int(docs.get("kept", 0))
        out.characters = int(sum(v for k, v in report.get("characters", {}).items() if k in ("train", "val")))
        out.dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
        for rec in read_jsonl(Path(tmp) / "prepared" / "train.jsonl")[:preview_docs]:
            text = str(rec.get("text", ""))
            out.preview.append(text[:300] + ("…" if len(text) > 300 else ""))
    if out.documents < 2:
        out.problem = (
            f"only {out.documents} document is left after cleaning; training needs at least 2 (one "
            "for training, one to measure the validation loss): add more text"
        )
        return out
    out.ok = True
    return out
