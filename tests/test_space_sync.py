"""openllm space sync / status / rollback against real git: a local hub of bare repositories, a git daemon on
loopback behind a fault-injecting proxy, git hooks, and edits made in the Space by a plain git client."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from netproxy import FlakyProxy
from openllm.hub import LocalHub
from openllm.space.retry import GaveUp, RetryPolicy, retry
from openllm.space.state import TAG_RE
from openllm.space.sync import SyncConflict, Syncer, SyncError
from test_space_build import make_repo

SPACE = "lemms/openllm"
FAST = RetryPolicy(attempts=4, base=0.05, cap=0.2, seed=0)


def git(*args, cwd=None, check=True) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "space editor",
        "GIT_AUTHOR_EMAIL": "e@x",
        "GIT_COMMITTER_NAME": "space editor",
        "GIT_COMMITTER_EMAIL": "e@x",
        "GIT_TERMINAL_PROMPT": "0",
    }
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def space_repo(hub_root: Path) -> Path:
    return hub_root / "spaces" / f"{SPACE}.git"


def edit_space(hub_root: Path, work: Path, edits: dict[str, str | None], message: str = "edit in the Space") -> str:
    """Edit the Space as someone with a git client would: clone, change, commit, push."""
    if work.exists():
        shutil.rmtree(work)
    git("clone", "-q", str(space_repo(hub_root)), str(work))
    for rel, text in edits.items():
        p = work / rel
        if text is None:
            p.unlink()
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", "origin", "HEAD:main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def show(hub_root: Path, rev: str, path: str) -> str | None:
    proc = subprocess.run(
        ["git", f"--git-dir={space_repo(hub_root)}", "show", f"{rev}:{path}"], capture_output=True, text=True
    )
    return proc.stdout if proc.returncode == 0 else None


def head(hub_root: Path) -> str:
    return git(f"--git-dir={space_repo(hub_root)}", "rev-parse", "main")


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo(tmp_path / "main")


@pytest.fixture
def hub_root(tmp_path) -> Path:
    return tmp_path / "hub"


def syncer(repo: Path, hub, logs: list | None = None, policy: RetryPolicy = FAST) -> Syncer:
    return Syncer(SPACE, hub, repo, policy=policy, log=(logs.append if logs is not None else lambda m: None))


@pytest.fixture
def git_daemon(hub_root):
    """git's own server on loopback, serving the local hub (pushes allowed)."""
    hub_root.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            f"--base-path={hub_root}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(hub_root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


# ---- retry policy ---------------------------------------------------------------------------------------


def test_backoff_grows_with_jitter_and_is_bounded():
    from openllm.hub import AuthError, HubUnavailable

    p = RetryPolicy(attempts=5, base=1.0, cap=4.0, jitter=0.5, seed=1)
    d = p.delays()
    assert len(d) == 4
    for k, x in enumerate(d):
        assert min(4.0, 2**k) * 0.5 <= x <= min(4.0, 2**k)
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise HubUnavailable("reset")
        return "ok"

    assert retry(flaky, what="x", policy=p, sleep=slept.append) == "ok" and len(slept) == 2
    with pytest.raises(GaveUp, match="after 5 attempts"):
        retry(lambda: (_ for _ in ()).throw(HubUnavailable("down")), what="x", policy=p, sleep=slept.append)

    def auth():
        calls.append(1)
        raise AuthError("bad token")

    calls.clear()
    with pytest.raises(AuthError):
        retry(auth, what="x", policy=p, sleep=slept.append)
    assert len(calls) == 1  # never retried


# ---- change detection, Space-only files, deletes -----------------------------------------------------------


@pytest.mark.slow
def test_incremental_sync_uploads_only_changes_and_keeps_space_only_files(repo, hub_root, tmp_path):
    hub = LocalHub(root=hub_root)
    s = syncer(repo, hub)
    first = s.sync(env_check=False)
    assert first.record.n == 1 and TAG_RE.match(first.record.tag)
    assert len(first.plan.uploads) == len(first.plan.build.files)
    assert hub.list_refs(repo_id=SPACE, repo_type="space").tags[first.record.tag] == first.commit
    assert s.state_file.is_file()
    # nothing changed: no commit, no tag
    again = s.sync(env_check=False)
    assert again.commit is None and not again.plan.changed and head(hub_root) == first.commit
    # a file only the Space has (added by a git client) is kept; the Space's head moved, but none of our files
    # changed there: no conflict
    edit_space(hub_root, tmp_path / "w", {"space-notes.md": "kept\n"})
    (repo / "src/openllm/model.py").write_text("import torch\nfrom .config import X\n\nW = X + 2\n")
    (repo / "src/openllm/configs/small.json").unlink()
    r = syncer(repo, hub).sync(env_check=False)
    assert r.plan.uploads == ["training/model.py"]
    assert r.plan.deletes == ["configs/small.json", "training/configs/small.json"]
    assert not r.plan.conflicts and r.plan.space_only == ["space-notes.md"]
    files = hub.list_files(repo_id=SPACE, repo_type="space")
    assert "space-notes.md" in files and "configs/small.json" not in files
    assert show(hub_root, "main", "training/model.py").endswith("W = X + 2\n")
    commits = hub.list_commits(repo_id=SPACE, repo_type="space")
    assert "1 updated, 2 removed" in commits[0].title
    # a Space-only file is never overwritten silently, even when main starts producing the same path
    edit_space(hub_root, tmp_path / "w2", {"configs/extra.json": '{"space": true}\n'})
    syncer(repo, hub).sync(env_check=False)  # nothing of ours changed: the Space's new head is accepted
    (repo / "src/openllm/configs/extra.json").write_text('{"main": true}\n')
    with pytest.raises(SyncConflict) as info:
        syncer(repo, hub).sync(env_check=False)
    assert info.value.files == ["configs/extra.json"]
    (repo / "src/openllm/configs/extra.json").unlink()
    # the state is rebuilt from the Space's tags on a machine that has none (a fresh CI runner)
    s.state_file.unlink()
    logs: list[str] = []
    st = syncer(repo, hub, logs).status()
    assert st["last"].tag == r.record.tag and not st["plan"].changed
    assert any("recovered" in m for m in logs)


# ---- conflicts, --force, rollback -----------------------------------------------------------------------


@pytest.mark.slow
def test_conflict_stops_unless_forced_and_rollback_restores(repo, hub_root, tmp_path):
    hub = LocalHub(root=hub_root)
    one = syncer(repo, hub).sync(env_check=False)
    (repo / "src/openllm/model.py").write_text("import torch\nfrom .config import X\n\nW = 'main v2'\n")
    two = syncer(repo, hub).sync(env_check=False)
    # someone edits a synced file in the Space, then main changes too
    edit_space(
        hub_root, tmp_path / "w", {"training/model.py": "W = 'edited in the Space'\n", "extra.txt": "space only\n"}
    )
    before = head(hub_root)
    (repo / "src/openllm/config.py").write_text("import json\nimport yaml\n\nX = 5\n")
    with pytest.raises(SyncConflict) as info:
        syncer(repo, hub).sync(env_check=False)
    assert info.value.files == ["training/model.py"]
    assert head(hub_root) == before  # nothing pushed
    st = syncer(repo, hub).status()
    assert st["plan"].conflicts == ["training/model.py"]
    forced = syncer(repo, hub).sync(env_check=False, force=True)
    assert set(forced.plan.uploads) == {"training/model.py", "training/config.py"}
    assert show(hub_root, "main", "training/model.py").endswith("W = 'main v2'\n")
    assert show(hub_root, "main", "extra.txt") == "space only\n"
    # roll back to the first sync: a new commit with its files
    rb = syncer(repo, hub).rollback(one.record.tag)
    assert rb.kind == "rollback" and head(hub_root) == rb.commit
    assert show(hub_root, "main", "training/model.py") == show(hub_root, one.commit, "training/model.py")
    log = git(f"--git-dir={space_repo(hub_root)}", "log", "--format=%H", "main").split()
    assert one.commit in log and two.commit in log  # history kept
    # the default rollback goes one sync back: to the forced sync
    rb2 = syncer(repo, hub).rollback()
    assert show(hub_root, "main", "training/config.py").endswith("X = 5\n") and rb2.n == rb.n + 1


def test_missing_token_fails_at_once(repo):
    t0 = time.time()
    proc = run_cli(
        "space", "sync", "--space", SPACE, "--hub", "hf", "--root", str(repo), check=False, env={"HF_TOKEN": ""}
    )
    assert proc.returncode == 2
    assert "HF_TOKEN" in proc.stderr and "token" in proc.stderr
    assert "validation" not in proc.stdout  # nothing built or validated before the token was checked
    assert time.time() - t0 < 60


@pytest.fixture
def auth_server():
    """An HTTP git server that rejects every request (401, Basic): a hub that refuses our credentials."""
    import http.server
    import threading

    hits = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="space"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], hits
    srv.shutdown()


def test_rejected_credentials_fail_at_once_without_retries(repo, auth_server):
    from openllm.hub import AuthError

    port, hits = auth_server
    logs: list[str] = []
    with pytest.raises(AuthError, match="credentials"):
        syncer(repo, LocalHub(url=f"http://127.0.0.1:{port}/"), logs).sync(env_check=False)
    assert hits and not any("retry" in m for m in logs)  # asked, refused, not asked again by the sync


# ---- failures after the push roll back by themselves ------------------------------------------------------

HOOK = """#!/bin/sh
# the Space's side undoes our push: main is reset to a commit that changes a synced file
[ -e "$GIT_DIR/hook-fired" ] && exit 0
while read old new ref; do
  [ "$ref" = refs/heads/main ] || continue
  touch "$GIT_DIR/hook-fired"
  export GIT_INDEX_FILE="$GIT_DIR/hook-index"
  git read-tree "$new"
  blob=$(echo "tampered" | git hash-object -w --stdin)
  git update-index --cacheinfo 100644,"$blob",training/model.py
  tree=$(git write-tree)
  c=$(echo tampered | git -c user.name=bot -c user.email=b@x commit-tree "$tree" -p "$old")
  git update-ref refs/heads/main "$c"
  rm -f "$GIT_INDEX_FILE"
done
"""


@pytest.mark.slow
def test_post_push_failure_rolls_back(repo, hub_root):
    hub = LocalHub(root=hub_root)
    first = syncer(repo, hub).sync(env_check=False)
    hook = space_repo(hub_root) / "hooks" / "post-receive"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    (repo / "src/openllm/model.py").write_text("import torch\nW = 'v2'\n")
    with pytest.raises(SyncError, match="rolled back"):
        syncer(repo, hub).sync(env_check=False)
    # the Space holds the first sync's files again, as a new commit on top
    assert show(hub_root, "main", "training/model.py") == show(hub_root, first.commit, "training/model.py")
    assert git(f"--git-dir={space_repo(hub_root)}", "diff", "--stat", first.commit, "main") == ""
    assert "Roll back failed sync" in git(f"--git-dir={space_repo(hub_root)}", "log", "-1", "--format=%s", "main")


# ---- the network: git's own protocol behind a flaky proxy ---------------------------------------------------


@pytest.mark.slow
def test_sync_over_git_protocol_survives_faults_and_fails_cleanly_past_the_bound(repo, hub_root, git_daemon):
    LocalHub(root=hub_root).create_repo(repo_id=SPACE, repo_type="space")
    with FlakyProxy(git_daemon, refuse=2) as proxy:
        url = f"git://127.0.0.1:{proxy.port}/"
        logs: list[str] = []
        r = syncer(repo, LocalHub(url=url), logs).sync(env_check=False)
        assert r.commit == head(hub_root) and proxy.refused == 2
        assert sum("retry" in m for m in logs) == 2
        # pushes cut mid-stream once, reads fine: the retried push lands, once
        proxy.set_faults(cut=1, cut_after=120, match=b"git-receive-pack")
        (repo / "src/openllm/model.py").write_text("import torch\nW = 'over the network'\n")
        logs.clear()
        r2 = syncer(repo, LocalHub(url=url), logs).sync(env_check=False)
        assert proxy.cuts == 1 and r2.plan.uploads == ["training/model.py"]
        assert show(hub_root, "main", "training/model.py") == "import torch\nW = 'over the network'\n"
        assert (
            git(f"--git-dir={space_repo(hub_root)}", "rev-list", "--count", "main") == "3"
        )  # initial + 2 syncs: no duplicate
        # more faults than attempts: fails clearly, the remote is unchanged
        before_head = head(hub_root)
        before_tags = git(f"--git-dir={space_repo(hub_root)}", "tag")
        proxy.set_faults(refuse=1000)
        (repo / "src/openllm/model.py").write_text("import torch\nW = 'never lands'\n")
        with pytest.raises(GaveUp, match="still unavailable after 4 attempts"):
            syncer(repo, LocalHub(url=url)).sync(env_check=False)
        proxy.set_faults(cut=1000, cut_after=120, match=b"git-receive-pack")
        with pytest.raises(GaveUp):
            syncer(repo, LocalHub(url=url)).sync(env_check=False)
        assert head(hub_root) == before_head
        assert git(f"--git-dir={space_repo(hub_root)}", "tag") == before_tags
        assert show(hub_root, "main", "training/model.py") == "import torch\nW = 'over the network'\n"


# ---- the whole story, through the command line, on a copy of this repository ------------------------------


@pytest.fixture(scope="session")
def space_venvs(tmp_path_factory) -> Path:
    """One cache of clean environments for the whole test session (made once per requirements.txt)."""
    return tmp_path_factory.mktemp("space-venvs")


def copy_repo(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for rel in ("src/openllm",):
        shutil.copytree(REPO / rel, dest / rel, ignore=ignore)
    for rel in ("space.toml", "pyproject.toml", "docs/app.md", "scripts/upload_training_data.py"):
        if (REPO / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.mark.slow
def test_end_to_end_build_sync_edit_conflict_rollback_flaky_network(tmp_path, hub_root, git_daemon, space_venvs):
    main = copy_repo(tmp_path / "main")
    env = {"OPENLLM_SPACE_VENVS": str(space_venvs), "OPENLLM_SYNC_BACKOFF": "0.05", "OPENLLM_SYNC_RETRIES": "4"}
    env["OPENLLM_SPACE_INDEXES"] = "local"  # PyTorch's CPU index is not reachable here: its wheels are local
    common = ["--space", SPACE, "--hub", str(hub_root), "--root", str(main)]

    def cli(*args, check=True):
        return run_cli("space", *args, env=env, check=check)

    # build
    out = tmp_path / "built"
    cli("build", "--out", str(out), "--root", str(main))
    assert (out / "training/model.py").read_bytes() == (main / "src/openllm/model.py").read_bytes()
    assert (out / "HELP.md").read_bytes() == (main / "docs/app.md").read_bytes()
    # first sync, validated in a clean environment made from the Space's requirements.txt
    p = cli("sync", *common)
    assert "`import training` works in the clean environment" in p.stdout
    assert "app.py starts and answers HTTP 200" in p.stdout
    assert "synced: sync-1-" in p.stdout
    original = (main / "src/openllm/model.py").read_text()
    assert show(hub_root, "main", "training/model.py") == original
    # edit a core file: one file goes up
    (main / "src/openllm/model.py").write_text(original + "\n# tuned in main\n")
    before_dry = head(hub_root)
    p = cli("sync", *common, "--dry-run")
    assert "1 to upload, 0 to delete" in p.stdout and "dry run" in p.stdout and head(hub_root) == before_dry
    p = cli("sync", *common, "--no-env-check")
    assert "1 to upload, 0 to delete" in p.stdout and "upload  training/model.py" in p.stdout
    assert "(1 uploaded, 0 deleted)" in p.stdout
    assert show(hub_root, "main", "training/model.py").endswith("# tuned in main\n")
    # a conflicting edit made in the Space with a plain git client
    edit_space(
        hub_root,
        tmp_path / "w",
        {"training/model.py": original + "\n# hot-fixed in the Space\n", "space-only.md": "mine\n"},
    )
    (main / "src/openllm/model.py").write_text(original + "\n# tuned again in main\n")
    p = cli("sync", *common, "--no-env-check", check=False)
    assert p.returncode == 3 and "conflict" in p.stderr and "training/model.py" in p.stderr
    assert show(hub_root, "main", "training/model.py").endswith("# hot-fixed in the Space\n")
    st = cli("status", *common)
    assert "conflicts 1" in st.stdout and "training/model.py" in st.stdout and "space-only 1 kept" in st.stdout
    # roll back to the state of the first sync (a new commit; history kept)
    p = cli("rollback", *common, "--to", "1")
    assert "rolled back" in p.stdout
    assert show(hub_root, "main", "training/model.py") == original
    # the network is flaky: two connections refused, then the push cut once; the sync gets through
    with FlakyProxy(git_daemon, refuse=2) as proxy:
        url = f"git://127.0.0.1:{proxy.port}/"
        net = ["--space", SPACE, "--hub", url, "--root", str(main)]
        first_reads = run_cli("space", "status", *net, env=env)
        assert "pending   1 to upload" in first_reads.stdout and proxy.refused == 2
        proxy.set_faults(cut=1, cut_after=120, match=b"git-receive-pack")
        p = cli("sync", *net, "--no-env-check")
        assert "retry 1/3" in p.stdout and proxy.cuts == 1
        assert show(hub_root, "main", "training/model.py").endswith("# tuned again in main\n")
        # past the bound: a clear failure, and the Space exactly as it was
        before = head(hub_root)
        (main / "src/openllm/model.py").write_text(original + "\n# never lands\n")
        proxy.set_faults(refuse=1000)
        p = cli("sync", *net, "--no-env-check", check=False)
        assert p.returncode == 2 and "still unavailable after 4 attempts" in p.stderr
        assert "Traceback" not in p.stderr
        assert head(hub_root) == before


# ---- kill -9 at any point (issue 24) ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sync_killed_between_its_push_and_its_record_is_recognised_as_ours(repo, hub_root, tmp_path):
    """kill -9 of `space sync` after its commit landed, before the tag and the state file: the next sync knows
    the Space's head is its own push (no false "edited in the Space" conflict) and records it."""
    import signal
    import sys

    hub = LocalHub(root=hub_root)
    first = syncer(repo, hub).sync(env_check=False)
    landed = tmp_path / "landed"
    hook = space_repo(hub_root) / "hooks" / "post-receive"
    # the commit is in the Space; the pusher is still waiting for git when it dies
    hook.write_text(f"#!/bin/sh\ntouch '{landed}'\nsleep 60\n")
    hook.chmod(0o755)
    (repo / "src/openllm/model.py").write_text("import torch\nW = 'v2'\n")
    cmd = [sys.executable, "-m", "openllm", "space", "sync", "--space", SPACE, "--hub", str(hub_root)]
    proc = subprocess.Popen([*cmd, "--no-env-check", "--root", str(repo)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not landed.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    hook.unlink()
    pushed = head(hub_root)
    assert pushed != first.commit and show(hub_root, "main", "training/model.py") == "import torch\nW = 'v2'\n"
    tags_before = hub.list_refs(repo_id=SPACE, repo_type="space").tags
    dry = syncer(repo, hub).sync(env_check=False, dry_run=True)  # sees it as ours, writes nothing
    assert not dry.plan.conflicts and dry.plan.last.commit == pushed
    assert hub.list_refs(repo_id=SPACE, repo_type="space").tags == tags_before
    logs: list[str] = []
    again = syncer(repo, hub, logs).sync(env_check=False)  # no SyncConflict
    assert not again.plan.conflicts and not again.plan.changed, again.plan.describe()
    assert again.plan.last.commit == pushed and head(hub_root) == pushed
    assert hub.list_refs(repo_id=SPACE, repo_type="space").tags[again.plan.last.tag] == pushed
    (repo / "src/openllm/model.py").write_text("import torch\nW = 'v3'\n")
    third = syncer(repo, hub).sync(env_check=False)
    assert third.record.n == again.plan.last.n + 1 and head(hub_root) == third.commit


# ---- the Hugging Face side: a contract at huggingface_hub's HfApi boundary --------------------------------


class SpaceApi:
    """A stand-in for huggingface_hub.HfApi that keeps one Space's commits in memory and records each call (no
    network): enough of the API for a sync, answering in HfApi's shapes."""

    def __init__(self):
        import types

        self.ns = types.SimpleNamespace
        self.calls: list[tuple[str, dict]] = []
        self.commits: list[tuple[str, dict[str, bytes]]] = []
        self.tags: dict[str, str] = {}

    def _files(self, revision):
        oid = self.tags.get(revision, revision) if revision else self.commits[-1][0]
        return next(files for c, files in self.commits if c == oid)

    def whoami(self, token=None):
        self.calls.append(("whoami", {"token": token}))
        return {"name": "lemms"}

    def repo_exists(self, repo_id, **kw):
        return bool(self.commits)

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", kw))
        self.commits.append(("0" * 40, {".gitattributes": b"*.bin filter=lfs\n"}))
        return f"https://huggingface.co/spaces/{repo_id}"

    def list_repo_refs(self, repo_id, **kw):
        ref = lambda n, c: self.ns(name=n, ref=f"refs/x/{n}", target_commit=c)
        return self.ns(branches=[ref("main", self.commits[-1][0])], tags=[ref(t, c) for t, c in self.tags.items()])

    def list_repo_files(self, repo_id, revision=None, **kw):
        return sorted(self._files(revision))

    def list_repo_commits(self, repo_id, revision=None, **kw):
        return [self.ns(commit_id=c, title=c, message="", authors=[], created_at=None) for c, _ in self.commits[::-1]]

    def snapshot_download(self, repo_id, revision=None, local_dir=None, allow_patterns=None, **kw):
        for path, data in self._files(revision).items():
            if allow_patterns is None or path in allow_patterns:
                (Path(local_dir) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / path).write_bytes(data)
        return str(local_dir)

    def upload_folder(self, **kw):
        import fnmatch
        import hashlib

        self.calls.append(("upload_folder", kw))
        assert kw["parent_commit"] in (None, self.commits[-1][0])  # made on the head the plan saw
        files = dict(self.commits[-1][1])
        folder = Path(kw["folder_path"])
        uploads = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        for pat in kw.get("delete_patterns") or []:  # huggingface_hub: fnmatch, never a file uploaded now
            files = {p: d for p, d in files.items() if p in uploads or not fnmatch.fnmatch(p, pat)}
        files.update(uploads)
        self.uploaded = sorted(uploads)
        oid = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.commits.append((oid, files))
        return self.ns(oid=oid)

    def create_tag(self, repo_id, tag, revision=None, **kw):
        self.tags[tag] = revision


def test_the_hf_side_uploads_the_changed_files_over_http_and_mirrors_deletions(tmp_path, monkeypatch):
    from openllm.hub.hf import HfHub

    monkeypatch.setenv("OPENLLM_CACHE", str(tmp_path / "cache"))
    repo = make_repo(tmp_path / "main")
    (repo / "src/openllm/odd[1].py").write_text("X = 1\n")  # a name fnmatch would read as a pattern
    api = SpaceApi()
    hub = HfHub(token="hf_deploytoken00000000000000", api=api)
    first = syncer(repo, hub).sync(env_check=False)
    up = [kw for name, kw in api.calls if name == "upload_folder"]
    assert len(up) == 1 and up[0]["repo_type"] == "space" and up[0]["token"] == "hf_deploytoken00000000000000"
    assert set(api.commits[-1][1]) == set(first.plan.build.files) | {".gitattributes"}  # the Space-only file kept
    # a change and a deletion: only the changed file is uploaded; the removed ones by an exact delete pattern
    (repo / "src/openllm/model.py").write_text("import torch\nfrom .config import X\n\nW = X + 2\n")
    (repo / "src/openllm/odd[1].py").unlink()
    (repo / "src/openllm/odd1.py").write_text("Y = 1\n")
    second = syncer(repo, hub).sync(env_check=False)
    kw = [kw for name, kw in api.calls if name == "upload_folder"][-1]
    assert second.plan.uploads == ["training/model.py", "training/odd1.py"]
    assert kw["delete_patterns"] == ["training/odd[[]1].py"]  # escaped: deletes that file, not odd1.py
    assert api.uploaded == ["training/model.py", "training/odd1.py"]  # the folder held the changed files only
    files = api.commits[-1][1]
    assert "training/odd[1].py" not in files and files["training/odd1.py"] == b"Y = 1\n"
    assert files["training/model.py"].endswith(b"W = X + 2\n") and ".gitattributes" in files
    assert api.tags and all(t.startswith("sync-") for t in api.tags)
