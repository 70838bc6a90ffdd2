"""Secrets out of anything printed, logged or stored: ``redact(text)``.

A hub URL may carry a token (``https://user:TOKEN@host/``, ``https://TOKEN@host/``), and it travels into git's
error messages, the crash log the user is asked to send, and the run lock's recorded command line (a file any
local user can read). Every such text goes through this one function. It imports nothing from the package, so
any module (rundir included) may use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["redact", "url_secrets", "MASK", "SECRET_ENV"]

MASK = "***"
# environment variables whose values are credentials: their values are masked wherever they appear
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "OPENLLM_HUB_TOKEN", "GIT_PASSWORD")

# scheme://USERINFO@ : git, curl and every URL parser take credentials there
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]+)@")
# a token in a query string (?access_token=..., &token=...)
_QUERY = re.compile(
    r"(?P<key>[?&;](?:access_token|token|api_key|apikey|key|password|passwd|secret|sig|signature)=)[^&#\s'\"<>]+",
    re.I,
)
# user:password@host without a scheme: how git words some errors ("unable to look up user:TOKEN@host")
_BARE_USERINFO = re.compile(r"(?<![\w.%+:/-])(?P<user>[\w.%+-]+):(?P<password>[^\s/?#@'\"<>:]+)@(?=[\w\[])")
# Hugging Face tokens have a fixed shape: masked even outside a URL (a pasted token in an argument)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
# schemes whose user name is an account on a server, not a credential (ssh://git@host/)
_USER_IS_NAME = ("ssh://", "git+ssh://", "ssh+git://")


def _userinfo(m: re.Match) -> str:
    scheme, info = m.group("scheme"), m.group("userinfo")
    user, sep, _password = info.partition(":")
    if sep:  # user:password -> user:***
        return f"{scheme}{user}:{MASK}@"
    if scheme.lower() in _USER_IS_NAME:
        return m.group(0)
    # a lone userinfo over http(s) is how tokens are usually passed (https://TOKEN@host/)
    return f"{scheme}{MASK}@"


def url_secrets(text: object) -> list[str]:
    """The credentials that the URLs in ``text`` carry (passwords, lone tokens over http(s)): give them to
    :func:`redact` for a tool's output, which may print them in any form (git: ``user:TOKEN@host``)."""
    found = []
    for m in _USERINFO.finditer(str(text)):
        masked = _userinfo(m)
        if masked != m.group(0):
            user, sep, password = m.group("userinfo").partition(":")
            found.append(password if sep else user)
    return [s for s in found if s]


def redact(text: object, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential masked: the given ``secrets`` wherever they appear, the values of
    :data:`SECRET_ENV` set in the environment, the password (or lone token) in a URL's user info,
    ``user:password@host``, token-like query parameters and Hugging Face tokens."""
    out = text if isinstance(text, str) else str(text)
    env = (os.environ.get(name, "") for name in SECRET_ENV)
    for value in sorted({*secrets, *env}, key=len, reverse=True):
        if len(value) >= 4:  # a one- or two-letter value would mask ordinary words
            out = out.replace(value, MASK)
    out = _USERINFO.sub(_userinfo, out)
    out = _BARE_USERINFO.sub(lambda m: f"{m.group('user')}:{MASK}@", out)
    out = _QUERY.sub(lambda m: m.group("key") + MASK, out)
    return _HF_TOKEN.sub(MASK, out)
