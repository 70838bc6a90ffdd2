"""Who may drive the app: the one owner of the rule "nobody but its owners drives a public Space".

Locally (no ``SPACE_ID``) everyone who reaches the app may do everything, as before. On a Space, the write
actions (start, stop, continue, delete, fine-tune, evaluate, export, publish, download into the workspace)
need a signed-in Hugging Face user on the allow-list: ``OPENLLM_ALLOWED_USERS`` (comma-separated user
names) when set, else the Space's owner (the namespace of ``SPACE_ID``). Visitors may watch runs, generate
and chat.

The check is server-side: every write handler is wrapped by :func:`writer`, which takes the session's
``gr.OAuthProfile`` (Gradio injects it into a parameter of that type) and refuses with ``gr.Error`` before the
handler runs, so calling the event's endpoint directly is refused as the hidden button is. Sign-in itself is
Gradio's ``LoginButton`` over Hugging Face OAuth, which a Space has when its README sets ``hf_oauth: true``
(Hugging Face then sets ``OAUTH_CLIENT_ID`` and the rest in the Space's environment).
"""

from __future__ import annotations

import html
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from ..redact import redact

__all__ = [
    "ALLOWED_ENV",
    "space_id",
    "on_space",
    "login_enabled",
    "allowed_users",
    "may_write",
    "refusal",
    "check",
    "writer",
    "is_writer",
    "hide_for_visitors",
    "token_value",
    "safe_text",
]

ALLOWED_ENV = "OPENLLM_ALLOWED_USERS"
_WRITER = "_openllm_writer"


def space_id() -> str | None:
    """The Space this app runs as (Hugging Face sets ``SPACE_ID=owner/name`` in every Space), else None."""
    return os.environ.get("SPACE_ID", "").strip() or None


def on_space() -> bool:
    return space_id() is not None


def login_enabled() -> bool:
    """Sign in with Hugging Face works here: on a Space whose README enables OAuth (``hf_oauth: true``: the
    hub then sets ``OAUTH_CLIENT_ID``), as Gradio tells a Space (``SYSTEM=spaces``; elsewhere its login button
    would sign in the machine's own hub account instead). Without it nobody can sign in, so nobody may write
    (fail closed)."""
    from gradio.utils import get_space

    return on_space() and bool(os.environ.get("OAUTH_CLIENT_ID")) and get_space() is not None


def allowed_users() -> frozenset[str]:
    """The user names that may write on this Space, lower-cased: ``OPENLLM_ALLOWED_USERS``, else the owner."""
    raw = os.environ.get(ALLOWED_ENV, "")
    names = {u.strip().lower() for u in raw.split(",") if u.strip()}
    if not names:
        owner = (space_id() or "").partition("/")[0].strip().lower()
        names = {owner} if owner else set()
    return frozenset(names)


def _username(profile: Any) -> str | None:
    if profile is None:
        return None
    name = getattr(profile, "username", None)
    if name is None and isinstance(profile, dict):
        name = profile.get("preferred_username")
    return str(name) if name else None


def may_write(profile: Any) -> bool:
    """Whether the session of ``profile`` (a ``gr.OAuthProfile``, or None when nobody is signed in) may write."""
    if not on_space():
        return True
    if not login_enabled():  # no sign-in here: nobody can be told from a visitor
        return False
    name = _username(profile)
    return bool(name) and name.lower() in allowed_users()  # type: ignore[union-attr]


def refusal(profile: Any) -> str:
    """Why this session may not write, and what to do (one line)."""
    if not login_enabled():
        return (
            "this Space has no sign-in (its README needs hf_oauth: true), so nobody may start, stop or publish "
            "here; visitors may watch runs, generate and chat"
        )
    name = _username(profile)
    if name is None:
        return (
            "only the Space's owners may start, stop, delete, evaluate, export or publish: sign in with Hugging "
            "Face (the button at the top); visitors may watch runs, generate and chat"
        )
    return (
        f"{name} is not one of this Space's owners ({ALLOWED_ENV} on the Space names them): watching runs, "
        "generating and chatting are open to everyone"
    )


def check(profile: Any) -> None:
    """Refuse (``gr.Error``, which Gradio answers as the event's error) unless ``profile`` may write."""
    if not may_write(profile):
        raise gr.Error(refusal(profile), print_exception=False)


def writer(fn: Callable[..., Any], *, session: bool = False) -> Callable[..., Any]:
    """``fn`` as a write action's event handler: refused server-side unless the session may write.

    Gradio fills the first parameter (typed ``gr.OAuthProfile | None``) from the session, and with
    ``session=True`` the second (``gr.OAuthToken | None``); ``fn`` then gets both as ``profile=`` and
    ``token=`` (the signed-in user's own token, for this call only). The event's inputs follow, passed on as
    they come."""

    def handler(*args: Any) -> Any:
        profile, rest = args[0], args[1:]
        check(profile)
        if session:
            return fn(*rest[1:], profile=profile, token=rest[0])
        return fn(*rest)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("openllm_profile", kind, annotation=gr.OAuthProfile | None)]
    hints: dict[str, Any] = {"openllm_profile": gr.OAuthProfile | None}
    if session:
        params.append(inspect.Parameter("openllm_token", kind, annotation=gr.OAuthToken | None))
        hints["openllm_token"] = gr.OAuthToken | None
    params.append(inspect.Parameter("inputs", inspect.Parameter.VAR_POSITIONAL))
    # Gradio reads the signature and the type hints to know what to inject: both name the OAuth parameters
    handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    handler.__annotations__ = hints
    name = getattr(fn, "__name__", "handler")
    handler.__name__ = name if name.isidentifier() else "write_action"
    handler.__qualname__ = handler.__name__
    handler.__doc__ = getattr(fn, "__doc__", None)
    setattr(handler, _WRITER, True)
    return handler


def is_writer(fn: Any) -> bool:
    """Whether ``fn`` is a handler made by :func:`writer` (the tests find every write endpoint by it)."""
    return bool(getattr(fn, _WRITER, False))


def hide_for_visitors(demo: gr.Blocks, components: Sequence[Any], notice: Any) -> None:
    """On a Space, the write actions start hidden and are shown on page load to a session that may write;
    ``notice`` (an HTML component) tells a visitor why they are not there. Locally nothing is hidden."""
    if not on_space():
        return
    for comp in components:
        comp.visible = False

    def show(profile: gr.OAuthProfile | None):
        ok = may_write(profile)
        why = html.escape(refusal(profile))
        text = "" if ok else f'<div class="msg-info" id="visitor-note">Watching only: {why}.</div>'
        return (gr.update(value=text, visible=not ok), *(gr.update(visible=ok) for _ in components))

    demo.load(show, None, [notice, *components], show_progress="hidden")


def token_value(token: Any) -> str | None:
    """The access token a ``gr.OAuthToken`` holds (None for no sign-in)."""
    value = getattr(token, "token", None) if token is not None else None
    return str(value) if value else None


def safe_text(text: object, token: Any = None) -> str:
    """``text`` with the session's token (and every other credential) masked: for any message shown or logged
    after a call made with the user's token (an OAuth token does not look like a personal ``hf_`` token)."""
    value = token_value(token)
    return redact(text, [value] if value else [])
