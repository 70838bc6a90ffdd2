"""Running the git CLI: a clean environment (no prompts, no inherited GIT_DIR, English messages, a low-speed
timeout) and the mapping of git's failures to typed hub errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..redact import redact, url_secrets
from .errors import AuthError, HubError, HubUnavailable, RepositoryNotFound

__all__ = ["git", "git_env", "classify_git_error", "is_push_race", "GitFailed", "DEFAULT_TIMEOUT", "die_with_parent"]

DEFAULT_TIMEOUT = float(os.environ.get("OPENLLM_HUB_TIMEOUT", "600"))
_IDENTITY = {
    "GIT_AUTHOR_NAME": "OpenLLM",
    "GIT_AUTHOR_EMAIL": "openllm@localhost",
    "GIT_COMMITTER_NAME": "OpenLLM",
    "GIT_COMMITTER_EMAIL": "openllm@localhost",
}
# variables that would point git at another repository than the one we name
_STRIP = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_COMMON_DIR",
    "GIT_QUARANTINE_PATH",
)

_NOT_FOUND = re.compile(
    r"does not appear to be a git repository|repository '.*' not found|Repository not found|"
    r"access denied or repository not exported|not a git repository|returned error: 404|No such repository",
    re.I,
)
_AUTH = re.compile(
    r"Authentication failed|could not read (Username|Password)|terminal prompts disabled|"
    r"returned error: 40[13]|Permission denied \(publickey|HTTP Basic: Access denied|invalid credentials|"
    r"403 Forbidden|401 Unauthorized",
    re.I,
)
_NETWORK = re.compile(
    r"Connection refused|Connection reset|Connection timed out|timed out|Operation too slow|Could not resolve|"
    r"unable to connect|Failed to connect|early EOF|remote end hung up|RPC failed|unexpected disconnect|"
    r"transfer closed|Empty reply from server|Recv failure|Send failure|Broken pipe|SSL|TLS|"
    r"returned error: 5\d\d|returned error: 429|index-pack failed|fetch-pack: invalid|protocol error|"
    r"Network is unreachable|No route to host|unable to access|bad packet|expected flush|expected ACK|"
    r"the remote hung up|could not read from remote repository",
    re.I,
)
_RACE = re.compile(
    r"\(fetch first\)|non-fast-forward|failed to update ref|cannot lock ref|"
    r"\[rejected\]|stale info|incorrect old value",
    re.I,
)


def _pdeathsig():
    """Linux: a function that asks the kernel to SIGKILL the calling process when its parent dies; else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def setup() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return setup


_DEATHSIG = _pdeathsig()


_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def die_with_parent(cmd: Sequence[str]) -> tuple[list[str], dict]:
    """``cmd`` and the ``subprocess`` keyword arguments that make the child die with this process, however this
    process ends (kill -9 included): a push whose pusher was killed must not go on and land a version
    afterwards, nor keep running. Linux only (``PR_SET_PDEATHSIG``); elsewhere ``cmd`` as it is.

    Through util-linux's ``setpriv --pdeathsig KILL`` where it is installed (the flag outlives its exec of
    ``cmd``): Python then starts the child with vfork, where a ``preexec_fn`` forces a copy of this whole
    process (about 50 ms a git call once torch is loaded, against 1 ms); else from a ``preexec_fn``."""
    if _SETPRIV is not None:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *cmd], {}
    return list(cmd), ({"preexec_fn": _DEATHSIG} if _DEATHSIG is not None else {})


class GitFailed(HubError):
    """git exited non-zero for a reason that is not one of the typed hub errors."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(redact(message))
        self.stderr = redact(stderr)


def git_env(extra: Mapping[str, str] | None = None, *, low_speed_time: int = 30) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _STRIP}
    for k, v in _IDENTITY.items():
        env.setdefault(k, v)
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
            "LANGUAGE": "C",
            "GCM_INTERACTIVE": "never",
            "GIT_HTTP_LOW_SPEED_LIMIT": env.get("GIT_HTTP_LOW_SPEED_LIMIT", "1000"),
            "GIT_HTTP_LOW_SPEED_TIME": env.get("GIT_HTTP_LOW_SPEED_TIME", str(low_speed_time)),
        }
    )
    if extra:
        env.update(extra)
    return env


def classify_git_error(stderr: str, *, where: str) -> HubError | None:
    """The typed error that git's message means, or None when it is none of them."""
    last = _last_line(stderr)
    if _NOT_FOUND.search(stderr):
        return RepositoryNotFound(
            f"no repository at {where}; create it first (openllm creates it on the local "
            f"hub when you push) or check the name"
        )
    if _AUTH.search(stderr):
        return AuthError(f"{where} rejected the credentials ({last}); check the token or your git credentials")
    if _NETWORK.search(stderr):
        return HubUnavailable(f"{where} is unavailable ({last}); try again later")
    return None


def is_push_race(stderr: str) -> bool:
    """The push lost a race: the branch moved between our fetch and our push."""
    return bool(_RACE.search(stderr))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("fatal:", "error:")):
            # "fatal: unable to connect to host:" puts the reason on the next line
            return lines[i] + (" " + lines[i + 1] if lines[i].endswith(":") and i + 1 < len(lines) else "")
    return lines[-1] if lines else "no message"


def git(
    args: Sequence[str],
    *,
    git_dir: str | Path | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    where: str = "the hub",
    check: bool = True,
    network: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``git ARGS`` (paths in ARGS absolute) and return the completed process (bytes). On failure raise the
    typed error its message means (network commands), else :class:`GitFailed` — unless ``check`` is False."""
    exe = shutil.which("git")
    if exe is None:
        raise HubError("git is not installed; install git (apt-get install git) to use the local hub")
    cmd = [exe]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    cmd += list(args)
    try:
        # without a git dir, run from '/': git must not find (and use the config of) whatever repository the
        # caller's current directory happens to be in
        argv, kwargs = die_with_parent(cmd)
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            env=git_env(env),
            cwd=os.sep if git_dir is None else None,
            timeout=timeout or DEFAULT_TIMEOUT,
            stdin=None if input is not None else subprocess.DEVNULL,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise HubUnavailable(
            f"{where} did not answer within {timeout or DEFAULT_TIMEOUT:.0f} s (git {args[0]}); try again later"
        ) from exc
    if proc.returncode != 0:
        # git words some failures with the URL's credentials in them (git:// "unable to look up user:TOKEN@
        # host"), in any form: mask exactly the credentials of the URLs we passed, before any caller reads it
        secrets = url_secrets(" ".join(str(a) for a in cmd))
        proc.stderr = redact(proc.stderr.decode("utf-8", "replace"), secrets).encode("utf-8")
        proc.stdout = redact(proc.stdout.decode("utf-8", "replace"), secrets).encode("utf-8")
    if proc.returncode != 0 and check:
        stderr = proc.stderr.decode("utf-8", "replace")
        typed = classify_git_error(stderr, where=where) if network else None
        if typed is not None:
            raise typed
        raise GitFailed(f"git {args[0]} failed at {where}: {_last_line(stderr)}", stderr)
    return proc
