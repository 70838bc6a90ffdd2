"""openllm.app.render: what the app shows of an error."""

from __future__ import annotations

import json
from pathlib import Path

import openllm
from openllm.app.render import err
from openllm.errors import OpenLLMError


def _missing(path: Path) -> FileNotFoundError:
    try:
        path.read_bytes()
    except FileNotFoundError as exc:
        return exc
    raise AssertionError(f"{path} exists")


def test_a_file_missing_from_the_package_is_a_damaged_installation():
    exc = _missing(Path(openllm.__file__).parent / "presets" / "gone.json")
    shown = err(exc)
    assert "openllm installation" in shown and "gone.json" in shown and "reinstall" in shown
    assert "Unexpected" not in shown


def test_a_file_missing_from_a_run_folder_is_a_damaged_run(tmp_path):
    run = tmp_path / "runs" / "my-run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    shown = err(_missing(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert "the run my-run is damaged" in shown and "model.safetensors" in shown and "delete the run" in shown


def test_the_users_own_missing_file_and_our_errors_keep_their_message(tmp_path):
    """An upload that went away is still the user's (no run, no package around it); typed errors are as said."""
    shown = err(_missing(tmp_path / "upload.txt"))
    assert "upload.txt" in shown and "damaged" not in shown and "Unexpected" not in shown
    assert "choose a run" in err(OpenLLMError("choose a run"))
    assert "Unexpected error: RuntimeError" in err(RuntimeError("boom"))
