"""Validation of a built Space before it is pushed (and of the pushed tree after).

1. hashes: every file is what the build meant to write;
2. a clean virtual environment made from the Space's requirements.txt alone (cached by the hash of the
   requirements and the Python version, so that it is made once per set of requirements);
3. in it, ``import training`` works, and ``python app.py`` starts and answers HTTP on a free loopback port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import OpenLLMError
from .state import cache_dir, sha256_bytes, tree_hashes

__all__ = [
    "ValidationError",
    "verify_tree",
    "env_key",
    "venv_cache_dir",
    "ensure_venv",
    "check_import",
    "check_app",
    "validate_space",
]

Log = Callable[[str], None]


class ValidationError(OpenLLMError):
    """The built (or pushed) Space is not right; nothing is pushed (or the push is rolled back)."""


def verify_tree(folder: Path, expected: dict[str, str], *, exact: bool = True) -> None:
    """Every expected file has its expected sha256 (and, with ``exact``, nothing else is there)."""
    actual = tree_hashes(folder)
    missing = sorted(p for p in expected if p not in actual)
    wrong = sorted(p for p in expected if p in actual and actual[p] != expected[p])
    extra = sorted(p for p in actual if p not in expected) if exact else []
    if missing or wrong or extra:
        parts = []
        for label, items in (("missing", missing), ("different", wrong), ("unexpected", extra)):
            if items:
                parts.append(f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}")
        raise ValidationError(f"{folder}: the files do not match the build ({'; '.join(parts)})")


def env_key(requirements: bytes) -> str:
    """Requirements + interpreter: the same key means the same environment."""
    return sha256_bytes(requirements + f"\n{sys.version_info[:2]} {sys.platform}".encode())[:16]


def venv_cache_dir() -> Path:
    """OPENLLM_SPACE_VENVS, else <cache>/space-venvs."""
    env = os.environ.get("OPENLLM_SPACE_VENVS")
    return Path(env) if env else cache_dir() / "space-venvs"


def _clean_env(extra: dict[str, str] | None = None, venv: Path | None = None) -> dict[str, str]:
    """The caller's environment without what would leak its Python packages into the child."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "PYTHONPATH",
            "PYTHONHOME",
            "VIRTUAL_ENV",
            "PYTHONSTARTUP",
            "PIP_REQUIRE_VIRTUALENV",
            "__PYVENV_LAUNCHER__",
        )
    }
    env.update(
        {
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock across processes (two syncs must not build one environment twice at once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _without_index_lines(data: bytes) -> bytes:
    """requirements.txt less its index options (``--extra-index-url`` of PyTorch's CPU wheels), for a machine
    that cannot reach them (``OPENLLM_SPACE_INDEXES=local``): the check then installs the same pinned versions
    (``+cpu`` included) from the indexes and wheel folders this machine's pip is configured with, and reaches
    no other. By default the check installs requirements.txt as the Space will, index lines included."""
    lines = data.decode("utf-8").splitlines(keepends=True)
    keep = [ln for ln in lines if not ln.strip().startswith(("--extra-index-url", "--index-url", "-i "))]
    return "".join(keep).encode("utf-8")


def ensure_venv(requirements: Path, *, cache: Path | None = None, log: Log = print, timeout: float = 1800) -> Path:
    """The clean environment for ``requirements`` (made now, or found in the cache); returns its python."""
    data = requirements.read_bytes()
    cache = Path(cache) if cache is not None else venv_cache_dir()
    key = env_key(data)
    final = cache / key
    python = final / "bin" / "python"
    with _lock(cache / f"{key}.lock"):
        if (final / ".openllm-ok").is_file() and python.exists():
            log(f"clean environment: cached ({final})")
            return python
        if final.exists():
            shutil.rmtree(final)  # a half-made one from an interrupted run
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
        try:
            log(f"clean environment: creating it from requirements.txt (once per set of requirements) in {final}")
            t0 = time.time()
            (tmp.parent / "requirements").mkdir(exist_ok=True)
            req = tmp.parent / "requirements" / f"{key}.txt"
            local = os.environ.get("OPENLLM_SPACE_INDEXES", "").lower() == "local"
            req.write_bytes(_without_index_lines(data) if local else data)
            logfile = tmp.parent / f"{key}.log"
            uv = _uv()
            if uv:  # uv installs from its cache by linking: seconds instead of minutes once the cache is warm
                subprocess.run(
                    [sys.executable, "-m", "venv", "--without-pip", str(tmp)],
                    check=True,
                    capture_output=True,
                    env=_clean_env(),
                )
                cmd = [uv, "pip", "install", "--quiet", "--python", str(tmp / "bin" / "python"), "-r", str(req)]
                env = _clean_env(_uv_env(), venv=tmp)
            else:
                subprocess.run(
                    [sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, env=_clean_env()
                )
                cmd = [
                    str(tmp / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--prefer-binary",
                    "--no-compile",
                    "-r",
                    str(req),
                ]
                env = _clean_env(venv=tmp)
            log(f"clean environment: {'uv' if uv else 'pip'} install -r requirements.txt (log: {logfile})")
            with open(logfile, "wb") as out:
                proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
            if proc.returncode != 0:
                tail = [
                    ln
                    for ln in logfile.read_text(errors="replace").splitlines()
                    if not ln.startswith("WARNING: Location")
                ][-15:]
                raise ValidationError(
                    "the Space's requirements.txt does not install in a clean environment (exit {}):\n{}".format(
                        proc.returncode, "\n".join(tail)
                    )
                )
            (tmp / ".openllm-ok").write_text(f"{time.time() - t0:.1f}\n")
            # moved into place only when complete; its python finds the venv by its own location, and we only
            # ever run `python -m ...` (the scripts' shebangs would still name the temporary folder)
            os.replace(tmp, final)
            log(f"clean environment: ready in {time.time() - t0:.0f} s")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return python


def _uv() -> str | None:
    """uv beside this Python (the project's venv) or on PATH; OPENLLM_SPACE_INSTALLER=pip forces pip."""
    if os.environ.get("OPENLLM_SPACE_INSTALLER", "").lower() == "pip":
        return None
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.is_file() else shutil.which("uv")


def _uv_env() -> dict[str, str]:
    """pip's configuration of this machine (find-links, constraints, index), said the way uv reads it."""
    import configparser

    cfg: dict[str, str] = {}
    files = [
        "/etc/pip.conf",
        "/etc/xdg/pip/pip.conf",
        str(Path.home() / ".config" / "pip" / "pip.conf"),
        str(Path.home() / ".pip" / "pip.conf"),
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(os.environ["PIP_CONFIG_FILE"])
    for f in files:
        cp = configparser.ConfigParser()
        try:
            cp.read(f)
        except (configparser.Error, OSError):
            continue
        for section in ("global", "install"):
            if cp.has_section(section):
                cfg.update({k: v for k, v in cp.items(section)})
    for key in ("find-links", "constraint", "index-url"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            cfg[key] = env
    out = {}
    if cfg.get("find-links"):
        out["UV_FIND_LINKS"] = ",".join(cfg["find-links"].split())
    if cfg.get("constraint"):
        out["UV_CONSTRAINT"] = " ".join(cfg["constraint"].split())
    if cfg.get("index-url"):
        out["UV_INDEX_URL"] = cfg["index-url"].strip()
    return out


def check_import(space: Path, python: Path, *, log: Log = print, timeout: float = 600) -> None:
    """``import training`` in the clean environment, from the Space's folder."""
    proc = subprocess.run(
        [str(python), "-c", "import training, sys; print(training.__file__)"],
        cwd=space,
        capture_output=True,
        text=True,
        env=_clean_env(venv=python.parent.parent),
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise ValidationError(f"the built Space does not import (`import training`):\n{proc.stderr.strip()[-2000:]}")
    where = proc.stdout.strip()
    if not Path(where).resolve().is_relative_to(space.resolve()):
        raise ValidationError(f"`import training` found {where}, not the Space's copy: the environment is not clean")
    log("validation: `import training` works in the clean environment")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_app(space: Path, python: Path, *, log: Log = print, timeout: float = 240) -> None:
    """``python app.py`` starts and answers HTTP 200 on loopback; it runs in a copy of the Space, so
    nothing it writes (its workspace) can end up in the push."""
    with tempfile.TemporaryDirectory(prefix="openllm-space-app-") as tmp:
        copy = Path(tmp) / "space"
        shutil.copytree(space, copy)
        port = _free_port()
        env = _clean_env(
            {
                "GRADIO_SERVER_NAME": "127.0.0.1",
                "GRADIO_SERVER_PORT": str(port),
                "OPENLLM_APP_WORKSPACE": str(Path(tmp) / "workspace"),
                "HF_HUB_OFFLINE": "1",
                "MPLCONFIGDIR": str(Path(tmp) / "mpl"),
            },
            venv=python.parent.parent,
        )
        env.pop("SPACE_ID", None)
        logfile = Path(tmp) / "app.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                [str(python), "app.py"], cwd=copy, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                url = f"http://127.0.0.1:{port}/"
                deadline = time.time() + timeout
                status = None
                started, said = time.time(), 0.0
                log(f"validation: starting app.py in the clean environment (up to {timeout:.0f} s)")
                while time.time() < deadline:
                    if proc.poll() is not None:
                        break
                    if time.time() - said >= 15 and said:
                        log(f"validation: waiting for the app to answer ({time.time() - started:.0f} s)")
                    if time.time() - said >= 15:
                        said = time.time()
                    try:
                        with urllib.request.urlopen(url, timeout=5) as resp:
                            status = resp.status
                            body = resp.read(200_000)
                        if status == 200:
                            break
                    except (urllib.error.URLError, ConnectionError, OSError):
                        pass
                    time.sleep(0.5)
                if status != 200:
                    tail = logfile.read_text(errors="replace").strip().splitlines()[-20:]
                    how = (
                        f"exited with {proc.returncode}"
                        if proc.poll() is not None
                        else f"did not answer {url} within {timeout:.0f} s"
                    )
                    raise ValidationError("the built Space's app {}:\n{}".format(how, "\n".join(tail)))
                if b"gradio" not in body.lower():
                    raise ValidationError(f"the built Space's app answered {url}, but not with a Gradio page")
                log(f"validation: app.py starts and answers HTTP 200 on {url}")
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, 9)
                        proc.wait()


def validate_space(
    space: Path, expected: dict[str, str], *, env_check: bool = True, cache: Path | None = None, log: Log = print
) -> None:
    """Everything a Space must pass before it is pushed."""
    verify_tree(space, expected)
    log(f"validation: {len(expected)} files match their hashes")
    if not env_check:
        log("validation: clean-environment check skipped (--no-env-check)")
        return
    python = ensure_venv(space / "requirements.txt", cache=cache, log=log)
    check_import(space, python, log=log)
    check_app(space, python, log=log)
