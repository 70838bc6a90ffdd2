import os
import sys
from pathlib import Path

import pytest

# no telemetry, no calls out, anywhere in the suite
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Tiny Shakespeare, WikiText-2, LAMBADA, HellaSwag): CI has it, users do not."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    """Every test gets its own local hub and cache, never the user's."""
    monkeypatch.setenv("OPENLLM_HUB", str(tmp_path / "_hub"))
    monkeypatch.setenv("OPENLLM_CACHE", str(tmp_path / "_cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield


def run_cli(*args: str, check: bool = True, env: dict | None = None, cwd=None, timeout: int = 600):
    """Run the real console entry point in a subprocess, as a user would."""
    import subprocess

    e = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "openllm", *args], capture_output=True, text=True, env=e, cwd=cwd, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"openllm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- export / loading fixtures (issue 6) --------------------------------------------------------------------

EXPORT_TINY_MODEL = dict(
    vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128, init_std=0.2
)


@pytest.fixture(scope="session")
def export_tokenizer_dir(tmp_path_factory) -> Path:
    """A 512-token SentencePiece tokenizer folder (with the Hugging Face files), trained on this package's
    own source text, so it needs no downloaded data."""
    from openllm.tokenizer import train_tokenizer

    src = REPO / "src" / "openllm"
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(src.glob("*.py")))
    corpus = tmp_path_factory.mktemp("tok_corpus") / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([corpus], out, vocab_size=512, progress=False, threads=1)
    return out


def make_export_run(
    root: Path,
    tokenizer_dir: Path,
    *,
    steps=(5, 10),
    seed: int = 0,
    tied: bool = True,
    checkpoint_with_head: bool = True,
    **model_overrides,
) -> Path:
    """A run folder written by hand per the run-folder contract (docs/architecture.md): config.json,
    tokenizer/, metrics.jsonl, status.json, checkpoints/step_NNNNNNNN/{model.safetensors,state.json}.
    Each checkpoint holds different weights (seed + step)."""
    import json
    import shutil

    import torch
    from safetensors.torch import save_file, save_model

    from openllm.config import Config, ModelConfig
    from openllm.model import Transformer

    mc = ModelConfig(**{**EXPORT_TINY_MODEL, "tie_embeddings": tied, **model_overrides})
    cfg = Config(model=mc, name="export-test").validate()
    run = Path(root)
    (run / "checkpoints").mkdir(parents=True)
    cfg.save(run / "config.json")
    shutil.copytree(tokenizer_dir, run / "tokenizer")
    with open(run / "metrics.jsonl", "w") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "loss": 5.0, "lr": 1e-3, "tokens_per_s": 1.0}) + "\n")
    (run / "status.json").write_text(
        json.dumps(
            {"state": "finished", "step": max(steps, default=0), "max_steps": max(steps, default=0), "error": None}
        )
    )
    for s in steps:
        torch.manual_seed(seed + s)
        model = Transformer(mc)
        with torch.no_grad():  # perturb the norms so a mix-up of norms would show
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.add_(torch.randn_like(p) * 0.1)
        ck = run / "checkpoints" / f"step_{s:08d}"
        ck.mkdir()
        if checkpoint_with_head:
            save_model(model, str(ck / "model.safetensors"))
        else:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            if tied:
                state.pop("lm_head.weight")
            save_file(state, str(ck / "model.safetensors"))
        (ck / "state.json").write_text(json.dumps({"step": s, "tokens_seen": s * 1000, "config": cfg.to_dict()}))
    return run


@pytest.fixture(scope="session")
def default_recipe_run(tmp_path_factory, export_tokenizer_dir):
    """``make(n_kv_heads)``: a run folder trained for real by ``openllm.train`` with the presets' default recipe
    (``train.recipe = "speedrun"``: Muon, WSD, untied head, zero-initialised projections), 4 steps on this
    package's source, so the export parity tests check what a user who trains with the defaults exports."""
    from openllm.config import Config
    from openllm.prepare import prepare_corpus
    from openllm.shards import tokenize_corpus
    from openllm.train import train

    root = tmp_path_factory.mktemp("default_recipe")
    src = REPO / "src" / "openllm"
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(p.read_text(encoding="utf-8") for p in sorted(src.glob("*.py"))), encoding="utf-8")
    prepare_corpus([corpus], root / "prepared", val_fraction=0.1, progress=False)
    tokenize_corpus(root / "prepared", export_tokenizer_dir, root / "tokens", workers=1, progress=False)
    runs: dict[int, Path] = {}

    def make(n_kv_heads: int) -> Path:
        if n_kv_heads not in runs:
            model = {**EXPORT_TINY_MODEL, "n_kv_heads": n_kv_heads}
            model.pop("init_std")  # the recipe's own init
            train_cfg = {"recipe": "speedrun", "max_steps": 4, "micro_batch_size": 4, "seq_len": 64}
            train_cfg.update(warmup_steps=1, eval_every=4, eval_batches=1, save_every=4, log_every=1)
            cfg = Config.from_dict({"model": model, "train": train_cfg, "name": "export-test"})
            assert (cfg.train.optimizer, cfg.model.tie_embeddings, cfg.model.zero_init_proj) == ("muon", False, True)
            runs[n_kv_heads] = root / f"run-kv{n_kv_heads}"
            train(cfg, root / "tokens", runs[n_kv_heads], device="cpu", progress=False, log=lambda _: None)
        return runs[n_kv_heads]

    return make


@pytest.fixture
def export_run(tmp_path, export_tokenizer_dir) -> Path:
    """A tiny run folder (GQA, tied embeddings) with checkpoints at steps 5 and 10."""
    return make_export_run(tmp_path / "run", export_tokenizer_dir)


# --- serve fixtures (issue 10) ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory, export_tokenizer_dir) -> Path:
    """A run folder for the server tests: a 512-token context and an untied head whose EOS and byte rows
    are zero."""
    from safetensors.torch import load_file, save_file

    run = make_export_run(
        tmp_path_factory.mktemp("serve") / "run", export_tokenizer_dir, steps=(1,), tied=False, max_seq_len=512
    )
    weights = run / "checkpoints" / "step_00000001" / "model.safetensors"
    state = load_file(str(weights))
    from openllm.tokenizer import Tokenizer

    tok = Tokenizer.load(run / "tokenizer")
    # eos (id 3) and the byte-fallback pieces never win greedily: lengths are predictable and text is whole
    # characters, so streamed pieces can be compared with the full text
    for i in range(tok.vocab_size):
        if i == tok.eos_id or tok.id_to_piece(i).startswith("<0x"):
            state["lm_head.weight"][i] = 0.0
    save_file(state, str(weights))
    return run


@pytest.fixture(scope="session")
def serve_lm(serve_run):
    """``openllm.load`` of :func:`serve_run`: .model, .tokenizer, .config."""
    import openllm

    return openllm.load(serve_run)


@pytest.fixture(scope="session")
def evaluate_run_folder(tmp_path_factory):
    """A small trained run folder (tokenizer, shards, checkpoint, metrics.jsonl) shared by the evaluate and
    compare tests; built by tests/test_evaluate_run.py:make_run."""
    import torch

    from test_evaluate_run import make_run

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_run(tmp_path_factory.mktemp("evalrun"))
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """One torch thread for the test: on a shared 2-core CI box two OpenMP threads wait on each other when the
    other core is busy."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
