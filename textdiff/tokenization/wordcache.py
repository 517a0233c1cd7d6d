"""The word-lattice cache: per-word tables from which any occurrence of a word is segmented by a table lookup
(decoding), a table draw, or a short backward walk ending in one (sampling) (docs/tokenization.md, "Word-lattice
cache").

With whitespace splitting no piece crosses a word boundary, so the segmentation law of a text is the product of its
words' laws, and everything a draw needs depends on ``(word, alpha)`` only: for every end position of the word, the
pieces ending there with the cumulative distribution of that position's predecessor, and tables of all the
segmentations of the whole word or of its first units with their cumulative probabilities (sampling), or the Viterbi
segmentation (decoding). The blocks of many words lie end to end in flat tensors (see :class:`WordTables`).

:class:`WordStore` keeps blocks across calls, least recently used first out, within a byte budget; :func:`walk`
follows one path per occurrence backwards from the word's end, vectorised over every occurrence of a batch, drawing
each visited predecessor, or the rest of the path from a table, by inverse CDF from its own float64 uniform. Two
occurrences of one word therefore get independent draws, and the draws do not depend on whether a block was cached.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from textdiff import rng

ROW, EDGE, UNITS, SEG, PIECE = "row", "edge", "units", "seg", "piece"
_SEGMENTATIONS = {UNITS: {}, PIECE: {"piece": torch.int32}}  # UNITS: sizes only, the units of each word
WALK_FIELDS = {ROW: {"first": torch.int64, "last": torch.int16, "unit": torch.int32},
               EDGE: {"cdf": torch.float64, "piece": torch.int32, "length": torch.int16}}
SAMPLING_FIELDS = {ROW: {**WALK_FIELDS[ROW], "seg": torch.int32, "segs": torch.int16}, EDGE: WALK_FIELDS[EDGE],
                   **_SEGMENTATIONS, SEG: {"cdf": torch.float64, "first": torch.int32, "count": torch.int16}}
DECODING_FIELDS = {**_SEGMENTATIONS, SEG: {"first": torch.int32, "count": torch.int32}}
WALK_DECODING_FIELDS = {ROW: {"piece": torch.int32, "length": torch.int16, "unit": torch.int32}, EDGE: {}}
TABLE_LIMIT = 64  # sampling: words with at most this many segmentations get a table of all of them
TABLE_UNITS = 16  # ... and at most this many units (bounds the counting pass)
SCALAR_PATHS = 128  # a compact walk finishes path by path in Python once at most this many paths are left
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


def bisect(xp, cdf, first, count, u, rounds: int):
    """Inverse-CDF draws from tables (``xp``: numpy or torch): ``first`` + the number of entries ``<= u`` among
    ``cdf[first : first + count - 1]``, i.e. the first entry whose cumulative probability exceeds ``u`` when the
    table's last entry is 1 > ``u``; ``rounds`` branch-free bisection steps cover tables of up to ``2**rounds``
    entries. ``first + count - 1`` must index ``cdf``."""
    last = first + count - 1  # never compared: its cdf is 1 > u
    for shift in reversed(range(rounds)):
        probe = xp.minimum(first + ((1 << shift) - 1), last)
        first = first + ((probe < last) & (cdf[probe] <= u)) * (1 << shift)
    return first


def _edge_sampler(be: _Backend, store: WordStore, width: int):
    """``draw(row, u) -> (piece, length)``: per row, the first edge whose cumulative probability exceeds ``u`` (the
    last edge's is exactly 1 > u), from a window of ``width`` edges."""
    first_of, last_of = be.array(store.column(ROW, "first")), be.array(store.column(ROW, "last"))
    cdf, piece, length = (be.array(store.column(EDGE, name)) for name in ("cdf", "piece", "length"))
    offsets = be.arange(width)

    def draw(row, u):
        first, last = first_of[row], last_of[row]
        window = cdf[first[:, None] + be.xp.minimum(offsets, last[:, None])]
        edge = first + (window <= u[:, None]).sum(1)  # #{cdf <= u}
        return piece[edge], length[edge]

    return draw


def walk(store: WordStore, entry: torch.Tensor, length: torch.Tensor, out_base: torch.Tensor, picked: torch.Tensor,
         picked_length: torch.Tensor, generator: torch.Generator | None, steps: int, width: int,
         compact: bool = True) -> torch.Tensor:
    """One path per occurrence, from the word's end back to 0: occurrence ``i`` is a word of ``length[i]`` units
    with cache entry ``entry[i]``; its piece ``(s, e)`` is written as ``picked[out_base[i] + s] = piece`` and
    ``picked_length[...] = e - s`` (the last entry of both is scratch space).

    With a ``generator`` (sampling store) each step draws one fresh float64 uniform per path. At a position ``e``
    whose row has a table of the segmentations of the word's first ``e`` units, the uniform draws one of them by
    inverse CDF and the path ends there: that segmentation's ``SEG`` index is returned (-1 for paths that end
    without one). Elsewhere it draws the predecessor, the first edge whose cumulative probability exceeds it, an
    exact draw from ``Z(s) e^{alpha v} / Z(e)``. Given the position reached, the rest of a path has the law of the
    segmentations of the word's first ``e`` units, which the table holds; draws are independent across steps and
    occurrences, so every path has the exact law (docs/tokenization.md). Without a generator (decoding store) the
    path follows each position's best piece. ``width``: the most edges a row can hold (the longest piece).
    ``steps``: the longest word (in units). ``compact=True`` (CPU, numpy) drops finished paths after every step and
    stops when none is left; ``compact=False`` (CUDA, torch) keeps fixed shapes for ``steps`` steps and never reads
    a device value on the host.
    """
    be = _Backend(compact and entry.device.type == "cpu", entry.device)
    table = torch.full((entry.numel(),), -1, dtype=torch.int64, device=entry.device)
    if entry.numel() == 0:
        return table
    if be.xp is np and generator is not None:
        walked = walk_numpy(store, entry.numpy(), length.numpy(), table.numpy(), generator)
        at = out_base.numpy()[walked.occurrence] + walked.start
        picked.numpy()[at], picked_length.numpy()[at] = walked.piece, walked.length
        return table
    column = lambda group, name: be.array(store.column(group, name))
    out, out_length, drawn = be.array(picked), be.array(picked_length), be.array(table)
    scratch = picked.numel() - 1
    end, base = be.array(length), be.array(out_base)
    row = be.array(store.row_base)[be.array(entry)] + end - 1  # row of every path's current end
    if generator is not None:
        seg_of, segs_of, seg_cdf = column(ROW, "seg"), column(ROW, "segs"), column(SEG, "cdf")
        draw_edges = _edge_sampler(be, store, width)
    else:
        row_piece, row_length = column(ROW, "piece"), column(ROW, "length")
    for _ in range(steps):
        ended = None  # paths that this step ends with a table draw
        if generator is not None:  # fixed shapes (compact sampling walks are walk_numpy's)
            u = be.array(rng.uniform((len(row),), generator, entry.device))
            tables = segs_of[row]
            ended = (tables > 0) & (end > 0)
            first = seg_of[row].long().clamp(max=max(len(seg_cdf) - 1, 0))
            count = tables.long().clamp(min=1).minimum(len(seg_cdf) - first)
            if len(seg_cdf):
                pick = bisect(torch, seg_cdf, first, count, u, (TABLE_LIMIT - 1).bit_length())
                drawn.copy_(torch.where(ended, pick, drawn))
            piece, piece_length = draw_edges(row, u)
            piece_length = torch.where(ended, end, piece_length)
        else:
            piece, piece_length = row_piece[row], row_length[row]
        if compact:
            end = end - piece_length
            at = base + end
            be.put(out, at, piece)
            be.put(out_length, at, piece_length)
            alive = be.nonzero(end > 0)
            if len(alive) == 0:
                break
            row, end, base = (row - piece_length)[alive], end[alive], base[alive]
        else:  # finished paths (end 0) stay on their first row and write to the scratch entry
            live = end > 0
            written = live if ended is None else live & ~ended
            piece_length = be.xp.where(live, piece_length, 0)
            end = end - piece_length
            at = be.xp.where(written, base + end, scratch)
            be.put(out, at, piece)
            be.put(out_length, at, piece_length)
            row = row - piece_length
    return table


def _bisect_numpy(cdf: np.ndarray, first: np.ndarray, last: np.ndarray, u: np.ndarray, rounds: int) -> np.ndarray:
    """:func:`bisect` with numpy, for CDFs whose last entry is exactly 1 (> ``u``, so a probe clamped to ``last``
    never moves ``first``), as segmentation tables and the predecessor CDF of every row end: ``first`` + the number
    of entries ``<= u`` among ``cdf[first : last]`` (the CDFs are non-decreasing)."""
    for shift in reversed(range(rounds)):
        probe = np.minimum(first + ((1 << shift) - 1), last)
        first = first + (cdf[probe] <= u) * (1 << shift)
    return first


@dataclass
class Walked:
    """The pieces that a sampling walk (:func:`walk_numpy`) draws, in the order drawn: per piece its
    ``occurrence``, its ``step`` (0 for the occurrence's last piece, 1 for the one before, ...), first unit
    ``start`` in the word, ``piece`` id and ``length``."""

    occurrence: np.ndarray
    step: np.ndarray
    start: np.ndarray
    piece: np.ndarray
    length: np.ndarray

    @classmethod
    def of(cls, parts: list[tuple[np.ndarray, ...]]) -> Walked:
        """The pieces of ``parts`` (each the fields' values in field order), end to end."""
        if not parts:
            return cls(*(np.zeros(0, dtype=np.int64) for _ in range(5)))
        return cls(*(np.concatenate(values) for values in zip(*parts)))


def walk_numpy(store: WordStore, entry: np.ndarray, end: np.ndarray, drawn: np.ndarray, generator: torch.Generator
               ) -> Walked:
    """The compact sampling walk of :func:`walk` on CPU numpy arrays (``end``: every occurrence's length in units;
    ``drawn``: the table index of every occurrence, -1 on entry): per step, one float64 uniform per live path, in
    path order; the paths at a row with a table draw from it and end, the others draw their predecessor edge (both
    by :func:`_bisect_numpy`). Returns the pieces drawn. Once at most :data:`SCALAR_PATHS` paths are left,
    :func:`_finish_scalar` makes the same draws path by path."""
    column = lambda group, name: store.column(group, name).numpy()
    seg_of, segs_of, seg_cdf = column(ROW, "seg"), column(ROW, "segs"), column(SEG, "cdf")
    first_of, last_of = column(ROW, "first"), column(ROW, "last")
    cdf, edge_piece, edge_length = column(EDGE, "cdf"), column(EDGE, "piece"), column(EDGE, "length")
    cpu = torch.device("cpu")
    occurrence = np.arange(len(entry))
    row = store.row_base.numpy()[entry] + end - 1  # row of every path's current end
    parts = []  # the pieces of every step
    while len(row):
        if parts and len(row) <= SCALAR_PATHS:
            parts.append(_finish_scalar(store, row, end, occurrence, len(parts), drawn, generator))
            break
        u = rng.uniform((len(row),), generator, cpu).numpy()
        segs = segs_of[row]
        tabled = segs > 0
        if tabled.any():  # table draws end these paths; the others draw a predecessor
            at = np.flatnonzero(tabled)
            first, count = seg_of[row[at]].astype(np.int64), segs[at]
            drawn[occurrence[at]] = _bisect_numpy(seg_cdf, first, first + (count - 1), u[at],
                                                  int(count.max() - 1).bit_length())
            rest = np.flatnonzero(~tabled)
            row, end, occurrence, u = row[rest], end[rest], occurrence[rest], u[rest]
            if not len(row):
                break
        first, last = first_of[row], last_of[row]
        edge = _bisect_numpy(cdf, first, first + last, u, int(last.max()).bit_length())
        length = edge_length[edge]
        end = end - length
        parts.append((occurrence, np.full(len(row), len(parts)), end, edge_piece[edge], length))
        row = row - length
        alive = end > 0
        if not alive.all():
            alive = np.flatnonzero(alive)
            row, end, occurrence = row[alive], end[alive], occurrence[alive]
    return Walked.of(parts)


def _finish_scalar(store: WordStore, row, end, occurrence, step: int, drawn, generator: torch.Generator
                   ) -> tuple[np.ndarray, ...]:
    """The rest of a compact sampling walk from its step ``step``, path by path in Python (numpy arrays in, CPU):
    the same draws from the same uniforms as the vectorised steps (one per path and step, in path order), without
    their fixed cost per step, which dominates once few paths are left. Returns the pieces drawn, as the values of
    :class:`Walked`'s fields."""
    column = lambda group, name: memoryview(store.column(group, name).numpy())  # Python numbers, no copy
    seg_of, segs_of, seg_cdf = column(ROW, "seg"), column(ROW, "segs"), column(SEG, "cdf")
    first_of, last_of = column(ROW, "first"), column(ROW, "last")
    cdf, edge_piece, edge_length = column(EDGE, "cdf"), column(EDGE, "piece"), column(EDGE, "length")
    paths = list(zip(row.tolist(), end.tolist(), occurrence.tolist()))
    pieces = []  # (occurrence, step, start, piece, length)
    while paths:
        uniforms = rng.uniform((len(paths),), generator, torch.device("cpu")).tolist()
        left = []
        for (r, e, o), u in zip(paths, uniforms):
            if segs_of[r]:  # #{cdf <= u} among the table's entries but its last (cdf 1 > u)
                drawn[o] = bisect_right(seg_cdf, u, seg_of[r], seg_of[r] + segs_of[r] - 1)
                continue
            edge = bisect_right(cdf, u, first_of[r], first_of[r] + last_of[r])
            length = edge_length[edge]
            e -= length
            pieces.append((o, step, e, edge_piece[edge], length))
            if e > 0:
                left.append((r - length, e, o))
        paths = left
        step += 1
    return tuple(np.array(pieces, dtype=np.int64).reshape(-1, 5).T)


def table_prefixes(row_first: torch.Tensor, row_count: torch.Tensor, edge_mass: torch.Tensor,
                   edge_length: torch.Tensor, word_rows: torch.Tensor, word_length: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(word, units)`` of the prefixes that get a table of all their segmentations, by word then length: the whole
    word when it has at most ``TABLE_LIMIT`` of them, else its first 1, 2, ... units while the tables hold at most
    ``TABLE_LIMIT`` segmentations in all (within ``TABLE_UNITS`` units). Segmentations are counted over the edges of
    positive predecessor mass (the paths a walk can take). Rows: the units of all words end to end (word ``w``'s
    first at ``word_rows[w]``); row ``r``'s edges ``row_first[r] ..`` (``row_count[r]`` of them)."""
    device = row_first.device
    n_words = word_length.numel()
    base = word_rows + torch.arange(n_words, device=device)  # position (w, e) at base[w] + e
    paths = torch.zeros(int(word_length.sum()) + n_words, dtype=torch.int64, device=device)
    paths.index_fill_(0, base, 1)  # one way to reach each word's start
    row_word = torch.repeat_interleave(torch.arange(n_words, device=device), word_length)
    edge_row = torch.repeat_interleave(torch.arange(row_count.numel(), device=device), row_count)
    edge_word = row_word.index_select(0, edge_row)
    end = edge_row - word_rows.index_select(0, edge_word) + 1  # end unit in the word
    edge_end = base.index_select(0, edge_word) + end
    usable = torch.nonzero((edge_mass > 0) & (end <= TABLE_UNITS)).squeeze(1)
    usable = usable.index_select(0, torch.argsort(end.index_select(0, usable), stable=True))  # by end position
    target = edge_end.index_select(0, usable)
    source = target - edge_length.index_select(0, usable)
    bounds = torch.cumsum(torch.bincount(end.index_select(0, usable), minlength=TABLE_UNITS + 1), 0).tolist()
    for e in range(1, TABLE_UNITS + 1):  # number of paths to every position, by end position
        step = slice(bounds[e - 1], bounds[e])
        paths.index_add_(0, target[step], paths.index_select(0, source[step]))
    units = torch.arange(1, TABLE_UNITS + 1, device=device)
    inside = units[None, :] <= word_length[:, None]
    counts = torch.where(inside, paths[(base[:, None] + units[None, :]).clamp(max=paths.numel() - 1)], 0)
    whole = (word_length <= TABLE_UNITS) & (counts.gather(1, (word_length - 1).clamp(max=TABLE_UNITS - 1)[:, None])
                                            .squeeze(1) <= TABLE_LIMIT)
    prefix = inside & (units[None, :] < word_length[:, None]) & (torch.cumsum(counts, 1) <= TABLE_LIMIT)
    chosen = torch.where(whole[:, None], units[None, :] == word_length[:, None], prefix & ~whole[:, None])
    word, length = torch.nonzero(chosen).unbind(1)
    return word, length + 1


def enumerate_paths(row_first: torch.Tensor, row_count: torch.Tensor, edge_mass: torch.Tensor,
                    edge_length: torch.Tensor, word_rows: torch.Tensor, prefix_word: torch.Tensor,
                    prefix_length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor, torch.Tensor]:
    """Every segmentation of each prefix (its word's first ``prefix_length`` units), walking back from its end over
    the edges of positive predecessor mass (rows and edges as in :func:`table_prefixes`). Returns ``(edge, parent,
    start)`` per path node: its edge, the node of the next piece (-1 at the prefix's end) and the edge's first unit;
    and ``(leaf, prefix, depth)`` per path: its node starting at 0 (first piece; ascending), its prefix and its
    number of pieces."""
    device = row_first.device
    edges, parents, starts, leaves, leaf_prefixes, depths = [], [], [], [], [], []
    prefix, at = torch.arange(prefix_word.numel(), device=device), prefix_length
    node = torch.full_like(prefix, -1)
    depth = 1
    count = 0
    while prefix.numel():  # expand every open path by the usable edges into its current start
        row = word_rows.index_select(0, prefix_word.index_select(0, prefix)) + at - 1
        n_edges = row_count.index_select(0, row)
        spread = torch.repeat_interleave(torch.arange(row.numel(), device=device), n_edges)
        edge = row_first.index_select(0, row).index_select(0, spread) + torch.arange(spread.numel(), device=device) \
            - (torch.cumsum(n_edges, 0) - n_edges).index_select(0, spread)
        keep = torch.nonzero(edge_mass.index_select(0, edge) > 0).squeeze(1)
        spread, edge = spread.index_select(0, keep), edge.index_select(0, keep)
        owner = prefix.index_select(0, spread)
        start = at.index_select(0, spread) - edge_length.index_select(0, edge)
        edges.append(edge)
        parents.append(node.index_select(0, spread))
        starts.append(start)
        ids = count + torch.arange(edge.numel(), device=device)
        count += edge.numel()
        done = start == 0
        ended, open_ = torch.nonzero(done).squeeze(1), torch.nonzero(~done).squeeze(1)
        leaves.append(ids.index_select(0, ended))
        leaf_prefixes.append(owner.index_select(0, ended))
        depths.append(torch.full_like(ended, depth))
        depth += 1
        prefix, at, node = owner.index_select(0, open_), start.index_select(0, open_), ids.index_select(0, open_)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    cat = lambda parts: torch.cat(parts) if parts else empty
    return cat(edges), cat(parents), cat(starts), cat(leaves), cat(leaf_prefixes), cat(depths)


def table_prefixes_numpy(row_count: np.ndarray, edge_mass: np.ndarray, edge_length: np.ndarray,
                         word_rows: np.ndarray, word_length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`table_prefixes` with numpy arrays (same prefixes, same order; rows are given by their edge count
    only, edges in row order): the paths to every position are
    counted on a ``[word, position]`` grid, one end position at a time."""
    n_words = len(word_length)
    row_word = np.repeat(np.arange(n_words), word_length)
    edge_row = np.repeat(np.arange(len(row_count)), row_count)
    end = edge_row - word_rows[row_word[edge_row]] + 1  # end unit in the word
    usable = np.flatnonzero((edge_mass > 0) & (end <= TABLE_UNITS))
    usable = usable[np.argsort(end[usable].astype(np.int16), kind="stable")]  # by end position
    word, end = row_word[edge_row[usable]], end[usable]
    start = end - edge_length[usable]
    bounds = np.cumsum(np.bincount(end, minlength=TABLE_UNITS + 1)).tolist()
    paths = np.zeros((n_words, TABLE_UNITS + 1), dtype=np.int64)
    paths[:, 0] = 1  # one way to reach each word's start
    for e in range(1, TABLE_UNITS + 1):  # number of paths to every position, by end position
        step = slice(bounds[e - 1], bounds[e])
        paths[:, e] = np.bincount(word[step], weights=paths[word[step], start[step]], minlength=n_words)
    units = np.arange(1, TABLE_UNITS + 1)
    inside = units[None, :] <= word_length[:, None]
    counts = np.where(inside, paths[:, 1:], 0)
    whole = (word_length <= TABLE_UNITS) & (
        counts[np.arange(n_words), np.minimum(word_length - 1, TABLE_UNITS - 1)] <= TABLE_LIMIT)
    prefix = inside & (units[None, :] < word_length[:, None]) & (np.cumsum(counts, 1) <= TABLE_LIMIT)
    chosen = np.where(whole[:, None], units[None, :] == word_length[:, None], prefix & ~whole[:, None])
    word, length = np.nonzero(chosen)
    return word, length + 1


@dataclass
class TablePaths:
    """Every segmentation of the prefixes that get a table (:func:`table_paths_numpy`), in table order: by prefix,
    then number of pieces, then as :func:`enumerate_paths` finds them. Per path: its ``prefix``, ``count`` of
    pieces and ``cdf`` (cumulative probability in its prefix's table, as ``segmenter._path_cdf`` computes it); per
    piece, paths end to end: its ``piece`` id and first unit ``start`` in the word."""

    prefix: np.ndarray
    count: np.ndarray
    cdf: np.ndarray
    piece: np.ndarray
    start: np.ndarray


_START_BITS = 5  # a node's code: piece id << _START_BITS | first unit (< TABLE_UNITS)
_CODE_BITS = 32  # a node's link: (parent + 1) << _CODE_BITS | code
_CHUNK_PREFIXES = 4096  # prefixes enumerated at a time, so that their arrays stay in the CPU caches


def table_paths_numpy(row_count: np.ndarray, edge_mass: np.ndarray, edge_length: np.ndarray, edge_piece: np.ndarray,
                      piece_weight: np.ndarray, word_rows: np.ndarray, prefix_word: np.ndarray,
                      prefix_length: np.ndarray) -> TablePaths:
    """The paths of :func:`enumerate_paths` (same segmentations, same order within each prefix) with numpy arrays,
    their pieces laid out and their table's cdf (rows and edges as in :func:`table_prefixes`; ``piece_weight``:
    ``alpha * score`` of every piece id), a few thousand prefixes at a time (:func:`_chunk_paths`)."""
    usable = np.flatnonzero(edge_mass > 0)  # rows keep their edge order (longest piece first)
    usable_count = np.bincount(np.repeat(np.arange(len(row_count)), row_count)[usable], minlength=len(row_count))
    edges = (np.cumsum(usable_count) - usable_count, usable_count, edge_length[usable],
             edge_piece[usable].astype(np.int64) << _START_BITS)
    end_row = word_rows[prefix_word] + prefix_length - 1
    parts = [_chunk_paths(edges, piece_weight, end_row[lo : lo + _CHUNK_PREFIXES],
                          prefix_length[lo : lo + _CHUNK_PREFIXES].astype(np.int64), lo)
             for lo in range(0, len(prefix_word), _CHUNK_PREFIXES)]
    prefix, count, cdf, code = (np.concatenate(p) for p in zip(*parts)) if parts else (
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))
    return TablePaths(prefix, count, cdf, code >> _START_BITS, code & ((1 << _START_BITS) - 1))


def _chunk_paths(edges: tuple[np.ndarray, ...], piece_weight: np.ndarray, row: np.ndarray, at: np.ndarray,
                 offset: int) -> tuple[np.ndarray, ...]:
    """``(prefix, count, cdf, code)`` of the paths of the prefixes ending at rows ``row`` (``at`` units long; ids
    from ``offset``), ``code``: piece id << ``_START_BITS`` | first unit of each piece. A backward breadth-first
    search from the prefixes' ends over the usable ``edges`` (first and number per row, length and code per edge)
    links each node to the next piece (its parent); its levels list the paths by number of pieces. Then one step
    per piece rank, over the paths still that long, writes every path's pieces first piece first and sums their
    weights in that order."""
    usable_first, usable_count, usable_length, usable_code = edges
    n_prefixes = len(row)
    prefix, link = np.arange(n_prefixes), np.zeros(n_prefixes, dtype=np.int64)
    links, leaves, leaf_prefixes = [], [], []
    count = 0
    while len(prefix):  # level d: the nodes d pieces from a prefix's end
        n_edges = usable_count[row]
        total = int(n_edges.sum())
        spread = np.repeat(np.arange(len(row)), n_edges)
        edge = np.arange(total) + (usable_first[row] - (np.cumsum(n_edges) - n_edges))[spread]
        start = at[spread] - usable_length[edge]
        links.append(link[spread] | usable_code[edge] | start)
        done, open_ = np.flatnonzero(start == 0), np.flatnonzero(start)
        leaves.append(done + count)  # node ids, from 0 in the order made
        leaf_prefixes.append(prefix[spread[done]])
        spread, at, link = spread[open_], start[open_], (open_ + (count + 1)) << _CODE_BITS  # link 0: no parent
        prefix, row = prefix[spread], row[spread] - usable_length[edge[open_]]
        count += total
    links = np.concatenate(links)
    depth = np.repeat(np.arange(1, len(leaves) + 1), [len(level) for level in leaves])  # ascending
    leaf, path_prefix = np.concatenate(leaves), np.concatenate(leaf_prefixes)
    order = np.argsort(path_prefix, kind="stable")  # table order: by prefix, then level (a merge of sorted runs)
    piece_at = np.empty_like(order)
    piece_at[order] = np.cumsum(depth[order]) - depth[order]  # where every leaf's path begins, by level
    codes = np.empty(int(depth.sum()), dtype=np.int64)
    log_weight = np.zeros(len(leaf), dtype=np.float64)
    code_mask = (1 << _CODE_BITS) - 1
    for first in np.searchsorted(depth, np.arange(len(leaves)), side="right").tolist():  # paths longer than k
        link = links[leaf[first:]]
        code = link & code_mask
        codes[piece_at[first:]] = code
        log_weight[first:] += piece_weight[code >> _START_BITS]
        piece_at[first:] += 1
        leaf[first:] = (link >> _CODE_BITS) - 1
    path_prefix = path_prefix[order]
    return path_prefix + offset, depth[order], _path_cdf_numpy(path_prefix, log_weight[order], n_prefixes), codes


def _path_cdf_numpy(path_prefix: np.ndarray, log_weight: np.ndarray, n_prefixes: int) -> np.ndarray:
    """``segmenter._path_cdf`` (same numbers, bit for bit) of paths grouped by prefix (ascending), with numpy
    arrays: ``exp(log_weight - max)`` (torch's exp) summed in order row by row of a ``[prefix, path]`` grid."""
    if len(path_prefix) == 0:
        return np.zeros(0)
    paths = np.bincount(path_prefix, minlength=n_prefixes)
    first = np.cumsum(paths) - paths
    rank = np.arange(len(path_prefix)) - first[path_prefix]
    top = np.zeros(n_prefixes)
    top[paths > 0] = np.maximum.reduceat(log_weight, first[paths > 0])
    grid = np.zeros((n_prefixes, int(paths.max())))
    grid[path_prefix, rank] = torch.exp(torch.from_numpy(log_weight - top[path_prefix])).numpy()
    np.cumsum(grid, axis=1, out=grid)
    return grid[path_prefix, rank] / grid[path_prefix, -1]
