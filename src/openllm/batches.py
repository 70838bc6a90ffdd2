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

A run may train on a weighted mixture of token folders (:class:`DataMixture`, e.g. ``{"web": 0.7, "code":
0.3}``): :class:`MixtureLoader` draws each window's folder by the weights and then a window of that folder, both
from ``(seed, position)``, so the mixture's stream resumes exactly like a single folder's. Every folder must
come from the same tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import OpenLLMError
from .fsio import load_json
from .hashing import sha256_file

__all__ = [
    "read_meta",
    "TokenShards",
    "RandomWindowLoader",
    "SequentialWindows",
    "MixturePart",
    "DataMixture",
    "parse_data_arg",
    "MixtureLoader",
    "training_loader",
]

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
        return self.locate(flat[self.rank * self.batch_size : (self.rank + 1) * self.batch_size])

    def locate(self, flat: np.ndarray) -> list[tuple[int, int]]:
        """(shard, offset) of window starts numbered ``0 .. num_starts - 1`` across the shards."""
        shard = np.searchsorted(self._cum, flat, side="right")
        before = np.where(shard > 0, self._cum[np.maximum(shard - 1, 0)], 0)
        if self._doc_starts is not None:
            return [(int(s), int(self._doc_starts[s][i])) for s, i in zip(shard, flat - before)]
        return [(int(s), int(o)) for s, o in zip(shard, flat - before)]

    def rows(self, position: int) -> list[np.ndarray]:
        """This rank's windows of batch number ``position``, ``seq_len + 1`` tokens each."""
        window = self.seq_len + 1
        return [
            np.asarray(self.data.shards[s][o : o + window], dtype=np.int64) for s, o in self.window_starts(position)
        ]

    def batch(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.from_numpy(np.stack(self.rows(position)))
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


@dataclass(frozen=True)
class MixturePart:
    """One token folder of a :class:`DataMixture`: its weight and ``meta.json`` (``sha256``: of that file,
    which names the folder's token counts, shards, tokenizer and source checksums)."""

    data_dir: Path
    weight: float
    meta: dict[str, Any]
    sha256: str

    def facts(self) -> dict[str, Any]:
        """What a run records of this part (``state.json``'s ``data_mixture``, read by the model card)."""
        train = self.meta["splits"].get("train", {})
        return {
            "data_dir": str(self.data_dir.resolve()),
            "weight": self.weight,
            "meta_sha256": self.sha256,
            "train_tokens": train.get("tokens"),
            "sources": self.meta.get("sources") or {},
        }


class DataMixture:
    """Several tokenized folders trained on together, each window's folder drawn with probability
    ``weight / sum(weights)``. ``parts`` maps a folder to its weight (a positive number); the folders must share
    one tokenizer (vocabulary and ``tokenizer_sha256``), else :class:`OpenLLMError` says which differ. The
    first folder is the run's main one: its val split is the in-training estimate's, its tokenizer the run's."""

    def __init__(self, parts: Mapping[str | Path, Any]) -> None:
        if not parts:
            raise OpenLLMError("a data mixture needs at least one token folder")
        self.parts: list[MixturePart] = []
        seen: dict[Path, str] = {}
        for key, weight in parts.items():
            path = Path(key)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (0 < weight < math.inf):
                raise OpenLLMError(
                    f"the weight of {path} in the data mixture must be a positive number, got {weight!r}"
                )
            meta = read_meta(path)
            resolved = path.resolve()
            if resolved in seen:
                raise OpenLLMError(f"{path} is in the data mixture twice ({seen[resolved]}); give each folder once")
            seen[resolved] = str(path)
            self.parts.append(MixturePart(path, float(weight), meta, sha256_file(path / "meta.json")))
        first = self.parts[0]
        for part in self.parts[1:]:
            for key, what in (("vocab_size", "a vocabulary of"), ("tokenizer_sha256", "tokenizer")):
                a, b = first.meta.get(key), part.meta.get(key)
                if a != b:
                    show = (lambda v: str(v)[:12]) if key == "tokenizer_sha256" else str
                    raise OpenLLMError(
                        f"the data mixture's folders must share one tokenizer: {first.data_dir} has {what} "
                        f"{show(a)}, {part.data_dir} {show(b)}; tokenize every part with the same tokenizer"
                    )
        total = sum(p.weight for p in self.parts)
        self.probabilities = [p.weight / total for p in self.parts]

    @property
    def meta(self) -> dict[str, Any]:
        """The main (first) folder's ``meta.json``: vocabulary, tokenizer and val split of the run."""
        return self.parts[0].meta

    def facts(self) -> list[dict[str, Any]]:
        return [p.facts() for p in self.parts]

    @classmethod
    def from_facts(cls, facts: Sequence[Mapping[str, Any]]) -> DataMixture:
        """The mixture a checkpoint recorded (:meth:`facts`), read again from its folders."""
        return cls({str(f["data_dir"]): f["weight"] for f in facts})

    def describe(self) -> str:
        return ", ".join(f"{p.data_dir.name} {q:.0%}" for p, q in zip(self.parts, self.probabilities))


def parse_data_arg(values: str | Path | Sequence[str | Path] | None) -> Path | dict[str | Path, float] | None:
    """``openllm train --data``'s values: one folder (``DIR``); a mixture as ``DIR=WEIGHT`` repeated; or a JSON
    file holding ``{"DIR": WEIGHT, ...}`` (folders relative to the file). None stays None."""
    if values is None:
        return None
    items = [values] if isinstance(values, (str, Path)) else list(values)
    if len(items) == 1 and Path(items[0]).is_file() and str(items[0]).endswith(".json"):
        path = Path(items[0])
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OpenLLMError(f"--data {path}: cannot be read as a mixture ({exc})") from exc
        if not isinstance(raw, dict) or not raw:
            raise OpenLLMError(f'--data {path}: a mixture file holds {{"FOLDER": WEIGHT, ...}}, got {str(raw)[:60]}')
        return {str(path.parent / k): v for k, v in raw.items()}
    if len(items) == 1 and ("=" not in str(items[0]) or Path(items[0]).is_dir()):
        return Path(items[0])
    out: dict[str | Path, float] = {}
    for item in map(str, items):
        folder, sep, weight = item.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not sep or not folder or not value > 0 or math.isinf(value):
            raise OpenLLMError(
                f"--data {item}: several --data values make a mixture, each FOLDER=WEIGHT with a positive weight "
                f"(e.g. --data web=0.7 --data code=0.3)"
            )
        if folder in out:
            raise OpenLLMError(f"--data {folder} is given twice; give each folder of the mixture once")
        out[folder] = value
    return out


class MixtureLoader(RandomWindowLoader):
    """Training windows from a :class:`DataMixture`: in batch number ``position`` every window's folder is
    drawn by the mixture's probabilities, then its start uniformly among that folder's windows (as
    :class:`RandomWindowLoader` draws them), all from ``(seed, position)``: the whole state is ``position``,
    resumed exactly, and N ranks see the windows one process with N times the micro-batch sees."""

    def __init__(
        self,
        mixture: DataMixture,
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
        self.mixture = mixture
        super().__init__(  # this loader's own windows are the first folder's
            TokenShards(mixture.parts[0].data_dir, split),
            batch_size,
            seq_len,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
            doc_aligned=doc_aligned,
        )
        self.parts: list[RandomWindowLoader] = [self] + [
            RandomWindowLoader(TokenShards(p.data_dir, split), batch_size, seq_len, doc_aligned=doc_aligned)
            for p in mixture.parts[1:]
        ]
        self._probs = np.array(mixture.probabilities, dtype=np.float64)
        self._starts = np.array([p.num_starts for p in self.parts], dtype=np.int64)

    def window_parts(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The folder (index into the mixture) and window number of every window of batch ``position``, every
        rank's (rank r's are rows ``r * batch_size`` to ``(r + 1) * batch_size``)."""
        # a stream of its own (the 1): not the single-folder loader's windows under the same seed
        rng = np.random.default_rng([self.seed, position, 1])
        n = self.world_size * self.batch_size
        part = rng.choice(len(self.parts), size=n, p=self._probs)
        return part, rng.integers(0, self._starts[part], dtype=np.int64)

    def window_starts_mixed(self, position: int) -> list[tuple[int, int, int]]:
        """(folder, shard, offset) of this rank's windows in batch number ``position``."""
        part, flat = self.window_parts(position)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return [(int(p), *self.parts[p].locate(np.array([f]))[0]) for p, f in zip(part[mine], flat[mine])]

    def rows(self, position: int) -> list[np.ndarray]:
        window = self.seq_len + 1
        return [
            np.asarray(self.parts[p].data.shards[s][o : o + window], dtype=np.int64)
            for p, s, o in self.window_starts_mixed(position)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mixture": [round(q, 12) for q in self.mixture.probabilities]}


def training_loader(
    source: str | Path | TokenShards | DataMixture, batch_size: int, seq_len: int, **kwargs: Any
) -> RandomWindowLoader:
    """The training loader of one token folder (:class:`RandomWindowLoader`) or of a mixture
    (:class:`MixtureLoader`); ``kwargs`` as theirs."""
    if isinstance(source, DataMixture):
        return MixtureLoader(source, batch_size, seq_len, **kwargs)
    return RandomWindowLoader(source, batch_size, seq_len, **kwargs)


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
