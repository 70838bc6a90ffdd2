"""Every evaluation metric against a case computable by hand: uniform logits give perplexity = vocab size,
bits per byte of a byte-level and a two-bytes-per-token tokenizer, accuracy on constructed tasks with a
bigram table, distinct-n / repetition on written-out strings, window plans that score each token once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from openllm.config import ModelConfig
from openllm.evaluate import metrics
from openllm.evaluate.perplexity import score_stream, text_file_text, val_split_text, window_plan
from openllm.evaluate.tasks import Item, Task, encode_pair, loglikelihoods, run_task
from openllm.model import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


# --- helpers (imported by the other test_evaluate_* files) ---------------------------------------------


class ByteTokenizer:
    """One token per UTF-8 byte: id = byte + 4 (0-3 are pad/unk/bos/eos, as ours). Vocab 260."""

    pad_id, unk_id, bos_id, eos_id = 0, 1, 2, 3
    vocab_size = 260

    def encode(self, text: str) -> list[int]:
        return [b + 4 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - 4 for i in ids if i >= 4).decode("utf-8", errors="replace")


class PairTokenizer(ByteTokenizer):
    """Two bytes per token (ASCII only, even length): vocab 4 + 128 * 128."""

    vocab_size = 4 + 128 * 128

    def encode(self, text: str) -> list[int]:
        b = text.encode("ascii")
        assert len(b) % 2 == 0
        return [4 + b[i] * 128 + b[i + 1] for i in range(0, len(b), 2)]

    def decode(self, ids) -> str:
        return "".join(chr((i - 4) // 128) + chr((i - 4) % 128) for i in ids if i >= 4)


class BigramLM(nn.Module):
    """logits[t] = table[idx[t]]: the next-token distribution depends on the current token only."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.float())
        self.vocab_size = table.shape[0]

    def forward(self, idx):
        return self.table[idx]


def uniform_transformer(vocab: int = 64, seq: int = 32) -> Transformer:
    """A real Transformer whose output head is zero: every logit is 0, so every prediction is uniform."""
    torch.manual_seed(0)
    m = Transformer(
        ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, max_seq_len=seq, tie_embeddings=False)
    )
    with torch.no_grad():
        m.lm_head.weight.zero_()
    return m.eval()


def tiny_transformer(vocab: int = 260, seq: int = 64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, max_seq_len=seq)).eval()


# --- perplexity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window,stride", [(32, 32), (32, 8), (7, 3), (1, 1)])
def test_uniform_logits_give_perplexity_equal_to_vocab_size(window, stride):
    model = uniform_transformer(vocab=64, seq=32)
    tokens = torch.randint(0, 64, (300,), generator=torch.Generator().manual_seed(1))
    s = score_stream(model, tokens, window=window, stride=stride)
    assert s.tokens == 299  # every token but the first, exactly once
    assert s.loss == pytest.approx(math.log(64), abs=1e-6)
    assert s.perplexity == pytest.approx(64.0, rel=1e-5)


@pytest.mark.parametrize(
    "n,window,stride", [(2, 4, 4), (10, 4, 4), (10, 4, 1), (11, 4, 3), (100, 16, 5), (17, 16, 16), (18, 16, 16)]
)
def test_window_plan_scores_each_target_once_with_enough_context(n, window, stride):
    plan = window_plan(n, window, stride)
    scored = []
    for i, (b, e, first) in enumerate(plan):
        assert e - b <= window and b < first <= e
        scored += list(range(first, e + 1))
        if i > 0:  # after the first window a scored target sees at least window - stride tokens
            assert first - b >= window - stride
    assert scored == list(range(1, n))


def test_score_stream_matches_token_by_token_reference():
    """A stride-1 plan with window W gives every target exactly the previous W tokens (or all of them)."""
    model = tiny_transformer(vocab=50, seq=8)
    t = torch.randint(0, 50, (40,), generator=torch.Generator().manual_seed(2))
    ref = 0.0
    with torch.no_grad():
        for j in range(1, 40):
            ctx = t[max(0, j - 8) : j][None]
            ref -= float(torch.log_softmax(model(ctx)[0, -1].double(), -1)[t[j]])
    s = score_stream(model, t, window=8, stride=1)
    assert s.nll == pytest.approx(ref, rel=1e-5)
    # batching does not change the sum
    assert score_stream(model, t, window=8, stride=1, batch_size=1).nll == pytest.approx(s.nll, rel=1e-6)


def test_non_overlapping_windows_equal_the_models_own_mean_loss():
    model = tiny_transformer(vocab=50, seq=16)
    t = torch.randint(0, 50, (16 * 3 + 1,), generator=torch.Generator().manual_seed(3))
    x, y = t[:-1].view(3, 16), t[1:].view(3, 16)
    with torch.no_grad():
        _, loss = model(x, y)
    assert score_stream(model, t, window=16, stride=16).loss == pytest.approx(float(loss), rel=1e-5)


def test_bits_per_byte_arithmetic():
    assert metrics.bits_per_byte(8 * math.log(2) * 10, 10) == pytest.approx(8.0)
    assert metrics.bits_per_byte(math.log(2), 4) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        metrics.bits_per_byte(1.0, 0)


def _written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda d: d / "none.txt", "does not exist"),
        (lambda d: _written(d / "e.txt", b""), "is empty"),
        (lambda d: d, "is a folder"),
        (lambda d: Path("/dev/null"), "is not a regular file"),
    ],
)
def test_a_text_file_that_cannot_be_scored_is_one_line_saying_what_to_give(tmp_path, make, says):
    """--text /dev/null said "does not exist" and an empty file only "is empty" (issue 24)."""
    from openllm.errors import OpenLLMError
    from openllm.evaluate.perplexity import check_text_file

    with pytest.raises(OpenLLMError, match=says) as info:
        text_file_text(make(tmp_path), ByteTokenizer())
    assert str(info.value).endswith("give a UTF-8 text file with at least one character to score")
    with pytest.raises(OpenLLMError, match=says):
        check_text_file(make(tmp_path))


def test_bits_per_byte_of_a_text_file_with_byte_and_pair_tokenizers(tmp_path):
    """Uniform over V with T tokens for B bytes: bpb = T * log2(V) / B. Bytes: one token per byte gives
    log2(260); two bytes per token gives log2(16388) / 2: fewer, costlier tokens, same unit."""
    f = tmp_path / "t.txt"
    f.write_bytes("h\u00e9llo w\u00f6rld\r\nline two\n".encode("utf-8"))
    n_bytes = len(f.read_bytes())
    et = text_file_text(f, ByteTokenizer())
    assert et.n_bytes == n_bytes == 24 and et.tokens_scored == 24 and et.tokens[0] == 3
    model = uniform_transformer(vocab=260, seq=32)
    s = score_stream(model, et.tokens, window=32, stride=16)
    assert metrics.bits_per_byte(s.nll, et.n_bytes) == pytest.approx(math.log2(260), rel=1e-5)

    g = tmp_path / "pairs.txt"
    g.write_text("abcdefgh" * 10, encoding="ascii")  # 80 bytes, 40 tokens
    et2 = text_file_text(g, PairTokenizer())
    assert (et2.n_bytes, et2.tokens_scored) == (80, 40)
    model2 = uniform_transformer(vocab=PairTokenizer.vocab_size, seq=16)
    s2 = score_stream(model2, et2.tokens, window=16, stride=16)
    assert metrics.bits_per_byte(s2.nll, et2.n_bytes) == pytest.approx(math.log2(16388) / 2, rel=1e-5)


def _write_val_data(root, docs, tok, dtype=np.uint16):
    ids = []
    for d in docs:
        ids += tok.encode(d) + [tok.eos_id]
    root.mkdir(parents=True, exist_ok=True)
    np.asarray(ids, dtype=dtype).tofile(root / "val_000.bin")
    np.asarray(ids[:4], dtype=dtype).tofile(root / "train_000.bin")
    meta = {
        "vocab_size": tok.vocab_size,
        "dtype": np.dtype(dtype).name,
        "eos_id": tok.eos_id,
        "splits": {
            "val": {"shards": ["val_000.bin"], "tokens": len(ids), "documents": len(docs)},
            "train": {"shards": ["train_000.bin"], "tokens": 4, "documents": 1},
        },
    }
    (root / "meta.json").write_text(json.dumps(meta))
    return ids


def test_val_split_bytes_are_the_documents_bytes_plus_one_per_eos(tmp_path):
    tok = ByteTokenizer()
    docs = ["ab", "cd\u00e9", "x"]  # 2 + 4 + 1 bytes, 3 separators
    ids = _write_val_data(tmp_path / "data", docs, tok)
    et = val_split_text(tmp_path / "data", tok)
    assert et.n_bytes == 2 + 4 + 1 + 3
    assert et.tokens_scored == len(ids) == 10 and et.tokens[0] == tok.eos_id
    assert et.documents == 3
    # uniform model: bits per byte = tokens * log2(V) / bytes, here tokens == bytes
    s = score_stream(uniform_transformer(vocab=260, seq=8), et.tokens, window=8, stride=4)
    assert metrics.bits_per_byte(s.nll, et.n_bytes) == pytest.approx(math.log2(260), rel=1e-5)
    # max_tokens keeps whole documents
    et2 = val_split_text(tmp_path / "data", tok, max_tokens=8)
    assert et2.tokens_scored == 3 + 5 and et2.n_bytes == 2 + 4 + 2


# --- tasks ---------------------------------------------------------------------------------------------


def _bigram_table(vocab: int, prefs: dict[str, dict[str, float]], tok) -> torch.Tensor:
    """Log-probabilities: uniform rows, except that after byte a the bytes b get the given probabilities
    (the rest of the row shares what is left)."""
    table = torch.full((vocab, vocab), 1.0 / vocab, dtype=torch.float64)
    for a, row in prefs.items():
        ia = tok.encode(a)[0]
        rest = 1.0 - sum(row.values())
        table[ia] = rest / (vocab - len(row))
        for b, p in row.items():
            table[ia, tok.encode(b)[0]] = p
    return table.log()


def test_encode_pair_moves_trailing_space_into_the_continuation():
    tok = ByteTokenizer()
    ctx, cont = encode_pair(tok, "abc ", "d")
    assert ctx == tok.encode("abc") and cont == tok.encode(" d")
    ctx, cont = encode_pair(tok, "", "d")  # empty context: conditioned on a prefix token
    assert ctx == [tok.bos_id] and cont == tok.encode("d")


def test_loglikelihood_of_a_continuation_is_the_sum_of_its_token_logprobs():
    tok = ByteTokenizer()
    table = _bigram_table(260, {"c": {" ": 0.5}, " ": {"d": 0.25, "x": 0.125}}, tok)
    model = BigramLM(table)
    (ll_d, greedy_d), (ll_x, greedy_x) = loglikelihoods(
        model, [encode_pair(tok, "abc", " d"), encode_pair(tok, "abc", " x")], max_len=16
    )
    assert ll_d == pytest.approx(math.log(0.5) + math.log(0.25), rel=1e-6)
    assert ll_x == pytest.approx(math.log(0.5) + math.log(0.125), rel=1e-6)
    assert greedy_d and not greedy_x
    # truncation from the left keeps the continuation and max_len tokens of input
    ((ll_t, _),) = loglikelihoods(model, [encode_pair(tok, "zzzzzzzzzzabc", " d")], max_len=3)
    assert ll_t == pytest.approx(ll_d, rel=1e-6)


def test_choice_task_accuracy_and_length_normalised_accuracy_on_a_constructed_task():
    """After " ", "d" has p=.25, "x" p=.125, "q" p=.0625; every other byte ~0.0022.
    Item 1: d vs x, label 0 -> right. Item 2: d vs x, label 1 -> wrong. Item 3: "qq" vs "d"? by total ll d
    wins; per byte... see below. acc = 2/3 by hand; acc_norm differs only on item 3."""
    tok = ByteTokenizer()
    table = _bigram_table(260, {" ": {"d": 0.25, "x": 0.125, "q": 0.0625}, "q": {"q": 0.9}}, tok)
    model = BigramLM(table)
    items = [Item("abc", ["d", "x"], 0), Item("abc", ["d", "x"], 1), Item("abc", ["d", "qqqq"], 1)]
    # item 3 by hand: ll(" d") = l + ln .25; ll(" qqqq") = l + ln .0625 + 3 ln .9 (l = ln p(" " | "c"))
    lp = math.log((1.0 - 0.0) / 260)  # "c" row is uniform
    ll_d, ll_q = lp + math.log(0.25), lp + math.log(0.0625) + 3 * math.log(0.9)
    assert ll_d > ll_q and ll_q / 4 > ll_d / 1  # acc picks d (wrong), acc_norm picks qqqq (right)
    res = run_task(model, tok, Task("t", "choice", items), max_len=32)
    assert res == {"acc": pytest.approx(1 / 3), "acc_norm": pytest.approx(2 / 3), "n": 3}
    assert run_task(model, tok, Task("t", "choice", items), max_len=32, limit=1)["acc"] == 1.0


def test_last_word_task_accuracy_is_greedy_match_and_ppl_is_per_item():
    tok = ByteTokenizer()
    # after "e", " " is greedy; after " ", "d" is greedy; after "d", "o" is greedy
    table = _bigram_table(260, {"e": {" ": 0.5}, " ": {"d": 0.5}, "d": {"o": 0.5}}, tok)
    model = BigramLM(table)
    items = [Item("the", [" do"], 0), Item("the", [" dx"], 0)]
    res = run_task(model, tok, Task("lambada", "last_word", items, delimiter=""), max_len=32)
    assert res["acc"] == 0.5 and res["n"] == 2
    rest = 0.5 / 259
    ll1 = 3 * math.log(0.5)
    ll2 = 2 * math.log(0.5) + math.log(rest)
    assert res["ppl"] == pytest.approx(math.exp(-(ll1 + ll2) / 2), rel=1e-5)


def test_item_perplexity_and_accuracy_arithmetic():
    assert metrics.item_perplexity([-math.log(2), -math.log(8)]) == pytest.approx(4.0)
    assert metrics.accuracy([True, False, True, True]) == 0.75
    assert metrics.choice_prediction([-3.0, -2.0, -2.0]) == 1  # ties go to the first
    assert metrics.choice_prediction([-3.0, -4.0], lengths=[1, 4]) == 1


# --- generation quality --------------------------------------------------------------------------------


def test_distinct_n_repetition_rate_and_mean_length_by_hand():
    seqs = [["a", "b", "a", "b"], ["c"]]
    assert metrics.distinct_n(seqs, 1) == pytest.approx(3 / 5)  # a, b, c of 5 words
    assert metrics.distinct_n(seqs, 2) == pytest.approx(2 / 3)  # (a b) (b a) (a b)
    assert metrics.repetition_rate(seqs, 2) == pytest.approx(1 / 3)  # only the first has bigrams
    assert metrics.repetition_rate([["x", "y", "z", "w", "x", "y", "z", "w"]], 4) == pytest.approx(1 - 4 / 5)
    assert metrics.repetition_rate([["a", "b"]], 4) == 0.0
    assert metrics.mean_length(seqs) == 2.5
    assert metrics.distinct_n([[]], 1) == 0.0


# --- baselines -----------------------------------------------------------------------------------------


def test_unigram_baseline_by_hand():
    """Counts [3, 1, 0, 0] with add-one smoothing: p = [4, 2, 1, 1] / 8. The stream 0 1 0 scores targets
    1 and 0: loss = -(ln 2/8 + ln 4/8) / 2; its own fast path equals log_softmax of its logits."""
    from openllm.evaluate.baselines import UnigramLM, unigram_counts
    from openllm.evaluate.perplexity import logits_of

    counts = unigram_counts([np.array([0, 0, 1]), np.array([0, 5, 5])], 4, max_tokens=4)
    assert counts.tolist() == [3, 1, 0, 0]  # max_tokens stops inside the second stream
    uni = UnigramLM(counts)
    s = score_stream(uni, [0, 1, 0], window=4)
    assert s.loss == pytest.approx(-(math.log(2 / 8) + math.log(4 / 8)) / 2, rel=1e-6)
    x = torch.tensor([[0, 1, 2]])
    y = torch.tensor([[1, 0, 3]])
    lp, greedy = uni.target_logprobs(x, y)
    ref = torch.log_softmax(logits_of(uni, x), -1).gather(-1, y[..., None]).squeeze(-1)
    assert torch.allclose(lp, ref) and greedy.tolist() == [[False, True, False]]
    assert uni.entropy() == pytest.approx(-sum(p * math.log(p) for p in (0.5, 0.25, 0.125, 0.125)), rel=1e-6)
