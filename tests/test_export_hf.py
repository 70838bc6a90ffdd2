"""Hugging Face export: loads with AutoModelForCausalLM / AutoTokenizer (no custom code), logits and greedy
tokens equal ours, tokenizer ids equal ours, and openllm.load reads it back bit-exactly."""

import json

import pytest
import torch

import openllm
from conftest import make_export_run
from openllm.export import export
from openllm.generate import SamplingParams, generate

TEXTS = [
    "def load(source, *, device='cpu'):",
    "  Hello,   world!\n\tTabs and ünïcødé — 🤖 ok",
    "12345 + 678 = 13023",
    "",
]


@pytest.fixture(
    params=[dict(tied=True), dict(default_recipe=True, n_kv_heads=1)],
    ids=["gqa-tied", "mqa-default-recipe-trained"],
    scope="module",
)
def hf_export(request, tmp_path_factory, export_tokenizer_dir, default_recipe_run):
    root = tmp_path_factory.mktemp("hf")
    if request.param.get("default_recipe"):  # trained for real with the presets' default recipe
        run = default_recipe_run(request.param["n_kv_heads"])
    else:
        run = make_export_run(root / "run", export_tokenizer_dir, steps=(7,), **request.param)
    export(run, root / "hf", "hf", progress=False)
    return run, root / "hf"


def _auto_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_files_and_configs(hf_export):
    run, out = hf_export
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "openllm.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
    } <= names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in cfg  # nothing to trust: no remote code
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (2, 3, 0)


def test_logits_equal_ours(hf_export):
    run, out = hf_export
    ours = openllm.load(run).model
    hf = _auto_model(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, ours.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_greedy_generate_equals_ours(hf_export):
    from transformers import AutoTokenizer

    run, out = hf_export
    loaded = openllm.load(run)
    hf = _auto_model(out)
    tok = AutoTokenizer.from_pretrained(out)
    prompts = ["def export(", "class Tokenizer:\n    "]
    ids = [loaded.tokenizer.encode(p) for p in prompts]
    params = SamplingParams(max_new_tokens=24, temperature=0, stop_tokens=(loaded.tokenizer.eos_id,))
    ours = generate(loaded.model, ids, params)
    # one at a time, and as a left-padded batch: both must give our tokens
    for p, want in zip(ids, ours):
        got = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0, len(p) :].tolist()
        assert got == want
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True)
    got = hf.generate(**batch, max_new_tokens=24, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, want in zip(got.tolist(), ours):
        assert row[: len(want)] == want


def test_tokenizer_ids_equal_ours(hf_export):
    from transformers import AutoTokenizer

    run, out = hf_export
    ours = openllm.load(run).tokenizer
    theirs = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert theirs.encode(text) == ours.encode(text), text
        assert theirs.decode(ours.encode(text)) == ours.decode(ours.encode(text))
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (2, 3, 0)


def test_openllm_load_round_trips_bit_exactly(hf_export, tmp_path):
    run, out = hf_export
    a, b = openllm.load(run), openllm.load(out)
    assert b.kind == "hf" and a.config == b.config
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    # a bare Llama folder (no openllm.json) loads too, its shape read from config.json
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in out.iterdir():
        if p.name != "openllm.json":
            (bare / p.name).write_bytes(p.read_bytes())
    c = openllm.load(bare)
    # a bare Llama's config.json says nothing of how it was initialised or trained: those take the defaults
    untold = {"init_std": 0.02, "dropout": 0.0, "zero_init_proj": False}
    assert c.config.model == a.config.model.__class__(**{**a.config.model.__dict__, **untold})
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, c.model.state_dict()[k]), k


CHATS = [
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "def export("},
        {"role": "assistant", "content": "class Tokenizer:"},
        {"role": "user", "content": "And then?"},
    ],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}],
]


def test_tokenizer_files_behave_as_documented(hf_export):
    """The documented call works as written: no token_type_ids (generate refuses them), truncation at the
    model's context, left padding, and generate(max_new_tokens=...) without the default-max_length warning.
    ``max_length`` = the context is what pipeline("text-generation") with no arguments needs (see
    test_the_oldest_and_newest_transformers_behave_alike); transformers 5 then says that ``max_new_tokens``
    takes precedence, which is what happens."""
    import logging
    import warnings

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    run, out = hf_export
    ctx = openllm.load(run).config.model.max_seq_len
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == ctx and tok.padding_side == "left"
    enc = tok("def export(", return_tensors="pt")
    assert set(enc) == {"input_ids", "attention_mask"}
    assert len(tok("x " * (2 * ctx), truncation=True)["input_ids"]) == ctx
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["max_length"] == ctx and "max_new_tokens" not in gen
    model = _auto_model(out)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    hf_logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(**enc, max_new_tokens=4, do_sample=False)
    finally:
        hf_logging.get_logger().removeHandler(handler)
    messages = [r.getMessage() for r in records if r.levelno >= logging.WARNING] + [str(w.message) for w in caught]
    assert not [m for m in messages if "max_length" in m and "will take precedence" not in m], messages


def test_transformers_applies_our_chat_template(hf_export):
    from transformers import AutoTokenizer

    from openllm.tokenizer import apply_chat_template

    run, out = hf_export
    tok = AutoTokenizer.from_pretrained(out)
    ours = openllm.load(run).tokenizer
    for msgs in CHATS:
        assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == apply_chat_template(msgs)
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
        ids = ids if isinstance(ids, list) else ids["input_ids"]
        assert list(ids) == ours.encode_chat(msgs)


@pytest.mark.slow
def test_transformers_renders_tools_as_our_server_does(hf_export):
    """A conversation with tools, an assistant's calls and a tool's result: the export's tokenizer gives the
    token ids the server's prompt has (serve.chat_prompt, the template in tokenizer.py)."""
    from transformers import AutoTokenizer

    from openllm.serve import chat_prompt
    from test_tokenizer import TOOL_CHAT, TOOLS

    run, out = hf_export
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(TOOL_CHAT, tools=TOOLS, add_generation_prompt=True)
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    served = chat_prompt(openllm.load(run).tokenizer, TOOL_CHAT, tools=TOOLS)
    assert list(ids) == served and tok.decode(served).count("<tool_call>") == 2


def test_export_folder_follows_the_umask(tmp_path, export_run):
    import os

    old = os.umask(0o022)
    try:
        export(export_run, tmp_path / "out", "hf", progress=False)
        export(export_run, tmp_path / "two", "hf,native,gguf", progress=False)
    finally:
        os.umask(old)
    for d in (tmp_path / "out", tmp_path / "two", tmp_path / "two" / "hf"):
        assert d.stat().st_mode & 0o777 == 0o755, d
    # every file too: safetensors writes its file 0600, which a web server or another user then cannot read
    files = [p for p in (tmp_path / "out").iterdir()] + [p for p in (tmp_path / "two").rglob("*") if p.is_file()]
    assert {"model.safetensors", "model-f16.gguf"} <= {p.name for p in files}
    assert {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files if p.is_file()} == {
        p.relative_to(tmp_path).as_posix(): oct(0o644) for p in files if p.is_file()
    }


def test_a_folder_saved_by_transformers_loads_with_its_tokenizer_json(hf_export, tmp_path):
    """transformers 5 saves tokenizer.json but no tokenizer.model: openllm.load falls back to tokenizer.json
    and encodes, decodes and generates as from the original export."""
    from transformers import AutoTokenizer

    run, out = hf_export
    saved = tmp_path / "saved"
    _auto_model(out).save_pretrained(saved)
    AutoTokenizer.from_pretrained(out).save_pretrained(saved)
    (saved / "tokenizer.model").unlink(missing_ok=True)
    a, b = openllm.load(run), openllm.load(saved)
    assert type(b.tokenizer).__name__ == "HFJsonTokenizer"
    # data tokenized with the original tokenizer.model still matches (evaluate checks this checksum)
    assert b.tokenizer.sha256 == a.tokenizer.sha256
    assert (b.tokenizer.bos_id, b.tokenizer.eos_id, b.tokenizer.pad_id) == (2, 3, 0)
    for text in TEXTS:
        assert b.tokenizer.encode(text) == a.tokenizer.encode(text), text
        assert b.tokenizer.decode(a.tokenizer.encode(text)) == a.tokenizer.decode(a.tokenizer.encode(text))
    for msgs in CHATS:
        assert b.tokenizer.encode_chat(msgs) == a.tokenizer.encode_chat(msgs)
    params = SamplingParams(max_new_tokens=8, temperature=0, stop_tokens=(3,))
    ids = [a.tokenizer.encode("def export(")]
    assert generate(b.model, ids, params) == generate(a.model, ids, params)


# --- the oldest transformers pyproject admits, in its own venv ---------------------------------------------

DOCUMENTED_SNIPPET = """
import json, sys, warnings
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

folder, prompts, chats = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
logged = []
class _Keep(__import__("logging").Handler):
    def emit(self, record):
        logged.append(record.getMessage())
hf_logging.get_logger().addHandler(_Keep())
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    greedy, keys = [], []
    for p in prompts:
        inputs = tok(p, return_tensors="pt")
        keys.append(sorted(inputs))
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
        greedy.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    batch = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    batched = out[:, batch["input_ids"].shape[1]:].tolist()
    chat = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in chats]
    # pipeline("text-generation") with its defaults (return_tensors only shapes the output) on a prompt of
    # most of the context: 4.45 refused it ("max_length is set to 20"), 5.x generated 256 tokens past the context
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok)
    long_prompt = " ".join(prompts * 40)
    long_ids = tok(long_prompt)["input_ids"][: tok.model_max_length * 3 // 4]
    long_prompt = tok.decode(long_ids)
    try:
        piped = len(pipe(long_prompt, return_tensors=True)[0]["generated_token_ids"])
    except ValueError as exc:
        piped = str(exc)
    piped_prompt = len(tok(long_prompt)["input_ids"])
print(json.dumps({"piped": piped, "piped_prompt": piped_prompt,
                  "version": transformers.__version__, "file": transformers.__file__, "keys": keys,
                  "greedy": greedy, "batched": batched, "chat": chat, "model_max_length": tok.model_max_length,
                  "padding_side": tok.padding_side,
                  "warnings": [str(w.message) for w in caught] + logged}))
"""


def _floor(dist: str) -> str:
    import re

    import tomllib

    from conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    spec = next(r for r in extras["export"] if r.startswith(dist))
    return re.search(r">=([\d.]+)", spec).group(1)


@pytest.fixture(scope="module")
def transformers_floor_python(tmp_path_factory):
    """A venv with the oldest transformers pyproject admits (and the tokenizers and huggingface_hub it
    needs), torch and the rest seen from this project's environment."""
    from test_packaging import fresh_venv

    floor = _floor("transformers")
    return fresh_venv(
        tmp_path_factory.mktemp("transformers-floor"),
        [f"transformers=={floor}.*", "tokenizers>=0.20,<0.21", "huggingface_hub>=0.23.2,<1.0"],
    )


def _run_documented_snippet(python, folder, prompts, chats) -> dict:
    import os
    import subprocess

    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(python), "-c", DOCUMENTED_SNIPPET, str(folder), json.dumps(prompts), json.dumps(chats)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _to_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [row[: row.index(eos) + 1] if eos in row else row for row in rows]


@pytest.mark.slow
def test_the_oldest_and_newest_transformers_behave_alike(hf_export, transformers_floor_python):
    """pyproject's floor (transformers 4.45, its own venv) and the installed 5.x: the README's
    ``model.generate(**tok(prompt, return_tensors="pt"))`` works, gives our greedy tokens (one prompt and a
    left-padded batch), the chat template renders as ours, and no max_length warning appears."""
    import sys

    from openllm.tokenizer import apply_chat_template

    run, out = hf_export
    loaded = openllm.load(run)
    prompts = ["def export(", "class Tokenizer:\n    "]
    params = SamplingParams(max_new_tokens=16, temperature=0)
    ours = generate(loaded.model, [loaded.tokenizer.encode(p) for p in prompts], params)
    floor = _floor("transformers")
    for python in (transformers_floor_python, sys.executable):
        got = _run_documented_snippet(python, out, prompts, CHATS)
        if python == transformers_floor_python:
            assert got["version"].startswith(floor + "."), got["version"]
            assert str(python.parent.parent) in got["file"]
        else:
            assert int(got["version"].split(".")[0]) >= 5
        assert got["keys"] == [["attention_mask", "input_ids"]] * len(prompts), got["version"]
        # transformers stops a sequence at EOS (a batch pads it after); ours ran on: equal up to the EOS
        eos = loaded.tokenizer.eos_id
        assert _to_eos(got["greedy"], eos) == _to_eos(ours, eos), got["version"]
        assert _to_eos(got["batched"], eos) == _to_eos(ours, eos), got["version"]
        assert got["chat"] == [apply_chat_template(m) for m in CHATS], got["version"]
        assert got["model_max_length"] == loaded.config.model.max_seq_len and got["padding_side"] == "left"
        ctx = loaded.config.model.max_seq_len
        assert isinstance(got["piped"], int) and got["piped_prompt"] < got["piped"] <= ctx, (got["version"], got)
        noise = [w for w in got["warnings"] if "max_length" in w and "will take precedence" not in w]
        assert not noise, (got["version"], got["warnings"])


@pytest.mark.slow
def test_a_merged_peft_fine_tune_saved_by_transformers_generates_with_openllm(hf_export, tmp_path):
    """20 LoRA steps with peft on the export, merge_and_unload, save_pretrained (transformers writes
    tokenizer.json but no tokenizer.model): ``openllm generate`` on that folder prints transformers' greedy
    continuation."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    from conftest import run_cli

    run, out = hf_export
    tok = AutoTokenizer.from_pretrained(out)
    model = _auto_model(out).train()
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    batch = tok(["def export(source, out, formats):\n    return folders\n"] * 4, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = peft_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    merged = peft_model.merge_and_unload().eval()
    saved = tmp_path / "merged"
    merged.save_pretrained(saved)
    tok.save_pretrained(saved)
    (saved / "tokenizer.model").unlink(missing_ok=True)
    assert not (saved / "openllm.json").exists()

    prompt = "def export("
    inputs = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        ids = merged.generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    want = prompt + tok.decode(ids, skip_special_tokens=True)
    # the fine-tune changed the model: its continuation is not the export's
    before = _auto_model(out).generate(**inputs, max_new_tokens=20, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert before.tolist() != ids.tolist()
    res = run_cli(
        "generate", str(saved), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "20", "--device", "cpu"
    )
    # generate ends its output with a newline; a continuation that ends with one of its own is compared without
    assert res.stdout.rstrip("\n") == want.rstrip("\n")
    # openllm evaluate takes the folder too
    text = tmp_path / "eval.txt"
    text.write_text("\n".join(TEXTS[:3]) * 4, encoding="utf-8")
    res = run_cli("evaluate", str(saved), "--text", str(text), "--device", "cpu")
    assert "val" in res.stdout.lower() and "Traceback" not in res.stderr


def test_generation_config_stops_at_every_chat_stop_that_is_one_token(hf_export, tmp_path, monkeypatch):
    """A chat stop that the tokenizer spells as one token joins eos_token_id, which every transformers version
    stops at; one of several tokens cannot go there, nor into stop_strings (generate() without a tokenizer then
    raises on 4.45 and 5.x), so it stays a documented per-call argument."""
    import openllm.export.hf as hf_mod

    run, out = hf_export
    loaded = openllm.load(run)
    gen = json.loads((out / "generation_config.json").read_text())
    multi = [s for s in hf_mod.CHAT_STOPS if len(loaded.tokenizer.encode(s)) != 1]
    assert gen["eos_token_id"] == loaded.tokenizer.eos_id and multi == list(hf_mod.CHAT_STOPS)
    assert "stop_strings" not in gen
    tok = loaded.tokenizer
    one = next(i for i in range(100, tok.vocab_size) if tok.encode(tok.decode([i])) == [i])
    monkeypatch.setattr(hf_mod, "CHAT_STOPS", (tok.decode([one]), *hf_mod.CHAT_STOPS))
    assert hf_mod.generation_config(loaded)["eos_token_id"] == [tok.eos_id, one]
