import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openllm.batches import RandomWindowLoader, SequentialWindows, TokenShards, read_meta
from openllm.errors import OpenLLMError


def write_shards(out, splits: dict, vocab_size: int = 64, dtype: str = "uint16") -> Path:
    """A tokenized data folder by the contract in docs/architecture.md, written with numpy directly.
    ``splits`` maps a split name to a list of 1-D integer arrays (one per shard)."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "vocab_size": vocab_size,
        "dtype": dtype,
        "eos_id": 3,
        "tokenizer_sha256": "0" * 64,
        "splits": {},
        "sources": {},
    }
    for split, arrays in splits.items():
        names = []
        for i, arr in enumerate(arrays):
            name = f"{split}_{i:03d}.bin"
            np.asarray(arr, dtype=dtype).astype("<" + np.dtype(dtype).str[1:]).tofile(out / name)
            names.append(name)
        meta["splits"][split] = {"shards": names, "tokens": int(sum(len(a) for a in arrays)), "documents": 1}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def random_data(out, vocab_size=64, train_tokens=5000, val_tokens=1000, seed=0, shards=2):
    rng = np.random.default_rng(seed)
    train = [rng.integers(0, vocab_size, train_tokens // shards) for _ in range(shards)]
    val = [rng.integers(0, vocab_size, val_tokens)]
    return write_shards(out, {"train": train, "val": val}, vocab_size)


def test_windows_are_contiguous_and_shifted(tmp_path):
    data = write_shards(
        tmp_path / "d", {"train": [np.arange(100), np.arange(1000, 1050)], "val": [np.arange(40)]}, vocab_size=2000
    )
    loader = RandomWindowLoader(data, batch_size=8, seq_len=10, seed=3)
    for _ in range(20):
        x, y = loader.next()
        assert x.shape == y.shape == (8, 10) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        # contiguous: consecutive integers, so a window never crosses the shard boundary (99 -> 1000)
        assert torch.equal(y - x, torch.ones_like(x))


def test_state_dict_restores_exactly(tmp_path):
    data = random_data(tmp_path / "d")
    a = RandomWindowLoader(data, batch_size=4, seq_len=16, seed=7)
    for _ in range(5):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON, as in state.json
    expected = [a.next() for _ in range(3)]
    b = RandomWindowLoader(data, batch_size=4, seq_len=16, seed=7)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [b.next() for _ in range(3)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other_seed = RandomWindowLoader(data, batch_size=4, seq_len=16, seed=8)
    assert not torch.equal(other_seed.next()[0], RandomWindowLoader(data, 4, 16, seed=7).next()[0])
    with pytest.raises(OpenLLMError, match="seq_len"):
        RandomWindowLoader(data, batch_size=4, seq_len=8, seed=7).load_state_dict(state)


def test_ranks_split_the_global_batch(tmp_path):
    data = random_data(tmp_path / "d")
    single = RandomWindowLoader(data, batch_size=6, seq_len=16, seed=1)
    ranks = [RandomWindowLoader(data, batch_size=3, seq_len=16, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        x, _ = single.next()
        parts = [r.next()[0] for r in ranks]
        assert torch.equal(torch.cat(parts), x)
        assert not torch.equal(parts[0], parts[1])


def test_sequential_windows_cover_the_split_in_order(tmp_path):
    data = write_shards(
        tmp_path / "d", {"train": [np.arange(50)], "val": [np.arange(25), np.arange(25, 48)]}, vocab_size=100
    )
    ev = SequentialWindows(data, batch_size=2, seq_len=10)
    assert ev.num_windows == 4 and len(ev) == 2
    batches = list(ev)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    # crosses the shard boundary at 25 as one stream; the trailing partial window (41..47) is dropped
    assert torch.equal(xs.flatten(), torch.arange(40))
    assert torch.equal(ys.flatten(), torch.arange(1, 41))
    assert ev.tokens_scored == 40
    again = torch.cat([x for x, _ in SequentialWindows(data, batch_size=2, seq_len=10)])
    assert torch.equal(again, xs)
    assert len(SequentialWindows(data, batch_size=1, seq_len=10, max_batches=3)) == 3
    r1 = torch.cat([x for x, _ in SequentialWindows(data, batch_size=4, seq_len=10, rank=1, world_size=2)])
    assert torch.equal(r1[:, 0], torch.tensor([10, 30]))


def test_uint32_and_errors(tmp_path):
    data = write_shards(
        tmp_path / "d", {"train": [np.arange(70000, 70100)], "val": [np.arange(30)]}, vocab_size=70100, dtype="uint32"
    )
    x, _ = RandomWindowLoader(data, 2, 8).next()
    assert int(x.min()) >= 70000
    assert TokenShards(data, "train").vocab_size == 70100
    with pytest.raises(OpenLLMError, match="shorter than one window"):
        RandomWindowLoader(data, 2, 200)
    with pytest.raises(OpenLLMError, match="no meta.json"):
        read_meta(tmp_path)
    with pytest.raises(OpenLLMError, match="no 'test' split"):
        TokenShards(data, "test")
