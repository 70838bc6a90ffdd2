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


# --- the app as a Space serves it, driven by a visitor's browser and by direct API calls -------------------


def _signed_session_cookie(secret: str, user: str) -> str:
    """The session cookie gradio's OAuth callback would set for ``user`` (signed as its SessionMiddleware
    signs it: itsdangerous over the sha256 of the OAuth secret)."""
    import base64
    import hashlib
    import json

    import itsdangerous

    info = session(user).scope["session"]["oauth_info"]
    key = hashlib.sha256((secret + "-v4").encode()).hexdigest()
    return itsdangerous.TimestampSigner(key).sign(base64.b64encode(json.dumps({"oauth_info": info}).encode())).decode()


def guarded(demo, fn) -> bool:
    """Whether ``fn`` or a step that ``.then()`` runs after it is a guarded write handler."""
    for _ in range(6):
        if fn is None:
            return False
        if access.is_writer(fn.fn):
            return True
        fn = next((f for f in demo.fns.values() if f.trigger_after == fn._id), None)
    return False


@pytest.mark.slow
@pytest.mark.browser
# gradio on a Space (SYSTEM=spaces) starts a reload watcher that needs the `spaces` package, which Hugging
# Face installs in every Space: its thread fails here without it, beside the app, which is unaffected
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.filterwarnings("ignore:.*copy keyword is deprecated.*:Warning")
def test_a_visitor_sees_no_write_action_and_every_write_endpoint_refuses(space, monkeypatch, tmp_path):
    import gradio.oauth
    from gradio_client import Client

    from openllm.app import launch
    from openllm.app.ui import WRITE_ACTIONS
    from test_app_browser import CHROMIUM, _free_port, _need_browser

    _need_browser()
    from playwright.sync_api import sync_playwright

    # what Hugging Face sets in a Space whose README has hf_oauth: true (gradio reads them when imported)
    for name, value in (
        ("OAUTH_CLIENT_ID", "client"),
        ("OAUTH_CLIENT_SECRET", "secret"),
        ("OAUTH_SCOPES", "openid profile write-repos"),
        ("OPENID_PROVIDER_URL", "https://huggingface.co"),
    ):
        monkeypatch.setattr(gradio.oauth, name, value)
    ws = tmp_path / "workspace"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    demo = launch(ws, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            page = browser.new_page()
            page.goto(url)
            page.locator("#visitor-note").wait_for(timeout=60_000)
            assert "Watching only" in page.locator("#visitor-note").inner_text()
            assert page.locator("#login-btn").is_visible()
            shown = [e for e in WRITE_ACTIONS if page.locator(f"#{e}").count() and page.locator(f"#{e}").is_visible()]
            assert shown == []
            browser.close()

        writers = {i: f for i, f in demo.fns.items() if access.is_writer(f.fn)}
        # every write button's click is a guarded handler (not a chain that would leave one step unguarded)
        for elem_id in WRITE_ACTIONS:
            block = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)
            if isinstance(block, gr.Button):
                clicks = [f for f in demo.fns.values() if (block._id, "click") in f.targets]
                assert any(guarded(demo, f) for f in clicks), elem_id
        visitor = Client(url, verbose=False)
        owner = Client(url, verbose=False, headers={"Cookie": f"session={_signed_session_cookie('secret', 'alice')}"})
        for i, fn in writers.items():
            with pytest.raises(Exception, match="sign in with Hugging Face"):
                visitor.predict(*[getattr(c, "value", None) for c in fn.inputs], fn_index=i)
        assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())  # nothing was written
        # the owner's session passes the same check: Delete answers about the run, not about signing in
        delete = next(i for i, f in writers.items() if "delete-confirm" in [c.elem_id for c in f.inputs])
        answer = owner.predict(None, False, fn_index=delete)
        assert "choose the run to delete" in str(answer)
    finally:
        demo.close()
