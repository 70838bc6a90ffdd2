"""Memory-mapped batch loaders over tokenized shards (the format in docs/architecture.md).

Two loaders, one job each:

- :class:`RandomWindowLoader` (training): random contiguous windows of ``seq_len + 1`` tokens. Batch number
  ``position`` is a pure function of ``(seed, position)``, so the whole loader state is one integer:
  ``state_dict()`` / ``load_state_dict()`` restore the stream exactly. For distributed training every rank
  draws the same ``world_size * batch_size`` windows and keeps its own slice, so N processes with micro-batch
  B see exactly the windows that one process with micro-batch N * B sees (per-rank sharding without overlap).
- :class:`SequentialWindows` (evaluation): deterministic non-overlapping windows that walk the split from
  the start (inputs ``tokens[i*T : (i+1)*T]``, targets shifted by one). Same windows on every call.

With ``doc_aligned=True`` every training window starts at a document boundary (a shard's first token or
the token after an EOS), drawn uniformly among the document starts that leave room for a full window; the
window then runs on into the following documents (attention is not masked at document boundaries).

A window never crosses a shard boundary in training; evaluation walks the shards as one stream (every
document ends with EOS, so crossing a boundary is crossing a document boundary like any other).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import OpenLLMError
from .fsio import load_json

__all__ = ["read_meta", "TokenShards", "RandomWindowLoader", "SequentialWindows"]

_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """``meta.json`` of a tokenized data folder, checked for the fields the loaders need."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise OpenLLMError(
            f"{data_dir} is not a tokenized data folder (no meta.json); create one with `openllm tokenize`"
        )
    try:
        meta = load_json(path, what="tokenized data")
    except OpenLLMError as exc:
        raise OpenLLMError(f"{exc}; re-run `openllm tokenize`") from exc
    for key in ("vocab_size", "dtype", "splits"):
        if key not in meta:
            raise OpenLLMError(f"{path} lacks {key!r}; re-run `openllm tokenize`")
    if meta["dtype"] not in _DTYPES:
        raise OpenLLMError(f"{path}: dtype must be uint16 or uint32, got {meta['dtype']!r}; re-run `openllm tokenize`")
    if not isinstance(meta["vocab_size"], int) or isinstance(meta["vocab_size"], bool) or meta["vocab_size"] < 1:
        raise OpenLLMError(
            f"{path}: vocab_size must be a positive integer, got {meta['vocab_size']!r}; re-run `openllm tokenize`"
        )
    if not isinstance(meta["splits"], dict) or not all(isinstance(v, dict) for v in meta["splits"].values()):
        raise OpenLLMError(f"{path}: splits must map split names to objects; re-run `openllm tokenize`")
    for split, info in meta["splits"].items():
        shards = info.get("shards")
        # a shard is a file of this folder: a path elsewhere (../x) would be read as training tokens
        if shards is not None and (
            not isinstance(shards, list)
            or not all(isinstance(s, str) and s and Path(s).name == s and s not in (".", "..") for s in shards)
        ):
            raise OpenLLMError(
                f"{path}: splits.{split}.shards must be a list of file names in {data_dir}; re-run `openllm tokenize`"
            )
        for key in ("tokens", "documents"):
            if key in info and (not isinstance(info[key], int) or isinstance(info[key], bool) or info[key] < 0):
                raise OpenLLMError(
                    f"{path}: splits.{split}.{key} must be a count, got {info[key]!r}; re-run `openllm tokenize`"
                )
    return meta


class TokenShards:
    """The shards of one split (``train`` or ``val``), memory-mapped read-only."""

    def __init__(self, data_dir: str | Path, split: str = "train") -> None:
        self.data_dir = Path(data_dir)
        self.split = split
        self.meta = read_meta(self.data_dir)
        splits = self.meta["splits"]
        if split not in splits:
            raise OpenLLMError(f"{self.data_dir}: no {split!r} split in meta.json (has {', '.join(splits)})")
        names = splits[split].get("shards") or sorted(p.name for p in self.data_dir.glob(f"{split}_*.bin"))
        dtype = _DTYPES[self.meta["dtype"]]
        self.shards: list[np.ndarray] = []
        for name in names:
            p = self.data_dir / name
            if not p.is_file():
                raise OpenLLMError(f"shard {p} listed in meta.json is missing; re-run `openllm tokenize`")
            if p.stat().st_size == 0:
                continue
            if p.stat().st_size % np.dtype(dtype).itemsize:
                raise OpenLLMError(
                    f"shard {p} is damaged: its size ({p.stat().st_size:,} bytes) is not a whole "
                    f"number of {self.meta['dtype']} tokens; re-run `openllm tokenize`"
                )
            self.shards.append(np.memmap(p, dtype=dtype, mode="r"))
        self.lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.tokens = int(self.lengths.sum())
        if self.tokens == 0:
            raise OpenLLMError(f"{self.data_dir}: the {split!r} split has no tokens")

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def stream(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens from position ``start`` of the split seen as one stream (crosses shards)."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        i = int(np.searchsorted(offsets, start, side="right")) - 1
        pos = start - int(offsets[i])
        while filled < length:
            take = min(length - filled, int(self.lengths[i]) - pos)
            out[filled : filled + take] = self.shards[i][pos : pos + take]
            filled += take
            i, pos = i + 1, 0
        return out


class RandomWindowLoader:
    """Random contiguous training windows; exact, stateless-per-batch resume.

    ``next()`` gives ``(x, y)``, int64 tensors of shape ``(batch_size, seq_len)`` on ``device``, where ``y``
    is ``x`` shifted by one token.
    """

    def __init__(
        self,
        data: str | Path | TokenShards,
        batch_size: int,
        seq_len: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
        device: str | torch.device = "cpu",
        doc_aligned: bool = False,
    ) -> None:
        self.data = data if isinstance(data, TokenShards) else TokenShards(data, split)
        self.doc_aligned = bool(doc_aligned)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        self.position = 0  # batches drawn so far (the same number on every rank)
        window = self.seq_len + 1
        self._doc_starts: list[np.ndarray] | None = None
        if self.doc_aligned:
            eos = self.data.meta.get("eos_id")
            if eos is None:
                raise OpenLLMError(
                    f"{self.data.data_dir}/meta.json has no eos_id, which train.doc_aligned needs; "
                    "re-run `openllm tokenize`"
                )
            self._doc_starts = []
            for shard in self.data.shards:
                starts = np.concatenate([[0], np.flatnonzero(np.asarray(shard) == int(eos)) + 1])
                self._doc_starts.append(starts[starts + window <= len(shard)].astype(np.int64))
            self._starts_per_shard = np.array([len(s) for s in self._doc_starts], dtype=np.int64)
        else:
            self._starts_per_shard = np.maximum(self.data.lengths - window + 1, 0)
        self._cum = np.cumsum(self._starts_per_shard)
        self.num_starts = int(self._cum[-1]) if len(self._cum) else 0
        if self.num_starts == 0:
            raise OpenLLMError(
                f"the {self.data.split!r} split ({self.data.tokens} tokens, longest shard "
                f"{int(self.data.lengths.max())}) is shorter than one window of seq_len + 1 = {window} tokens; "
                "use more data or a smaller train.seq_len"
            )

    # --- the stream -------------------------------------------------------------------------------------
    def window_starts(self, position: int) -> list[tuple[int, int]]:
        """(shard, offset) of this rank's windows in batch number ``position``."""
        rng = np.random.default_rng([self.seed, position])
        flat = rng.integers(0, self.num_starts, size=self.world_size * self.batch_size, dtype=np.int64)
        flat = flat[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        shard = np.searchsorted(self._cum, flat, side="right")
        before = np.where(shard > 0, self._cum[np.maximum(shard - 1, 0)], 0)
        if self._doc_starts is not None:
            return [(int(s), int(self._doc_starts[s][i])) for s, i in zip(shard, flat - before)]
        return [(int(s), int(o)) for s, o in zip(shard, flat - before)]

    def batch(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.seq_len + 1
        rows = [
            np.asarray(self.data.shards[s][o : o + window], dtype=np.int64) for s, o in self.window_starts(position)
        ]
        buf = torch.from_numpy(np.stack(rows))
        if self.device.type == "cuda":
            buf = buf.pin_memory().to(self.device, non_blocking=True)
        return buf[:, :-1], buf[:, 1:]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.position)
        self.position += 1
        return out

    __next__ = next

    def __iter__(self) -> RandomWindowLoader:
        return self

    # --- exact resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "doc_aligned": self.doc_aligned,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "seq_len"):
            if key in state and int(state[key]) != getattr(self, key):
                raise OpenLLMError(
                    f"cannot resume the data stream: checkpoint has loader {key}={state[key]}, "
                    f"this run has {getattr(self, key)}"
                )
        if bool(state.get("doc_aligned", False)) != self.doc_aligned:
            raise OpenLLMError(
                f"cannot resume the data stream: checkpoint has doc_aligned="
                f"{bool(state.get('doc_aligned', False))}, this run has {self.doc_aligned}"
            )
        self.position = int(state["position"])


class SequentialWindows:
    """Deterministic evaluation batches: non-overlapping windows from the start of a split.

    Window ``i`` covers stream tokens ``[i*T, i*T + T + 1)``; a trailing partial window is dropped (so every
    scored token has the same context budget). With ``world_size > 1`` rank ``r`` takes windows
    ``r, r + world, ...``. ``max_batches`` caps the number of batches (per rank).
    """

    def __init__(
        self,
        data: str | Path | TokenShards,
        batch_size: int,
        seq_len: int,
        *,
        split: str = "val",
        max_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
    ) -> None:
        self.data = data if isinstance(data, TokenShards) else TokenShards(data, split)
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.num_windows = (self.data.tokens - 1) // self.seq_len
        if self.num_windows == 0:
            raise OpenLLMError(
                f"the {self.data.split!r} split has {self.data.tokens} tokens, fewer than one window of "
                f"seq_len + 1 = {self.seq_len + 1}; use more data or a smaller seq_len"
            )
        self._mine = list(range(self.rank, self.num_windows, self.world_size))
        n = -(-len(self._mine) // self.batch_size)
        self.num_batches = n if max_batches is None else min(n, int(max_batches))

    @property
    def tokens_scored(self) -> int:
        """Number of target tokens the iteration scores on this rank."""
        return min(len(self._mine), self.num_batches * self.batch_size) * self.seq_len

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        T = self.seq_len
        for b in range(self.num_batches):
            idx = self._mine[b * self.batch_size : (b + 1) * self.batch_size]
            buf = torch.from_numpy(np.stack([self.data.stream(i * T, T + 1) for i in idx]))
            if self.device.type != "cpu":
                buf = buf.to(self.device)
            yield buf[:, :-1], buf[:, 1:]
