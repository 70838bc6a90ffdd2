"""The README's step-by-step block runs as written, in order, in a fresh clone: every command exits 0, the
servers it starts answer before they are stopped. Only the training lengths are cut (``--max-steps 4``): what is
checked is that each command, flag and file of the block works, which no step count changes; how well the tiny
preset trains is the quickstart's test (with the block's 100 + 50 steps this test took 243 s on a busy 2-core box,
with 4 + 4 it takes 45 s)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SERVERS = {"serve": "http://127.0.0.1:8000/health", "app": "http://127.0.0.1:7860/"}


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("The same steps one at a time", 1)[1].split("```", 2)[1]
    lines = [ln.split("   #", 1)[0].split("  #", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith("openllm ")]


def test_the_block_is_what_the_readme_says():
    cmds = readme_commands()
    assert cmds[0].startswith("openllm prepare-data") and any(c.startswith("openllm serve") for c in cmds)
    # the run below cuts these to 4 steps: they must be spelled so that it finds them
    trains = [c for c in cmds if c.startswith(("openllm train ", "openllm finetune runs"))]
    assert len(trains) == 2 and all(re.search(r"--max-steps \d+", c) for c in trains), trains
    assert not any("corpus.txt" in c for c in cmds)  # no file a new user does not have


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_readme_commands_run_as_written(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{REPO}", str(clone)], check=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "OPENLLM_HUB": str(tmp_path / "hub"),
        "OPENLLM_CACHE": str(tmp_path / "cache"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("OPENLLM_EVAL_DATA", None)
    for cmd in readme_commands():
        cmd = cmd.replace("/tmp/space", str(tmp_path / "space"))
        cmd = re.sub(r"--max-steps \d+", "--max-steps 4", cmd)
        name = shlex.split(cmd)[1]
        if name in SERVERS:
            proc = subprocess.Popen(
                cmd,
                shell=True,
                cwd=clone,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            try:
                _wait_for(SERVERS[name], proc)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)  # what Ctrl-C or a service manager does
                proc.wait(timeout=60)
            continue
        proc = subprocess.run(cmd, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, cmd
    assert re.search(r"dry run", proc.stdout + proc.stderr)
    assert (clone / "exports" / "tiny" / "onnx" / "model.onnx").is_file()
