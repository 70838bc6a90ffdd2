"""Atomic file and folder writes, strict and lenient JSON reads."""

import json
import os

import pytest

from openllm import fsio
from openllm.errors import OpenLLMError


def test_load_json_names_the_damaged_file(tmp_path):
    p = tmp_path / "state.json"
    with pytest.raises(OpenLLMError, match="state.json is missing"):
        fsio.load_json(p)
    p.write_bytes(b"\xff\xfe{")
    with pytest.raises(OpenLLMError, match="not UTF-8"):
        fsio.load_json(p)
    p.write_text("{")
    with pytest.raises(OpenLLMError, match="not valid JSON"):
        fsio.load_json(p)
    p.write_text("[]")
    with pytest.raises(OpenLLMError, match="expected a JSON object"):
        fsio.load_json(p)
    assert fsio.read_json(p) == {}


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    fsio.write_json_atomic(tmp_path / "s.json", {"a": 1})
    fsio.write_json_atomic(tmp_path / "s.json", {"a": "é"})
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == {"a": "é"}
    with pytest.raises(RuntimeError):
        with fsio.atomic_file(tmp_path / "s.json") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == {"a": "é"}
    assert os.listdir(tmp_path) == ["s.json"]


def test_atomic_output_dir_refuses_a_foreign_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(OpenLLMError, match="not an earlier output"):
        with fsio.atomic_output_dir(out, owned_marker="meta.json"):
            pass
    assert (out / "mine.txt").read_text() == "user data"
    with pytest.raises(RuntimeError):
        with fsio.atomic_output_dir(tmp_path / "new", owned_marker="meta.json") as tmp:
            (tmp / "meta.json").write_text("{}")
            raise RuntimeError
    assert not (tmp_path / "new").exists() and sorted(os.listdir(tmp_path)) == ["out"]


def test_read_jsonl_skips_torn_and_non_object_lines(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"a": 1}\n[1]\nnot json\n{"b": 2}\n{"c": ')
    assert fsio.read_jsonl(tmp_path / "m.jsonl") == [{"a": 1}, {"b": 2}]
    assert fsio.read_jsonl(tmp_path / "missing.jsonl") == []


def test_make_dirs_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OpenLLMError, match="is a file, not a folder"):
        fsio.make_dirs(tmp_path / "f" / "sub")
    assert fsio.make_dirs(tmp_path / "a" / "b").is_dir()


def test_temporaries_are_told_from_results(tmp_path, monkeypatch):
    """What fsio renames into place is a temporary by its name (the workspace mirror skips those)."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)

    monkeypatch.setattr(fsio.os, "replace", spy)
    fsio.write_text_atomic(tmp_path / "a.txt", "x")
    with fsio.atomic_output_dir(tmp_path / "out", owned_marker="m.json") as d:
        (d / "m.json").write_text("{}")
    assert len(seen) == 2 and all(fsio.is_temporary(n) for n in seen), seen
    assert not any(fsio.is_temporary(n) for n in ("a.txt", "out", ".gitignore", "tmp", "model.tmp.safetensors"))
