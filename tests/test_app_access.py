"""Who may drive the app (openllm.app.access) and Sign in with Hugging Face, as contracts at Gradio's and
huggingface_hub's boundaries: Gradio's own ``special_args`` fills the handlers' OAuth parameters from a session
shaped as its OAuth callback stores it (``session["oauth_info"]``), and the HF hub adapter is given a recording
stand-in for ``HfApi`` (as in test_hub_hf_contract.py). Nothing reaches the network."""

from __future__ import annotations

import time
import types

import gradio as gr
import huggingface_hub
import pytest
from gradio.helpers import special_args

from openllm.app import access
from openllm.app import models as M
from openllm.app.forms import FormError
from test_hub_hf_contract import RecordingApi

OWNER_TOKEN = "oauth-token-of-alice-0123456789"


@pytest.fixture
def space(monkeypatch):
    """The environment of a Space with sign-in on, as Hugging Face sets it (SPACE_ID, SYSTEM, OAUTH_*)."""
    monkeypatch.setenv("SPACE_ID", "alice/openllm")
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client")
    monkeypatch.delenv(access.ALLOWED_ENV, raising=False)


def session(user: str | None, token: str = OWNER_TOKEN):
    """A request whose session is what gradio's OAuth callback stores for ``user`` (None: nobody signed in)."""
    info = None
    if user is not None:
        info = {
            "access_token": token,
            "scope": "openid profile read-repos write-repos manage-repos",
            "expires_at": int(time.time()) + 3600,
            "userinfo": {"preferred_username": user, "name": user.title(), "profile": "", "picture": ""},
        }
    return types.SimpleNamespace(scope={"session": {"oauth_info": info} if info else {}})


def call(handler, request, *inputs):
    """Call ``handler`` as Gradio does: its special arguments filled in by gradio's own special_args."""
    args, *_ = special_args(handler, list(inputs), request)
    return handler(*args)


def profile(user: str) -> gr.OAuthProfile:
    return gr.OAuthProfile({"preferred_username": user, "name": user, "profile": "", "picture": ""})


def test_locally_everyone_writes(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert access.may_write(None) and not access.login_enabled()
    assert call(access.writer(lambda a: f"ran {a}"), session(None), "x") == "ran x"


def test_on_a_space_only_the_owner_writes(space):
    assert access.allowed_users() == {"alice"}
    assert access.may_write(profile("alice")) and access.may_write(profile("Alice"))
    assert not access.may_write(None) and not access.may_write(profile("mallory"))


def test_the_allow_list_replaces_the_owner(space, monkeypatch):
    monkeypatch.setenv(access.ALLOWED_ENV, " bob, Carol ,")
    assert access.allowed_users() == {"bob", "carol"}
    assert access.may_write(profile("carol")) and not access.may_write(profile("alice"))


def test_without_sign_in_on_a_space_nobody_writes(space, monkeypatch):
    monkeypatch.delenv("OAUTH_CLIENT_ID")
    assert not access.login_enabled()
    with pytest.raises(gr.Error, match="hf_oauth: true"):
        access.check(profile("alice"))


def test_writer_refuses_before_the_handler_runs(space):
    ran = []
    handler = access.writer(lambda a, b: ran.append((a, b)) or "done")
    assert access.is_writer(handler)
    with pytest.raises(gr.Error, match="sign in with Hugging Face"):
        call(handler, session(None), "a", "b")
    with pytest.raises(gr.Error, match="mallory is not one of this Space's owners"):
        call(handler, session("mallory"), "a", "b")
    assert ran == []
    assert call(handler, session("alice"), "a", "b") == "done" and ran == [("a", "b")]


def test_writer_passes_the_users_own_token_for_that_call(space):
    seen = []

    def publish(repo, *, profile=None, token=None):
        seen.append((repo, profile.username, token.token))
        return "ok"

    assert call(access.writer(publish, session=True), session("alice"), "m") == "ok"
    assert seen == [("m", "alice", OWNER_TOKEN)]
    assert call(access.writer(publish, session=True), session("alice", "another-token"), "m") == "ok"
    assert seen[-1][2] == "another-token"  # each call its own session's token, nothing kept


def test_publishing_signed_in_uses_that_users_token_and_namespace(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretOfTheSpaceOwner000000")
    made = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: made.append(RecordingApi()) or made[-1])
    hub = M.hf_hub(OWNER_TOKEN)
    hub.create_repo(repo_id="alice/tiny")
    assert [c[2]["token"] for c in made[0].calls] == [OWNER_TOKEN, OWNER_TOKEN]  # whoami, create_repo
    fallback = M.hf_hub(None)  # nobody signed in: the HF_TOKEN secret
    fallback.whoami()
    assert made[1].calls[0][2]["token"] == "hf_secretOfTheSpaceOwner000000"
    assert M.user_repo("tiny", "alice") == "alice/tiny"
    assert M.user_repo("Alice/tiny", "alice") == "Alice/tiny"
    with pytest.raises(FormError, match="your own namespace: alice/tiny"):
        M.user_repo("bob/tiny", "alice")
    assert M.user_repo("bob/tiny", None) == "bob/tiny"


def test_messages_never_show_the_users_token():
    token = gr.OAuthToken(token=OWNER_TOKEN, scope="write-repos", expires_at=0)
    text = access.safe_text(f"push failed: https://x:{OWNER_TOKEN}@hf.co said no ({OWNER_TOKEN})", token)
    assert OWNER_TOKEN not in text and "push failed" in text
