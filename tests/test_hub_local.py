"""LocalHub against real git: bare repositories on disk, and the same code over git:// (git daemon) and
http:// (git http-backend behind a small CGI bridge), all on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from openllm.hub import (
    AuthError,
    CommitOperationAdd,
    CommitOperationDelete,
    ConflictError,
    EntryNotFound,
    HubError,
    HubUnavailable,
    InvalidRepoId,
    LocalHub,
    RepositoryExists,
    RepositoryNotFound,
    RevisionExists,
    RevisionNotFound,
    UnsupportedOperation,
    get_hub,
    parse_model_ref,
    step_of_version,
    validate_repo_id,
    version_for_step,
)
from openllm.hub.hf import HfHub

REPO = Path(__file__).resolve().parent.parent


def _git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub(tmp_path) -> LocalHub:
    return LocalHub(root=tmp_path / "hub")


@pytest.fixture
def folder(tmp_path) -> Path:
    f = tmp_path / "upload"
    (f / "sub").mkdir(parents=True)
    (f / "a.txt").write_text("hello\r\nworld\n")  # CRLF must survive byte for byte
    (f / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40)
    return f


# --- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, why",
    [
        ("", "OWNER/NAME"),
        ("alice", "exactly one '/'"),
        ("a/b/c", "exactly one '/'"),
        ("../etc", "'..'"),
        ("alice/..", "'..'"),
        ("/abs/path", "absolute"),
        ("~/x", "absolute"),
        ("C:/x", "absolute"),
        ("alice/na\nme", "control"),
        ("alice/na\x00me", "control"),
        ("a\\b", "backslash"),
        ("alice/-x", "name"),
        ("alice/x.git", "name"),
        ("alice/a--b", "name"),
        ("al ice/x", "owner"),
        (None, "OWNER/NAME"),
    ],
)
def test_bad_repo_ids_are_refused_with_a_clear_message(hub, bad, why):
    with pytest.raises(InvalidRepoId) as err:
        validate_repo_id(bad)
    assert why in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InvalidRepoId):  # and before any I/O, by every entry point
        hub.create_repo(repo_id=bad)
    assert not (hub.root / "models").exists()


def test_good_repo_ids_and_model_refs():
    for good in ("alice/tiny", "Org-1/model_v2.5", "a/b"):
        assert validate_repo_id(good) == good
    assert parse_model_ref("alice/tiny@7k") == ("alice/tiny", "7k")
    assert parse_model_ref("alice/tiny") == ("alice/tiny", None)
    for bad in ("alice/tiny@", "alice/tiny@../x", "alice/tiny@-rf", "../x@1k"):
        with pytest.raises(InvalidRepoId):
            parse_model_ref(bad)


def test_step_versions():
    assert [version_for_step(s) for s in (0, 999, 1000, 1500, 7000, 12345, 250000)] == [
        "0",
        "999",
        "1k",
        "1.5k",
        "7k",
        "12.345k",
        "250k",
    ]
    assert [step_of_version(v) for v in ("7k", "1.5k", "999", "v2", "1.0005k")] == [7000, 1500, 999, None, None]


def test_get_hub_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENLLM_HUB", str(tmp_path / "envhub"))
    assert get_hub(None).root == tmp_path / "envhub"
    assert get_hub("local").root == tmp_path / "envhub"
    assert get_hub(str(tmp_path / "other")).root == tmp_path / "other"
    assert get_hub("git://127.0.0.1:9/").url == "git://127.0.0.1:9/"
    assert isinstance(get_hub("hf"), HfHub)
    h = LocalHub(root=tmp_path)
    assert get_hub(h) is h
    monkeypatch.delenv("OPENLLM_HUB")
    monkeypatch.delenv("OPENLLM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert LocalHub().root == tmp_path / "home" / ".cache" / "openllm" / "hub"


# --- repositories, commits, downloads ---------------------------------------------------------------------


def test_upload_list_download_roundtrip(hub, folder, tmp_path):
    url = hub.create_repo(repo_id="alice/m")
    assert Path(url) == hub.root / "models" / "alice" / "m.git" and (Path(url) / "HEAD").is_file()
    with pytest.raises(RepositoryExists):
        hub.create_repo(repo_id="alice/m")
    assert hub.create_repo(repo_id="alice/m", exist_ok=True) == url
    c1 = hub.upload_folder(repo_id="alice/m", folder_path=folder, commit_message="first upload")
    assert len(c1) == 40
    assert hub.list_files(repo_id="alice/m") == ["a.txt", "sub/b.bin"]
    commits = hub.list_commits(repo_id="alice/m")
    assert [c.title for c in commits] == ["first upload", "initial commit"] and commits[0].commit_id == c1
    assert hub.list_refs(repo_id="alice/m").branches == {"main": c1}
    # nothing changed: no empty commit, the head comes back
    assert hub.upload_folder(repo_id="alice/m", folder_path=folder) == c1
    out = hub.download(repo_id="alice/m", local_dir=tmp_path / "dl")
    assert (out / "a.txt").read_bytes() == b"hello\r\nworld\n"
    assert (out / "sub" / "b.bin").read_bytes() == (folder / "sub" / "b.bin").read_bytes()
    cached = hub.download(repo_id="alice/m", revision=c1[:10])
    assert cached.name == c1 and str(cached).startswith(os.environ["OPENLLM_CACHE"])
    assert hub.download(repo_id="alice/m") == cached  # cached by commit
    assert hub.list_repos() == ["alice/m"] and hub.list_repos(repo_type="dataset") == []
    assert hub.repo_exists(repo_id="alice/m") and not hub.repo_exists(repo_id="alice/m", repo_type="space")


@pytest.mark.slow
def test_create_commit_operations_and_parent_commit(hub, folder):
    hub.create_repo(repo_id="alice/m")
    c1 = hub.upload_folder(repo_id="alice/m", folder_path=folder)
    c2 = hub.create_commit(
        repo_id="alice/m",
        commit_message="edit",
        parent_commit=c1,
        operations=[CommitOperationAdd("new/x.txt", b"x"), CommitOperationDelete("a.txt")],
    )
    assert hub.list_files(repo_id="alice/m") == ["new/x.txt", "sub/b.bin"]
    with pytest.raises(ConflictError, match="moved"):  # the head is c2 now
        hub.create_commit(
            repo_id="alice/m", commit_message="stale", parent_commit=c1, operations=[CommitOperationAdd("y", b"y")]
        )
    assert hub.list_refs(repo_id="alice/m").branches["main"] == c2
    hub.create_commit(
        repo_id="alice/m",
        commit_message="folder delete",
        operations=[CommitOperationDelete("sub/"), CommitOperationAdd("sub", b"a file now")],
    )
    assert hub.list_files(repo_id="alice/m") == ["new/x.txt", "sub"]
    with pytest.raises(EntryNotFound):
        hub.create_commit(repo_id="alice/m", commit_message="m", operations=[CommitOperationDelete("nope")])
    with pytest.raises(InvalidRepoId):
        CommitOperationAdd("../escape", b"")
    with pytest.raises(InvalidRepoId):
        CommitOperationAdd(".git/config", b"")


@pytest.mark.slow
def test_upload_folder_delete_patterns(hub, folder, tmp_path):
    hub.create_repo(repo_id="alice/d", repo_type="dataset")
    hub.create_commit(
        repo_id="alice/d",
        repo_type="dataset",
        commit_message="old",
        operations=[CommitOperationAdd("old.txt", b"1"), CommitOperationAdd("keep.md", b"2")],
    )
    hub.upload_folder(repo_id="alice/d", repo_type="dataset", folder_path=folder, delete_patterns="*.txt")
    assert hub.list_files(repo_id="alice/d", repo_type="dataset") == ["a.txt", "keep.md", "sub/b.bin"]
    hub.upload_folder(repo_id="alice/d", repo_type="dataset", folder_path=folder / "sub", delete_patterns=["*"])
    assert hub.list_files(repo_id="alice/d", repo_type="dataset") == ["b.bin"]


@pytest.mark.slow
def test_tags_are_immutable_and_revert_restores_a_tree(hub, folder):
    hub.create_repo(repo_id="alice/m")
    c1 = hub.upload_folder(repo_id="alice/m", folder_path=folder)
    hub.create_tag(repo_id="alice/m", tag="1k", message="first version")
    hub.create_tag(repo_id="alice/m", tag="1k", revision=c1)  # a retried call: same tag, same commit
    c2 = hub.create_commit(repo_id="alice/m", commit_message="break", operations=[CommitOperationDelete("a.txt")])
    with pytest.raises(RevisionExists, match="immutable"):  # the version cannot move to another commit
        hub.create_tag(repo_id="alice/m", tag="1k")
    hub.create_tag(repo_id="alice/m", tag="1k", exist_ok=True)
    hub.create_tag(repo_id="alice/m", tag="2k", revision=c2)
    assert hub.list_refs(repo_id="alice/m").tags == {"1k": c1, "2k": c2}
    assert _git("--git-dir", str(hub.root / "models/alice/m.git"), "cat-file", "-t", "1k").strip() == "tag"
    c3 = hub.revert(repo_id="alice/m", to_revision="1k")
    assert c3 not in (c1, c2)
    assert hub.list_files(repo_id="alice/m") == ["a.txt", "sub/b.bin"]
    assert [c.commit_id for c in hub.list_commits(repo_id="alice/m")][:3] == [c3, c2, c1]  # history kept
    assert "Revert to 1k" in hub.list_commits(repo_id="alice/m")[0].title
    hub.delete_tag(repo_id="alice/m", tag="2k")
    assert set(hub.list_refs(repo_id="alice/m").tags) == {"1k"}
    with pytest.raises(RevisionNotFound):
        hub.delete_tag(repo_id="alice/m", tag="2k")


def test_missing_repo_and_revision_give_clear_errors(hub, folder):
    with pytest.raises(RepositoryNotFound, match="no model repo 'alice/nope'"):
        hub.list_files(repo_id="alice/nope")
    with pytest.raises(RepositoryNotFound):
        hub.upload_folder(repo_id="alice/nope", folder_path=folder)
    hub.create_repo(repo_id="alice/m")
    hub.upload_folder(repo_id="alice/m", folder_path=folder)
    hub.create_tag(repo_id="alice/m", tag="1k")
    with pytest.raises(RevisionNotFound, match=r"no revision '9k'; versions: 1k"):
        hub.download(repo_id="alice/m", revision="9k")
    with pytest.raises(InvalidRepoId):
        hub.download(repo_id="alice/m", revision="--upload-pack=evil")


def test_download_verifies_checksums(hub, tmp_path):
    hub.create_repo(repo_id="alice/m")
    hub.create_commit(repo_id="alice/m", commit_message="m", operations=[CommitOperationAdd("w.bin", b"weights!")])
    oid = _git("--git-dir", str(hub.root / "models/alice/m.git"), "rev-parse", "main:w.bin").strip()
    loose = hub.root / "models/alice/m.git/objects" / oid[:2] / oid[2:]
    assert loose.is_file()  # small pushes are kept as loose objects
    os.chmod(loose, 0o644)
    loose.write_bytes(zlib.compress(b"blob 8\x00tampered"))  # same size, other bytes
    with pytest.raises(HubError, match="checksum mismatch for w.bin"):
        hub.download(repo_id="alice/m", local_dir=tmp_path / "dl")


@pytest.mark.slow
def test_git_clone_works_for_every_repo_type(hub, folder, tmp_path):
    for repo_type in ("model", "dataset", "space"):
        hub.create_repo(repo_id="alice/r", repo_type=repo_type)
        hub.upload_folder(repo_id="alice/r", repo_type=repo_type, folder_path=folder)
        hub.create_tag(repo_id="alice/r", repo_type=repo_type, tag="1k")
        dest = tmp_path / f"clone-{repo_type}"
        _git("clone", "--quiet", hub.repo_location(repo_id="alice/r", repo_type=repo_type), str(dest))
        assert (dest / "sub" / "b.bin").read_bytes() == (folder / "sub" / "b.bin").read_bytes()
        assert _git("tag", cwd=dest).split() == ["1k"]
        assert _git("fsck", "--strict", cwd=dest) == ""
    assert sorted(p.name for p in hub.root.iterdir()) == ["datasets", "models", "spaces"]


# --- concurrency and interruption -------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from openllm.hub import LocalHub, CommitOperationAdd
    root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    hub = LocalHub(root=root)
    for i in range(n):
        hub.create_commit(repo_id="alice/race", commit_message=f"{name} {i}",
                          operations=[CommitOperationAdd(f"{name}/{i}.txt", f"{name} {i}".encode())])
    hub.create_tag(repo_id="alice/race", tag=f"{name}-done")
""")


@pytest.mark.slow
def test_two_processes_pushing_at_once_leave_the_repo_consistent(hub):
    hub.create_repo(repo_id="alice/race")
    n = 6
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(hub.root), name, str(n)], stderr=subprocess.PIPE, text=True
        )
        for name in ("p1", "p2")
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    files = hub.list_files(repo_id="alice/race")
    assert files == sorted(f"{name}/{i}.txt" for name in ("p1", "p2") for i in range(n))
    commits = hub.list_commits(repo_id="alice/race")
    titles = [c.title for c in commits]
    assert sorted(titles[:-1]) == sorted(f"{name} {i}" for name in ("p1", "p2") for i in range(n))
    assert all(len(c.parents) == 1 for c in commits[:-1])  # one linear history, no lost update
    for name in ("p1", "p2"):  # each process's own commits kept their order
        mine = [t for t in reversed(titles) if t.startswith(name)]
        assert mine == [f"{name} {i}" for i in range(n)]
    assert set(hub.list_refs(repo_id="alice/race").tags) == {"p1-done", "p2-done"}
    assert _git("--git-dir", str(hub.root / "models/alice/race.git"), "fsck", "--strict", "--no-dangling") == ""


@pytest.mark.slow
def test_interrupted_upload_leaves_the_previous_commit(hub, tmp_path):
    hub.create_repo(repo_id="alice/m")
    c1 = hub.create_commit(repo_id="alice/m", commit_message="v1", operations=[CommitOperationAdd("w", b"old")])
    bare = hub.root / "models/alice/m.git"
    marker = tmp_path / "objects-received"
    hook = bare / "hooks" / "pre-receive"  # runs after git received every object, before the ref moves
    hook.write_text(f"#!/bin/sh\ntouch '{marker}'\nsleep 60\n")
    hook.chmod(0o755)
    big = tmp_path / "big"
    big.mkdir()
    (big / "weights.bin").write_bytes(os.urandom(2_000_000))
    code = (
        f"from openllm.hub import LocalHub; LocalHub(root={str(hub.root)!r}).upload_folder("
        f"repo_id='alice/m', folder_path={str(big)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None and time.time() < deadline, "the upload never reached the hub"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the user's Ctrl-C / a crash, mid-push
    proc.wait()
    hook.unlink()
    assert hub.list_refs(repo_id="alice/m").branches["main"] == c1
    assert hub.list_files(repo_id="alice/m") == ["w"]
    assert _git("--git-dir", str(bare), "fsck", "--strict", "--no-dangling") == ""
    c2 = hub.upload_folder(repo_id="alice/m", folder_path=big)  # and the next upload works
    assert hub.list_commits(repo_id="alice/m")[0].parents == [c1] and c2 != c1


# --- the same code over git's own protocols ---------------------------------------------------------------


@pytest.fixture
def daemon(hub):
    port = _free_port()
    hub.root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={hub.root}",
            "--export-all",
            "--enable=receive-pack",
            f"--port={port}",
            "--listen=127.0.0.1",
            str(hub.root),
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 20
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.time() < deadline, "git daemon did not start"
        time.sleep(0.05)
    yield f"git://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_remote_hub_over_git_daemon(hub, daemon, folder, tmp_path):
    hub.create_repo(repo_id="alice/space", repo_type="space")
    remote = LocalHub(url=daemon)
    assert remote.repo_location(repo_id="alice/space", repo_type="space") == daemon + "spaces/alice/space.git"
    assert remote.repo_exists(repo_id="alice/space", repo_type="space")
    assert not remote.repo_exists(repo_id="alice/none", repo_type="space")
    with pytest.raises(UnsupportedOperation):
        remote.create_repo(repo_id="alice/new", repo_type="space")
    kw = dict(repo_id="alice/space", repo_type="space")
    c1 = remote.upload_folder(folder_path=folder, commit_message="sync 1", **kw)
    assert hub.list_refs(**kw).branches["main"] == c1  # it landed in the bare repo behind the daemon
    remote.create_tag(tag="sync-1", message="first sync", **kw)
    c2 = remote.create_commit(
        operations=[CommitOperationDelete("a.txt")], commit_message="sync 2", parent_commit=c1, **kw
    )
    with pytest.raises(ConflictError):
        remote.create_commit(operations=[CommitOperationAdd("z", b"z")], commit_message="stale", parent_commit=c1, **kw)
    assert remote.list_files(**kw) == ["sub/b.bin"]
    assert remote.list_refs(**kw).tags == {"sync-1": c1}
    assert [c.commit_id for c in remote.list_commits(**kw)][:2] == [c2, c1]
    out = remote.download(revision="sync-1", local_dir=tmp_path / "dl", **kw)
    assert (out / "a.txt").read_bytes() == (folder / "a.txt").read_bytes()
    c3 = remote.revert(to_revision="sync-1", **kw)
    assert hub.list_files(**kw) == ["a.txt", "sub/b.bin"] and hub.list_refs(**kw).branches["main"] == c3
    with pytest.raises(RepositoryNotFound):
        remote.list_files(repo_id="alice/none", repo_type="space")
    with pytest.raises(RevisionNotFound):
        remote.download(revision="sync-9", **kw)


def test_unreachable_remote_is_hub_unavailable():
    port = _free_port()  # nothing listens there
    for url in (f"git://127.0.0.1:{port}/", f"http://127.0.0.1:{port}/hub/"):
        remote = LocalHub(url=url)
        with pytest.raises(HubUnavailable, match="unavailable"):
            remote.list_refs(repo_id="alice/space", repo_type="space")
        with pytest.raises(HubUnavailable):
            remote.create_commit(
                repo_id="alice/space", repo_type="space", commit_message="m", operations=[CommitOperationAdd("f", b"1")]
            )


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_connection_reset_is_hub_unavailable(scheme):
    import struct

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.1)
    stop = threading.Event()

    def reset_everything():  # accept, then reset: what a flaky proxy does
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    # the thread must be gone before the socket closes, or it would accept on a reused descriptor
    thread = threading.Thread(target=reset_everything, daemon=True)
    thread.start()
    try:
        remote = LocalHub(url=f"{scheme}://127.0.0.1:{server.getsockname()[1]}/", timeout=30)
        with pytest.raises(HubUnavailable, match="unavailable"):
            remote.create_commit(
                repo_id="alice/space", repo_type="space", commit_message="m", operations=[CommitOperationAdd("f", b"1")]
            )
        with pytest.raises(HubUnavailable):
            remote.download(repo_id="alice/space", repo_type="space")
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()


@pytest.mark.slow
def test_stalled_remote_times_out_as_hub_unavailable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)  # accepts connections (kernel backlog) and never answers
    try:
        remote = LocalHub(url=f"git://127.0.0.1:{server.getsockname()[1]}/", timeout=2)
        t0 = time.time()
        with pytest.raises(HubUnavailable, match="did not answer"):
            remote.list_refs(repo_id="alice/space", repo_type="space")
        assert time.time() - t0 < 20
    finally:
        server.close()


class _GitHttp(BaseHTTPRequestHandler):
    """A CGI bridge to ``git http-backend`` (smart HTTP), with optional Basic auth."""

    root: Path
    auth: str | None = None

    def log_message(self, *args):  # quiet
        pass

    def _handle(self):
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(self.auth.encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="hub"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "tester",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _handle


@pytest.fixture
def http_hub(hub):
    hub.root.mkdir(parents=True, exist_ok=True)
    handler = type("H", (_GitHttp,), {"root": hub.root, "auth": "user:secret"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_remote_hub_over_http_with_auth(hub, http_hub, folder, tmp_path):
    hub.create_repo(repo_id="alice/data", repo_type="dataset")
    kw = dict(repo_id="alice/data", repo_type="dataset")
    anonymous = LocalHub(url=f"http://127.0.0.1:{http_hub}/")
    with pytest.raises(AuthError, match="credentials"):
        anonymous.list_refs(**kw)
    with pytest.raises(AuthError):
        anonymous.upload_folder(folder_path=folder, **kw)
    wrong = LocalHub(url=f"http://user:wrong@127.0.0.1:{http_hub}/")
    with pytest.raises(AuthError) as err:
        wrong.upload_folder(folder_path=folder, **kw)
    assert "wrong" not in str(err.value)  # no password in messages
    assert hub.list_files(**kw) == []  # nothing was uploaded
    remote = LocalHub(url=f"http://user:secret@127.0.0.1:{http_hub}/")
    c1 = remote.upload_folder(folder_path=folder, commit_message="over http", **kw)
    remote.create_tag(tag="v1", **kw)
    assert hub.list_refs(**kw).branches["main"] == c1 and hub.list_refs(**kw).tags == {"v1": c1}
    out = remote.download(revision="v1", local_dir=tmp_path / "dl", **kw)
    assert (out / "sub" / "b.bin").read_bytes() == (folder / "sub" / "b.bin").read_bytes()
    with pytest.raises(RepositoryNotFound):
        remote.list_refs(repo_id="alice/none", repo_type="dataset")


# --- what the hub refuses, and versions as one atomic update (issue 15) -----------------------------------


def _refs(bare: Path) -> str:
    """Every branch and tag of a bare repository with the object it names: the state a write must keep or move."""
    return _git("--git-dir", str(bare), "for-each-ref", "--format=%(refname) %(objectname)")


def _fsck(bare: Path) -> str:
    return _git("--git-dir", str(bare), "fsck", "--strict", "--no-dangling")


@pytest.mark.parametrize(
    "bad, why",
    [
        ("HEAD", "reserved by git"),
        ("head", "reserved by git"),
        ("main", "reserved by git"),
        ("Master", "reserved by git"),
        ("FETCH_HEAD", "reserved by git"),
        ("ORIG_HEAD", "reserved by git"),
        ("-rf", "must not start with '-'"),
        ("--force", "must not start with '-'"),
        ("refs/tags/x", "'/'"),
        ("refs/heads/main", "'/'"),
        ("@", "letters, digits"),
        ("a@{1}", "letters, digits"),
        ("v 1", "letters, digits"),
        ("x~1", "letters, digits"),
        ("a:b", "letters, digits"),
        ("a..b", "'..'"),
        (".hidden", "start or end with '.'"),
        ("v1.", "start or end with '.'"),
        ("v1.lock", "'.lock'"),
        ("", "letters, digits"),
        ("x" * 201, "200"),
        ("v\n1", "control"),
    ],
)
def test_reserved_and_malformed_version_names_are_refused_before_any_io(hub, folder, bad, why):
    from openllm.hub import validate_tag

    with pytest.raises(InvalidRepoId) as err:
        validate_tag(bad)
    assert why in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InvalidRepoId):
        hub.create_tag(repo_id="alice/m", tag=bad)  # no such repo: the name is refused first
    with pytest.raises(InvalidRepoId):
        hub.upload_version(repo_id="alice/m", folder_path=folder, tag=bad)
    assert not hub.root.exists()


def test_version_names_agree_with_git_check_ref_format():
    """Every name validate_tag accepts, git accepts as a tag; the reserved ones git accepts but are refused."""
    from openllm.hub import validate_tag, validate_version

    names = [
        "7k",
        "1.5k",
        "v2",
        "v1.0-rc_1",
        "_x",
        "sync-3-0123456789ab",
        "ahead",
        "a..b",
        "a.lock",
        ".a",
        "a.",
        "@",
        "a b",
        "x~1",
        "x^",
        "x:y",
        "x?",
        "x*",
        "x[",
        "x\\y",
        "HEAD",
        "main",
        "-x",
    ]
    for name in names:
        git_ok = subprocess.run(["git", "check-ref-format", f"refs/tags/{name}"]).returncode == 0
        try:
            validate_tag(name)
            ours = True
        except InvalidRepoId:
            ours = False
        assert not ours or git_ok, f"{name!r} is accepted but git refuses it"
    for reserved in ("HEAD", "main", "-x", "@"):
        assert subprocess.run(["git", "check-ref-format", f"refs/tags/{reserved}"]).returncode == 0
    # the Space sync's tags are tags the hub takes, but no user version may pass for one
    assert validate_tag("sync-3-0123456789ab") == "sync-3-0123456789ab"
    with pytest.raises(InvalidRepoId, match="reserved for the Space sync"):
        validate_version("sync-3-0123456789ab")


@pytest.mark.parametrize(
    "spec", ["ftp://x", "FTP://host/x", "hf://alice", "s3://bucket/hub", "git+ssh://h/x", "gopher://h"]
)
def test_unknown_hub_url_schemes_are_refused_and_nothing_is_created(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    scheme = spec.split("://")[0]
    with pytest.raises(HubError) as err:
        get_hub(spec)
    msg = str(err.value)
    assert f"'{scheme}://'" in msg and "file://, git://, http://, https://, ssh://" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []


def test_accepted_hub_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in (
        "file:///srv/hub",
        "git://127.0.0.1/",
        "http://h/base",
        "https://h/base",
        "ssh://git@h/srv/hub",
        "HTTPS://h/base",
    ):
        assert get_hub(url).url.lower() == url.lower().rstrip("/") + "/"
    assert get_hub("relative/folder").root == tmp_path / "relative" / "folder"
    assert list(tmp_path.iterdir()) == []  # a hub is a spec until something is written


def test_uploads_never_follow_links_out_of_the_folder(hub, folder, tmp_path):
    from openllm.hub import UnsafeUpload, folder_files

    hub.create_repo(repo_id="alice/m")
    c1 = hub.upload_folder(repo_id="alice/m", folder_path=folder)
    bare = hub.root / "models/alice/m.git"
    before = _refs(bare)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the hub")
    cases = {
        "passwd": ("/etc/passwd", "outside the folder"),
        "secret": (str(secret), "outside the folder"),
        "up": ("../../secret.txt", "outside the folder"),
        "dangling": ("nowhere.txt", "dangling"),
        "linked-dir": (str(tmp_path), "a folder"),
    }
    for name, (target, why) in cases.items():
        link = folder / "sub" / name
        link.symlink_to(target)
        for call in (
            lambda: hub.upload_folder(repo_id="alice/m", folder_path=folder),
            lambda: hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v1"),
        ):
            with pytest.raises(UnsafeUpload) as err:
                call()
            assert f"sub/{name}" in str(err.value) and why in str(err.value) and "\n" not in str(err.value)
        link.unlink()
        assert _refs(bare) == before
    # a link to a file inside the folder is uploaded as that file's content (a regular file in the repo)
    (folder / "sub" / "alias.txt").symlink_to("../a.txt")
    assert [rel for rel, _ in folder_files(folder)] == ["a.txt", "sub/alias.txt", "sub/b.bin"]
    c2 = hub.upload_folder(repo_id="alice/m", folder_path=folder)
    assert c2 != c1
    mode = _git("--git-dir", str(bare), "ls-tree", c2, "sub/alias.txt").split()[0]
    assert mode == "100644"
    out = hub.download(repo_id="alice/m", local_dir=tmp_path / "dl")
    assert (out / "sub" / "alias.txt").read_bytes() == b"hello\r\nworld\n" and not (out / "sub/alias.txt").is_symlink()
    assert _fsck(bare) == ""


@pytest.mark.slow
def test_upload_version_is_all_or_nothing(hub, folder, tmp_path):
    hub.create_repo(repo_id="alice/m")
    bare = hub.root / "models/alice/m.git"
    c1 = hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v1", tag_message="first")
    assert hub.list_refs(repo_id="alice/m").branches["main"] == c1 == hub.list_refs(repo_id="alice/m").tags["v1"]
    assert hub.tag_info(repo_id="alice/m")["v1"]["message"] == "first"
    (folder / "a.txt").write_text("changed")
    before = _refs(bare)
    with pytest.raises(RevisionExists, match="already has version 'v1'; versions are immutable") as err:
        hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v1")
    assert "--force" not in str(err.value)  # the transport has no flags to suggest
    assert _refs(bare) == before
    # the hub refuses the tag (a server rule): the commit must not land without it
    hook = bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nif grep -q ' refs/tags/'; then echo 'tags are frozen' >&2; exit 1; fi\n")
    hook.chmod(0o755)
    with pytest.raises(HubError, match="tags are frozen"):
        hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v2")
    assert _refs(bare) == before
    hook.unlink()
    c2 = hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v2")
    assert hub.list_commits(repo_id="alice/m")[0].parents == [c1]
    # replacing a version moves its tag to the new commit, in the same push as the commit
    (folder / "a.txt").write_text("changed again")
    c3 = hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v1", replace_tag=True)
    refs = hub.list_refs(repo_id="alice/m")
    assert refs.branches["main"] == c3 and refs.tags == {"v1": c3, "v2": c2}
    # the same tree again as a new version: no empty commit, the version names the head
    assert hub.upload_version(repo_id="alice/m", folder_path=folder, tag="v3") == c3
    assert hub.list_refs(repo_id="alice/m").tags["v3"] == c3
    assert _fsck(bare) == ""


def test_delete_tag_works_from_a_directory_outside_any_git_repository(hub, folder, tmp_path, monkeypatch):
    hub.create_repo(repo_id="alice/m")
    hub.upload_folder(repo_id="alice/m", folder_path=folder)
    hub.create_tag(repo_id="alice/m", tag="v1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert subprocess.run(["git", "rev-parse", "--git-dir"], cwd=elsewhere, capture_output=True).returncode != 0
    monkeypatch.chdir(elsewhere)
    hub.delete_tag(repo_id="alice/m", tag="v1")
    assert hub.list_refs(repo_id="alice/m").tags == {}


@pytest.mark.slow
def test_upload_version_over_http_is_atomic_too(hub, http_hub, folder):
    hub.create_repo(repo_id="alice/m")
    bare = hub.root / "models/alice/m.git"
    remote = LocalHub(url=f"http://user:secret@127.0.0.1:{http_hub}/")
    c1 = remote.upload_version(repo_id="alice/m", folder_path=folder, tag="v1")
    assert hub.list_refs(repo_id="alice/m").tags == {"v1": c1}
    (folder / "a.txt").write_text("changed")
    before = _refs(bare)
    with pytest.raises(RevisionExists):
        remote.upload_version(repo_id="alice/m", folder_path=folder, tag="v1")
    assert _refs(bare) == before
    c2 = remote.upload_version(repo_id="alice/m", folder_path=folder, tag="v1", replace_tag=True)
    assert hub.list_refs(repo_id="alice/m").tags == {"v1": c2} and hub.list_commits(repo_id="alice/m")[0].parents == [
        c1
    ]
    remote.delete_tag(repo_id="alice/m", tag="v1")
    assert hub.list_refs(repo_id="alice/m").tags == {}
    assert _fsck(bare) == ""


# --- secrets (issue 24) ---------------------------------------------------------------------------------------


def test_a_token_in_a_hub_url_never_reaches_git_errors():
    """git words some failures with the URL's credentials in them ("unable to look up user:TOKEN@host"): the
    message, the kept stderr and the CLI's line carry no token."""
    port = _free_port()
    remote = LocalHub(url=f"git://alice:S3cretT0ken@127.0.0.1:{port}/")
    with pytest.raises(HubError) as err:
        remote.list_refs(repo_id="alice/space", repo_type="space")
    assert "S3cretT0ken" not in str(err.value)
    assert "S3cretT0ken" not in getattr(err.value, "stderr", "")
    assert "S3cretT0ken" not in repr(remote)
    url = f"git://alice:S3cretT0ken@127.0.0.1:{port}/"
    proc = subprocess.run(
        [sys.executable, "-m", "openllm", "hub", "versions", "alice/m", "--hub", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert "S3cretT0ken" not in proc.stderr + proc.stdout


def test_a_named_hub_folder_is_a_hub_or_a_new_one_in_an_existing_folder(tmp_path):
    """--hub PATH never creates a chain of folders, nor repositories inside a folder of other things."""
    with pytest.raises(HubError, match="does not exist"):
        LocalHub(root=tmp_path / "missing" / "hub").create_repo(repo_id="alice/m")
    assert not (tmp_path / "missing").exists()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("mine")
    with pytest.raises(HubError, match="not a hub"):
        LocalHub(root=docs).create_repo(repo_id="alice/m")
    assert sorted(p.name for p in docs.iterdir()) == ["notes.txt"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(HubError, match="is a file"):
        LocalHub(root=tmp_path / "a-file").create_repo(repo_id="alice/m")
    new = LocalHub(root=tmp_path / "new-hub")  # a new hub in an existing folder: created
    new.create_repo(repo_id="alice/m")
    assert new.list_repos() == ["alice/m"]
