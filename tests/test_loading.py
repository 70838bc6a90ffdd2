"""openllm.load: run folders (latest checkpoint), checkpoint folders, native and Hugging Face exports, hub
references; bit-exact weights; clear errors."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import openllm
from conftest import make_export_run
from openllm.errors import OpenLLMError
from openllm.hub.errors import RepositoryNotFound
from openllm.rundir import latest_checkpoint


def _equal_weights(model, ckpt_file):
    saved = load_file(str(ckpt_file))
    ours = model.state_dict()
    for k, v in saved.items():
        assert torch.equal(ours[k], v), k
    return saved


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, openllm; assert 'torch' not in sys.modules, 'import openllm pulled in torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_folder_loads_latest_checkpoint(export_run):
    m = openllm.load(export_run)
    assert m.kind == "run" and m.step == 10
    assert m.path == export_run / "checkpoints" / "step_00000010"
    assert not m.model.training
    _equal_weights(m.model, m.path / "model.safetensors")
    assert m.config.name == "export-test" and m.config.model.n_kv_heads == 2
    assert m.tokenizer is not None and m.tokenizer.vocab_size == 512
    assert m.model.lm_head.weight is m.model.tok_embeddings.weight  # tying survives loading


def test_incomplete_checkpoint_is_skipped(export_run):
    # a save in progress: a step folder without weights yet is not "latest"
    (export_run / "checkpoints" / "step_00000020").mkdir()
    assert latest_checkpoint(export_run).name == "step_00000010"
    assert openllm.load(export_run).step == 10


def test_checkpoint_folder_loads_directly(export_run):
    m = openllm.load(export_run / "checkpoints" / "step_00000005")
    assert m.kind == "checkpoint" and m.step == 5
    _equal_weights(m.model, m.path / "model.safetensors")


@pytest.mark.parametrize("tied", [True, False])
def test_checkpoint_without_head_tensor(tmp_path, export_tokenizer_dir, tied):
    run = make_export_run(tmp_path / "r", export_tokenizer_dir, steps=(3,), tied=tied, checkpoint_with_head=False)
    m = openllm.load(run)
    saved = _equal_weights(m.model, m.path / "model.safetensors")
    assert ("lm_head.weight" in saved) == (not tied)


def test_run_without_checkpoint_is_a_clear_error(tmp_path, export_tokenizer_dir):
    run = make_export_run(tmp_path / "r", export_tokenizer_dir, steps=())
    with pytest.raises(OpenLLMError, match="no checkpoint yet"):
        openllm.load(run)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(OpenLLMError, match="no checkpoint yet"):
        openllm.load(run)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(OpenLLMError, match="no model at"):
        openllm.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OpenLLMError, match="holds no model"):
        openllm.load(tmp_path / "empty")


def test_wrong_shape_is_a_clear_error(export_run):
    cfg = json.loads((export_run / "config.json").read_text())
    cfg["model"]["d_ff"] = 192
    for ck in (export_run / "checkpoints").iterdir():
        state = json.loads((ck / "state.json").read_text())
        state["config"] = cfg
        (ck / "state.json").write_text(json.dumps(state))
    with pytest.raises(OpenLLMError, match="shape"):
        openllm.load(export_run)


def test_hub_reference_goes_through_the_hub(tmp_path):
    """A string that is no path and looks like OWNER/NAME@VERSION is resolved by the hub (here the test's own
    empty local hub, $OPENLLM_HUB = tmp_path/_hub)."""
    with pytest.raises(RepositoryNotFound) as info:
        openllm.load("nobody/nothing@1k")
    assert str(info.value) == (
        f"no model repo 'nobody/nothing' on the local hub {tmp_path / '_hub'}; "
        f"push to it first or check the name (openllm hub list)"
    )


@pytest.mark.slow
def test_hub_round_trip_is_bit_exact(export_run, capsys):
    """Push the run to the (per-test, local) hub, load it back by reference: same weights, same config."""
    rc, out, err = _cli(capsys, "hub", "push", str(export_run), "--repo", "me/tiny", "--version", "v1")
    assert rc == 0 and out.startswith("pushed me/tiny@v1 "), err
    a, b = openllm.load(export_run), openllm.load("me/tiny@v1")
    assert b.hub_ref == "me/tiny@v1" and a.config == b.config
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert b.tokenizer.encode("def x():") == a.tokenizer.encode("def x():")


# --- openllm generate (the CLI on top of openllm.load) -------------------------------------------------------


def _cli(capsys, *argv):
    """The real CLI entry point, in this process (a subprocess costs seconds of imports per call)."""
    from openllm.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow
def test_cli_generate_greedy_matches_library(export_run, capsys):
    from openllm.generate import SamplingParams, generate_text, stream_text

    m = openllm.load(export_run)
    want = generate_text(m.model, m.tokenizer, ["def load("], SamplingParams(max_new_tokens=12, temperature=0))[0]
    args = ("generate", str(export_run), "--prompt", "def load(", "--max-new-tokens", "12", "--temperature", "0")
    rc, out, _ = _cli(capsys, *args)
    assert rc == 0 and out == "def load(" + want + "\n"
    rc, streamed, _ = _cli(capsys, *args, "--stream")
    pieces = stream_text(m.model, m.tokenizer, "def load(", SamplingParams(max_new_tokens=12, temperature=0))
    assert rc == 0 and streamed == "def load(" + "".join(pieces) + "\n"
    sampled = [
        _cli(
            capsys,
            "generate",
            str(export_run),
            "--prompt",
            "x",
            "--prompt",
            "class ",
            "--seed",
            "3",
            "--top-k",
            "20",
            "--top-p",
            "0.9",
            "--repetition-penalty",
            "1.2",
            "--max-new-tokens",
            "10",
        )[1]
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1] and sampled[0].count("--- ") == 2
    rc, int8, _ = _cli(capsys, *args, "--int8")
    assert rc == 0 and int8.startswith("def load(")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--prompt", "x", "--temperature", "-1"], "temperature"),
        (["--prompt", "x", "--max-new-tokens", "5000"], "context"),
        (["--prompt", "x", "--prompt", "y", "--stream"], "one --prompt"),
    ],
)
def test_cli_generate_errors(export_run, capsys, argv, message):
    rc, _, err = _cli(capsys, "generate", str(export_run), *argv)
    assert rc == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_generate_subprocess(tmp_path):
    from conftest import run_cli

    missing = run_cli("generate", str(tmp_path / "nothing"), "--prompt", "x", check=False)
    assert missing.returncode == 2 and "no model at" in missing.stderr and "Traceback" not in missing.stderr


def test_a_mistyped_folder_is_not_only_a_missing_hub_repo(tmp_path, monkeypatch):
    """``runs/tnyi`` (no version) reads as a folder as much as a hub reference: the error names both."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RepositoryNotFound) as info:
        openllm.load("runs/tnyi")
    assert str(info.value).startswith(f"no folder 'runs/tnyi' here ({tmp_path}) and no model repo 'runs/tnyi'")


def test_a_refused_pytorch_model_bin_never_suggests_unsafe_loading(export_run, tmp_path, capsys):
    """A pickle that holds more than tensors is refused (weights_only=True); the message says how to fix it,
    never to turn the safety off (torch's own text suggests weights_only=False)."""
    import argparse

    from openllm.cli import main
    from openllm.export import export

    folder = export(export_run, tmp_path / "hf", "hf", progress=False)["hf"]
    state = {k: v for k, v in load_file(str(folder / "model.safetensors")).items()}
    (folder / "model.safetensors").unlink()
    torch.save({**state, "extra": argparse.Namespace(code="anything")}, folder / "pytorch_model.bin")
    with pytest.raises(OpenLLMError) as info:
        openllm.load(folder)
    msg = str(info.value)
    assert "pytorch_model.bin" in msg and "weights_only" not in msg and "\n" not in msg
    assert main(["generate", str(folder), "--prompt", "x", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "weights_only" not in err and len(err.strip().splitlines()) == 1
