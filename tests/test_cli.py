from conftest import run_cli

from openllm.cli import COMMANDS


def test_help_lists_every_command():
    out = run_cli("--help").stdout
    for name in ["prepare-data", "train-tokenizer", "tokenize", "train", "evaluate", "compare", "generate",
                 "export", "serve", "hub", "data", "space", "app", "quickstart", "info"]:
        assert name in out
        assert name in COMMANDS


def test_info_small_prints_about_36m():
    out = run_cli("info", "configs/small.json").stdout
    assert "parameters        35," in out and "(35.7M)" in out
    assert "FLOPs" in out


def test_info_bad_config_is_one_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"model": {"d_model": 100, "n_heads": 3}}')
    proc = run_cli("info", str(p), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "model.d_model (100) is not divisible by model.n_heads (3)" in proc.stderr
    assert "Traceback" not in proc.stderr
