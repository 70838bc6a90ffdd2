"""The hub commands end to end on a real local hub, run as a user would (subprocesses):
push -> versions -> pull -> load and generate; immutability; clear errors; dataset upload (CLI and script)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, ModelCard

from conftest import REPO, make_export_run, run_cli
from openllm.hub import CommitOperationAdd, LocalHub


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
    # the checksum push printed is of the file in the repo, not of the checkpoint (issue 24)
    from openllm.hashing import sha256_file

    assert f"model.safetensors sha256 {sha256_file(pulled / 'model.safetensors')}" in out, out
    names = sorted(p.name for p in pulled.iterdir())
    for f in (
        "README.md",
        "config.json",
        "model.safetensors",
        "openllm.json",
        "tokenizer.model",
        "loss.png",
        "generation_config.json",
    ):
        assert f in names, f
    ModelCard((pulled / "README.md").read_text())  # the card parses

    # the pulled folder is a plain Llama checkpoint that generates what the run generates
    ours = openllm.load(run)
    prompt = ours.tokenizer.encode("def load(")
    expected = generate(ours.model, [prompt], SamplingParams(max_new_tokens=8, temperature=0.0))[0]
    hf = AutoModelForCausalLM.from_pretrained(pulled).eval()
    with torch.no_grad():
        got = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[
            0, len(prompt) :
        ].tolist()
    assert got == list(expected)[:8]
    # and openllm.load resolves the hub reference itself (download_model, cached by commit)
    loaded = openllm.load("alice/tiny@7k")
    assert loaded.config.model == ours.config.model
    gen = run_cli("generate", "alice/tiny@7k", "--prompt", "def load(", "--max-new-tokens", "8", "--temperature", "0")
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
    script = [
        sys.executable,
        str(REPO / "scripts" / "upload_training_data.py"),
        str(data),
        "--repo",
        "bob/corpus",
        "--hub",
        str(other),
        "--version",
        "v1",
    ]
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
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUSHER, str(root), str(folders[n]), n], stderr=subprocess.PIPE, text=True
        )
        for n in ("a", "b")
    ]
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
    assert (
        subprocess.run(
            ["git", "--git-dir", str(root / "models/alice/race.git"), "fsck", "--strict", "--no-dangling"],
            capture_output=True,
            text=True,
        ).stdout
        == ""
    )


# --- a version is all-or-nothing; what push and upload refuse (issue 15) ----------------------------------


def _export(path, who):
    """A small Hugging Face folder: pushing one needs no model code."""
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "who": who}))
    (path / "model.safetensors").write_bytes(who.encode() * 100)
    return path


def _refs(bare) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(bare), "for-each-ref", "--format=%(refname) %(objectname)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _fsck(bare) -> str:
    proc = subprocess.run(
        ["git", "--git-dir", str(bare), "fsck", "--strict", "--no-dangling"], capture_output=True, text=True
    )
    return proc.stdout + proc.stderr


def _one_line_error(proc, *pieces):
    """Exit 2 and a last stderr line ``error: ...`` holding every piece (progress lines may come before)."""
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    assert "Traceback" not in err and last.startswith("error: "), err
    for piece in pieces:
        assert piece in last, (piece, err)


@pytest.mark.slow
def test_push_force_works_from_a_directory_outside_any_git_repository(tmp_path):
    elsewhere = tmp_path / "elsewhere"  # /tmp/pytest-...: no git repository above it
    elsewhere.mkdir()
    assert subprocess.run(["git", "rev-parse", "--git-dir"], cwd=elsewhere, capture_output=True).returncode != 0
    src = _export(tmp_path / "export", "a")
    run_cli("hub", "push", str(src), "--repo", "alice/tiny", "--version", "v1", cwd=elsewhere)
    hub = LocalHub()
    c1 = hub.list_refs(repo_id="alice/tiny").tags["v1"]
    (src / "model.safetensors").write_bytes(b"better")
    proc = run_cli(
        "hub", "push", str(src), "--repo", "alice/tiny", "--version", "v1", "--force", cwd=elsewhere, check=False
    )
    assert proc.returncode == 0, proc.stderr
    refs = hub.list_refs(repo_id="alice/tiny")
    assert refs.tags["v1"] == refs.branches["main"] != c1
    assert hub.list_commits(repo_id="alice/tiny")[0].parents == [c1]  # one new commit, the version's
    assert (hub.download(repo_id="alice/tiny", revision="v1") / "model.safetensors").read_bytes() == b"better"


_BARRIER_HOOK = """#!{python}
# the first two pushes that move main wait here for each other: both were built on the same head, and only
# one of them can win
import os, sys, time
if " refs/heads/main" not in sys.stdin.read():
    sys.exit(0)
d = {barrier!r}
for slot in ("0", "1"):
    try:
        os.close(os.open(os.path.join(d, slot), os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        pass
else:
    sys.exit(0)
deadline = time.time() + 120
while not all(os.path.exists(os.path.join(d, s)) for s in ("0", "1")):
    if time.time() > deadline:
        sys.exit(1)
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_the_loser_of_a_same_version_race_leaves_nothing(tmp_path):
    import json

    hub = LocalHub()
    hub.create_repo(repo_id="alice/race")
    hub.upload_folder(repo_id="alice/race", folder_path=_export(tmp_path / "old", "old"))
    hub.create_tag(repo_id="alice/race", tag="v0")
    bare = hub.root / "models/alice/race.git"
    head = hub.list_refs(repo_id="alice/race").branches["main"]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    hook = bare / "hooks" / "pre-receive"
    hook.write_text(_BARRIER_HOOK.format(python=sys.executable, barrier=str(barrier)))
    hook.chmod(0o755)
    srcs = {who: _export(tmp_path / who, who) for who in ("a", "b")}
    procs = {
        who: subprocess.Popen(
            [sys.executable, "-m", "openllm", "hub", "push", str(src), "--repo", "alice/race", "--version", "v1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who, src in srcs.items()
    }
    results = {who: (p.wait(timeout=300), p.stderr.read()) for who, p in procs.items()}
    assert sorted(barrier.iterdir()) == [barrier / "0", barrier / "1"]  # both pushes really met
    winners = [who for who, (rc, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    loser = "b" if winners == ["a"] else "a"
    rc, err = results[loser]
    assert rc == 2 and "Traceback" not in err, err
    assert "got version v1 from someone else while uploading" in err.strip().splitlines()[-1]
    # exactly the winner's version landed: one new commit on main, tagged v1; v0 untouched
    refs = hub.list_refs(repo_id="alice/race")
    new = subprocess.run(
        ["git", "--git-dir", str(bare), "rev-list", f"{head}..main"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert new == [refs.branches["main"]] == [refs.tags["v1"]], (new, refs)
    out = hub.download(repo_id="alice/race", revision="v1")
    assert json.loads((out / "config.json").read_text())["who"] == winners[0]
    assert set(refs.tags) == {"v0", "v1"} and refs.tags["v0"] == head
    assert _fsck(bare) == ""


@pytest.mark.slow
def test_a_push_killed_between_branch_and_tag_leaves_main_and_tags_as_before(tmp_path):
    import os
    import signal
    import time

    hub = LocalHub()
    hub.create_repo(repo_id="alice/m")
    hub.upload_folder(repo_id="alice/m", folder_path=_export(tmp_path / "old", "old"))
    hub.create_tag(repo_id="alice/m", tag="v0")
    bare = hub.root / "models/alice/m.git"
    before = _refs(bare)
    pgid_file = tmp_path / "pgid"
    hook = bare / "hooks" / "pre-receive"
    # the moment a push carries the version's tag, the pusher dies: openllm, its git and the hub's receive-pack
    # all at once (kill -9 of the process group), as a crash or a pulled plug would
    hook.write_text(
        f"#!/bin/sh\nif grep -q ' refs/tags/'; then\n"
        f"  while [ ! -s '{pgid_file}' ]; do sleep 0.05; done\n"
        f"  kill -9 -$(cat '{pgid_file}'); sleep 60\nfi\n"
    )
    hook.chmod(0o755)
    src = _export(tmp_path / "new", "new")
    proc = subprocess.Popen(
        [sys.executable, "-m", "openllm", "hub", "push", str(src), "--repo", "alice/m", "--version", "v1"],
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    pgid_file.write_text(str(os.getpgid(proc.pid)))
    try:
        assert proc.wait(timeout=300) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.2)
    hook.unlink()
    assert _refs(bare) == before  # main and every tag exactly as before: no commit without its version
    assert _fsck(bare) == ""
    run_cli("hub", "push", str(src), "--repo", "alice/m", "--version", "v1")  # and the version is still free
    refs = hub.list_refs(repo_id="alice/m")
    assert refs.branches["main"] == refs.tags["v1"]


@pytest.mark.slow
def test_a_refused_dataset_version_leaves_the_repo_as_before(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "one"}\n')
    run_cli("data", "upload", str(data), "--repo", "alice/corpus", "--version", "v1")
    bare = LocalHub().root / "datasets/alice/corpus.git"
    before = _refs(bare)
    (data / "train.jsonl").write_text('{"text": "two"}\n')
    proc = run_cli("data", "upload", str(data), "--repo", "alice/corpus", "--version", "v1", check=False)
    _one_line_error(proc, "already has version v1", "another --version")
    assert "--force" not in proc.stderr  # data upload has no --force
    assert _refs(bare) == before
    assert _fsck(bare) == ""


@pytest.mark.slow
def test_uploads_with_a_link_out_of_the_folder_are_refused_and_create_nothing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "one"}\n')
    (data / "passwd").symlink_to("/etc/passwd")
    export = _export(tmp_path / "export", "a")
    (export / "secret.key").symlink_to(tmp_path / "data" / "train.jsonl")  # a file of another folder
    _one_line_error(
        run_cli("data", "upload", str(data), "--repo", "alice/corpus", check=False),
        "passwd is a link to /etc/passwd, outside the folder",
    )
    _one_line_error(
        run_cli("hub", "push", str(export), "--repo", "alice/tiny", "--version", "v1", check=False),
        "secret.key is a link to",
        "outside the folder",
    )
    _one_line_error(
        run_cli(
            "hub",
            "push",
            str(export),
            "--repo",
            "alice/tiny",
            "--version",
            "v1",
            "--hub",
            "ftp://x",
            cwd=tmp_path,
            check=False,
        ),
        "unknown hub URL scheme 'ftp://'",
    )
    assert not LocalHub().root.exists() and not (tmp_path / "ftp:").exists()  # nothing was created


# --- refusals, kills and temporary copies (issue 24) ----------------------------------------------------------


def _hub_with_a_version() -> LocalHub:
    hub = LocalHub()  # the test's own OPENLLM_HUB
    hub.create_repo(repo_id="alice/tiny")
    c = hub.create_commit(repo_id="alice/tiny", commit_message="m", operations=[CommitOperationAdd("x", b"1")])
    hub.create_tag(repo_id="alice/tiny", tag="7k", revision=c)
    return hub


def test_pull_into_an_existing_file_is_a_one_line_refusal(tmp_path):
    _hub_with_a_version()
    target = tmp_path / "a-file"
    target.write_text("mine")
    proc = run_cli("hub", "pull", "alice/tiny@7k", "--out", str(target), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "is a file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert target.read_text() == "mine"


@pytest.mark.parametrize("command", ["versions", "pull", "push", "list"])
def test_a_hub_folder_whose_parent_is_missing_is_refused_and_nothing_is_created(
    tmp_path, export_tokenizer_dir, command
):
    """--hub PATH names an existing hub, or a new one inside an existing folder; a mistyped path never creates
    folders (the refusal comes before anything is written)."""
    missing = tmp_path / "nonexistent" / "h"
    if command == "push":
        args = ("hub", "push", str(make_export_run(tmp_path / "run", export_tokenizer_dir)), "--repo", "alice/tiny")
    else:
        args = {
            "versions": ("hub", "versions", "alice/tiny"),
            "pull": ("hub", "pull", "alice/tiny@7k", "--out", str(tmp_path / "o")),
            "list": ("hub", "list"),
        }[command]
    proc = run_cli(*args, "--hub", str(missing), check=False)
    if command == "list":  # an honest answer: no repos there
        assert proc.returncode == 0 and "no model repos" in proc.stdout, proc.stderr
    else:
        assert proc.returncode == 2, proc.stderr
        assert "does not exist" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nonexistent").exists()
    assert not (tmp_path / "o").exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_of_a_push_takes_its_git_along_and_the_next_push_cleans_its_copies(tmp_path):
    """kill -9 of `hub push` while git pushes: git dies with it (it does not go on and land the version after
    the kill), and the temporary copies of the model it leaves are removed by the next push."""
    import os
    import signal
    import time

    hub = LocalHub()
    hub.create_repo(repo_id="alice/m")
    bare = hub.root / "models/alice/m.git"
    before = _refs(bare)
    hold, receiving = tmp_path / "hold", tmp_path / "receiving"
    hold.touch()
    hook = bare / "hooks" / "pre-receive"
    # the hub holds the push while 'hold' exists, then refuses it: a push that outlives its pusher never lands
    hook.write_text(
        f"#!/bin/sh\nif [ -e '{hold}' ]; then\n  touch '{receiving}'\n"
        f"  while [ -e '{hold}' ]; do sleep 0.05; done\n  exit 1\nfi\n"
    )
    hook.chmod(0o755)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    src = _export(tmp_path / "model", "new")
    push = [sys.executable, "-m", "openllm", "hub", "push", str(src), "--repo", "alice/m", "--version", "v1"]
    proc = subprocess.Popen(push, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not receiving.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        gits = _children(proc.pid)
        assert gits  # git push, waiting for the hub
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in gits) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in gits if _alive(p)], "git outlived the push that started it"
        left = sorted(p.name.split("-")[1] for p in tmp.iterdir() if p.name.startswith("openllm-"))
        assert left  # what kill -9 leaves: the staged model and git's workspace
    finally:
        hold.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    assert _refs(bare) == before
    hook.unlink()
    res = subprocess.run(push, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not [p.name for p in tmp.iterdir() if p.name.startswith("openllm-")]
    refs = hub.list_refs(repo_id="alice/m")
    assert refs.branches["main"] == refs.tags["v1"]
