import argparse
import os
import sys

import pytest
import torch

from conftest import run_cli
from openllm.cli import COMMANDS, build_parser, main
from openllm.cli.common import DEVICE_HELP, HUB_HELP, SET_HELP


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for name in [
        "prepare-data",
        "train-tokenizer",
        "tokenize",
        "train",
        "evaluate",
        "compare",
        "generate",
        "export",
        "serve",
        "hub",
        "data",
        "space",
        "app",
        "quickstart",
        "info",
    ]:
        assert name in out
        assert name in COMMANDS


@pytest.mark.slow
def test_info_small_prints_about_52m_with_the_default_untied_head():
    out = run_cli("info", "configs/small.json").stdout
    assert "parameters        52," in out and "(52.0M)" in out
    assert "FLOPs" in out


@pytest.mark.slow
def test_info_bad_config_is_one_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"model": {"d_model": 100, "n_heads": 3}}')
    proc = run_cli("info", str(p), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "model.d_model (100) is not divisible by model.n_heads (3)" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the shared options (openllm.cli.common): one --hub, one --device, --set wherever a config is read -----------


def _leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every runnable command's parser as the CLI builds it, sub-commands included ("hub push", "space sync")."""
    leaves: dict[str, argparse.ArgumentParser] = {}
    for name in COMMANDS:
        top = build_parser(name)
        stack = [(name, _subparsers(top).choices[name])]
        while stack:
            label, parser = stack.pop()
            sub = _subparsers(parser)
            if sub is None:
                leaves[label] = parser
            else:
                stack.extend((f"{label} {child}", p) for child, p in sub.choices.items())
    return leaves


def _subparsers(parser):
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _option(parser, flag):
    return next((a for a in parser._actions if flag in a.option_strings), None)


def test_every_command_that_reads_a_config_takes_set():
    leaves = _leaf_parsers()
    takes_config = {name for name, p in leaves.items() if any(a.dest == "config" for a in p._actions)}
    assert takes_config == {"train", "info", "quickstart"}
    for name in takes_config:
        action = _option(leaves[name], "--set")
        assert action is not None, f"openllm {name} reads a config but has no --set"
        assert isinstance(action, argparse._AppendAction) and action.default == [] and action.dest == "set"
        assert action.help == SET_HELP
    # repeatable, in order, on the command line as a user types it
    args = build_parser("info").parse_args(["info", "tiny", "--set", "model.n_layers=2", "--set", "train.lr=1"])
    assert args.set == ["model.n_layers=2", "train.lr=1"]


def test_device_defaults_to_auto_everywhere():
    with_device = {name: _option(p, "--device") for name, p in _leaf_parsers().items()}
    with_device = {name: a for name, a in with_device.items() if a is not None}
    assert {"train", "quickstart", "evaluate", "generate", "serve"} <= set(with_device)
    for name, action in with_device.items():
        assert action.default == "auto", f"openllm {name} --device defaults to {action.default!r}"
        assert action.help == DEVICE_HELP, name


def test_hub_help_is_the_same_in_every_command():
    with_hub = {name: _option(p, "--hub") for name, p in _leaf_parsers().items()}
    with_hub = {name: a for name, a in with_hub.items() if a is not None}
    assert {
        "compare",
        "data upload",
        "evaluate",
        "export",
        "generate",
        "serve",
        "hub push",
        "hub versions",
        "hub pull",
        "hub list",
        "space sync",
        "space status",
        "space rollback",
    } <= set(with_hub)
    assert {a.help for a in with_hub.values()} == {HUB_HELP}
    assert {a.default for a in with_hub.values()} == {None}


@pytest.mark.slow
def test_info_set_changes_the_parameter_count():
    from openllm.config import load_config
    from openllm.model import Transformer

    cfg = load_config("tiny")
    two = cfg.replace(model={"n_layers": 2})
    assert cfg.model.n_layers != 2
    with torch.device("meta"):
        want = Transformer(two.model).num_params()
        default = Transformer(cfg.model).num_params()
    out = run_cli("info", "tiny", "--set", "model.n_layers=2").stdout
    assert "shape             2 layers x" in out
    assert f"parameters        {want:,} " in out
    assert f"{default:,}" not in out


def test_bad_set_is_one_line_naming_the_nearest_key(capsys):
    rc = main(["info", "tiny", "--set", "model.n_layer=2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (
        "error: config override 'model.n_layer=2': unknown key model.n_layer (did you mean model.n_layers?)\n"
    )


def test_train_and_quickstart_reject_bad_set_before_writing(tmp_path, capsys):
    rc = main(
        [
            "train",
            "--config",
            "tiny",
            "--data",
            str(tmp_path / "no-data"),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "train.lrr=1e-3",
        ]
    )
    assert rc == 2 and "unknown key train.lrr (did you mean train.lr?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    # a value the config rejects: the override reached quickstart's config, which failed before any stage ran
    rc = main(["quickstart", "--out", str(tmp_path / "qs"), "--set", "train.max_steps=0"])
    assert rc == 2 and "train.max_steps must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()


def test_bad_device_is_one_line(tmp_path, capsys):
    rc = main(["generate", str(tmp_path), "--prompt", "x", "--device", "gpu"])
    assert rc == 2
    assert capsys.readouterr().err == ("error: --device 'gpu' is not a device: use auto, cpu, cuda, cuda:N or mps\n")


def test_an_unexpected_error_is_one_line_with_a_crash_log(tmp_path):
    """A bug (here: a command whose run() divides by zero) prints one line naming the log that holds the
    traceback; --debug shows the traceback itself."""
    import subprocess

    code = (
        "import sys, openllm.cli as cli, openllm.cli.info as m\n"
        "m.run = lambda args: 1 / 0\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "OPENLLM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", code, "info", "tiny"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: openllm info failed unexpectedly (ZeroDivisionError: division by zero)")
    (log,) = (tmp_path / "cache" / "logs").iterdir()
    assert str(log) in line and "ZeroDivisionError" in log.read_text() and "openllm info tiny" in log.read_text()
    debug = subprocess.run(
        [sys.executable, "-c", code, "--debug", "info", "tiny"], capture_output=True, text=True, env=env
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_arguments_that_are_not_utf8_are_printed_escaped(tmp_path):
    import subprocess

    # prepare-data names a missing input before it loads torch: the same error path as any command, 2 s cheaper
    bad = os.fsencode(str(tmp_path)) + b"/\xff\xfe"
    proc = subprocess.run(
        [sys.executable, "-m", "openllm", "prepare-data", bad, "--out", str(tmp_path / "out")],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    err = proc.stderr.decode("utf-8")
    assert proc.returncode == 2 and "Traceback" not in err and err.startswith("error: ")
    assert "/\\udcff\\udcfe" in err, err  # the bytes are shown, escaped


def test_the_crash_log_and_the_error_line_hold_no_secrets(tmp_path):
    """The crash log asks to be sent to us: a token in the command line or the error must not be in it."""
    import subprocess

    code = (
        "import sys, openllm.cli as cli, openllm.cli.info as m\n"
        "def boom(args):\n"
        "    raise RuntimeError('git said https://alice:S3cretT0ken@hub.example/ broke')\n"
        "m.run = boom\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "OPENLLM_CACHE": str(tmp_path / "cache")}
    argv = ["info", "tiny", "--set", "name=https://hf_abcdefghijklmnopqrstuvwx@h/"]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 1, proc.stderr
    (log,) = (tmp_path / "cache" / "logs").iterdir()
    for text in (proc.stderr, log.read_text()):
        assert "S3cretT0ken" not in text and "hf_abcdefghijklmnopqrstuvwx" not in text
        assert "hub.example" in text


# --- errors: user errors (exit 2, one line) and bugs (exit 1, crash log); causes kept, shown with --debug ----------


def _failing_info(monkeypatch, tmp_path, make_error):
    import openllm.cli.info as info

    def run(args):
        raise make_error()

    monkeypatch.setattr(info, "run", run)
    monkeypatch.setenv("OPENLLM_CACHE", str(tmp_path / "cache"))


def test_a_chained_user_error_prints_one_line_without_its_cause(monkeypatch, tmp_path, capsys):
    import pytest

    from openllm.errors import OpenLLMError

    def make():
        try:
            raise KeyError("inner detail")
        except KeyError as exc:
            raise OpenLLMError("the run folder is damaged", path=tmp_path) from exc

    _failing_info(monkeypatch, tmp_path, make)
    assert main(["info", "tiny"]) == 2
    assert capsys.readouterr().err == "error: the run folder is damaged\n"
    with pytest.raises(OpenLLMError) as raised:  # --debug: the fields, then Python prints the whole chain
        main(["--debug", "info", "tiny"])
    assert isinstance(raised.value.__cause__, KeyError) and raised.value.path == tmp_path
    assert capsys.readouterr().err == f"debug: OpenLLMError: path={tmp_path!r}\n"


def test_a_missing_file_the_user_named_is_a_user_error(monkeypatch, tmp_path, capsys):
    missing = tmp_path / "run" / "checkpoints" / "state.json"
    _failing_info(monkeypatch, tmp_path, lambda: FileNotFoundError(2, "No such file or directory", str(missing)))
    assert main(["info", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("error: [Errno 2] No such file or directory")
    assert not (tmp_path / "cache" / "logs").exists()


def test_a_missing_file_the_user_did_not_name_is_a_bug(monkeypatch, tmp_path, capsys):
    """Our own code expected a file (a cache entry, a module's data) that is not there: the crash log, exit 1."""
    missing = tmp_path / "elsewhere" / "internal.json"
    _failing_info(monkeypatch, tmp_path, lambda: FileNotFoundError(2, "No such file or directory", str(missing)))
    assert main(["info", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "failed unexpectedly (FileNotFoundError" in err and "this is a bug" in err
    assert len(list((tmp_path / "cache" / "logs").iterdir())) == 1


def test_a_broken_invariant_is_a_bug_not_a_user_error(monkeypatch, tmp_path, capsys):
    """An impossible state transition is not something the user can fix: exit 1 and a crash log, never exit 2."""
    import pytest

    from openllm import rundir

    with pytest.raises(rundir.InvalidTransition) as caught:
        rundir.check_transition(rundir.FINISHED, rundir.STOPPING)
    assert (caught.value.old, caught.value.new) == (rundir.FINISHED, rundir.STOPPING)
    _failing_info(monkeypatch, tmp_path, lambda: caught.value)
    assert main(["info", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "failed unexpectedly (InvalidTransition: a run cannot go from finished to stopping)" in err
    assert "this is a bug" in err and err.count("\n") == 1


# --- messages that say what the code does (issue 24) -------------------------------------------------------


def test_tokenize_data_that_is_a_file_says_it_wants_a_prepared_folder(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("some text\n")
    assert main(["tokenize", "--data", str(text), "--tokenizer", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not found" not in err and "is a file" in err and "prepare-data" in err, err


def test_serve_model_name_help_says_what_the_default_is():
    """serve.server.build_app: a folder is named by its last part, a hub reference by the whole reference."""
    help_text = " ".join(_option(_leaf_parsers()["serve"], "--model-name").help.split())
    assert "folder" in help_text and "OWNER/NAME@VERSION" in help_text, help_text
