"""The word-lattice cache: per-word tables from which any occurrence of a word is segmented by one short backward
walk (docs/tokenization.md, "Word-lattice cache").

With whitespace splitting no piece crosses a word boundary, so the segmentation law of a text is the product of its
words' laws, and everything a draw needs depends on ``(word, alpha)`` only: for every end position of the word, the
pieces ending there with the cumulative distribution of that position's predecessor (sampling), or the best last
piece (decoding). The blocks of many words lie end to end in flat tensors: one *row* per unit of a word, and (for
sampling) the *edges* ending at each row, contiguous, longest piece first.

:class:`WordStore` keeps blocks across calls, least recently used first out, within a byte budget; :func:`walk`
follows one path per occurrence backwards from the word's end, vectorised over every occurrence of a batch, drawing
each visited predecessor by inverse CDF from its own float64 uniform (decoding: following the best piece). Two
occurrences of one word therefore get independent draws, and the draws do not depend on whether a block was cached.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from textdiff import rng
from textdiff.tokenization.normalization import long_tensor

ROW, EDGE = "row", "edge"
SAMPLING_FIELDS = {ROW: {"first": torch.int64, "last": torch.int16, "unit": torch.int32},
                   EDGE: {"cdf": torch.float64, "piece": torch.int32, "length": torch.int16}}
DECODING_FIELDS = {ROW: {"piece": torch.int32, "length": torch.int16, "unit": torch.int32}, EDGE: {}}
ENTRY_OVERHEAD = 200  # bytes per cached word besides its blocks: dict slot, key string, bookkeeping (estimate)
_POINTER = "first"  # the row field that indexes edges
_LOW_WATER = 0.75  # eviction frees the cache down to this fraction of its budget, leaving room to append


@dataclass
class WordTables:
    """Blocks of a list of words, end to end: ``sizes[g][w]`` entries of group ``g`` (``ROW``: units, ``EDGE``:
    edges) belong to word ``w``; ``data[g][field]`` holds the values. A row's edges are ``first .. first + last``;
    here ``first`` counts from the word's own first edge, in a store from the store's first edge."""

    sizes: dict[str, torch.Tensor]
    data: dict[str, dict[str, torch.Tensor]]


class _Buffer:
    """A 1-D tensor with spare capacity: ``append`` writes at the tail and doubles the capacity when full."""

    def __init__(self, dtype: torch.dtype, device: torch.device, capacity: int = 0) -> None:
        self.data = torch.empty(capacity, dtype=dtype, device=device)
        self.size = 0

    @property
    def values(self) -> torch.Tensor:
        return self.data[: self.size]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def append(self, values: torch.Tensor) -> None:
        end = self.size + values.numel()
        if end > self.data.numel():
            grown = torch.empty(max(end, 2 * self.data.numel()), dtype=self.data.dtype, device=self.data.device)
            grown[: self.size] = self.values
            self.data = grown
        self.data[self.size : end] = values
        self.size = end


def _exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(values, 0) - values


class WordStore:
    """Blocks of words keyed by the word, in flat tensors on one device; at most ``budget`` bytes between calls.

    :meth:`ensure` returns the entry of every word of a call, building the missing blocks with ``build``; it never
    evicts a word of the current call, so a call whose own words exceed the budget holds them until :meth:`trim`.
    ``row_base[e]`` / ``edge_base[e]`` locate entry ``e``'s blocks."""

    def __init__(self, fields: dict[str, dict[str, torch.dtype]], device: torch.device, budget: int) -> None:
        self.fields, self.device, self.budget = fields, device, budget
        self._unit = {g: sum(torch.empty(0, dtype=t).element_size() for t in f.values()) for g, f in fields.items()}
        self.hits = self.misses = self._clock = 0
        self._lay_out([], {g: 0 for g in fields})

    def _lay_out(self, words: list[str], capacity: dict[str, int], tables: WordTables | None = None,
                 ticks: torch.Tensor | None = None) -> None:
        """Start afresh with room for ``capacity`` entries per group, holding ``words`` with blocks ``tables``."""
        self.words = words
        self.index = {word: i for i, word in enumerate(words)}
        self.data = {g: {name: _Buffer(dtype, self.device, capacity[g]) for name, dtype in f.items()}
                     for g, f in self.fields.items()}
        self.capacity = dict(capacity)
        self.tail = {g: 0 for g in self.fields}
        self.size = {g: _Buffer(torch.int64, torch.device("cpu")) for g in self.fields}
        self.base = {g: _Buffer(torch.int64, self.device) for g in self.fields}
        self.tick = _Buffer(torch.int64, torch.device("cpu"))
        self.live_bytes = 0
        if words:
            self._append(tables, ticks)

    @property
    def row_base(self) -> torch.Tensor:
        return self.base[ROW].values

    @property
    def edge_base(self) -> torch.Tensor:
        return self.base[EDGE].values

    def column(self, group: str, field: str) -> torch.Tensor:
        return self.data[group][field].values

    @property
    def nbytes(self) -> int:
        """Bytes held: tensor capacity for the blocks plus :data:`ENTRY_OVERHEAD` per word."""
        return sum(b.nbytes for f in self.data.values() for b in f.values()) + ENTRY_OVERHEAD * len(self.words)

    def _entry_bytes(self, sizes: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(sizes[g] * self._unit[g] for g in self.fields) + ENTRY_OVERHEAD

    def ensure(self, words: list[str], build: Callable[[list[str]], WordTables]) -> torch.Tensor:
        """Entry ids (int64, on the store's device) of ``words`` (distinct), building the missing ones."""
        self._clock += 1
        get = self.index.get
        ids = long_tensor(array("q", [get(word, -1) for word in words]))
        missing = torch.nonzero(ids < 0).squeeze(1)
        self.misses += missing.numel()
        self.hits += len(words) - missing.numel()
        hit = ids >= 0
        self.tick.values[ids[hit]] = self._clock  # the words of this call are never evicted during it
        if missing.numel():
            new_words = [words[i] for i in missing.tolist()]
            tables = build(new_words)
            remap = self._make_room({g: int(s.sum()) for g, s in tables.sizes.items()})
            if remap is not None:
                ids[hit] = remap[ids[hit]]
            ids[missing] = torch.arange(len(self.words), len(self.words) + len(new_words))
            self.words += new_words
            self.index.update(zip(new_words, ids[missing].tolist()))
            self._append(tables, torch.full((len(new_words),), self._clock, dtype=torch.int64))
        return ids.to(self.device)

    def _append(self, tables: WordTables, ticks: torch.Tensor) -> None:
        base = {}
        for g, sizes in tables.sizes.items():
            base[g] = self.tail[g] + _exclusive_cumsum(sizes.to(self.device))
            self.base[g].append(base[g])
            self.tail[g] += int(sizes.sum())
            self.size[g].append(sizes.cpu())
        for g, sizes in tables.sizes.items():
            for name, values in tables.data[g].items():
                if name == _POINTER:  # relative to the word's edges -> absolute
                    values = values + torch.repeat_interleave(base[EDGE], sizes.to(self.device))
                self.data[g][name].append(values.to(self.fields[g][name]))
        self.tick.append(ticks)
        self.live_bytes += int(self._entry_bytes({g: s.cpu() for g, s in tables.sizes.items()}).sum())

    def _make_room(self, need: dict[str, int]) -> torch.Tensor | None:
        """Before appending ``need`` entries per group: if a group would overflow, evict words not used by this
        call (least recently used first) while over budget, and lay out the rest with spare room. Returns the map
        from old to new entry ids (-1: evicted), or None when nothing moved."""
        if all(self.tail[g] + need[g] <= self.capacity[g] for g in need if self.fields[g]):
            return None
        need_bytes = sum(need[g] * self._unit[g] for g in need)
        return self._evict(self.budget * _LOW_WATER - need_bytes, need, only_stale=True)

    def trim(self) -> None:
        """After a call: if more than the budget is held, evict the least recently used words (this call's too)
        down to part of the budget and give the memory back."""
        if self.nbytes > self.budget:
            self._evict(self.budget * _LOW_WATER, {g: 0 for g in self.fields}, only_stale=False)

    def _evict(self, target: float, need: dict[str, int], only_stale: bool) -> torch.Tensor:
        """Drop words in LRU order (``only_stale``: only words this call did not use) until at most ``target``
        bytes are live, then lay the rest out again (see :meth:`_compact`)."""
        ticks = self.tick.values
        order = torch.argsort(ticks, stable=True)  # least recently used first; this call's words last
        freed_before = _exclusive_cumsum(self._entry_bytes({g: s.values for g, s in self.size.items()})[order])
        drop = self.live_bytes - freed_before > target  # still over target after dropping all earlier words
        if only_stale:
            drop &= ticks[order] < self._clock
        keep = torch.ones_like(ticks, dtype=torch.bool)
        keep[order[drop]] = False
        return self._compact(keep, need)

    def _compact(self, keep: torch.Tensor, need: dict[str, int]) -> torch.Tensor:
        """Keep the ``keep`` entries, laid out end to end, with capacity for ``need`` more entries per group and
        spare room up to the budget (at most doubling). Returns the map from old to new entry ids."""
        kept = torch.nonzero(keep).squeeze(1)
        sizes = {g: self.size[g].values[kept] for g in self.fields}
        tight = sum((int(sizes[g].sum()) + need[g]) * self._unit[g] for g in self.fields)
        spare = min(2.0, max(1.0, (self.budget - ENTRY_OVERHEAD * kept.numel()) / max(tight, 1)))
        data = {}
        for g, fields in self.fields.items():
            size = sizes[g].to(self.device)
            start = self.base[g].values[kept.to(self.device)] - _exclusive_cumsum(size)
            source = torch.arange(int(size.sum()), device=self.device) + torch.repeat_interleave(start, size)
            data[g] = {name: self.data[g][name].values[source] for name in fields}
            if _POINTER in fields:  # absolute -> relative to the word's edges
                edge_base = self.base[EDGE].values[kept.to(self.device)]
                data[g][_POINTER] -= torch.repeat_interleave(edge_base, size)
        capacity = {g: int((int(sizes[g].sum()) + need[g]) * spare) for g in self.fields}
        self._lay_out([self.words[i] for i in kept.tolist()], capacity, WordTables(sizes, data),
                      self.tick.values[kept])
        remap = torch.full_like(keep, -1, dtype=torch.int64)
        remap[kept] = torch.arange(kept.numel())
        return remap


class _Backend:
    """The array operations of :func:`walk`: numpy on CPU tensors (lower per-call cost than torch for the many
    small steps of a walk), torch elsewhere."""

    def __init__(self, use_numpy: bool, device: torch.device) -> None:
        self.xp = np if use_numpy else torch
        self.array = (lambda t: t.numpy()) if use_numpy else (lambda t: t)
        self.nonzero = np.flatnonzero if use_numpy else (lambda mask: torch.nonzero(mask).squeeze(1))
        self.arange = (lambda n: np.arange(n)) if use_numpy else (lambda n: torch.arange(n, device=device))

    def put(self, out, at, values) -> None:
        if self.xp is np:
            out[at] = values
        else:
            out.index_copy_(0, at, values.to(out.dtype))


def walk(store: WordStore, entry: torch.Tensor, length: torch.Tensor, out_base: torch.Tensor, picked: torch.Tensor,
         picked_length: torch.Tensor, generator: torch.Generator | None, steps: int, width: int,
         compact: bool = True) -> None:
    """One path per occurrence, from the word's end back to 0: occurrence ``i`` is a word of ``length[i]`` units
    with cache entry ``entry[i]``; its piece ``(s, e)`` is written as ``picked[out_base[i] + s] = piece`` and
    ``picked_length[...] = e - s`` (the last entry of both is scratch space).

    With a ``generator`` (sampling store) every visited predecessor is the first edge whose cumulative probability
    exceeds a fresh float64 uniform, an exact draw from ``Z(s) e^{alpha v} / Z(e)``; draws are independent across
    positions and occurrences, so the path has the exact law (docs/tokenization.md). Without (decoding store) the
    path follows each position's best piece. ``width``: the most edges a row can hold (the longest piece).
    ``steps``: the longest word (in units). ``compact=True`` (CPU, numpy) drops finished paths after every step and
    stops when none is left; ``compact=False`` (CUDA, torch) keeps fixed shapes for ``steps`` steps and never reads
    a device value on the host.
    """
    if entry.numel() == 0:
        return
    be = _Backend(compact and entry.device.type == "cpu", entry.device)
    column = lambda group, name: be.array(store.column(group, name))
    out, out_length = be.array(picked), be.array(picked_length)
    scratch = picked.numel() - 1
    end, base = be.array(length), be.array(out_base)
    row = be.array(store.row_base)[be.array(entry)] + end - 1  # row of every path's current end
    if generator is not None:
        first_of, last_of = column(ROW, "first"), column(ROW, "last")
        cdf, edge_piece, edge_length = (column(EDGE, name) for name in ("cdf", "piece", "length"))
        offsets = be.arange(width)
    else:
        row_piece, row_length = column(ROW, "piece"), column(ROW, "length")
    for _ in range(steps):
        if generator is not None:
            first, last = first_of[row], last_of[row]
            span = int(last.max()) + 1 if compact else width
            window = cdf[first[:, None] + be.xp.minimum(offsets[:span], last[:, None])]
            u = be.array(rng.uniform((len(row), 1), generator, entry.device))
            edge = first + (window <= u).sum(1)  # #{cdf <= u}: the last edge's cdf is exactly 1 > u
            piece, piece_length = edge_piece[edge], edge_length[edge]
        else:
            piece, piece_length = row_piece[row], row_length[row]
        if compact:
            end = end - piece_length
            be.put(out, base + end, piece)
            be.put(out_length, base + end, piece_length)
            alive = be.nonzero(end > 0)
            if len(alive) == 0:
                break
            row, end, base = (row - piece_length)[alive], end[alive], base[alive]
        else:  # finished paths (end 0) stay on their first row and write to the scratch entry
            live = end > 0
            piece_length = be.xp.where(live, piece_length, 0)
            end = end - piece_length
            at = be.xp.where(live, base + end, scratch)
            be.put(out, at, piece)
            be.put(out_length, at, piece_length)
            row = row - piece_length
