"""CONTRACT TESTS for HfHub, the thin adapter over huggingface_hub.HfApi.

These tests only check which HfApi calls the adapter makes, with which arguments, and how it maps
huggingface_hub's errors to ours. They use a recording stand-in for HfApi and never touch the network; the
behaviour above the interface (push, versions, pull, cards) is tested against the LocalHub."""

from __future__ import annotations

import importlib
import types
from datetime import datetime, timezone

import huggingface_hub
import pytest
from huggingface_hub import errors as hf_errors

from openllm.hub import (
    AuthError,
    CommitOperationAdd,
    CommitOperationDelete,
    ConflictError,
    HubError,
    HubUnavailable,
    InvalidRepoId,
    RepositoryNotFound,
    RevisionExists,
    RevisionNotFound,
)
from openllm.hub.hf import HfHub


def _http_error(cls, status: int):
    httpmod = importlib.import_module(hf_errors.Response.__module__)
    response = hf_errors.Response(status, request=httpmod.Request("GET", "https://huggingface.co/api/x"))
    return cls(f"{status} error", response=response)


class RecordingApi:
    """Records every call; answers like HfApi would (shape only)."""

    def __init__(self, *, whoami_error: Exception | None = None, fail: dict | None = None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.whoami_error = whoami_error
        self.fail = fail or {}

    def _rec(self, name, args, kwargs):
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def names(self):
        return [c[0] for c in self.calls]

    def whoami(self, token=None, **kw):
        self._rec("whoami", (), {"token": token, **kw})
        if self.whoami_error:
            raise self.whoami_error
        return {"name": "alice"}

    def create_repo(self, repo_id, **kw):
        self._rec("create_repo", (repo_id,), kw)
        return f"https://huggingface.co/{repo_id}"

    def repo_exists(self, repo_id, **kw):
        self._rec("repo_exists", (repo_id,), kw)
        return True

    def upload_folder(self, **kw):
        self._rec("upload_folder", (), kw)
        return types.SimpleNamespace(oid="a" * 40)

    def create_commit(self, repo_id, operations, **kw):
        self._rec("create_commit", (repo_id, list(operations)), kw)
        return types.SimpleNamespace(oid="b" * 40)

    def create_tag(self, repo_id, **kw):
        self._rec("create_tag", (repo_id,), kw)

    def delete_tag(self, repo_id, **kw):
        self._rec("delete_tag", (repo_id,), kw)

    def list_repo_refs(self, repo_id, **kw):
        self._rec("list_repo_refs", (repo_id,), kw)
        ref = lambda n, c: types.SimpleNamespace(name=n, ref=f"refs/x/{n}", target_commit=c)
        return types.SimpleNamespace(branches=[ref("main", "c" * 40)], tags=[ref("7k", "d" * 40)], converts=[])

    def list_repo_commits(self, repo_id, **kw):
        self._rec("list_repo_commits", (repo_id,), kw)
        return [
            types.SimpleNamespace(
                commit_id="c" * 40,
                title="t",
                message="m",
                authors=["alice"],
                created_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
            )
        ]

    def list_repo_files(self, repo_id, **kw):
        self._rec("list_repo_files", (repo_id,), kw)
        return ["b", "a"]

    def snapshot_download(self, repo_id, **kw):
        self._rec("snapshot_download", (repo_id,), kw)
        return kw.get("local_dir") or "/cache/x"

    def list_models(self, **kw):
        self._rec("list_models", (), kw)
        return [types.SimpleNamespace(id="alice/z"), types.SimpleNamespace(id="alice/a")]

    list_datasets = list_models


def test_contract_missing_token_fails_before_any_upload(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    api = RecordingApi()
    hub = HfHub(api=api)
    with pytest.raises(AuthError, match="HF_TOKEN"):
        hub.upload_folder(repo_id="alice/m", folder_path=tmp_path)
    with pytest.raises(AuthError):
        hub.create_commit(repo_id="alice/m", commit_message="m", operations=[CommitOperationAdd("x", b"1")])
    with pytest.raises(AuthError):
        hub.create_repo(repo_id="alice/m")
    assert api.calls == []  # not even whoami: nothing to ask with


def test_contract_rejected_token_fails_at_whoami_before_any_upload(tmp_path):
    api = RecordingApi(whoami_error=_http_error(hf_errors.HfHubHTTPError, 401))
    hub = HfHub(token="hf_bad", api=api)
    with pytest.raises(AuthError, match="rejected the token"):
        hub.upload_folder(repo_id="alice/m", folder_path=tmp_path)
    assert api.names() == ["whoami"] and api.calls[0][2]["token"] == "hf_bad"


def test_contract_token_comes_from_hf_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    api = RecordingApi()
    HfHub(api=api).upload_folder(repo_id="alice/m", folder_path=tmp_path)
    assert [c[2]["token"] for c in api.calls] == ["hf_env", "hf_env"]


def test_contract_write_calls(tmp_path):
    api = RecordingApi()
    hub = HfHub(token="hf_ok", api=api)
    assert hub.create_repo(repo_id="alice/s", repo_type="space", exist_ok=True) == "https://huggingface.co/alice/s"
    oid = hub.upload_folder(
        repo_id="alice/m",
        folder_path=tmp_path,
        repo_type="model",
        commit_message="c",
        delete_patterns="*",
        parent_commit="p" * 40,
    )
    assert oid == "a" * 40
    (tmp_path / "f.txt").write_text("x")
    oid = hub.create_commit(
        repo_id="alice/m",
        commit_message="cm",
        parent_commit="q" * 40,
        operations=[
            CommitOperationAdd("f.txt", tmp_path / "f.txt"),
            CommitOperationAdd("b.bin", b"\x00"),
            CommitOperationDelete("old/"),
        ],
    )
    assert oid == "b" * 40
    hub.create_tag(repo_id="alice/m", tag="7k", revision="a" * 40, message="version 7k")
    hub.delete_tag(repo_id="alice/m", tag="7k")
    assert api.names() == ["whoami", "create_repo", "upload_folder", "create_commit", "create_tag", "delete_tag"]
    assert api.calls[1] == (
        "create_repo",
        ("alice/s",),
        {"repo_type": "space", "exist_ok": True, "token": "hf_ok", "space_sdk": "gradio"},
    )
    assert api.calls[2][2] == {
        "repo_id": "alice/m",
        "folder_path": str(tmp_path),
        "repo_type": "model",
        "commit_message": "c",
        "delete_patterns": "*",
        "parent_commit": "p" * 40,
        "token": "hf_ok",
    }
    _, (repo, ops), kw = api.calls[3]
    assert repo == "alice/m" and kw == {
        "commit_message": "cm",
        "repo_type": "model",
        "parent_commit": "q" * 40,
        "token": "hf_ok",
    }
    assert [type(o) for o in ops] == [
        huggingface_hub.CommitOperationAdd,
        huggingface_hub.CommitOperationAdd,
        huggingface_hub.CommitOperationDelete,
    ]
    assert [o.path_in_repo for o in ops] == ["f.txt", "b.bin", "old/"]
    assert ops[0].path_or_fileobj == str(tmp_path / "f.txt") and ops[1].path_or_fileobj == b"\x00"
    assert api.calls[4][2] == {
        "tag": "7k",
        "tag_message": "version 7k",
        "revision": "a" * 40,
        "repo_type": "model",
        "exist_ok": False,
        "token": "hf_ok",
    }


def test_contract_read_calls(tmp_path):
    api = RecordingApi()
    hub = HfHub(token="hf_ok", api=api)
    refs = hub.list_refs(repo_id="alice/m")
    assert refs.branches == {"main": "c" * 40} and refs.tags == {"7k": "d" * 40}
    commits = hub.list_commits(repo_id="alice/m", revision="7k")
    assert commits[0].commit_id == "c" * 40 and commits[0].authors == ["alice"]
    assert hub.list_files(repo_id="alice/d", repo_type="dataset") == ["a", "b"]
    assert hub.download(repo_id="alice/m", revision="7k", local_dir=tmp_path) == tmp_path
    assert hub.repo_exists(repo_id="alice/m")
    assert hub.list_repos(repo_type="model") == ["alice/a", "alice/z"]
    assert api.calls[0] == ("list_repo_refs", ("alice/m",), {"repo_type": "model", "token": "hf_ok"})
    assert api.calls[1][2] == {"repo_type": "model", "revision": "7k", "token": "hf_ok"}
    assert api.calls[3] == (
        "snapshot_download",
        ("alice/m",),
        {"repo_type": "model", "revision": "7k", "local_dir": str(tmp_path), "token": "hf_ok"},
    )
    assert api.calls[-1] == ("list_models", (), {"author": "alice", "token": "hf_ok"})


def test_contract_reads_work_without_a_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    api = RecordingApi()
    assert HfHub(api=api).list_files(repo_id="alice/m") == ["a", "b"]
    assert api.calls[0][2]["token"] is None


def test_contract_revert_is_a_download_then_a_replacing_upload():
    api = RecordingApi()
    HfHub(token="hf_ok", api=api).revert(repo_id="alice/s", repo_type="space", to_revision="sync-3")
    assert api.names() == ["whoami", "snapshot_download", "upload_folder"]
    assert api.calls[1][2]["revision"] == "sync-3"
    assert api.calls[2][2]["delete_patterns"] == "*" and api.calls[2][2]["repo_type"] == "space"


@pytest.mark.parametrize(
    "raised, expected",
    [
        (lambda: _http_error(hf_errors.RepositoryNotFoundError, 404), RepositoryNotFound),
        (lambda: _http_error(hf_errors.RevisionNotFoundError, 404), RevisionNotFound),
        (lambda: _http_error(hf_errors.HfHubHTTPError, 403), AuthError),
        (lambda: _http_error(hf_errors.HfHubHTTPError, 412), ConflictError),
        (lambda: _http_error(hf_errors.HfHubHTTPError, 503), HubUnavailable),
        (lambda: _http_error(hf_errors.HfHubHTTPError, 429), HubUnavailable),
        (lambda: ConnectionResetError("reset by peer"), HubUnavailable),
    ],
)
def test_contract_error_mapping(raised, expected):
    api = RecordingApi(fail={"list_repo_files": raised()})
    with pytest.raises(expected):
        HfHub(token="hf_ok", api=api).list_files(repo_id="alice/m")


def test_contract_existing_tag_is_revision_exists():
    api = RecordingApi(fail={"create_tag": _http_error(hf_errors.HfHubHTTPError, 409)})
    with pytest.raises(RevisionExists):
        HfHub(token="hf_ok", api=api).create_tag(repo_id="alice/m", tag="7k")


def test_contract_bad_names_make_no_call():
    api = RecordingApi()
    with pytest.raises(InvalidRepoId):
        HfHub(token="hf_ok", api=api).list_files(repo_id="../etc/passwd")
    assert api.calls == []


def test_contract_a_link_out_of_the_folder_makes_no_call(tmp_path):
    from openllm.hub import UnsafeUpload

    (tmp_path / "key").symlink_to("/etc/passwd")
    api = RecordingApi()
    with pytest.raises(UnsafeUpload, match="outside the folder"):
        HfHub(token="hf_ok", api=api).upload_folder(repo_id="alice/m", folder_path=tmp_path)
    assert api.calls == []


def test_contract_upload_version_is_refs_then_upload_then_tag(tmp_path):
    """The Hugging Face hub has no atomic commit-and-tag: the adapter checks the tag, uploads, then tags."""
    api = RecordingApi()
    hub = HfHub(token="hf_ok", api=api)
    with pytest.raises(RevisionExists):  # 7k exists: refused before anything is uploaded
        hub.upload_version(repo_id="alice/m", folder_path=tmp_path, tag="7k")
    assert api.names() == ["list_repo_refs"]
    assert hub.upload_version(repo_id="alice/m", folder_path=tmp_path, tag="8k", tag_message="v") == "a" * 40
    assert api.names()[1:] == ["list_repo_refs", "whoami", "upload_folder", "create_tag"]
    assert api.calls[-1][2]["revision"] == "a" * 40 and api.calls[-1][2]["tag"] == "8k"
    with pytest.raises(InvalidRepoId):
        hub.upload_version(repo_id="alice/m", folder_path=tmp_path, tag="HEAD")


def test_contract_private_repo(tmp_path):
    """--private reaches huggingface_hub's create_repo; the local hub, which has no accounts, refuses it."""
    from openllm.hub import LocalHub, UnsupportedOperation

    api = RecordingApi()
    HfHub(token="hf_ok", api=api).create_repo(repo_id="alice/m", exist_ok=True, private=True)
    assert api.calls[-1] == (
        "create_repo",
        ("alice/m",),
        {"repo_type": "model", "exist_ok": True, "token": "hf_ok", "private": True},
    )
    with pytest.raises(UnsupportedOperation, match="no private repositories"):
        LocalHub(tmp_path / "hub").create_repo(repo_id="alice/m", private=True)
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("HEAD"))


def _answered_error(cls, status: int, *, request_id: str, server_message: str):
    """An error as huggingface_hub raises it for a server's answer: the response (its request id header) and
    the message the server gave."""
    httpmod = importlib.import_module(hf_errors.Response.__module__)
    response = hf_errors.Response(
        status,
        request=httpmod.Request("GET", "https://huggingface.co/api/models/alice/m/refs"),
        headers={"x-request-id": request_id},
    )
    return cls(f"{status} Client Error", response=response, server_message=server_message)


@pytest.mark.parametrize(
    "cls, status, expected",
    [
        (hf_errors.RepositoryNotFoundError, 404, RepositoryNotFound),
        (hf_errors.HfHubHTTPError, 401, AuthError),
        (hf_errors.HfHubHTTPError, 500, HubUnavailable),
        (hf_errors.HfHubHTTPError, 400, HubError),
    ],
)
def test_contract_errors_keep_the_response_details_and_their_cause(cls, status, expected):
    """As huggingface_hub's HfHubHTTPError does: the request id and the server's message stay on the error we
    raise (with the status and the repo), and huggingface_hub's own error is its cause."""
    raised = _answered_error(cls, status, request_id="Root=1-abc", server_message="Repository not found")
    api = RecordingApi(fail={"list_repo_refs": raised})
    with pytest.raises(expected) as caught:
        HfHub(token="hf_ok", api=api).list_refs(repo_id="alice/m")
    err = caught.value
    assert err.__cause__ is raised
    assert (err.repo_id, err.status_code, err.request_id, err.server_message) == (
        "alice/m",
        status,
        "Root=1-abc",
        "Repository not found",
    )
    assert err.details()["request_id"] == "Root=1-abc"


def test_contract_connection_errors_keep_their_cause():
    raised = ConnectionResetError("reset by peer")
    with pytest.raises(HubUnavailable) as caught:
        HfHub(token="hf_ok", api=RecordingApi(fail={"list_repo_files": raised})).list_files(repo_id="alice/m")
    assert caught.value.__cause__ is raised and caught.value.repo_id == "alice/m"


def test_contract_cli_shows_the_request_id_only_under_debug(monkeypatch, capsys):
    """`openllm hub versions --hub hf`: one line without --debug; with it, the request id and the server's
    message, then the chain (huggingface_hub's error as the cause)."""
    from openllm.cli import main

    raised = _answered_error(
        hf_errors.RepositoryNotFoundError, 404, request_id="Root=1-req42", server_message="Repository not found"
    )
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: RecordingApi(fail={"list_repo_refs": raised}))
    monkeypatch.setenv("HF_TOKEN", "hf_ok")
    assert main(["hub", "versions", "alice/m", "--hub", "hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no repository alice/m on the Hugging Face hub") and err.count("\n") == 1
    assert "Root=1-req42" not in err
    with pytest.raises(RepositoryNotFound) as caught:
        main(["--debug", "hub", "versions", "alice/m", "--hub", "hf"])
    assert caught.value.__cause__ is raised
    debug = capsys.readouterr().err
    assert "debug: RepositoryNotFound:" in debug
    assert "request_id='Root=1-req42'" in debug and "server_message='Repository not found'" in debug


def _oidc_session(monkeypatch, status: int, answer: dict) -> list:
    """huggingface_hub's HTTP session for the Trusted Publishers exchange, answering ``answer``: records posts."""
    import httpx
    from huggingface_hub import _oidc
    from huggingface_hub.utils import _auth

    posts: list = []

    class Session:
        def post(self, url, json=None, **kw):
            posts.append((url, json))
            return httpx.Response(status, json=answer, request=httpx.Request("POST", url))

    monkeypatch.setattr(_oidc, "get_session", lambda: Session())
    monkeypatch.setattr(_auth, "_OIDC_TOKEN_CACHE", None)
    monkeypatch.setenv("HF_OIDC_RESOURCE", "spaces/lemms/openllm")
    monkeypatch.setenv("HF_OIDC_ID_TOKEN", "id-token-from-github")  # what the runner mints with id-token: write
    monkeypatch.setenv("HF_TOKEN", "hf_storedsecret000000000000000")
    return posts


def test_contract_trusted_publishers_exchange_an_oidc_token_instead_of_a_stored_secret(monkeypatch):
    posts = _oidc_session(monkeypatch, 200, {"access_token": "hf_jwt_shortlived", "expires_in": 3600})
    api = RecordingApi()
    HfHub(api=api).whoami()
    assert api.calls[0][2]["token"] == "hf_jwt_shortlived"  # not the stored HF_TOKEN: OIDC was asked for
    (url, body) = posts[0]
    assert url.endswith("/oauth/token") and body["resource"] == "spaces/lemms/openllm"
    assert body["subject_token"] == "id-token-from-github" and body["grant_type"].endswith("token-exchange")


def test_contract_a_refused_trusted_publishers_exchange_is_an_auth_error(monkeypatch):
    _oidc_session(monkeypatch, 400, {"error": "invalid_grant"})
    with pytest.raises(AuthError, match="HF_OIDC_RESOURCE|rejected"):
        HfHub(api=RecordingApi())
