"""The training job the app starts: ``python -m openllm.app.job JOB_DIR`` (``training.app.job`` in the Space).

It runs the library's own commands one after another, each as a child process of the same package:
``prepare-data`` -> ``train-tokenizer`` -> ``tokenize`` -> ``train``. Until ``train`` starts, this process
keeps the run's ``status.json`` (state ``running``, with a ``phase``); from then on ``train`` owns it. SIGTERM
is forwarded to the step that is running, so Stop during training means the trainer's graceful stop (a
checkpoint, state ``stopped``); during data preparation it ends the job with state ``stopped``. A step that
fails without saying why in ``status.json`` gets state ``failed`` with the last line it printed.

JOB_DIR/job.json (written by :mod:`runner`)::

    {"run_dir": ..., "config": ..., "inputs": [...], "vocab_size": N, "max_steps": N}
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PKG = __name__.split(".")[0]  # "openllm", or "training" in the Space

_stop_requested = False
_child: subprocess.Popen | None = None


def write_status(run_dir: Path, **fields) -> None:
    """Write run_dir/status.json atomically (temporary file + rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".status.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(fields) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "status.json")


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _on_term(signum, frame) -> None:  # noqa: ARG001
    global _stop_requested
    _stop_requested = True
    if _child is not None and _child.poll() is None:
        _child.send_signal(signal.SIGTERM)


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    # prefer the CLI's one-line error over a progress bar
    for ln in reversed(lines):
        if ln.startswith(("error:", "Error", "Traceback")) or "Error:" in ln:
            return ln
    return lines[-1] if lines else ""


def _run_step(argv: list[str], log: Path) -> int:
    global _child
    print(f"$ {PKG} {' '.join(argv)}", flush=True)
    _child = subprocess.Popen([sys.executable, "-m", PKG, *argv])
    while True:
        try:
            return _child.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for safety
            continue


def main(job_dir: str) -> int:
    job_dir = Path(job_dir)
    spec = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))
    run_dir = Path(spec["run_dir"])
    log = job_dir / "log.txt"
    max_steps = int(spec["max_steps"])
    signal.signal(signal.SIGTERM, _on_term)
    data = job_dir / "data"
    prepared, tok, shards = data / "prepared", data / "tokenizer", data / "tokens"
    steps = [
        ("preparing the corpus", ["prepare-data", *spec["inputs"], "--out", str(prepared)]),
        ("training the tokenizer", ["train-tokenizer", "--data", str(prepared), "--vocab-size",
                                    str(spec["vocab_size"]), "--out", str(tok)]),
        ("tokenizing", ["tokenize", "--data", str(prepared), "--tokenizer", str(tok), "--out", str(shards)]),
    ]
    started = time.time()
    for phase, argv in steps:
        if _stop_requested:
            break
        write_status(run_dir, state="running", phase=phase, error=None, step=0, max_steps=max_steps,
                     pid=os.getpid(), started=started)
        rc = _run_step(argv, log)
        if _stop_requested:
            break
        if rc != 0:
            write_status(run_dir, state="failed", phase=phase, error=f"{phase} failed: {_last_line(log)}",
                         step=0, max_steps=max_steps, pid=None, started=started)
            return rc
    if _stop_requested:
        write_status(run_dir, state="stopped", phase="stopped before training", error=None, step=0,
                     max_steps=max_steps, pid=None, started=started)
        return 0

    write_status(run_dir, state="running", phase="starting training", error=None, step=0,
                 max_steps=max_steps, pid=os.getpid(), started=started)
    rc = _run_step(["train", "--config", str(job_dir / "config.json"), "--data", str(shards),
                    "--out", str(run_dir)], log)
    status = read_status(run_dir)
    if status.get("state") in (None, "running"):
        # the trainer died without recording why (a crash, a kill, a bad argument)
        state = "stopped" if _stop_requested and rc in (0, -signal.SIGTERM) else "failed"
        error = None if state == "stopped" else (_last_line(log) or f"training exited with code {rc}")
        write_status(run_dir, **{**status, "state": state, "error": error, "pid": None,
                                 "max_steps": status.get("max_steps", max_steps)})
    return rc if rc > 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
