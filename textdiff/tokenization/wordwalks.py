"""Walks through the word-lattice blocks of :mod:`~textdiff.tokenization.wordcache` (docs/tokenization.md,
"Word-lattice cache").

:func:`walk` (:func:`walk_numpy` on the CPU) follows one path per occurrence backwards from the word's end, vectorised
over every occurrence of a batch, drawing each visited predecessor, or the rest of the path from a table of
:mod:`~textdiff.tokenization.wordtables`, by inverse CDF from its own float64 uniform: two occurrences of one word get
independent draws, and the draws do not depend on whether a block was cached.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
import torch

from textdiff import rng
from textdiff.tokenization import wordtables
from textdiff.tokenization.wordcache import EDGE, ROW, SEG, WordStore

SCALAR_PATHS = 128  # a compact walk finishes path by path in Python once at most this many paths are left


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
                pick = bisect(torch, seg_cdf, first, count, u, (wordtables.TABLE_LIMIT - 1).bit_length())
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
