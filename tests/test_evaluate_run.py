"""openllm evaluate on a real run folder: a SentencePiece tokenizer trained on the embedded corpus, real
shards, a Transformer trained for a few dozen steps, a checkpoint in the run layout (docs/architecture.md).
Checks evaluation.json's keys and their relations, the byte count against the val documents, the baselines,
the tasks, the CLI table and its errors."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from openllm.config import Config
from openllm.evaluate import evaluate, evaluate_run, markdown

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

VOCAB = 512
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_run(root: Path, *, steps: int = 60, seed: int = 0) -> dict:
    """A run folder as `openllm train` leaves it, built from the pieces (tokenizer, shards, weights)."""
    from safetensors.torch import save_file

    from openllm.corpus import embedded_corpus_documents
    from openllm.model import Transformer
    from openllm.tokenizer import Tokenizer, train_tokenizer

    docs = list(itertools.islice(embedded_corpus_documents(verify=False), 48))
    train_docs, val_docs = docs[:44], docs[44:]
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for name, ds in (("train.jsonl", train_docs), ("val.jsonl", val_docs)):
        (corpus / name).write_text("".join(json.dumps({"text": d}) + "\n" for d in ds), encoding="utf-8")
    tok_dir = root / "tokenizer"
    train_tokenizer(corpus / "train.jsonl", tok_dir, vocab_size=VOCAB, progress=False)
    tok = Tokenizer.load(tok_dir)

    data = root / "data"
    data.mkdir()
    splits = {}
    for split, ds in (("train", train_docs), ("val", val_docs)):
        ids = [i for d in ds for i in tok.encode(d) + [tok.eos_id]]
        np.asarray(ids, dtype=np.uint16).tofile(data / f"{split}_000.bin")
        splits[split] = {"shards": [f"{split}_000.bin"], "tokens": len(ids), "documents": len(ds)}
    shutil.copytree(tok_dir, data / "tokenizer")
    (data / "meta.json").write_text(
        json.dumps(
            {
                "vocab_size": VOCAB,
                "dtype": "uint16",
                "eos_id": tok.eos_id,
                "tokenizer_sha256": tok.sha256,
                "splits": splits,
            }
        )
    )

    cfg = Config.from_dict(
        {
            "name": "evaltest",
            "model": {"vocab_size": VOCAB, "d_model": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 128},
            "train": {"seq_len": 64, "micro_batch_size": 8, "max_steps": steps},
        }
    )
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_ids = torch.from_numpy(np.fromfile(data / "train_000.bin", dtype=np.uint16).astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    rows = []
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(train_ids) - 65, (8,), generator=g)
        batch = torch.stack([train_ids[s : s + 65] for s in starts])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = {"step": step, "loss": loss.item(), "lr": 3e-3, "tokens_per_s": 1000.0, "tokens": step * 512}
        if step % 20 == 0:
            row["val_loss"] = row["loss"] + 0.1
        rows.append(row)
    model.eval()
    ck = run / "checkpoints" / f"step_{steps:08d}"
    ck.mkdir()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(ck / "model.safetensors"))
    (ck / "state.json").write_text(
        json.dumps(
            {
                "step": steps,
                "tokens_seen": steps * 512,
                "config": cfg.to_dict(),
                "tokenizer_sha256": tok.sha256,
                "data_dir": str(data.resolve()),
            }
        )
    )
    cfg.save(run / "config.json")
    shutil.copytree(tok_dir, run / "tokenizer")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"run": run, "data": data, "val_docs": val_docs, "root": root, "tokenizer": tok}


@pytest.fixture()
def built_run(evaluate_run_folder):
    return evaluate_run_folder


@pytest.fixture()
def choice_file(tmp_path):
    p = tmp_path / "colors.jsonl"
    rows = [
        {"context": "In the beginning God created the heaven and the", "choices": ["earth", "sea"], "label": 0},
        {"context": "And God said, Let there be", "choices": ["light", "cheese", "xylophone"], "label": 0},
        {"context": "And the evening and the morning were the first", "choices": ["day", "night"], "label": 0},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_evaluate_run_writes_evaluation_json_with_consistent_numbers(built_run, choice_file):
    run = built_run["run"]
    res = evaluate_run(run, tasks=[str(choice_file)], limit=3)
    on_disk = json.loads((run / "evaluation.json").read_text())
    for key in (
        "val_loss",
        "perplexity",
        "bits_per_byte",
        "tokens",
        "bytes",
        "dataset",
        "tasks",
        "generation",
        "baselines",
    ):
        assert key in on_disk, key
    assert on_disk["val_loss"] == pytest.approx(res["val_loss"])
    # perplexity = exp(loss); bits per byte = total nats / ln 2 / bytes
    assert res["perplexity"] == pytest.approx(math.exp(res["val_loss"]))
    assert res["bits_per_byte"] == pytest.approx(res["val_loss"] * res["tokens"] / math.log(2) / res["bytes"])
    # every val token scored; the bytes are the val documents' UTF-8 bytes + one per EOS
    meta = json.loads((built_run["data"] / "meta.json").read_text())
    assert res["tokens"] == meta["splits"]["val"]["tokens"]
    docs = built_run["val_docs"]
    assert res["bytes"] == sum(len(d.encode("utf-8")) for d in docs) + len(docs)
    assert res["dataset"]["kind"] == "val" and res["dataset"]["documents"] == len(docs)
    assert res["step"] == 60 and res["tokens_seen"] == 60 * 512 and res["params"] > 0
    # baselines: a fresh model is near uniform (ln V), the trained one beats it and the unigram model
    b = res["baselines"]
    assert b["chance"]["perplexity"] == VOCAB
    assert abs(b["random_init"]["val_loss"] - math.log(VOCAB)) < 0.2
    assert res["val_loss"] < b["unigram"]["val_loss"] < b["random_init"]["val_loss"]
    # tasks: the generic file with its n, model and baselines scored on the same items
    t = res["tasks"]["colors"]
    assert t["n"] == 3 and 0 <= t["acc"] <= 1 and 0 <= t["acc_norm"] <= 1
    assert b["chance"]["tasks"]["colors"]["acc"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert "colors" in b["random_init"]["tasks"] and "colors" in b["unigram"]["tasks"]
    # generation: fixed prompts x seeds, reproducible
    g = res["generation"]
    assert len(g["samples"]) == 5 * 2
    for key in ("distinct_1", "distinct_2", "repetition_rate", "mean_length"):
        assert isinstance(g[key], float)
    again = evaluate(run, generation=True, baselines=False, write=False, max_tokens=200, progress=False)
    assert [s["text"] for s in again["generation"]["samples"]] == [s["text"] for s in g["samples"]]
    table = markdown(res)
    assert "| perplexity |" in table and "random-init" in table and "unigram" in table and "distinct-1" in table


def test_evaluate_text_file_counts_its_bytes(built_run, tmp_path):
    text = "In the beginning was the Word,\r\nand the Word was with God. \u00c9t\u00e9\n" * 20
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8", newline="")
    res = evaluate(built_run["run"], text=f, generation=False, baselines=False, write=False, progress=False)
    assert res["bytes"] == len(text.encode("utf-8"))
    tok = built_run["tokenizer"]
    assert res["tokens"] == len(tok.encode(text))
    assert res["dataset"]["kind"] == "text" and res["dataset"]["name"] == "t.txt"


def test_builtin_tasks_on_shared_data(built_run, shared_data):
    res = evaluate(
        built_run["run"],
        tasks=f"lambada={shared_data / 'lambada_test.jsonl'},hellaswag={shared_data / 'hellaswag_val_full.txt'}",
        limit=4,
        generation=False,
        write=False,
        max_tokens=256,
        progress=False,
    )
    lam, hs = res["tasks"]["lambada"], res["tasks"]["hellaswag"]
    assert lam["n"] == 4 and 0 <= lam["acc"] <= 1 and lam["ppl"] > 1
    assert hs["n"] == 4 and set(hs) >= {"acc", "acc_norm"}
    assert res["baselines"]["chance"]["tasks"]["hellaswag"]["acc"] == 0.25


def test_cli_prints_the_table_and_writes_json(built_run, tmp_path, choice_file):
    out = tmp_path / "res.json"
    p = run_cli(
        "evaluate",
        str(built_run["run"]),
        "--tasks",
        str(choice_file),
        "--limit",
        "2",
        "--json",
        str(out),
        "--max-tokens",
        "300",
        "--seeds",
        "0",
        "--max-new-tokens",
        "16",
        env=ONE_THREAD,
    )
    assert "| loss (nats/token) |" in p.stdout and "| bits per byte |" in p.stdout
    assert "random-init" in p.stdout and "unigram" in p.stdout and "colors acc (n=2)" in p.stdout
    assert "distinct-1" in p.stdout and "seed 0:" in p.stdout
    assert json.loads(out.read_text())["tasks"]["colors"]["n"] == 2


def test_cli_user_errors_are_one_line(built_run, tmp_path, capsys):
    p = run_cli("evaluate", str(tmp_path / "nope"), check=False, env=ONE_THREAD)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr
    from openllm.cli import main

    assert main(["evaluate", str(built_run["run"]), "--tasks", "nosuchtask", "--no-write"]) == 2
    err = capsys.readouterr().err
    assert "unknown task" in err and err.strip().count("\n") == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "choices": ["a"], "label": 0}\n')
    assert main(["evaluate", str(built_run["run"]), "--tasks", str(bad), "--no-write"]) == 2
    assert "choices" in capsys.readouterr().err
    assert main(["evaluate", str(built_run["run"]), "--limit", "0", "--no-write"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_evaluate_an_export_without_data_and_with_a_text_file(built_run, tmp_path):
    from openllm.export import export

    hf = tmp_path / "hf"
    export(built_run["run"], hf, "hf", progress=False)
    res = evaluate(hf, generation=False, progress=False)
    assert res["val_loss"] is None and res["dataset"] is None and "--text FILE" in markdown(res)
    assert "unigram" not in res["baselines"] and res["baselines"]["random_init"] == {"tasks": {}}
    f = tmp_path / "t.txt"
    f.write_text("And God saw the light, that it was good.\n" * 10, encoding="utf-8")
    res = evaluate(hf, text=f, generation=False, baselines=False, progress=False)
    # beside the export's weights, as what it is: a text file's evaluation, not the model's val split
    (text_eval,) = (hf / "evaluations").glob("text-t-*.json")
    on_disk = json.loads(text_eval.read_text())
    assert on_disk["dataset"]["name"] == "t.txt" and on_disk["val_loss"] == pytest.approx(res["val_loss"])
    assert json.loads((hf / "evaluation.json").read_text())["dataset"] is None
    # the export scores exactly as the run it came from
    ref = evaluate(built_run["run"], text=f, generation=False, baselines=False, write=False, progress=False)
    assert res["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)


def test_evaluate_run_on_a_run_made_by_openllm_train(built_run, tmp_path):
    """The integration the quickstart relies on: train() records its data folder, evaluate_run finds it."""
    from openllm.train import train

    cfg = {
        "name": "t",
        "model": {"vocab_size": VOCAB, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 64},
        "train": {
            "seq_len": 32,
            "micro_batch_size": 4,
            "max_steps": 6,
            "eval_every": 3,
            "eval_batches": 1,
            "save_every": 6,
            "log_every": 1,
            "warmup_steps": 1,
        },
    }
    run = tmp_path / "run"
    train(cfg, data_dir=built_run["data"], out_dir=run, progress=False, device="cpu", log=lambda _msg: None)
    res = evaluate_run(run, limit=2, tasks=[])
    meta = json.loads((built_run["data"] / "meta.json").read_text())
    assert res["dataset"]["path"] == str(built_run["data"].resolve())
    assert res["tokens"] == meta["splits"]["val"]["tokens"] and res["step"] == 6
    assert res["window"] == 32 and res["stride"] == 16
    assert json.loads((run / "evaluation.json").read_text())["perplexity"] == pytest.approx(res["perplexity"])


def test_data_tokenized_with_another_tokenizer_is_refused(built_run, tmp_path):
    from openllm.errors import OpenLLMError

    other = tmp_path / "data"
    shutil.copytree(built_run["data"], other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(OpenLLMError, match="another tokenizer"):
        evaluate(built_run["run"], data=other, generation=False, write=False, progress=False)
