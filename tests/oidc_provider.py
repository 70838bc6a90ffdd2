"""An OpenID Connect provider on loopback, shaped like Hugging Face's (``https://huggingface.co/.well-known/
openid-configuration``): the authorization-code flow a Space with ``hf_oauth: true`` goes through when a user
clicks "Sign in with Hugging Face".

It is the far side of a boundary the tests cannot reach, run for real over HTTP: discovery, ``/oauth/authorize``
(the user is signed in at the provider and sees its consent page; "Authorize" sends a 302 back to the app with a
one-time code),
``/oauth/token`` (client authentication, the code, the redirect URI; an RS256-signed ID token carrying the
nonce), ``/oauth/userinfo`` and the JWKS. Gradio's own OAuth routes (authlib) talk to it unchanged; only
``OPENID_PROVIDER_URL`` points here instead of huggingface.co.

    with OIDCProvider(user="alice", client_id="c", client_secret="s") as op:
        env["OPENID_PROVIDER_URL"] = op.url
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["OIDCProvider"]


class OIDCProvider:
    def __init__(self, *, user: str, client_id: str, client_secret: str, host: str = "localhost") -> None:
        from joserfc.jwk import RSAKey

        self.user, self.client_id, self.client_secret = user, client_id, client_secret
        self.host = host
        self.key = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})
        self.pending: dict[str, dict] = {}  # consent pages shown, not yet answered
        self.codes: dict[str, dict] = {}
        self.tokens: dict[str, dict] = {}  # access token -> what it was granted for
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.authorized_scopes: list[str] = []  # the scopes of each authorization request
        self.errors: list[str] = []  # every request refused, and why
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://{self.host}:{self._server.server_address[1]}"

    def __enter__(self) -> OIDCProvider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                provider._handle(self, "GET")

            def do_POST(self) -> None:
                provider._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- the endpoints ---------------------------------------------------------------------------------------

    def _metadata(self) -> dict:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/oauth/authorize",
            "token_endpoint": f"{self.url}/oauth/token",
            "userinfo_endpoint": f"{self.url}/oauth/userinfo",
            "jwks_uri": f"{self.url}/oauth/jwks",
            "scopes_supported": ["openid", "profile", "email", "read-repos", "write-repos", "manage-repos"],
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
        }

    def _claims(self) -> dict:
        return {
            "sub": "6400000000000000000000a1",
            "name": self.user.title(),
            "preferred_username": self.user,
            "profile": f"https://huggingface.co/{self.user}",
            "picture": "data:image/gif;base64,R0lGODlhAQABAAAAACw=",  # no fetch of an avatar from anywhere
            "website": "",
        }

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        self.requests.append((method, parsed.path))
        try:
            if method == "GET" and parsed.path == "/.well-known/openid-configuration":
                return self._json(h, 200, self._metadata())
            if method == "GET" and parsed.path == "/oauth/jwks":
                return self._json(h, 200, {"keys": [self.key.as_dict(private=False)]})
            if method == "GET" and parsed.path == "/oauth/authorize":
                return self._authorize(h, query)
            if method == "POST" and parsed.path in ("/oauth/token", "/oauth/authorize/decision"):
                length = int(h.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(h.rfile.read(length).decode()))
                return (self._token if parsed.path == "/oauth/token" else self._decide)(h, form)
            if method == "GET" and parsed.path == "/oauth/userinfo":
                bearer = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
                if bearer not in self.tokens:
                    return self._refuse(h, 401, "invalid_token", "userinfo without a valid access token")
                return self._json(h, 200, self._claims())
            if parsed.path == "/favicon.ico":  # the browser asks every host for one; not an error of the flow
                h.send_response(204)
                h.end_headers()
                return None
            return self._refuse(h, 404, "not_found", f"{method} {parsed.path}")
        except Exception as exc:  # a bug here must show in the test, not hang the browser
            return self._refuse(h, 500, "server_error", repr(exc))

    def _authorize(self, h: BaseHTTPRequestHandler, q: dict) -> None:
        if q.get("client_id") != self.client_id:
            return self._refuse(h, 400, "invalid_client", f"unknown client_id {q.get('client_id')!r}")
        if q.get("response_type") != "code":
            return self._refuse(h, 400, "unsupported_response_type", str(q.get("response_type")))
        scopes = (q.get("scope") or "").split()
        if "openid" not in scopes or not q.get("redirect_uri") or not q.get("state"):
            return self._refuse(h, 400, "invalid_request", f"scope/redirect_uri/state missing in {sorted(q)}")
        self.authorized_scopes.append(" ".join(scopes))
        # the consent page: like huggingface.co's, a page of its own (the app's page is gone while it shows)
        request_id = secrets.token_urlsafe(12)
        self.pending[request_id] = {**q, "scope": " ".join(scopes)}
        page = (
            "<!doctype html><title>Authorize</title><form method=post action=/oauth/authorize/decision>"
            f"<p>{html.escape(q['client_id'])} asks to sign you in as {html.escape(self.user)} with "
            f"{html.escape(' '.join(scopes))}</p><input type=hidden name=request value={request_id}>"
            "<button id=authorize>Authorize</button></form>"
        ).encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        h.send_header("Content-Length", str(len(page)))
        h.end_headers()
        h.wfile.write(page)

    def _decide(self, h: BaseHTTPRequestHandler, form: dict) -> None:
        q = self.pending.pop(form.get("request", ""), None)
        if q is None:
            return self._refuse(h, 400, "invalid_request", "no such authorization request")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"redirect_uri": q["redirect_uri"], "nonce": q.get("nonce"), "scope": q["scope"]}
        target = q["redirect_uri"]
        sep = "&" if "?" in target else "?"
        h.send_response(302)
        h.send_header("Location", f"{target}{sep}{urllib.parse.urlencode({'code': code, 'state': q['state']})}")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _token(self, h: BaseHTTPRequestHandler, form: dict) -> None:
        from joserfc import jwt

        auth = h.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            cid, secret = urllib.parse.unquote(cid), urllib.parse.unquote(secret)
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        if (cid, secret) != (self.client_id, self.client_secret):
            return self._refuse(h, 401, "invalid_client", "client authentication failed")
        grant = self.codes.pop(form.get("code", ""), None)  # one use only
        if form.get("grant_type") != "authorization_code" or grant is None:
            return self._refuse(h, 400, "invalid_grant", "unknown or used code")
        if form.get("redirect_uri") != grant["redirect_uri"]:
            return self._refuse(h, 400, "invalid_grant", "redirect_uri differs from the authorization request")
        access = "hf_oauth_" + secrets.token_urlsafe(24)
        self.tokens[access] = grant
        now = int(time.time())
        claims = {
            **self._claims(),
            "iss": self.url,
            "aud": self.client_id,
            "iat": now,
            "exp": now + 3600,
            "auth_time": now,
        }
        if grant["nonce"]:
            claims["nonce"] = grant["nonce"]
        id_token = jwt.encode({"alg": "RS256", "kid": "test-key"}, claims, self.key)
        body = {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": 28800,
            "scope": grant["scope"],
            "id_token": id_token,
        }
        return self._json(h, 200, body)

    def _json(self, h: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Cache-Control", "no-store")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _refuse(self, h: BaseHTTPRequestHandler, status: int, error: str, why: str) -> None:
        self.errors.append(f"{error}: {why}")
        self._json(h, status, {"error": error, "error_description": why})
