import json
from pathlib import Path

import numpy as np
import pytest
import torch

from openllm.batches import (
    DataMixture,
    MixtureLoader,
    RandomWindowLoader,
    SequentialWindows,
    TokenShards,
    parse_data_arg,
    read_meta,
)
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


# --- mixtures of token folders (issue 28) ---------------------------------------------------------------------


def _two_sources(tmp_path, **meta_b):
    """Folder a holds tokens 0..31, folder b tokens 32..63 (so a window says which folder it came from)."""
    rng = np.random.default_rng(0)
    a = write_shards(tmp_path / "a", {"train": [rng.integers(0, 32, 3000)], "val": [rng.integers(0, 32, 200)]})
    b = write_shards(
        tmp_path / "b", {"train": [rng.integers(32, 64, 1000), rng.integers(32, 64, 700)], "val": [np.arange(200)]}
    )
    if meta_b:
        meta = json.loads((b / "meta.json").read_text())
        (b / "meta.json").write_text(json.dumps({**meta, **meta_b}))
    return a, b


def test_a_mixture_samples_by_its_weights_and_resumes_exactly(tmp_path):
    a, b = _two_sources(tmp_path)
    mix = DataMixture({a: 3, b: 1})
    assert mix.probabilities == [0.75, 0.25] and mix.meta["vocab_size"] == 64
    loader = MixtureLoader(mix, batch_size=8, seq_len=16, seed=5)
    from_a = 0
    for _ in range(250):
        x, y = loader.next()
        assert torch.equal(x[:, 1:], y[:, :-1])
        in_a = (x < 32).all(dim=1)
        assert bool((in_a | (x >= 32).all(dim=1)).all())  # every window lies in one folder
        from_a += int(in_a.sum())
    # 2,000 windows drawn with p = 0.75: the standard deviation of the share is 0.0097
    assert abs(from_a / 2000 - 0.75) < 0.03
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["position"] == 250 and state["mixture"] == [0.75, 0.25]
    expected = [loader.next() for _ in range(3)]
    again = MixtureLoader(DataMixture({a: 3, b: 1}), batch_size=8, seq_len=16, seed=5)
    again.load_state_dict(state)
    for (x1, _), (x2, _) in zip(expected, [again.next() for _ in range(3)]):
        assert torch.equal(x1, x2)
    # two ranks with half the micro-batch see exactly one process's windows, split between them
    ranks = [MixtureLoader(mix, batch_size=4, seq_len=16, seed=5, rank=r, world_size=2) for r in (0, 1)]
    one = MixtureLoader(mix, batch_size=8, seq_len=16, seed=5)
    assert torch.equal(torch.cat([r.batch(7)[0] for r in ranks]), one.batch(7)[0])
    # not the single folder's stream under the same seed
    assert not torch.equal(one.batch(0)[0], RandomWindowLoader(a, batch_size=8, seq_len=16, seed=5).batch(0)[0])


def test_a_mixtures_folders_must_share_one_tokenizer(tmp_path):
    a, b = _two_sources(tmp_path, tokenizer_sha256="1" * 64)
    with pytest.raises(OpenLLMError, match=r"share one tokenizer: .*a has tokenizer 000000000000, .*b 111111111111"):
        DataMixture({a: 1, b: 1})
    a, c = _two_sources(tmp_path / "v", vocab_size=128)
    with pytest.raises(OpenLLMError, match="a vocabulary of 64, .* 128"):
        DataMixture({a: 1, c: 1})
    for weight in (0, -1, float("inf"), "1", True):
        with pytest.raises(OpenLLMError, match="must be a positive number"):
            DataMixture({a: weight})
    with pytest.raises(OpenLLMError, match="twice"):
        DataMixture({a: 1, str(a) + "/": 1})


def test_data_arguments_name_a_folder_or_a_mixture(tmp_path):
    assert parse_data_arg(None) is None
    assert parse_data_arg(["tokens"]) == Path("tokens")
    assert parse_data_arg(["web=0.7", "code=0.3"]) == {"web": 0.7, "code": 0.3}
    spec = tmp_path / "mix.json"
    spec.write_text(json.dumps({"web": 2, "code": 1}))
    assert parse_data_arg([str(spec)]) == {str(tmp_path / "web"): 2, str(tmp_path / "code"): 1}
    for bad in (["web", "code=1"], ["web=0"], ["web=x"], ["web=1", "web=2"]):
        with pytest.raises(OpenLLMError, match="--data"):
            parse_data_arg(bad)
