"""Key/value caches for :meth:`openllm.model.Transformer.forward`, all behind one small interface.

The model's forward takes ``cache=`` and asks it three things, so that one forward serves training (no cache),
generation, the server's continuous batching and the ONNX export alike:

- ``begin(T)`` before the layers: the positions of the ``T`` new tokens of every row, (B, T), and the attention
  mask to use, either ``(mask, False)`` with a boolean mask (B or 1, 1, T, keys) or ``(None, causal)``;
- ``update(layer, k, v)`` in each layer: store the new keys/values (B, kv_heads, T, head_dim) and return all the
  keys/values the new queries attend to;
- ``end(T)`` after the layers: the new tokens are now part of the cache.

Three caches implement it:

- :class:`KVCache`: one sequence per row, every row at the same length, left padding marked in ``valid``
  (``openllm.generate``);
- :class:`SlotCache`: ``slots`` sequences of any lengths, each in its own slot; :meth:`SlotCache.rows` binds a
  batch of slots to one forward call (``openllm serve``);
- :class:`PastCache`: keys/values passed in as plain tensors and handed back concatenated, the shape ONNX
  graphs take them in (``openllm.export.onnx``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import ModelConfig

__all__ = ["KVCache", "SlotCache", "SlotRows", "PastCache"]


def _padded_mask(valid: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Queries ``start .. start+T`` see keys up to their own position, and only real (``valid``) keys; a
    padding query would see no key at all (NaN), so it sees itself."""
    device = valid.device
    q_pos = torch.arange(start, start + T, device=device)
    k_pos = torch.arange(start + T, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None] & valid[:, None, None, : start + T]
    return mask | (k_pos[None, :] == q_pos[:, None])[None, None]


@dataclass
class KVCache:
    """Keys and values of every layer, (B, n_kv_heads, max_len, head_dim) each, filled up to ``length``;
    ``valid`` marks real (non-padding) key positions, (B, max_len). Positions count real tokens only, so a
    left-padded row is computed exactly as if it were alone."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, *, device, dtype) -> KVCache:
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        return cls(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)],
            # rows are real unless a caller marks padding (see ``mark``)
            valid=torch.ones(batch, max_len, dtype=torch.bool, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def mark(self, valid: torch.Tensor) -> None:
        """Say which of the next ``valid.shape[1]`` positions are real tokens (False: left padding)."""
        self.valid[:, self.length : self.length + valid.shape[1]] = valid

    def begin(self, T: int):
        start = self.length
        if start + T > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions, {start + T} needed")
        valid = self.valid[:, : start + T]
        positions = (valid.cumsum(-1) - 1).clamp(min=0)[:, start:]
        if bool(valid.all()):
            # no padding: one new token sees every key; a prompt from the start is plain causal attention
            if T == 1:
                return positions, None, False
            if start == 0:
                return positions, None, True
        return positions, _padded_mask(self.valid, start, T), False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, T = self.length, k.shape[2]
        self.keys[layer][:, :, start : start + T] = k
        self.values[layer][:, :, start : start + T] = v
        return self.keys[layer][:, :, : start + T], self.values[layer][:, :, : start + T]

    def end(self, T: int) -> None:
        self.length += T


class SlotCache:
    """Keys and values of ``slots`` sequences of at most ``slot_len`` tokens each, and which slots are free. A
    sequence owns one slot from admission until it finishes, so sequences of any lengths, at any point of their
    generation, run in one forward call: :meth:`rows` binds the slots of a batch's rows.

    Prefix caching (``prefix_block`` > 0): a slot remembers the tokens whose keys/values it holds, hashed per
    block of ``prefix_block`` tokens (each hash chained to the one before, so equal hashes mean equal
    prefixes). A released slot keeps its contents until it is reused, least recently released first. A new
    sequence takes the free slot that already holds the longest whole-block prefix of its prompt, or the
    least recently used free slot with that prefix copied in from whichever slot holds it (a running one
    included): those positions are not computed again. Keys and values depend only on the tokens up to their
    position, so the output is the same as without the cache."""

    def __init__(self, cfg: ModelConfig, slots: int, slot_len: int, *, device, dtype, prefix_block: int = 0) -> None:
        if slots < 1 or slot_len < 2:
            raise ValueError(f"a KV cache needs at least 1 slot of 2 tokens, got {slots} x {slot_len}")
        shape = (slots, cfg.kv_heads, slot_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.slots, self.slot_len = slots, slot_len
        self.device = torch.device(device)
        self.lengths = [0] * slots  # tokens held per slot
        self.prefix_block = prefix_block
        self.held: list[list[int]] = [[] for _ in range(slots)]  # the tokens each slot's keys/values are of
        self._hashes: list[list[int]] = [[] for _ in range(slots)]  # chained hash of each whole block held
        self._free = list(range(slots))  # least recently released first
        self.hits = 0  # prompt tokens taken from the cache instead of computed
        self.lookups = 0

    @staticmethod
    def bytes_needed(cfg: ModelConfig, slots: int, slot_len: int, element_size: int) -> int:
        return 2 * cfg.n_layers * slots * cfg.kv_heads * slot_len * cfg.head_dim * element_size

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def used(self) -> int:
        return self.slots - len(self._free)

    @property
    def tokens(self) -> int:
        """Tokens held in the slots in use."""
        free = set(self._free)
        return sum(n for s, n in enumerate(self.lengths) if s not in free)

    @property
    def capacity(self) -> int:
        return self.slots * self.slot_len

    def allocate(self, prompt: Sequence[int] | None = None) -> tuple[int, int] | None:
        """A free slot and how many of ``prompt``'s first tokens it already holds (0 without prefix caching or a
        prompt; at most all but the last prompt token, whose logits the caller needs), or None when all slots
        are in use. The slot holds nothing past that prefix."""
        if not self._free:
            return None
        slot, reuse = self._free[0], 0
        if prompt is not None and self.prefix_block > 0:
            self.lookups += 1
            source, reuse = self._longest_prefix(prompt)
            if reuse and source in self._free:
                slot = source
            elif reuse:
                for layer in range(len(self.keys)):
                    self.keys[layer][slot, :, :reuse] = self.keys[layer][source, :, :reuse]
                    self.values[layer][slot, :, :reuse] = self.values[layer][source, :, :reuse]
                self.held[slot] = list(self.held[source][:reuse])
                self._hashes[slot] = list(self._hashes[source][: reuse // self.prefix_block])
            self.hits += reuse
        self._free.remove(slot)
        self._truncate(slot, reuse)
        return slot, reuse

    def release(self, slot: int) -> None:
        if slot in self._free:
            raise ValueError(f"slot {slot} is already free")
        if self.prefix_block <= 0:
            self._truncate(slot, 0)
        self._free.append(slot)

    def _truncate(self, slot: int, n: int) -> None:
        self.lengths[slot] = n
        del self.held[slot][n:]
        del self._hashes[slot][n // self.prefix_block if self.prefix_block else 0 :]

    def _longest_prefix(self, prompt: Sequence[int]) -> tuple[int, int]:
        """(the slot holding the longest whole-block prefix of ``prompt``, its length in tokens)."""
        B = self.prefix_block
        best, best_blocks = -1, 0
        h = 0
        candidates = [s for s in range(self.slots) if self._hashes[s]]
        for b in range((len(prompt) - 1) // B):
            h = hash((h, tuple(prompt[b * B : (b + 1) * B])))
            candidates = [s for s in candidates if len(self._hashes[s]) > b and self._hashes[s][b] == h]
            if not candidates:
                break
            # prefer a free slot (no copy), then the one used least recently
            free = [s for s in candidates if s in self._free]
            best, best_blocks = (free[0] if free else candidates[0]), b + 1
        return best, best_blocks * B

    def _written(self, slot: int, tokens: Sequence[int]) -> None:
        """``tokens`` were appended to ``slot``: extend its record and the hashes of its whole blocks."""
        if self.prefix_block <= 0:
            return
        held, hashes, B = self.held[slot], self._hashes[slot], self.prefix_block
        held.extend(int(t) for t in tokens)
        while (len(hashes) + 1) * B <= len(held):
            b = len(hashes)
            hashes.append(hash((hashes[-1] if hashes else 0, tuple(held[b * B : (b + 1) * B]))))

    def rows(self, slots: Sequence[int], tokens: Sequence[Sequence[int]] | None = None) -> SlotRows:
        """The cache for one forward call whose row b continues the sequence in ``slots[b]`` with
        ``tokens[b]`` (recorded for prefix caching)."""
        return SlotRows(self, list(slots), tokens)


class SlotRows:
    """A batch's view of a :class:`SlotCache`: row b reads and writes slot ``slots[b]``, from that slot's
    length on; every query sees its own slot's keys up to its own position."""

    def __init__(self, cache: SlotCache, slots: list[int], tokens: Sequence[Sequence[int]] | None = None) -> None:
        self.cache, self.slots, self.tokens = cache, slots, tokens
        self.starts = [cache.lengths[s] for s in slots]
        self._slot_t = torch.as_tensor(slots, device=cache.device)

    def begin(self, T: int):
        kmax = max(self.starts) + T
        if kmax > self.cache.slot_len:
            raise ValueError(f"a KV-cache slot holds {self.cache.slot_len} tokens, {kmax} needed")
        device = self.cache.device
        self._pos = torch.as_tensor(self.starts, device=device)[:, None] + torch.arange(T, device=device)
        self._kmax = kmax
        if len(self.slots) == 1 and T == 1:
            return self._pos, None, False  # a single new token sees every key of its slot
        if len(self.slots) == 1 and self.starts[0] == 0:
            return self._pos, None, True  # a prompt from its start: plain causal attention
        mask = (torch.arange(kmax, device=device)[None, None, :] <= self._pos[:, :, None])[:, None]
        return self._pos, mask, False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        K, V = self.cache.keys[layer], self.cache.values[layer]
        T, kmax = k.shape[2], self._kmax
        if len(self.slots) == 1:
            s, a = self.slots[0], self.starts[0]
            K[s, :, a : a + T] = k[0]
            V[s, :, a : a + T] = v[0]
            return K[s : s + 1, :, :kmax], V[s : s + 1, :, :kmax]  # views: no copy
        rows = self._slot_t[:, None]
        K[rows, :, self._pos] = k.transpose(1, 2)  # (B, T, kv_heads, D) into each row's slot and positions
        V[rows, :, self._pos] = v.transpose(1, 2)
        # narrowing first, then picking the slots, copies only the keys in use (measured ~2.5x faster than
        # K[slots, :, :kmax] on a CPU)
        return K[:, :, :kmax].index_select(0, self._slot_t), V[:, :, :kmax].index_select(0, self._slot_t)

    def end(self, T: int) -> None:
        for b, (s, a) in enumerate(zip(self.slots, self.starts)):
            self.cache.lengths[s] = a + T
            if self.tokens is not None:
                self.cache._written(s, self.tokens[b])


class PastCache:
    """Past keys/values as plain tensors in, ``present`` (past + new) out: what an ONNX graph with past key
    values computes. ``attention_mask`` (B, past + new) is 1 for real tokens, 0 for left padding."""

    def __init__(self, past: Sequence[torch.Tensor], attention_mask: torch.Tensor, position_ids: torch.Tensor):
        self.past, self.position_ids = list(past), position_ids
        self.attention_mask = attention_mask.bool()
        self.present: list[torch.Tensor] = []

    def begin(self, T: int):
        P = self.past[0].shape[2]
        return self.position_ids, _padded_mask(self.attention_mask, P, T), False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        k = torch.cat([self.past[2 * layer], k], dim=2)
        v = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present += [k, v]
        return k, v

    def end(self, T: int) -> None:
        pass
