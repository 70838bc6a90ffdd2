"""The hub commands end to end on a real local hub, run as a user would (subprocesses):
push -> versions -> pull -> load and generate; immutability; clear errors; dataset upload (CLI and script)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, make_export_run, run_cli
from huggingface_hub import DatasetCard, ModelCard

from openllm.hub import LocalHub, CommitOperationAdd


@pytest.mark.slow
def test_push_versions_pull_load_generate_end_to_end(tmp_path, export_tokenizer_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    import openllm
    from openllm.generate import SamplingParams, generate

    run = make_export_run(tmp_path / "run", export_tokenizer_dir, steps=(1500, 7000))
    out = run_cli("hub", "push", str(run), "--repo", "alice/tiny").stdout
    assert "pushed alice/tiny@7k" in out  # the latest checkpoint, version = step in thousands

    # versions are immutable
    again = run_cli("hub", "push", str(run), "--repo", "alice/tiny", check=False)
    assert again.returncode == 2 and "already has version 7k" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr
    assert run_cli("hub", "push", str(run), "--repo", "alice/tiny", "--force").returncode == 0

    lines = run_cli("hub", "versions", "alice/tiny").stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["7k"] and "step 7000" in lines[0]
    listing = run_cli("hub", "list").stdout
    assert "alice/tiny" in listing and "7k" in listing

    pulled = tmp_path / "pulled"
    run_cli("hub", "pull", "alice/tiny@7k", "--out", str(pulled))
    names = sorted(p.name for p in pulled.iterdir())
    for f in ("README.md", "config.json", "model.safetensors", "openllm.json", "tokenizer.model", "loss.png",
              "generation_config.json"):
        assert f in names, f
    ModelCard((pulled / "README.md").read_text())  # the card parses

    # the pulled folder is a plain Llama checkpoint that generates what the run generates
    ours = openllm.load(run)
    prompt = ours.tokenizer.encode("def load(")
    expected = generate(ours.model, [prompt], SamplingParams(max_new_tokens=8, temperature=0.0))[0]
    hf = AutoModelForCausalLM.from_pretrained(pulled).eval()
    with torch.no_grad():
        got = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(prompt):].tolist()
    assert got == list(expected)[:8]
    # and openllm.load resolves the hub reference itself (download_model, cached by commit)
    loaded = openllm.load("alice/tiny@7k")
    assert loaded.config.model == ours.config.model
    gen = run_cli("generate", "alice/tiny@7k", "--prompt", "def load(", "--max-new-tokens", "8",
                  "--temperature", "0")
    assert gen.returncode == 0 and gen.stdout.strip()


@pytest.mark.slow
def test_clear_errors_for_bad_repo_ids_and_missing_versions(tmp_path):
    hub = LocalHub()  # the test's own OPENLLM_HUB
    hub.create_repo(repo_id="alice/tiny")
    c = hub.create_commit(repo_id="alice/tiny", commit_message="m", operations=[CommitOperationAdd("x", b"1")])
    hub.create_tag(repo_id="alice/tiny", tag="7k", revision=c)
    cases = [
        (("hub", "push", str(tmp_path), "--repo", "../evil"), "invalid repo id '../evil'"),
        (("hub", "pull", "alice/tiny@9k", "--out", str(tmp_path / "o")), "no revision '9k'; versions: 7k"),
        (("hub", "versions", "alice/none"), "no model repo 'alice/none'"),
        (("hub", "pull", "/etc/passwd@1k", "--out", str(tmp_path / "o")), "absolute paths are not repo ids"),
        (("hub", "push", str(tmp_path / "missing"), "--repo", "alice/tiny"), "does not exist"),
        (("data", "upload", str(tmp_path), "--repo", "alice/a/b"), "exactly one '/'"),
    ]
    for args, message in cases:
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_data_upload_cli_and_the_upload_script(tmp_path):
    data = tmp_path / "prepared"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "in the beginning"}\n{"text": "and the earth"}\n')
    (data / "val.jsonl").write_text('{"text": "let there be light"}\n')
    other = tmp_path / "other-hub"
    out = run_cli("data", "upload", str(data), "--repo", "alice/corpus", "--license", "cc0-1.0").stdout
    assert "uploaded 4 files to alice/corpus" in out
    script = [sys.executable, str(REPO / "scripts" / "upload_training_data.py"), str(data), "--repo",
              "bob/corpus", "--hub", str(other), "--version", "v1"]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for hub, repo in ((LocalHub(), "alice/corpus"), (LocalHub(root=other), "bob/corpus")):
        files = hub.list_files(repo_id=repo, repo_type="dataset")
        assert files == ["README.md", "SHA256SUMS", "train.jsonl", "val.jsonl"]
        card = DatasetCard((hub.download(repo_id=repo, repo_type="dataset") / "README.md").read_text())
        assert "| documents | 3 |" in card.text
    assert LocalHub(root=other).list_refs(repo_id="bob/corpus", repo_type="dataset").tags.keys() == {"v1"}
    assert "alice/corpus  (dataset)" in run_cli("hub", "list").stdout
    bad = subprocess.run(script[:2] + [str(data), "--repo", "bob"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "invalid repo id" in bad.stderr


_PUSHER = """
import sys
from openllm.publish import push_model
root, folder, name = sys.argv[1:4]
for i in range(3):
    push_model(folder, repo_id="alice/race", version=f"{name}{i}", hub=root)
"""


@pytest.mark.slow
def test_two_processes_pushing_versions_at_once_keep_every_version_exact(tmp_path):
    import json

    folders = {}
    for name in ("a", "b"):  # two Hugging Face exports with one file the other lacks
        f = tmp_path / f"export-{name}"
        f.mkdir()
        (f / "config.json").write_text(json.dumps({"model_type": "llama", "who": name}))
        (f / "model.safetensors").write_bytes(name.encode() * 1000)
        (f / f"only_{name}.txt").write_text(name)
        folders[name] = f
    root = tmp_path / "hub"
    procs = [subprocess.Popen([sys.executable, "-c", _PUSHER, str(root), str(folders[n]), n],
                              stderr=subprocess.PIPE, text=True) for n in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    hub = LocalHub(root=root)
    tags = hub.list_refs(repo_id="alice/race").tags
    assert sorted(tags) == ["a0", "a1", "a2", "b0", "b1", "b2"]
    for tag in tags:
        name = tag[0]
        files = hub.list_files(repo_id="alice/race", revision=tag)
        assert files == sorted(["README.md", "config.json", "model.safetensors", f"only_{name}.txt"]), (tag, files)
        out = hub.download(repo_id="alice/race", revision=tag)
        assert json.loads((out / "config.json").read_text())["who"] == name
        assert f"alice/race@{tag}" in (out / "README.md").read_text()
    assert subprocess.run(["git", "--git-dir", str(root / "models/alice/race.git"), "fsck", "--strict",
                           "--no-dangling"], capture_output=True, text=True).stdout == ""
