import os
import sys
from pathlib import Path

import pytest

# no telemetry, no calls out, anywhere in the suite
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Tiny Shakespeare, WikiText-2, LAMBADA, HellaSwag): CI has it, users do not."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    """Every test gets its own local hub and cache, never the user's."""
    monkeypatch.setenv("OPENLLM_HUB", str(tmp_path / "_hub"))
    monkeypatch.setenv("OPENLLM_CACHE", str(tmp_path / "_cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield


def run_cli(*args: str, check: bool = True, env: dict | None = None, cwd=None, timeout: int = 600):
    """Run the real console entry point in a subprocess, as a user would."""
    import subprocess

    e = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "openllm", *args], capture_output=True, text=True,
                          env=e, cwd=cwd, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"openllm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
