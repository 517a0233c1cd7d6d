"""The word-lattice cache: per-word tables from which any occurrence of a word is segmented by a table lookup
(decoding), a table draw, or a short backward walk ending in one (sampling) (docs/tokenization.md, "Word-lattice
cache").

With whitespace splitting no piece crosses a word boundary, so the segmentation law of a text is the product of its
words' laws, and everything a draw needs depends on ``(word, alpha)`` only: for every end position of the word, the
pieces ending there with the cumulative distribution of that position's predecessor, and tables of all the
segmentations of the whole word or of its first units with their cumulative probabilities (sampling), or the Viterbi
segmentation (decoding). The blocks of many words lie end to end in flat tensors (see :class:`WordTables`).

:class:`WordStore` keeps blocks across calls, least recently used first out, within a byte budget. The paths through
the blocks, walked per occurrence or enumerated into tables, are :mod:`~textdiff.tokenization.wordwalks`' and
:mod:`~textdiff.tokenization.wordtables`'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

ROW, EDGE, UNITS, SEG, PIECE = "row", "edge", "units", "seg", "piece"
_SEGMENTATIONS = {UNITS: {}, PIECE: {"piece": torch.int32}}  # UNITS: sizes only, the units of each word
WALK_FIELDS = {ROW: {"first": torch.int64, "last": torch.int16, "unit": torch.int32},
               EDGE: {"cdf": torch.float64, "piece": torch.int32, "length": torch.int16}}
SAMPLING_FIELDS = {ROW: {**WALK_FIELDS[ROW], "seg": torch.int32, "segs": torch.int16}, EDGE: WALK_FIELDS[EDGE],
                   **_SEGMENTATIONS, SEG: {"cdf": torch.float64, "first": torch.int32, "count": torch.int16}}
DECODING_FIELDS = {**_SEGMENTATIONS, SEG: {"first": torch.int32, "count": torch.int32}}
WALK_DECODING_FIELDS = {ROW: {"piece": torch.int32, "length": torch.int16, "unit": torch.int32}, EDGE: {}}
ENTRY_OVERHEAD = 200  # bytes per cached word besides its blocks: dict slot, key string, bookkeeping (estimate)
_POINTERS = {ROW: {"first": EDGE, "seg": SEG}, SEG: {"first": PIECE}}  # fields that index another group
_LOW_WATER = 0.75  # eviction frees the cache down to this fraction of its budget, leaving room to append


@dataclass
class WordTables:
    """Blocks of a list of words, end to end: ``sizes[g][w]`` entries of group ``g`` belong to word ``w``;
    ``data[g][field]`` holds the values. Groups: ``UNITS`` (sizes only: units per word), ``SEG`` (segmentations of
    the word or of its first units: the cumulative probability ``cdf`` within its table when sampling, the
    ``count`` of its pieces from ``first``), ``PIECE`` (their pieces, byte fallback spelled out), and when sampling
    ``ROW`` (per unit: its edges ``first .. first + last``, the table of the word's segmentations up to there
    ``seg .. seg + segs - 1``, none when ``segs`` is 0) and ``EDGE`` (predecessor ``cdf``, piece, length). Pointers
    (``first``, ``seg``) count from the word's own first entry here, from the store's first entry in a store."""

    sizes: dict[str, torch.Tensor]
    data: dict[str, dict[str, torch.Tensor]]


_SLOT_LOAD = 4  # hash slots per packed code, at least: most codes get a slot of their own
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _slot(code: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Hash slot of every packed code (multiplicative hashing into ``len(slots)``, a power of two)."""
    bits = max(len(slots) - 1, 1).bit_length() if len(slots) > 1 else 0
    if bits == 0:
        return np.zeros(len(code), dtype=np.intp)
    return ((code * _GOLDEN) >> np.uint64(64 - bits)).astype(np.intp)


class _Index(dict):
    """Entry id of every cached key; -1 for a missing key (so that a C-level ``map`` of ``__getitem__`` looks a
    whole batch up)."""

    def __missing__(self, key) -> int:
        return -1


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

    :meth:`lookup` returns the entry of every word of a call, building the missing blocks with ``build``; it never
    evicts a word of the current call, so a call whose own words exceed the budget holds them until :meth:`trim`.
    ``base[g]`` (``row_base`` for ``ROW``) locates every entry's block of group ``g``."""

    def __init__(self, fields: dict[str, dict[str, torch.dtype]], device: torch.device, budget: int) -> None:
        self.fields, self.device, self.budget = fields, device, budget
        self._unit = {g: sum(torch.empty(0, dtype=t).element_size() for t in f.values()) for g, f in fields.items()}
        self.hits = self.misses = self._clock = 0
        self.device_index = None  # the device pipeline's hash index of the keys (textdiff.tokenization.bytes_input)
        self._lay_out([], {g: 0 for g in fields})

    def _lay_out(self, words: list[str], capacity: dict[str, int], tables: WordTables | None = None,
                 ticks: torch.Tensor | None = None) -> None:
        """Start afresh with room for ``capacity`` entries per group, holding ``words`` with blocks ``tables``."""
        self.words, self.index = [], _Index()
        self._codes, self._code_entry = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        self._slot_code, self._slot_entry = np.zeros(1, dtype=np.uint64), np.full(1, -1, dtype=np.int64)
        self._add_keys(words)
        self.data = {g: {name: _Buffer(dtype, self.device, capacity[g]) for name, dtype in f.items()}
                     for g, f in self.fields.items()}
        self.capacity = dict(capacity)
        self.tail = {g: 0 for g in self.fields}
        self.size = {g: _Buffer(torch.int64, self.device) for g in self.fields}
        self.base = {g: _Buffer(torch.int64, self.device) for g in self.fields}
        self.tick = _Buffer(torch.int64, torch.device("cpu"))
        self.live_bytes = 0
        if words:
            self._append(tables, ticks)

    @property
    def row_base(self) -> torch.Tensor:
        return self.base[ROW].values

    def column(self, group: str, field: str) -> torch.Tensor:
        return self.data[group][field].values

    @property
    def nbytes(self) -> int:
        """Bytes held: tensor capacity for the blocks plus :data:`ENTRY_OVERHEAD` per word."""
        return sum(b.nbytes for f in self.data.values() for b in f.values()) + ENTRY_OVERHEAD * len(self.words)

    def _entry_bytes(self, sizes: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(sizes[g] * self._unit[g] for g in self.fields) + ENTRY_OVERHEAD

    def _pointers(self, group: str) -> dict[str, str]:
        """The fields of ``group`` that index another group, and that group."""
        return {name: target for name, target in _POINTERS.get(group, {}).items() if name in self.fields[group]}

    def sizes(self, group: str) -> torch.Tensor:
        return self.size[group].values

    def lookup(self, keys: list, build: Callable[[list], WordTables], code: np.ndarray | None = None
               ) -> torch.Tensor:
        """Entry ids (int64, on the store's device) of every occurrence (repeats allowed), building the missing
        words' blocks with ``build`` (given each missing key once). Occurrences as in
        :class:`~textdiff.tokenization.normalization.Words`: ``code[i]`` when nonzero (a packed short word, looked up
        in a sorted table), else the next key (looked up in a dict)."""
        looked_up = np.fromiter(map(self.index.__getitem__, keys), dtype=np.int64, count=len(keys))
        if code is None:
            ids = looked_up
        else:
            packed = code != 0
            slot = _slot(code, self._slot_code)
            found = self._slot_code[slot] == code  # the slot of a packed code holds it (never true for 0)
            ids = np.where(found, self._slot_entry[slot], -1)
            ids[~packed] = looked_up
            rest = np.flatnonzero(packed & ~found)  # codes that lost their slot to another, and new codes
            if len(rest) and len(self._codes):
                at = np.minimum(np.searchsorted(self._codes, code[rest]), len(self._codes) - 1)
                hit = self._codes[at] == code[rest]
                ids[rest[hit]] = self._code_entry[at[hit]]

        def missed_keys(missing: np.ndarray) -> list:
            missed = np.empty(len(ids), dtype=object)
            if code is None:
                missed[:] = keys
            else:
                missed[~packed] = keys
                missed[packed] = code[packed].view("S8").tolist()
            return missed[missing].tolist()

        ids, _ = self.resolve(ids, missed_keys, build)
        return torch.from_numpy(ids).to(self.device)

    def resolve(self, ids: np.ndarray, missed_keys: Callable[[np.ndarray], list], build: Callable[[list], WordTables]
                ) -> tuple[np.ndarray, torch.Tensor | None]:
        """One call's lookups, completed: ``ids`` holds the entry of every occurrence found so far (-1: not found;
        modified in place), ``missed_keys(missing)`` the keys of the occurrences at ``missing``. Found entries are
        marked as used by this call (never evicted during it); keys not found are looked up in the dict, the rest
        built with ``build`` (each key once) and appended. Returns the completed ids and the map from old to new
        entry ids when appending moved the store (None when nothing moved): entries found before this call must be
        mapped through it."""
        self._clock += 1
        tick = self.tick.values.numpy()
        hit = ids >= 0
        tick[ids[hit]] = self._clock  # the words of this call are never evicted during it
        missing = np.flatnonzero(~hit)
        remap, new_keys = None, []
        if missing.size:  # each distinct key once: those in the dict are used by this call, the others are new
            missed = missed_keys(missing)
            distinct = list(dict.fromkeys(missed))
            known = np.fromiter(map(self.index.__getitem__, distinct), dtype=np.int64, count=len(distinct))
            tick[known[known >= 0]] = self._clock
            new_keys = [key for key, i in zip(distinct, known.tolist()) if i < 0]
        self.hits += int(np.count_nonzero(tick == self._clock))
        if new_keys:
            self.misses += len(new_keys)
            tables = build(new_keys)
            remap = self._make_room({g: int(s.sum()) for g, s in tables.sizes.items()})
            if remap is not None:
                ids[hit] = remap.numpy()[ids[hit]]
            self._add_keys(new_keys)
            self._append(tables, torch.full((len(new_keys),), self._clock, dtype=torch.int64))
        if missing.size:
            ids[missing] = np.fromiter(map(self.index.__getitem__, missed), dtype=np.int64, count=len(missed))
        return ids, remap

    def _add_keys(self, keys: list) -> None:
        """Give ``keys`` the next entry ids: in the dict, and short ``bytes`` keys also in the sorted code table."""
        first = len(self.words)
        self.index.update(zip(keys, range(first, first + len(keys))))
        self.words += keys
        short = [i for i, key in enumerate(keys) if isinstance(key, bytes) and len(key) <= 8]
        if short:
            new_codes = np.array([keys[i] for i in short], dtype="S8").view("<u8")
            new_entries = np.asarray(short, dtype=np.int64) + first
            codes = np.concatenate([self._codes, new_codes])
            entries = np.concatenate([self._code_entry, new_entries])
            order = np.argsort(codes, kind="stable")
            self._codes, self._code_entry = codes[order], entries[order]
            if len(self._codes) * _SLOT_LOAD > len(self._slot_code):  # grow: all codes again, in entry order
                size = 1 << max(10, (len(self._codes) * _SLOT_LOAD * 2 - 1).bit_length())
                self._slot_code = np.zeros(size, dtype=np.uint64)
                self._slot_entry = np.full(size, -1, dtype=np.int64)
                by_entry = np.argsort(self._code_entry, kind="stable")
                new_codes, new_entries = self._codes[by_entry], self._code_entry[by_entry]
            self._fill_slots(new_codes, new_entries)

    def _fill_slots(self, codes: np.ndarray, entries: np.ndarray) -> None:
        """Put each code into its hash slot where that slot is free (the first of several codes wanting it wins);
        the others are found in the sorted table."""
        slot = _slot(codes, self._slot_code)
        free = np.flatnonzero(self._slot_code[slot] == 0)
        slot, first = np.unique(slot[free], return_index=True)
        self._slot_code[slot] = codes[free[first]]
        self._slot_entry[slot] = entries[free[first]]

    def _append(self, tables: WordTables, ticks: torch.Tensor) -> None:
        base = {}
        for g, sizes in tables.sizes.items():
            base[g] = self.tail[g] + _exclusive_cumsum(sizes.to(self.device))
            self.base[g].append(base[g])
            self.tail[g] += int(sizes.sum())
            self.size[g].append(sizes.to(self.device))
        for g, sizes in tables.sizes.items():
            for name, values in tables.data[g].items():
                target = self._pointers(g).get(name)
                if target is not None:  # relative to the word's entries -> absolute
                    values = values + torch.repeat_interleave(base[target], sizes.to(self.device))
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
        freed_before = _exclusive_cumsum(self._entry_bytes({g: s.values.cpu() for g, s in self.size.items()})[order])
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
        sizes = {g: self.size[g].values.cpu()[kept] for g in self.fields}
        tight = sum((int(sizes[g].sum()) + need[g]) * self._unit[g] for g in self.fields)
        spare = min(2.0, max(1.0, (self.budget - ENTRY_OVERHEAD * kept.numel()) / max(tight, 1)))
        data = {}
        for g, fields in self.fields.items():
            size = sizes[g].to(self.device)
            start = self.base[g].values[kept.to(self.device)] - _exclusive_cumsum(size)
            source = torch.arange(int(size.sum()), device=self.device) + torch.repeat_interleave(start, size)
            data[g] = {name: self.data[g][name].values[source] for name in fields}
            for name, target in self._pointers(g).items():  # absolute -> relative to the word's entries
                data[g][name] -= torch.repeat_interleave(self.base[target].values[kept.to(self.device)], size)
        capacity = {g: int((int(sizes[g].sum()) + need[g]) * spare) for g in self.fields}
        self._lay_out([self.words[i] for i in kept.tolist()], capacity, WordTables(sizes, data),
                      self.tick.values[kept])
        remap = torch.full_like(keep, -1, dtype=torch.int64)
        remap[kept] = torch.arange(kept.numel())
        return remap
