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


def test_an_output_that_is_a_link_is_refused_with_or_without_overwrite(tmp_path, export_run):
    real = tmp_path / "real"
    export(export_run, real, "native", progress=False)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    before = sorted(p.name for p in real.iterdir())
    for overwrite in (False, True):
        with pytest.raises(OpenLLMError, match="is a link"):
            export(export_run, link, "native", overwrite=overwrite, progress=False)
    assert link.is_symlink() and sorted(p.name for p in real.iterdir()) == before
    proc = run_cli("export", str(export_run), "--format", "native", "--out", str(link), "--overwrite", check=False)
    assert proc.returncode == 2 and "is a link" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_killed_export_leaves_no_staging_folder_behind_the_next_one(tmp_path, export_run):
    """kill -9 mid-export leaves its staging folder; the next export to the same place removes it (and never
    one that a live export is still writing)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    code = (
        "import sys, time, openllm.export.native as n\n"
        "real = n.export_native\n"
        "def slow(*a, **k):\n"
        "    real(*a, **k)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(60)\n"
        "n.export_native = slow\n"
        "from openllm.export import export\n"
        "export(sys.argv[1], sys.argv[2], 'native', progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(export_run), str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    live = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert len(live) == 1
    # a second export to the same place while the first is alive leaves the first one's folder alone
    export(export_run, out, "native", progress=False)
    assert live[0].exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.1)
    assert live[0].exists()  # what kill -9 leaves
    export(export_run, out, "native", overwrite=True, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert (out / "model.safetensors").is_file()
