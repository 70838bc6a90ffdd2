"""Packaging (issue 16): the presets ship inside the package, the wheel works outside the checkout, and a
missing optional extra is a one-line error naming the ``pip install`` that adds it."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from openllm.config import PRESETS_DIR, load_config, preset_names
from openllm.errors import EXTRAS, MissingExtra, OpenLLMError, require


def test_presets_live_in_the_package_and_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    assert PRESETS_DIR == Path(__import__("openllm").__file__).parent / "configs"
    assert {"tiny", "small", "medium", "large"} <= set(preset_names())
    assert not (REPO / "configs").exists()  # one place only
    monkeypatch.chdir(tmp_path)
    assert load_config("tiny").name == "tiny"
    assert load_config("configs/small.json").name == "small"  # the old checkout path still names a preset
    (tmp_path / "mine.json").write_text((PRESETS_DIR / "tiny.json").read_text())
    assert load_config("mine.json").model == load_config("tiny").model
    with pytest.raises(OpenLLMError, match="config file not found: nope/x.json"):
        load_config("nope/x.json")


def test_pyproject_ships_the_presets_and_splits_the_heavy_parts_into_extras():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["openllm"]
    assert data == ["configs/*.json"]
    core = " ".join(project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    for heavy in ("gradio", "fastapi", "uvicorn", "onnx", "onnxruntime", "gguf", "lm-eval"):
        assert heavy not in core, heavy
    assert {"app", "serve", "export", "eval", "all", "dev"} <= set(extras)
    for module, extra in EXTRAS.items():
        dist = {"lm_eval": "lm-eval"}.get(module, module)
        assert any(r.startswith(dist) for r in extras[extra]), (module, extra)
    assert extras["all"] == ["openllm[app,serve,export,eval]"] and "openllm[all]" in extras["dev"]
    assert '".${extras}"' in (REPO / "scripts/setup.sh").read_text()  # setup.sh installs [all] / [all,dev]


def test_require_names_the_pip_install():
    require("json")
    with pytest.raises(MissingExtra, match=r"GGUF export needs no_such_mod, which is not installed: "
                                           r"pip install 'openllm\[export\]'"):
        require("no_such_mod.sub", "export", what="GGUF export")


@pytest.mark.parametrize("hidden,argv,extra", [
    ("fastapi", ["serve", "nowhere"], "serve"),
    ("gradio", ["app", "--port", "1"], "app"),
    pytest.param("onnx", ["export", "RUN", "--format", "onnx", "--out", "OUT"], "export", marks=pytest.mark.slow),
    pytest.param("gguf", ["export", "RUN", "--format", "gguf", "--out", "OUT"], "export", marks=pytest.mark.slow),
])
def test_a_missing_extra_is_one_line_naming_the_install(hidden, argv, extra, tmp_path, request):
    """The CLI with one optional package made unimportable (as if the extra were not installed)."""
    run = request.getfixturevalue("export_run") if "RUN" in argv else None
    argv = [str(run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code = ("import sys; sys.modules[sys.argv[1]] = None; from openllm.cli import main; "
            "sys.exit(main(sys.argv[2:]))")
    proc = subprocess.run([sys.executable, "-c", code, hidden, *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"pip install 'openllm[{extra}]'" in lines[0] and hidden in lines[0]
