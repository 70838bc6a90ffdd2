"""openllm.errors: typed errors with fields, and which errors are the user's (exit 2) and which are bugs (exit 1)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from openllm.errors import ConfigError, InputExists, InputNotFound, MissingExtra, OpenLLMError, is_user_error
from openllm.hub.errors import AuthError, HubError


def test_fields_are_keyword_only_attributes_that_survive_pickling():
    """As huggingface_hub's errors: what a caller needs is an attribute, the message stays the message."""
    err = InputNotFound("no run folder runs/x", path="runs/x")
    assert str(err) == "no run folder runs/x" and err.path == Path("runs/x")
    assert isinstance(err, FileNotFoundError) and isinstance(err, OpenLLMError)
    assert err.details() == {"path": Path("runs/x")}
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is InputNotFound and str(back) == str(err) and back.path == err.path
    assert isinstance(InputExists("out is not empty", path="out"), FileExistsError)
    assert OpenLLMError("plain").path is None and OpenLLMError("plain").details() == {}
    assert ConfigError("model.x: bad", key="model.x").details()["key"] == "model.x"


def test_hub_errors_carry_the_repo_and_the_servers_answer_masked():
    err = AuthError(
        "rejected",
        repo_id="alice/m",
        status_code=401,
        request_id="Root=1-abc",
        server_message="bad token https://alice:S3cret@hub.example/",
    )
    assert (err.repo_id, err.status_code, err.request_id) == ("alice/m", 401, "Root=1-abc")
    assert "S3cret" not in err.server_message and "hub.example" in err.server_message
    assert isinstance(err, HubError) and pickle.loads(pickle.dumps(err)).request_id == "Root=1-abc"


@pytest.mark.parametrize(
    "exc, inputs, users",
    [
        (OpenLLMError("bad"), [], True),
        (ConfigError("bad"), None, True),
        (MissingExtra("pip install"), [], True),
        (OSError(28, "No space left on device"), [], True),  # a full disk: the user makes room
        (RuntimeError("a run cannot go from done to training"), ["run"], False),  # a broken invariant: a bug
        (KeyError("x"), ["x"], False),
        # an OSError about a path the user named, or about something inside it: the user's
        (FileNotFoundError(2, "No such file or directory", "/data/run"), ["generate", "/data/run"], True),
        (FileNotFoundError(2, "No such file or directory", "/data/run/ck/state.json"), ["/data/run"], True),
        (FileNotFoundError(2, "No such file or directory", "/data/out/x"), ["--out=/data/out"], True),
        (PermissionError(13, "Permission denied", "/data/out"), ["--out", "/data/out"], True),
        (FileExistsError(17, "File exists", "/data/out"), ["/data/out"], True),
        # about a path the user did not name (a cache file, a module's data): a bug
        (FileNotFoundError(2, "No such file or directory", "/home/u/.cache/x.json"), ["/data/run"], False),
        (FileNotFoundError(2, "No such file or directory", "/data/runs2/x"), ["/data/run"], False),
        (FileNotFoundError("no such file, and no name on it"), ["/data/run"], False),
        (FileNotFoundError(2, "No such file or directory", "/etc/x"), ["/"], False),  # / is no input folder
        # callers that do not know the inputs (the app) keep the old rule
        (FileNotFoundError(2, "No such file or directory", "/anything"), None, True),
        (PermissionError(13, "Permission denied", "/anything"), None, False),
    ],
)
def test_which_errors_are_the_users(exc, inputs, users):
    assert is_user_error(exc, inputs=inputs) is users


def test_a_path_given_through_a_link_is_still_the_users(tmp_path, monkeypatch):
    """Code that resolves the path the user gave (Path.resolve) reports the link's target."""
    (tmp_path / "data" / "run").mkdir(parents=True)
    (tmp_path / "runs").symlink_to(tmp_path / "data")
    exc = FileNotFoundError(2, "No such file or directory", str(tmp_path / "data" / "run" / "metrics.jsonl"))
    assert is_user_error(exc, inputs=[str(tmp_path / "runs" / "run")])
    monkeypatch.chdir(tmp_path)
    back = FileNotFoundError(2, "No such file or directory", "runs/run/metrics.jsonl")
    assert is_user_error(back, inputs=[str(tmp_path / "data" / "run")])


def test_relative_inputs_are_read_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exc = FileNotFoundError(2, "No such file or directory", str(tmp_path / "run" / "metrics.jsonl"))
    assert is_user_error(exc, inputs=["evaluate", "run"])
    assert not is_user_error(exc, inputs=["evaluate", "other"])


def test_the_local_hubs_errors_name_the_repo(tmp_path):
    from openllm.hub import LocalHub, RepositoryExists, RepositoryNotFound

    hub = LocalHub(tmp_path / "hub")
    with pytest.raises(RepositoryNotFound) as missing:
        hub.list_refs(repo_id="alice/none", repo_type="dataset")
    assert (missing.value.repo_id, missing.value.repo_type) == ("alice/none", "dataset")
    hub.create_repo(repo_id="alice/m")
    with pytest.raises(RepositoryExists) as exists:
        hub.create_repo(repo_id="alice/m")
    assert exists.value.details() == {"repo_id": "alice/m", "repo_type": "model"}


def _raises_that_drop_their_cause(path: Path) -> list[str]:
    """Raises inside an ``except`` block that hide the exception being handled: ``raise X from None``, or a new
    exception raised with no ``from`` (shown as "during handling ... another exception occurred", as if a second
    bug). Re-raising the caught exception by name is fine."""
    import ast

    found: list[str] = []

    def visit(node: ast.AST, handler: ast.ExceptHandler | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            handler = None  # a function defined in a handler runs later, outside it
        if isinstance(node, ast.Raise) and node.exc is not None:
            hides = isinstance(node.cause, ast.Constant) and node.cause.value is None
            loses = handler is not None and node.cause is None
            if loses and isinstance(node.exc, ast.Name) and node.exc.id == handler.name:
                loses = False
            if hides or loses:
                found.append(f"{path}:{node.lineno}: {'from None' if hides else 'no from'}")
        for child in ast.iter_child_nodes(node):
            visit(child, child if isinstance(child, ast.ExceptHandler) else handler)

    from test_imports import parse_source  # parsed once for every check that reads the source

    visit(parse_source(path), None)
    return found


def test_errors_raised_while_handling_another_keep_it_as_their_cause():
    """``raise OurError(...) from exc`` everywhere in src: the CLI prints the one-line message, and ``--debug``
    the whole chain."""
    src = Path(__file__).resolve().parent.parent / "src" / "openllm"
    found = [line for path in sorted(src.rglob("*.py")) for line in _raises_that_drop_their_cause(path)]
    assert not found, "\n".join(found)


def test_the_cause_check_finds_both_ways_of_dropping_it(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f(d):\n"
        "    try:\n        return d['x']\n    except KeyError:\n        raise ValueError('no x') from None\n"
        "    try:\n        return d['y']\n    except KeyError:\n        raise ValueError('no y')\n"
        "    try:\n        return d['z']\n    except KeyError as exc:\n        raise exc\n"
        "    try:\n        return d['w']\n    except KeyError as exc:\n        raise ValueError('no w') from exc\n"
    )
    assert [line.split(": ", 1)[1] for line in _raises_that_drop_their_cause(bad)] == ["from None", "no from"]


def test_the_install_hint_offers_all_only_for_the_extras_all_holds():
    import re
    from pathlib import Path

    from openllm.errors import IN_ALL, MissingExtra, require

    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()  # (tomllib: Python 3.11+ only)
    (everything,) = re.findall(r'^all = \["openllm\[(.*)\]"\]', pyproject, re.M)
    assert tuple(everything.split(",")) == IN_ALL
    for extra, offered in (("track", False), ("export", True)):
        try:
            require("surely_not_a_module_xyz", extra)
        except MissingExtra as exc:
            assert ("openllm[all]" in str(exc)) == offered, str(exc)
        else:
            raise AssertionError("a missing module was not refused")
