"""openllm.finetune end to end on a tiny model: SFT lowers the held-out assistant-token loss and records its
base and data; exact resume (full and LoRA); the LoRA run's merged HF export loads in transformers with our
logits and chats through transformers' apply_chat_template + generate with our tokens; DDP on two gloo
processes equals one process; the server's chat endpoint on a fine-tuned run uses the training template;
the CLI's one-line errors for bad conversations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import openllm
from openllm.conversations import encode_conversation, read_conversations, write_synthetic_set
from openllm.errors import OpenLLMError
from openllm.evaluate.chat import chat_loss, chat_samples
from openllm.finetune import finetune, weights_sha256
from openllm.rundir import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_export_run, run_cli

pytestmark = pytest.mark.slow

TRAIN = {
    "micro_batch_size": 4,
    "lr": 3e-3,
    "min_lr": 3e-4,
    "warmup_steps": 2,
    "eval_every": 4,
    "save_every": 4,
    "log_every": 1,
    "eval_batches": 4,
}


@pytest.fixture(scope="module")
def base(tmp_path_factory, export_tokenizer_dir):
    root = tmp_path_factory.mktemp("ft")
    run = make_export_run(root / "base", export_tokenizer_dir, steps=(1,), max_seq_len=128, init_std=0.02)
    data = root / "conv"
    write_synthetic_set(data, 160, seed=0)
    return root, run, data


def _ft(base, name, steps, **kw):
    root, run, data = base
    torch.set_num_threads(1)
    return finetune(
        run,
        data / "train.jsonl",
        root / name,
        val_data=data / "val.jsonl",
        max_steps=steps,
        overrides={"train": TRAIN},
        progress=False,
        log=lambda m: None,
        **kw,
    )


@pytest.fixture(scope="module")
def full_run(base):
    _ft(base, "full", 8)
    return base[0] / "full"


@pytest.fixture(scope="module")
def lora_run(base):
    _ft(base, "lora", 8, lora={"rank": 4, "alpha": 8})
    return base[0] / "lora"


def test_sft_lowers_assistant_loss_and_records_base_and_data(base, full_run):
    root, run, data = base
    val = read_conversations(data / "val.jsonl")
    b, f = openllm.load(run), openllm.load(full_run)
    before = chat_loss(b.model, b.tokenizer, val)["assistant_loss"]
    after = chat_loss(f.model, f.tokenizer, val)["assistant_loss"]
    assert after < before - 0.5, (before, after)
    state = json.loads((full_run / "checkpoints/step_00000008/state.json").read_text())
    rec = state["finetune"]
    assert rec["base"]["weights_sha256"] == weights_sha256(b.model) and rec["base"]["step"] == 1
    assert rec["base"]["source"] == str(run.resolve())
    assert rec["data"]["path"] == str((data / "train.jsonl").resolve())
    from openllm.hashing import sha256_file

    assert rec["data"]["sha256"] == sha256_file(data / "train.jsonl") and rec["lora"] is None
    m = read_metrics(full_run)
    assert [r["step"] for r in m] == list(range(1, 9)) and "val_loss" in m[3]
    assert (full_run / "loss.png").is_file() and (full_run / "tokenizer" / "tokenizer.model").is_file()
    assert json.loads((full_run / "status.json").read_text())["state"] == "finished"


@pytest.mark.parametrize("which", ["full", "lora"])
def test_exact_resume(base, which, full_run, lora_run, tmp_path):
    src = full_run if which == "full" else lora_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    want = load_file(run / "checkpoints/step_00000008/model.safetensors")
    want_losses = [r["loss"] for r in read_metrics(run)]
    shutil.rmtree(run / "checkpoints/step_00000008")
    torch.set_num_threads(1)
    # resuming needs neither the model nor the data: the checkpoint records both
    finetune(None, None, run, progress=False, log=lambda m: None)
    got = load_file(run / "checkpoints/step_00000008/model.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert [r["loss"] for r in read_metrics(run)] == want_losses


def test_resume_refuses_other_data(base, full_run, tmp_path):
    root, run, data = base
    other = tmp_path / "other.jsonl"
    other.write_text((data / "val.jsonl").read_text())
    with pytest.raises(OpenLLMError, match="not the data"):
        finetune(run, other, full_run, max_steps=9, progress=False, log=lambda m: None)


@pytest.mark.parametrize("train", [{"seed": 5}, {"seq_len": 16}])
def test_refused_resume_of_a_finetune_writes_nothing(base, full_run, train):
    """A resume whose data stream cannot continue is refused before the run folder is touched (issue 24)."""
    before = {str(p): p.read_bytes() for p in sorted(full_run.rglob("*")) if p.is_file()}
    with pytest.raises(OpenLLMError, match=f"train.{next(iter(train))}"):
        finetune(None, None, full_run, max_steps=9, overrides={"train": train}, progress=False, log=lambda m: None)
    assert {str(p): p.read_bytes() for p in sorted(full_run.rglob("*")) if p.is_file()} == before


def test_lora_trains_adapters_only_and_its_merged_export_matches_transformers(base, lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openllm.export import export

    root, run, data = base
    b, f = openllm.load(run), openllm.load(lora_run)
    bs, fs = b.model.state_dict(), f.model.state_dict()
    changed = {k for k in bs if not torch.equal(bs[k], fs[k])}
    assert changed and all(k.split(".")[-2] in ("wqkv", "wo", "w13", "w2") for k in changed), changed
    opt = torch.load(lora_run / "checkpoints/step_00000008/optimizer.pt", weights_only=True)
    assert opt["lora"] and all("lora_" in k for k in opt["lora"])

    out = export(lora_run, tmp_path / "x", "hf", progress=False)["hf"]
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([f.tokenizer.encode_chat([{"role": "user", "content": "What does John 3:16 say?"}])])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, f.model(ids), rtol=1e-4, atol=1e-4)
    # the fine-tuned export chats through transformers' own template and generate with our tokens
    tok = AutoTokenizer.from_pretrained(out)
    msgs = read_conversations(data / "val.jsonl")[0].messages[:-1]
    theirs = tok.apply_chat_template(msgs, add_generation_prompt=True)
    theirs = list(theirs if isinstance(theirs, list) else theirs["input_ids"])
    assert theirs == f.tokenizer.encode_chat(msgs)
    gen = hf.generate(torch.tensor([theirs]), max_new_tokens=12, do_sample=False)[0, len(theirs) :].tolist()
    from openllm.generate import SamplingParams, generate

    ours = generate(
        f.model, [theirs], SamplingParams(max_new_tokens=12, temperature=0, stop_tokens=(f.tokenizer.eos_id,))
    )[0]
    assert gen[: len(ours)] == ours


def test_server_chat_endpoint_on_a_finetuned_run_uses_the_training_template(base, full_run):
    from openai import OpenAI

    from openllm.serve import ServerThread, create_app

    root, run, data = base
    lm = openllm.load(full_run)
    conv = read_conversations(data / "val.jsonl")[0]
    msgs = conv.messages
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    # the prompt the server builds is the prefix the assistant turn was trained after
    ex = encode_conversation(lm.tokenizer, conv)
    prompt = lm.tokenizer.encode_chat(msgs[:last])
    assert ex.ids[: len(prompt)] == prompt and ex.mask[len(prompt)] == 1 and not any(ex.mask[: len(prompt)])
    want = chat_samples(lm.model, lm.tokenizer, [conv], n=1, max_new_tokens=12)[0]
    with ServerThread(create_app(lm.model, lm.tokenizer, model_name="chat")) as server:
        with OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60) as client:
            r = client.chat.completions.create(model="chat", messages=msgs[:last], max_tokens=12, temperature=0)
    assert r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].message.content.strip() == want["reply"]


def test_ddp_two_gloo_processes_match_one_process(base, tmp_path):
    root, run, data = base
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "-m",
        "openllm",
        "finetune",
        str(run),
        "--data",
        str(data / "train.jsonl"),
        "--max-steps",
        "4",
        "--no-progress",
        "--set",
        "train.lr=3e-3",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "train.log_every=1",
        "--set",
        "train.micro_batch_size=2",
    ]
    one = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "one"), "--set", "train.grad_accum_steps=2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert "x 2 ranks" in two.stderr
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    wa = load_file(tmp_path / "one/checkpoints/step_00000004/model.safetensors")
    wb = load_file(tmp_path / "two/checkpoints/step_00000004/model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def test_cli_errors_name_file_and_line(base, tmp_path):
    root, run, data = base
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    res = run_cli("finetune", str(run), "--data", str(bad), "--out", str(tmp_path / "o"), check=False)
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and res.stderr.strip().endswith(
        f"{bad}:1: the conversation has no assistant turn, so there is nothing to learn from it"
    )
    assert not (tmp_path / "o").exists()
    res = run_cli("finetune", "--make-data", str(tmp_path / "made"), "--conversations", "20")
    assert "train.jsonl (18)" in res.stdout and "Synthetic" in res.stdout
    assert json.loads((tmp_path / "made" / "about.json").read_text())["synthetic"] is True


def test_chat_quickstart_step(base, tmp_path):
    from openllm.finetune import chat_quickstart

    root, run, data = base
    torch.set_num_threads(1)
    lines: list[str] = []
    ev = chat_quickstart(tmp_path, run, max_steps=6, conversations=80, samples=1, progress=False, say=lines.append)
    assert ev["assistant_loss"] < ev["base"]["assistant_loss"]
    assert (tmp_path / "chat_run" / "checkpoints").is_dir() and (tmp_path / "chat_evaluation.json").is_file()
    assert any("base" in line and "fine-tuned" in line and "->" in line for line in lines)


def test_choice_task_in_chat_form_scores_the_trained_reply(base, full_run, tmp_path):
    from openllm.evaluate.chat import run_task_chat
    from openllm.evaluate.tasks import load_choice_jsonl

    root, run, data = base
    lm = openllm.load(full_run)
    convs = [
        c
        for c in read_conversations(data / "train.jsonl")
        if len(c.messages) == 2 and len(encode_conversation(lm.tokenizer, c)) < 100
    ][:6]
    rows = [
        {"context": c.messages[0]["content"], "choices": [c.messages[1]["content"], "Amen."], "label": k % 2}
        for k, c in enumerate(convs)
    ]
    for r in rows:
        r["choices"] = r["choices"] if r["label"] == 0 else r["choices"][::-1]
    path = tmp_path / "verses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def reply_logprob(question, answer):
        # log p(reply tokens) from the training encoding of the conversation, its EOS left out
        ex = encode_conversation(
            lm.tokenizer, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        )
        ids = torch.tensor([ex.ids])
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(ids)[0, :-1].double(), -1)
        pos = [i for i in range(1, len(ex.ids)) if ex.mask[i] and ex.ids[i] != lm.tokenizer.eos_id]
        return float(sum(logp[i - 1, ex.ids[i]] for i in pos))

    want = sum(max(range(2), key=lambda j: reply_logprob(r["context"], r["choices"][j])) == r["label"] for r in rows)
    got = run_task_chat(lm.model, lm.tokenizer, load_choice_jsonl(path), max_len=128)
    assert got["n"] == 6 and got["acc"] == pytest.approx(want / 6)


def test_hub_base_and_hf_folder_base_and_the_card_names_the_base(base, tmp_path):
    from openllm.export import export
    from openllm.publish import push_model

    root, run, data = base
    torch.set_num_threads(1)
    push_model(run, repo_id="me/base", version="v1")
    ft = finetune(
        "me/base@v1",
        data / "train.jsonl",
        tmp_path / "ft",
        max_steps=2,
        progress=False,
        log=lambda m: None,
        overrides={"train": TRAIN},
    )
    rec = json.loads((ft.checkpoint / "state.json").read_text())["finetune"]["base"]
    assert rec["hub_ref"] == "me/base@v1" and rec["weights_sha256"] == weights_sha256(openllm.load(run).model)
    push_model(tmp_path / "ft", repo_id="me/chat", version="v1")
    card = (Path(openllm.hub.download_model("me/chat@v1")) / "README.md").read_text()
    head = card.split("---")[1]
    assert (
        "base_model: me/base" in head and "base_model_version: v1" in head and "base_model_relation: finetune" in head
    )
    assert "## Fine-tuning" in card and rec["weights_sha256"] in card
    assert "fine-tuned" in head and "from-scratch" not in head and "trained from scratch" not in card
    # its GGUF is marked as a fine-tune of that base (issue 24)
    from gguf import GGUFReader

    export(tmp_path / "ft", tmp_path / "g", "gguf", gguf_types="f32", progress=False)
    r = GGUFReader(str(tmp_path / "g" / "model-f32.gguf"))
    assert r.fields["general.finetune"].contents() == "chat"
    assert r.fields["general.name"].contents() == f"{rec['name']}-chat"
    assert r.fields["general.base_model.0.version"].contents() == "v1"
    from openllm.hashing import sha256_file

    assert sha256_file(data / "train.jsonl") in card
    # a Hugging Face folder (our export, read as a plain Llama folder) is a base like any other
    hf = export(run, tmp_path / "x", "hf", progress=False)["hf"]
    (hf / "openllm.json").unlink()
    ft2 = finetune(
        hf,
        data / "train.jsonl",
        tmp_path / "ft2",
        max_steps=1,
        progress=False,
        log=lambda m: None,
        overrides={"train": TRAIN},
    )
    rec2 = json.loads((ft2.checkpoint / "state.json").read_text())["finetune"]["base"]
    assert rec2["kind"] == "hf" and rec2["weights_sha256"] == rec["weights_sha256"]


def test_finetuning_extends_only_the_trainers_public_hooks():
    from openllm.finetune import FinetuneTrainer
    from openllm.train import Trainer

    overridden = [
        name for name in vars(FinetuneTrainer) if callable(getattr(Trainer, name, None)) and name != "__init__"
    ]
    assert overridden and all(not name.startswith("_") for name in overridden), overridden
    assert all(getattr(Trainer, name).__doc__ for name in overridden)  # each hook says what it is for


def test_a_base_trained_with_the_default_recipe_fine_tunes(base, default_recipe_run, tmp_path):
    """A base trained as the presets train by default (Muon, untied head): the fine-tune takes its weights as they
    are (the head stays untied) and trains them with the fine-tuning defaults (AdamW)."""
    root, _, data = base
    run = default_recipe_run(1)
    out = tmp_path / "ft"
    over = {"train": {**TRAIN, "seq_len": 128}}  # the base trained on windows of 64
    finetune(run, data / "train.jsonl", out, max_steps=3, overrides=over, progress=False, log=lambda m: 0)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["tie_embeddings"] is False and cfg["train"]["optimizer"] == "adamw"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
