"""The Train tab's corpus check (openllm.app.corpus_check) on input it used to misread (issue 24): text in another
encoding, a .json array of records, UTF-16 text, and a corpus too small for the form's smallest vocabulary. The
check reads a corpus the way training will (prepare-data's reader), so each case is also checked there."""

from __future__ import annotations

import json

from openllm.app.corpus_check import check_corpus
from openllm.config import DataConfig
from openllm.prepare import prepare_corpus

_PARAS = [
    f"Paragraph {i}: the café's naïve façade looked onto the square, where a résumé of the day was read aloud."
    for i in range(40)
]
TEXT = "\n\n".join(_PARAS) + "\n"


def _docs(out) -> list[str]:
    return [json.loads(line)["text"] for name in ("train.jsonl", "val.jsonl") for line in open(out / name)]


def test_latin1_text_is_not_ready_and_the_check_names_the_encoding(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(TEXT.encode("latin-1"))
    report = prepare_corpus([p], tmp_path / "out", progress=False)
    bad = report["replaced_bytes"]
    assert bad > 0  # prepare-data counts what it replaced; the check refuses what it would replace
    chk = check_corpus(p)
    assert not chk.ok, chk
    assert f"{bad:,} bytes" in chk.problem and "not valid UTF-8" in chk.problem, chk.problem
    assert "Latin-1" in chk.problem and "Save it as UTF-8" in chk.problem and "iconv" in chk.problem
    assert "latin.txt" in chk.problem and "--" not in chk.problem.replace("iconv -f", "")


def test_a_json_array_of_text_records_is_a_corpus(tmp_path):
    p = tmp_path / "docs.json"
    p.write_text(json.dumps([{"id": i, "text": t} for i, t in enumerate(_PARAS)], indent=2), encoding="utf-8")
    chk = check_corpus(p)
    assert chk.ok and chk.field == "text" and chk.documents == 40, chk
    assert chk.preview and chk.preview[0].startswith("Paragraph")
    report = prepare_corpus([p], tmp_path / "out", progress=False)
    assert report["documents"]["kept"] == 40 and report["sources"][0]["kind"] == "json"
    assert sorted(_docs(tmp_path / "out")) == sorted(_PARAS)
    # JSON Lines saved as .json (as datasets' to_json writes) read too
    q = tmp_path / "lines.json"
    q.write_text("".join(json.dumps({"body": t}) + "\n" for t in _PARAS), encoding="utf-8")
    chk = check_corpus(q)
    assert chk.ok and chk.fields == ["body"] and chk.field == "body" and chk.documents == 40, chk
    # an array of something else is refused with what it holds
    r = tmp_path / "numbers.json"
    r.write_text("[1, 2, 3]")
    chk = check_corpus(r)
    assert not chk.ok and "no text fields" in chk.problem


def test_utf16_text_with_a_byte_order_mark_is_read_not_called_binary(tmp_path):
    for enc in ("utf-16", "utf-16-be", "utf-32", "utf-8-sig"):
        p = tmp_path / f"{enc}.txt"
        data = TEXT.encode(enc)
        if enc == "utf-16-be":
            data = b"\xfe\xff" + data  # the BOM the plain codec leaves out
        p.write_bytes(data)
        chk = check_corpus(p)
        assert chk.ok and chk.documents == 40, (enc, chk)
        prepare_corpus([p], tmp_path / f"out-{enc}", progress=False)
        assert sorted(_docs(tmp_path / f"out-{enc}")) == sorted(_PARAS), enc
    p = tmp_path / "recs.jsonl"
    p.write_bytes("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in _PARAS).encode("utf-16"))
    chk = check_corpus(p)
    assert chk.ok and chk.field == "text" and chk.documents == 40, chk


def test_a_corpus_too_small_for_the_smallest_vocabulary_is_refused_up_front(tmp_path):
    floor = DataConfig().tokenizer_vocab_floor()
    p = tmp_path / "tiny.txt"
    p.write_text("\n\n".join("ab ba ab ba abab baba " * 3 + str(k) for k in range(40)))
    chk = check_corpus(p)
    assert not chk.ok, chk
    assert f"smallest Vocabulary size the form allows ({floor})" in chk.problem, chk.problem
    assert "at most 285" in chk.problem and "add more text" in chk.problem
    assert "256" not in chk.problem  # never a size the form refuses
    ok = tmp_path / "ok.txt"
    ok.write_text(TEXT)
    assert check_corpus(ok).ok
