"""Native export: safetensors in our names + config.json + tokenizer; bit-exact round trip; bad input."""

import json

import pytest
import torch

import openllm
from conftest import make_export_run, run_cli
from openllm.errors import OpenLLMError
from openllm.export import export


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("tied", [True, False])
def test_native_round_trip_is_bit_exact(tmp_path, export_tokenizer_dir, tied):
    run = make_export_run(tmp_path / "run", export_tokenizer_dir, tied=tied, n_kv_heads=1 if not tied else 2)
    out = tmp_path / "native"
    export(run, out, "native", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.model", "tokenizer.json", "tokenizer_config.json"} <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "openllm" and cfg["model"]["n_kv_heads"] == (1 if not tied else 2)
    a, b = openllm.load(run), openllm.load(out)
    assert b.kind == "native"
    _same_state(a.model, b.model)
    assert a.config == b.config
    assert b.tokenizer.encode("def load(source):") == a.tokenizer.encode("def load(source):")
    # and again from the export itself
    export(out, tmp_path / "native2", "native", progress=False)
    _same_state(b.model, openllm.load(tmp_path / "native2").model)


def test_no_pickle_in_native_export(tmp_path, export_run):
    out = tmp_path / "native"
    export(export_run, out, "native", progress=False)
    assert not list(out.glob("*.pt")) and not list(out.glob("*.bin")) and not list(out.glob("*.pkl"))


def test_unknown_format_is_refused(tmp_path, export_run):
    with pytest.raises(OpenLLMError, match="unknown export format 'tflite'"):
        export(export_run, tmp_path / "x", "native,tflite", progress=False)
    assert not (tmp_path / "x").exists()


def test_non_empty_output_needs_overwrite(tmp_path, export_run):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OpenLLMError, match="not empty.*--overwrite"):
        export(export_run, out, "native", progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only an earlier export, never a folder of someone else's files
    with pytest.raises(OpenLLMError, match="not an openllm export"):
        export(export_run, out, "native", overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    export(export_run, out, "native", progress=False)
    (out / "stale.txt").write_text("left by an earlier export")
    export(export_run, out, "hf", overwrite=True, progress=False)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert oct(out.stat().st_mode & 0o777) != "0o700"


def test_output_may_not_contain_the_source(export_run):
    with pytest.raises(OpenLLMError, match="contains the model"):
        export(export_run, export_run.parent, "native", overwrite=True, progress=False)
    assert (export_run / "checkpoints").is_dir()


def test_run_without_checkpoint_is_refused(tmp_path, export_tokenizer_dir):
    run = make_export_run(tmp_path / "run", export_tokenizer_dir, steps=())
    with pytest.raises(OpenLLMError, match="no checkpoint yet"):
        export(run, tmp_path / "out", "native", progress=False)
    assert not (tmp_path / "out").exists()


def test_several_formats_go_to_subfolders(tmp_path, export_run):
    out = tmp_path / "out"
    folders = export(export_run, out, "native,hf", progress=False)
    assert folders == {"native": out / "native", "hf": out / "hf"}
    assert (out / "native" / "config.json").is_file() and (out / "hf" / "openllm.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging left behind


@pytest.mark.slow
def test_cli_export_and_its_errors(tmp_path, export_run):
    out = tmp_path / "cli_native"
    proc = run_cli("export", str(export_run), "--format", "native", "--out", str(out))
    assert (out / "model.safetensors").is_file(), proc.stdout + proc.stderr
    again = run_cli("export", str(export_run), "--format", "native", "--out", str(out), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    bad = run_cli("export", str(export_run), "--format", "pickle", "--out", str(tmp_path / "y"), check=False)
    assert bad.returncode == 2 and "unknown export format 'pickle'" in bad.stderr
    empty = tmp_path / "norun"
    empty.mkdir()
    (empty / "config.json").write_text((export_run / "config.json").read_text())
    none = run_cli("export", str(empty), "--format", "native", "--out", str(tmp_path / "z"), check=False)
    assert none.returncode == 2 and "no checkpoint" in none.stderr
