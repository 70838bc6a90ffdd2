"""Secrets never leave in what we print, log or store (issue 24): one function masks them."""

import pytest

from openllm.redact import MASK, redact, url_secrets


@pytest.mark.parametrize(
    "text, secret",
    [
        ("fatal: unable to access 'https://alice:s3cretTOKEN@hub.example/models/a/b.git/'", "s3cretTOKEN"),
        ("--hub https://hf_abcdefghijklmnopqrstuvwx@hub.example/", "hf_abcdefghijklmnopqrstuvwx"),
        ("--hub https://ghp_0123456789abcdef@hub.example/", "ghp_0123456789abcdef"),
        ("ssh://git:pa55word@host/srv/hub", "pa55word"),
        ("fatal: unable to look up user:SECRETTOKEN@127.0.0.1:1 (port 9418)", "SECRETTOKEN"),
        ("GET http://host/x?access_token=abcd1234&page=2", "abcd1234"),
        ("token hf_ZYXWVUTSRQPONMLKJIHGFEDCBA pasted", "hf_ZYXWVUTSRQPONMLKJIHGFEDCBA"),
    ],
)
def test_credentials_are_masked(text, secret):
    out = redact(text)
    assert secret not in out and MASK in out


def test_what_is_no_secret_is_kept():
    for text in ("ssh://git@github.com/org/repo", "alice@example.com", "at 10:30 step 7", "https://h/base/x.git"):
        assert redact(text) == text


def test_named_secrets_and_secret_environment_values_are_masked(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "tok-from-the-environment")
    assert redact("x tok-from-the-environment y") == f"x {MASK} y"
    assert redact("git said: abcdef12 failed", secrets=["abcdef12"]) == f"git said: {MASK} failed"
    assert url_secrets("git ls-remote https://u:p4ss@h/ https://TOK3N@h/ ssh://git@h/") == ["p4ss", "TOK3N"]
