"""push_model on a real local hub: what it refuses (with a message saying what to do), a Hugging Face folder
pushed as it is, and a checkpoint folder pushed as that checkpoint. The whole push -> pull -> load ->
generate path through the CLI is tests/test_hub_cli.py."""

from __future__ import annotations

import json

import pytest

from openllm.errors import OpenLLMError
from openllm.hub import LocalHub, RevisionExists
from openllm.publish import push_model


def _hf_folder(path, **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist; give a run folder or an export folder"),
        ("file", "is not a folder"),
        ("empty run", "has no checkpoint yet; train longer (or lower --save-every) and push again"),
        ("run without checkpoints/", "has no checkpoint yet (no checkpoints/ folder)"),
        ("hf without weights", "has no weights (model.safetensors); export it again"),
        ("gpt2", "model_type 'gpt2' is not supported"),
        ("nothing", "holds no model"),
    ],
)
def test_what_cannot_be_pushed_is_refused_before_the_hub_is_touched(tmp_path, case, message):
    src = tmp_path / "src"
    if case == "file":
        src.write_text("x")
    elif case == "empty run":
        (src / "checkpoints" / "step_00000010").mkdir(parents=True)  # no weights: not complete
        (src / "config.json").write_text(json.dumps({"model": {}}))
    elif case == "run without checkpoints/":
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model": {"d_model": 64}}))
    elif case == "hf without weights":
        _hf_folder(src)
        (src / "model.safetensors").unlink()
    elif case == "gpt2":
        _hf_folder(src, model_type="gpt2")
    elif case == "nothing":
        src.mkdir()
    hub = LocalHub(root=tmp_path / "hub")
    with pytest.raises((OpenLLMError, FileNotFoundError), match=message.replace("(", r"\(").replace(")", r"\)")):
        push_model(src, repo_id="alice/tiny", hub=hub)
    assert hub.list_repos(repo_type="model") == []


def test_a_hugging_face_folder_is_pushed_as_it_is_with_a_card(tmp_path):
    src = _hf_folder(tmp_path / "export")
    (src / "README.md").write_text("an old card")  # replaced by the version's own
    (src / ".cache").mkdir()  # hidden: left out
    (src / ".cache" / "x").write_text("x")
    hub = LocalHub(root=tmp_path / "hub")
    with pytest.raises(OpenLLMError, match="does not say which training step it holds; name the version"):
        push_model(src, repo_id="alice/tiny", hub=hub)
    res = push_model(src, repo_id="alice/tiny", version="v1", hub=hub)
    assert res.version == "v1" and res.files == ["README.md", "config.json", "model.safetensors"]
    out = hub.download(repo_id="alice/tiny", revision="v1")
    assert (out / "model.safetensors").read_bytes() == b"weights"
    assert "alice/tiny@v1" in (out / "README.md").read_text()
    with pytest.raises(RevisionExists, match="already has version v1"):
        push_model(src, repo_id="alice/tiny", version="v1", hub=hub)


@pytest.mark.slow  # loads, exports and plots: about 4 s
def test_a_checkpoint_folder_is_pushed_as_that_checkpoint(export_run, tmp_path):
    import openllm

    (export_run / "evaluation.json").write_text(json.dumps({"step": 10, "val_loss": 4.0}))
    hub = LocalHub(root=tmp_path / "hub")
    ckpt = export_run / "checkpoints" / "step_00000005"
    res = push_model(ckpt, repo_id="alice/tiny", hub=hub)
    assert res.version == "5" and res.step == 5
    assert "evaluation.json" not in res.files  # it is of step 10
    for f in ("README.md", "config.json", "model.safetensors", "openllm.json"):
        assert f in res.files, f
    out = hub.download(repo_id="alice/tiny", revision="5")
    assert "training step 5" in (out / "README.md").read_text()
    assert json.loads((out / "openllm.json").read_text())["name"] == "export-test"
    pushed, ours = openllm.load(out).model.state_dict(), openllm.load(ckpt).model.state_dict()
    assert all((pushed[k] == v).all() for k, v in ours.items())  # the weights of step 5, not of step 10
    # the checksum a push reports is of the file in the repo, which a reader can check (issue 24)
    from openllm.hashing import sha256_file

    assert res.weights_sha256 == sha256_file(out / "model.safetensors") != sha256_file(ckpt / "model.safetensors")


@pytest.mark.parametrize(
    "version, why",
    [
        ("HEAD", "reserved by git"),
        ("main", "reserved by git"),
        ("master", "reserved by git"),
        ("sync-2-0123456789ab", "Space sync"),
        ("-v1", "'-'"),
        ("refs/tags/v1", "'/'"),
        ("@", "letters, digits"),
    ],
)
def test_reserved_versions_are_refused_before_the_hub_is_touched(tmp_path, version, why):
    from openllm.hub import InvalidRepoId

    src = _hf_folder(tmp_path / "export")
    hub = LocalHub(root=tmp_path / "hub")
    with pytest.raises(InvalidRepoId, match=why):
        push_model(src, repo_id="alice/tiny", version=version, hub=hub)
    assert not hub.root.exists()


def test_an_export_folder_with_a_link_out_of_it_is_refused(tmp_path):
    from openllm.hub import UnsafeUpload

    src = _hf_folder(tmp_path / "export")
    (src / "tokenizer.model").symlink_to("/etc/passwd")
    hub = LocalHub(root=tmp_path / "hub")
    with pytest.raises(UnsafeUpload, match="tokenizer.model is a link to /etc/passwd, outside the folder"):
        push_model(src, repo_id="alice/tiny", version="v1", hub=hub)
    assert not hub.root.exists()
    # hidden top-level folders are left out unread; a link to a file inside is pushed as its content
    (src / "tokenizer.model").unlink()
    (src / ".cache").mkdir()
    (src / ".cache" / "key").symlink_to("/etc/passwd")
    (src / "weights.bin").symlink_to("model.safetensors")
    res = push_model(src, repo_id="alice/tiny", version="v1", hub=hub)
    assert res.files == ["README.md", "config.json", "model.safetensors", "weights.bin"]
    out = hub.download(repo_id="alice/tiny", revision="v1")
    assert (out / "weights.bin").read_bytes() == b"weights"


def test_force_replaces_a_version_with_one_new_commit(tmp_path):
    src = _hf_folder(tmp_path / "export")
    hub = LocalHub(root=tmp_path / "hub")
    c1 = push_model(src, repo_id="alice/tiny", version="v1", hub=hub).commit
    (src / "model.safetensors").write_bytes(b"better weights")
    with pytest.raises(RevisionExists, match="--force"):  # the push names the flag that replaces it
        push_model(src, repo_id="alice/tiny", version="v1", hub=hub)
    assert hub.list_refs(repo_id="alice/tiny").branches["main"] == c1
    c2 = push_model(src, repo_id="alice/tiny", version="v1", hub=hub, force=True).commit
    refs = hub.list_refs(repo_id="alice/tiny")
    assert refs.branches["main"] == c2 == refs.tags["v1"] and hub.list_commits(repo_id="alice/tiny")[0].parents == [c1]
