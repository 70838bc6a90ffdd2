"""Bad input, as a careless or hostile user gives it, to every command: real ``openllm`` subprocesses.

Each case starts from a fresh copy of a small workspace (a prepared corpus, a tokenizer, tokenized shards, a run
with two checkpoints, a Hugging Face export), damages or misuses something, runs one command and asserts:

- the exit status is not 0 (or is 0 where the case says the command must survive the damage);
- stderr holds no Python traceback and ends with one ``error: ...`` line;
- no file outside the command's own output changed (the tree is hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import make_export_run

pytestmark = pytest.mark.slow


# --- the workspace ---------------------------------------------------------------------------------------------

TEXT = "\n\n".join(f"Verse {i}. In the beginning was the word, and the word was number {i}." for i in range(1000))


@pytest.fixture(scope="module")
def base(tmp_path_factory, export_tokenizer_dir) -> Path:
    from openllm.export import export
    from openllm.prepare import prepare_corpus
    from openllm.shards import tokenize_corpus

    root = tmp_path_factory.mktemp("fuzz_base")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    prepare_corpus([root / "corpus.txt"], root / "prepared", progress=False)
    shutil.copytree(export_tokenizer_dir, root / "tok")
    tokenize_corpus(root / "prepared", root / "tok", root / "tokens", workers=1, progress=False)
    make_export_run(root / "run", export_tokenizer_dir)
    export(root / "run", root / "hf", ["hf"], progress=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "openllm",
            "train",
            "--config",
            "tiny",
            "--data",
            str(root / "tokens"),
            "--out",
            str(root / "trained"),
            "--max-steps",
            "4",
            "--save-every",
            "2",
            "--vocab-from-data",
            "--no-progress",
            "--set",
            "model.n_layers=1",
            "--set",
            "train.eval_every=1000",
        ],
        check=True,
        capture_output=True,
    )
    return root


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if any(d == s or s in d.parents for s in skip):
            continue
        for name in filenames:
            p = d / name
            if p in skip or p.is_symlink():
                continue
            try:
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            except OSError:
                out[str(p.relative_to(root))] = "unreadable"
        out.update({str((d / n).relative_to(root)) + "/": "dir" for n in dirnames if d / n not in skip})
    return out


@dataclass
class Case:
    name: str
    argv: Callable[[Path], list[str]]
    setup: Callable[[Path], None] = lambda ws: None
    outputs: tuple[str, ...] = ()  # paths (relative to the workspace) the command may write
    match: str = ""  # a piece of the one-line error
    ok: bool = False  # the command must survive the damage (exit 0)
    env: dict = field(default_factory=dict)


def _damage(rel: str, how: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        p = ws / rel
        data = p.read_bytes() if p.exists() else b""
        if how == "truncate":
            p.write_bytes(data[: max(1, len(data) // 3)])
        elif how == "empty":
            p.write_bytes(b"")
        elif how == "random":
            p.write_bytes(os.urandom(max(64, len(data) // 4)))
        elif how == "delete":
            p.unlink()
        elif how == "latin1":
            p.write_bytes('{"x": "caf\xe9"}'.encode("latin-1"))
        else:
            p.write_text(how, encoding="utf-8")

    return setup


CK10 = "run/checkpoints/step_00000010"
TRAINED4 = "trained/checkpoints/step_00000004"
_DELETE = object()


def _edit_json(path: Path, dotted: str, value) -> None:
    """Set (or delete, with ``_DELETE``) one field of a JSON file, by its dotted path."""
    data = json.loads(path.read_text(encoding="utf-8"))
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    path.write_text(json.dumps(data), encoding="utf-8")


def _conversations(ws: Path) -> None:
    line = {"messages": [{"role": "user", "content": "Verse 3?"}, {"role": "assistant", "content": "Verse 3."}]}
    (ws / "conv.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES: list[Case] = [
    # --- a run folder belongs to its run
    Case(
        "train into an HF export",
        lambda ws: [
            "train",
            "--config",
            "tiny",
            "--data",
            "tokens",
            "--out",
            "hf",
            "--max-steps",
            "1",
            "--vocab-from-data",
        ],
        match="hf",
    ),
    Case(
        "train-tokenizer into a foreign folder",
        lambda ws: ["train-tokenizer", "--data", "prepared", "--vocab-size", "300", "--out", "run"],
    ),
    Case(
        "export --overwrite over a foreign folder",
        lambda ws: ["export", "run", "--format", "native", "--out", "prepared", "--overwrite"],
    ),
    Case("prepare-data reads its own output", lambda ws: ["prepare-data", "prepared", "--out", "prepared"]),
    # a text file where its prepared folder belongs: said so, not "not found" (issue 24)
    Case(
        "tokenize --data FILE",
        lambda ws: ["tokenize", "--data", "prepared/train.jsonl", "--tokenizer", "tok", "--out", "t2"],
        match="is a file; tokenize wants a prepared-data folder",
    ),
    # --- damaged files
    *[
        Case(
            f"{cmd} with {how} weights",
            argv,
            setup=_damage(f"{CK10}/model.safetensors", how),
            match="model.safetensors",
        )
        for how in ("truncate", "empty", "random")
        for cmd, argv in (
            ("generate", lambda ws: ["generate", "run", "--prompt", "x", "--max-new-tokens", "2"]),
            (
                "evaluate",
                lambda ws: ["evaluate", "run", "--no-generation", "--no-write", "--no-baselines", "--data", "tokens"],
            ),
            ("export", lambda ws: ["export", "run", "--format", "hf", "--out", "exp"]),
            ("hub push", lambda ws: ["hub", "push", "run", "--repo", "me/x"]),
        )
    ],
    Case(
        "generate with a broken state.json",
        lambda ws: ["generate", "run", "--prompt", "x"],
        setup=_damage(f"{CK10}/state.json", '{"step": '),
        match="state.json",
    ),
    Case(
        "generate with a wrongly typed state.json",
        lambda ws: ["generate", "run", "--prompt", "x"],
        setup=_damage(f"{CK10}/state.json", "[1, 2]"),
        match="state.json",
    ),
    Case(
        "generate with a corrupt tokenizer",
        lambda ws: ["generate", "run", "--prompt", "x"],
        setup=_damage("run/tokenizer/tokenizer.model", "random"),
        match="tokenizer",
    ),
    Case(
        "tokenize with a corrupt tokenizer",
        lambda ws: ["tokenize", "--data", "prepared", "--tokenizer", "tok", "--out", "t2"],
        setup=_damage("tok/tokenizer.model", "truncate"),
        outputs=("t2",),
        match="tokenizer",
    ),
    Case(
        "train on meta.json with wrong types",
        lambda ws: ["train", "--config", "tiny", "--data", "tokens", "--out", "r2", "--max-steps", "1"],
        setup=_damage("tokens/meta.json", json.dumps({"vocab_size": "many", "dtype": 7})),
        outputs=("r2",),
        match="meta.json",
    ),
    Case(
        "train on a shard of odd size",
        lambda ws: [
            "train",
            "--config",
            "tiny",
            "--data",
            "tokens",
            "--out",
            "r2",
            "--max-steps",
            "1",
            "--vocab-from-data",
        ],
        setup=lambda ws: (ws / "tokens/train_000.bin").write_bytes(
            (ws / "tokens/train_000.bin").read_bytes() + b"\x01"
        ),
        outputs=("r2",),
        match="train_000.bin",
    ),
    Case(
        "info with a non-UTF-8 config",
        lambda ws: ["info", "bad.json"],
        setup=_damage("bad.json", "latin1"),
        match="bad.json",
    ),
    Case(
        "compare a run whose weights are damaged (reads no weights)",
        lambda ws: ["compare", "run"],
        setup=_damage(f"{CK10}/model.safetensors", "truncate"),
        ok=True,
    ),
    Case(
        "serve damaged weights",
        lambda ws: ["serve", "run", "--port", str(_free_port())],
        setup=_damage(f"{CK10}/model.safetensors", "truncate"),
        match="model.safetensors",
    ),
    Case(
        "compare with a non-UTF-8 metrics file",
        lambda ws: ["compare", "run"],
        setup=lambda ws: (ws / "run/metrics.jsonl").write_bytes(b'\xff\xfe\n{"step": 1, "loss": 2.0}\n'),
        ok=True,
    ),
    # --- a resumed run survives a damaged newest checkpoint
    *[
        Case(
            f"resume past {what}",
            lambda ws: ["train", "--out", "trained", "--max-steps", "6", "--no-progress"],
            setup=setup,
            outputs=("trained",),
            ok=True,
            match="skipping step_00000004",
        )
        for what, setup in (
            ("truncated weights", _damage("trained/checkpoints/step_00000004/model.safetensors", "truncate")),
            ("a corrupt optimizer", _damage("trained/checkpoints/step_00000004/optimizer.pt", "random")),
            ("a missing optimizer", _damage("trained/checkpoints/step_00000004/optimizer.pt", "delete")),
        )
    ],
    Case(
        "resume a named damaged checkpoint",
        lambda ws: ["train", "--out", "trained", "--max-steps", "6", "--resume", "trained/checkpoints/step_00000004"],
        setup=_damage("trained/checkpoints/step_00000004/optimizer.pt", "empty"),
        match="optimizer.pt",
    ),
    # --- environment and arguments
    Case("an unknown device", lambda ws: ["generate", "run", "--prompt", "x", "--device", "tpu9"], match="tpu9"),
    Case("cuda without a GPU", lambda ws: ["generate", "run", "--prompt", "x", "--device", "cuda"], match="cuda"),
    Case("output path is a file", lambda ws: ["prepare-data", "corpus.txt", "--out", "corpus.txt"]),
    Case(
        "output under a file", lambda ws: ["prepare-data", "corpus.txt", "--out", "corpus.txt/sub"], match="corpus.txt"
    ),
    # root writes through file modes: a folder of a read-only file system stands in for a read-only disk
    Case(
        "unwritable output folder",
        lambda ws: ["prepare-data", "corpus.txt", "--out", "/sys/openllm-fuzz/out"],
        match="/sys/openllm-fuzz",
    ),
    Case(
        "unwritable run folder",
        lambda ws: [
            "train",
            "--config",
            "tiny",
            "--data",
            "tokens",
            "--out",
            "/sys/openllm-fuzz/run",
            "--vocab-from-data",
        ],
        match="/sys/openllm-fuzz",
    ),
    Case("compare --plot with an unknown extension", lambda ws: ["compare", "run", "--plot", "x.xyz"], match="xyz"),
    Case(
        "min_lr above lr",
        lambda ws: [
            "train",
            "--config",
            "tiny",
            "--data",
            "tokens",
            "--out",
            "r2",
            "--set",
            "train.min_lr=1",
            "--set",
            "train.lr=0.001",
            "--vocab-from-data",
        ],
        outputs=("r2",),
        match="min_lr",
    ),
    Case(
        "tokenize with negative workers",
        lambda ws: ["tokenize", "--data", "prepared", "--tokenizer", "tok", "--out", "t2", "--workers", "-3"],
        outputs=("t2",),
        match="workers",
    ),
    Case(
        "evaluate with batch size 0", lambda ws: ["evaluate", "run", "--batch-size", "0", "--no-write"], match="batch"
    ),
    Case("evaluate with window 0", lambda ws: ["evaluate", "run", "--window", "0", "--no-write"], match="window"),
    Case("prepare-data /dev/null", lambda ws: ["prepare-data", "/dev/null", "--out", "p2"], outputs=("p2",)),
    Case(
        "a model that cannot fit in memory",
        lambda ws: [
            "train",
            "--config",
            "large",
            "--data",
            "tokens",
            "--out",
            "r2",
            "--vocab-from-data",
            "--set",
            "train.micro_batch_size=100000",
        ],
        outputs=("r2",),
        match="micro_batch_size",
    ),
    Case("an unknown hub URL scheme", lambda ws: ["hub", "versions", "me/x", "--hub", "ftp://x"], match="ftp"),
    Case(
        "a reserved version name",
        lambda ws: ["hub", "push", "run", "--repo", "me/x", "--version", "HEAD"],
        match="HEAD",
    ),
    Case(
        "a prompt that is not UTF-8",
        lambda ws: ["generate", "run", "--prompt", os.fsdecode(b"In \xff\xfe")],
        match="--prompt is not UTF-8",
    ),
    Case(
        "a file name that is not UTF-8",
        lambda ws: ["prepare-data", os.fsdecode(b"corpus\xff.txt"), "--out", "p2"],
        outputs=("p2",),
        match="corpus",
    ),
    Case("a missing run folder", lambda ws: ["generate", "rnu", "--prompt", "x"], match="rnu"),
    # --- the hub (issue 15): reserved names, unknown URL schemes, links out of an uploaded folder
    Case(
        "a Space sync tag as a version",
        lambda ws: ["hub", "push", "hf", "--repo", "me/x", "--version", "sync-1-0123456789ab"],
        match="sync-",
    ),
    Case(
        "a dataset version named main",
        lambda ws: ["data", "upload", "prepared", "--repo", "me/d", "--version", "main"],
        match="main",
    ),
    Case(
        "hub push to an unknown hub URL scheme",
        lambda ws: ["hub", "push", "hf", "--repo", "me/x", "--version", "v1", "--hub", "ftp://x"],
        match="ftp://",
    ),
    Case(
        "data upload to an unknown hub URL scheme",
        lambda ws: ["data", "upload", "prepared", "--repo", "me/d", "--hub", "s3://bucket"],
        match="s3://",
    ),
    Case(
        "data upload of a folder with a link to /etc/passwd",
        lambda ws: ["data", "upload", "prepared", "--repo", "me/d"],
        setup=lambda ws: (ws / "prepared" / "passwd.txt").symlink_to("/etc/passwd"),
        match="/etc/passwd",
    ),
    Case(
        "hub push of an export with a link out of it",
        lambda ws: ["hub", "push", "hf", "--repo", "me/x", "--version", "v1"],
        setup=lambda ws: (ws / "hf" / "notes.txt").symlink_to(ws / "corpus.txt"),
        match="notes.txt",
    ),
    # --- refusals before any write (issue 24)
    Case("hub pull into a file", lambda ws: ["hub", "pull", "me/x@v1", "--out", "corpus.txt"], match="is a file"),
    Case(
        "export over a link with --overwrite",
        lambda ws: ["export", "run", "--format", "native", "--out", "link", "--overwrite"],
        setup=lambda ws: (ws / "link").symlink_to(ws / "hf"),
        match="is a link",
    ),
    Case(
        "hub push to a hub folder whose parent does not exist",
        lambda ws: ["hub", "push", "run", "--repo", "me/x", "--version", "v1", "--hub", str(ws / "nonexistent" / "h")],
        match="does not exist",
    ),
    Case(
        "hub push to a folder that is not a hub",
        lambda ws: ["hub", "push", "run", "--repo", "me/x", "--version", "v1", "--hub", "prepared"],
        match="not a hub",
    ),
    # --- absurd values are refused by validation, not found by a crash (issue 24)
    Case(
        "a seed of 2^64",
        lambda ws: ["train", "--out", "trained", "--max-steps", "6", "--set", "train.seed=18446744073709551616"],
        match="train.seed",
    ),
    Case(
        "a 5,000-digit --set value",
        lambda ws: ["info", "tiny", "--set", "model.d_model=" + "9" * 5000],
        match="d_model",
    ),
    Case("--set JSON nested 5,000 deep", lambda ws: ["info", "tiny", "--set", "train.lr=" + "[" * 5000 + "]" * 5000]),
    Case(
        "a config file nested 5,000 deep",
        lambda ws: ["info", "deep.json"],
        setup=_damage("deep.json", '{"model": ' + "[" * 5000 + "]" * 5000 + "}"),
        match="deep.json",
    ),
    Case(
        "a config file with a 5,000-digit number",
        lambda ws: ["info", "digits.json"],
        setup=_damage("digits.json", '{"train": {"seed": ' + "7" * 5000 + "}}"),
        match="digits.json",
    ),
    Case(
        "info of two million layers", lambda ws: ["info", "tiny", "--set", "model.n_layers=2000000"], match="n_layers"
    ),
    Case(
        "info of a trillion-parameter shape",
        lambda ws: (
            ["info", "tiny", "--set", "model.d_model=65536", "--set", "model.n_heads=64"]
            + ["--set", "model.n_layers=1000"]
        ),
        match="parameters",
    ),
    # --- damaged fields of files the commands read
    *[
        Case(
            f"train on meta.json whose {what}",
            lambda ws: ["train", "--config", "tiny", "--data", "tokens", "--out", "r2", "--vocab-from-data"],
            setup=setup,
            outputs=("r2",),
            match="meta.json",
        )
        for what, setup in (
            ("shard list is a number", lambda ws: _edit_json(ws / "tokens/meta.json", "splits.train.shards", 5)),
            ("shard is outside it", lambda ws: _edit_json(ws / "tokens/meta.json", "splits.train.shards", ["../x"])),
            ("token count is text", lambda ws: _edit_json(ws / "tokens/meta.json", "splits.train.tokens", "x")),
            ("vocab_size is missing", lambda ws: _edit_json(ws / "tokens/meta.json", "vocab_size", _DELETE)),
        )
    ],
    *[
        Case(
            f"resume from a state.json whose {what}",
            lambda ws: [
                "train",
                "--out",
                "trained",
                "--max-steps",
                "6",
                "--resume",
                "trained/checkpoints/step_00000004",
            ],
            setup=setup,
            match="state.json",
        )
        for what, setup in (
            ("config is missing", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "config", _DELETE)),
            ("config is a number", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "config", 5)),
            ("data_dir is a number", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "data_dir", 5)),
            ("loader position is text", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "loader.position", "x")),
            ("scheduler is a number", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "scheduler", 5)),
            ("RNG state is a number", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "rng", 5)),
            ("tokens_seen is text", lambda ws: _edit_json(ws / f"{TRAINED4}/state.json", "tokens_seen", "x")),
        )
    ],
    # --- refused resumes change nothing (issue 24)
    *[
        Case(
            f"resume with {item}",
            lambda ws, item=item: ["train", "--out", "trained", "--max-steps", "6", "--set", item],
            match=item.split("=")[0],
        )
        for item in ("train.seed=5", "train.seq_len=16")
    ],
    Case(
        "resume with a --config of another lr",
        lambda ws: ["train", "--config", "other.json", "--out", "trained", "--max-steps", "6"],
        setup=lambda ws: (
            shutil.copy(ws / "trained/config.json", ws / "other.json"),
            _edit_json(ws / "other.json", "train.lr", 0.0123),
        ),
        match="train.lr",
    ),
    # --- output files and fine-tune options
    Case(
        "evaluate --json at a folder",
        lambda ws: ["evaluate", "run", "--json", "prepared", "--no-generation", "--no-baselines"],
        match="is a folder",
    ),
    Case("compare --json at a folder", lambda ws: ["compare", "run", "--json", "prepared"], match="is a folder"),
    Case(
        "finetune --evaluate --json at a folder",
        lambda ws: ["finetune", "run", "--evaluate", "conv.jsonl", "--json", "prepared"],
        setup=_conversations,
        match="is a folder",
    ),
    Case(
        "finetune --lora-rank 0",
        lambda ws: ["finetune", "run", "--data", "conv.jsonl", "--out", "ft", "--lora-rank", "0", "--max-steps", "1"],
        setup=_conversations,
        outputs=("ft",),
        match="--lora-rank",
    ),
    # --- a text file to score that holds nothing: what was wrong and what to give (issue 24)
    Case(
        "evaluate --text /dev/null",
        lambda ws: ["evaluate", "run", "--text", "/dev/null", "--no-write"],
        match="/dev/null is not a regular file",
    ),
    Case(
        "evaluate --text an empty file",
        lambda ws: ["evaluate", "run", "--text", "empty.txt", "--no-write"],
        setup=lambda ws: (ws / "empty.txt").write_bytes(b""),
        match="empty.txt is empty: give a UTF-8 text file",
    ),
    # --- training options that would be dropped or fail late: refused before anything is written (issue 24)
    Case(
        "train --repo without --on hf-jobs",
        lambda ws: ["train", "--config", "tiny", "--data", "tokens", "--out", "r", "--repo", "me/x"],
        match="add --on hf-jobs",
    ),
    Case(
        "train --on hf-jobs with a flavor Jobs does not have",
        lambda ws: ["train", "--config", "c.json", "--data", "tokens", "--out", "r", "--on", "hf-jobs:a10g-smal"],
        match="no such Hugging Face Jobs flavor",
    ),
    Case(
        "train --on hf-jobs with --set",
        lambda ws: [
            *("train", "--config", "trained/config.json", "--data", "tokens", "--out", "r", "--on", "hf-jobs"),
            *("--repo", "me/x", "--set", "train.lr=0.1"),
        ],
        match="does not take --set",
    ),
    Case(
        "resume switching train.recipe",
        lambda ws: ["train", "--out", "trained", "--max-steps", "6", "--set", "train.recipe=classic"],
        match="train.optimizer 'muon' -> 'adamw'",
    ),
    Case(
        "app with OPENLLM_WORKSPACE at a file",
        lambda ws: ["app", "--port", str(_free_port())],
        env={"OPENLLM_WORKSPACE": "corpus.txt"},
        match="corpus.txt is not a folder",
    ),
    # --- finetune --make-data writes only into its own folder (issue 24)
    Case(
        "finetune --make-data over a prepared corpus",
        lambda ws: ["finetune", "--make-data", "prepared"],
        match="prepared",
    ),
    Case("finetune --make-data into a run folder", lambda ws: ["finetune", "--make-data", "trained"], match="trained"),
    Case("finetune --make-data into a foreign folder", lambda ws: ["finetune", "--make-data", "tok"], match="tok"),
    Case("finetune --make-data into a file", lambda ws: ["finetune", "--make-data", "corpus.txt"], match="corpus.txt"),
    Case(
        "finetune --make-data of 10^17 conversations",
        lambda ws: ["finetune", "--make-data", "conv", "--conversations", "1" + "0" * 17],
        outputs=("conv",),
        match="conversations",
    ),
    Case(
        "finetune --make-data from an export (no corpus recorded)",
        lambda ws: ["finetune", "hf", "--make-data", "conv"],
        outputs=("conv",),
        match="corpus",
    ),
    # --- sizes that would be allocated before a check
    Case(
        "generate more tokens than any context",
        lambda ws: ["generate", "run", "--prompt", "x", "--max-new-tokens", "100000000000000"],
        match="--max-new-tokens",
    ),
    Case("info at sequence length -3", lambda ws: ["info", "tiny", "--seq-len", "-3"], match="--seq-len"),
    Case(
        "accumulation past int64",
        lambda ws: ["train", "--out", "trained", "--max-steps", "6", "--set", "train.grad_accum_steps=" + "9" * 20],
        match="grad_accum_steps",
    ),
    Case("quickstart into a file", lambda ws: ["quickstart", "--out", "corpus.txt"], match="corpus.txt is a file"),
    Case(
        "export under a file",
        lambda ws: ["export", "run", "--format", "hf", "--out", "corpus.txt/x"],
        match="corpus.txt is a file",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, base: Path, tmp_path: Path):
    import subprocess

    ws = tmp_path / "ws"
    shutil.copytree(base, ws, symlinks=True)
    case.setup(ws)
    skip = tuple(ws / o for o in case.outputs)
    before = _snapshot(ws, skip)
    env = {
        **os.environ,
        "OPENLLM_HUB": str(tmp_path / "hub"),
        "OPENLLM_CACHE": str(tmp_path / "cache"),
        "PYTHONIOENCODING": "utf-8",
        **case.env,
    }
    env.pop("OPENLLM_DEBUG", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "openllm", *case.argv(ws)],
            cwd=ws,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            errors="replace",
        )
    finally:
        for p in ws.rglob("*"):  # let pytest clean up what a case made read-only
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
    err = proc.stderr.strip()
    assert "Traceback" not in err, f"{case.name}: traceback\n{err[-3000:]}"
    assert "failed unexpectedly" not in err, f"{case.name}: an unexpected error\n{err[-3000:]}"
    if case.ok:
        assert proc.returncode == 0, f"{case.name}: exit {proc.returncode}\n{err[-2000:]}"
        assert case.match.lower() in err.lower(), f"{case.name}: stderr does not mention {case.match!r}"
    else:
        assert proc.returncode != 0, f"{case.name}: exit 0\n{proc.stdout[-2000:]}"
        last = err.splitlines()[-1] if err else ""
        assert last.startswith("error: "), f"{case.name}: no one-line error\n{err[-2000:]}"
        assert case.match.lower() in last.lower(), f"{case.name}: {last!r} does not mention {case.match!r}"
    after = _snapshot(ws, skip)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{case.name}: changed outside its output: {changed[:10]}"
