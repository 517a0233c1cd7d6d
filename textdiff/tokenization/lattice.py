"""The segmentation lattice of a batch: candidate edges, independent segments, dense per-bucket edge tables.

Candidates ``(s, e, v)`` and the dense edge tables ``E[b, e, k]`` of docs/tokenization.md ("Batched formulation",
steps 1-3).

The distinct chunks of a batch are laid end to end as one stream of code points with a separator (-1) after each
chunk (the unique stream).
Candidates come from a vectorised trie walk: one tensor step per piece length, over all positions at once; on CUDA
the walk keeps fixed shapes so that it never waits for the device (``compact=False``).

Design decisions:
* cuts: a boundary that no candidate spans splits the lattice into independent factors (the segmentation law is
  their product: cutting changes the distribution only by factorisation). Cutting there turns one long row
  per line into short rows (words, for SentencePiece models), bucketed by length (exact up to 4, then ranges
  growing by a third) so the sequential forward pass has few steps and little padding;
* chunk sharing: repeated chunks (words) are laid out once; their lattice, edge table and forward pass are shared
  (and cached across calls: :mod:`~textdiff.tokenization.wordcache`); only the random predecessor draws happen per
  occurrence.
* edge tables are filled by one scatter, indexed with ``index_select`` (much faster on CPU than advanced indexing).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import torch

from textdiff.tokenization.normalization import Chunks, long_tensor
from textdiff.tokenization.vocab import PieceTrie


@dataclass
class Candidates:
    """Lattice edges of a stream: unit ``start``, ``length`` in units, piece ``id``; sorted by nothing in particular."""

    start: torch.Tensor
    length: torch.Tensor
    piece: torch.Tensor


@dataclass
class Segments:
    """Independent factors of the lattice: first unit, length, and the segment of every candidate."""

    first: torch.Tensor
    length: torch.Tensor
    of_candidate: torch.Tensor


@dataclass
class EdgeTable:
    """Dense edges of one bucket: ``candidate[r, e-1, K-k]`` is the candidate of the piece ``S_r[e-k:e]``; entries
    without a piece hold the number of candidates (one past the last)."""

    rows: torch.Tensor  # segment index of every row
    length: torch.Tensor  # units per row
    candidate: torch.Tensor  # (R, L, K) int64

    def gather(self, values: torch.Tensor, reach_padding: bool = False) -> torch.Tensor:
        """Per-candidate ``values`` laid out as ``(R, L, K)`` edge weights, -inf where no piece.

        ``reach_padding=True`` adds free one-unit steps beyond each row's end, so that every position is reachable
        (needed when differentiating through the forward pass: an all -inf window has a NaN gradient).
        """
        padded = torch.cat([values, values.new_full((1,), float("-inf"))])  # the last entry: no piece
        out = padded.index_select(0, self.candidate.reshape(-1)).view(self.candidate.shape)
        if reach_padding:
            pad = torch.arange(out.shape[1], device=out.device)[None, :] >= self.length[:, None]
            out[..., -1] = torch.where(pad, 0.0, out[..., -1])
        return out


@dataclass
class ChunkStream:
    """Unique chunks laid end to end (``-1`` after each) and the occurrences, in text order, that refer to them."""

    units: torch.Tensor  # code points of the unique chunks, separators -1
    chunk_of: torch.Tensor  # unique chunk of every stream position
    chunk_len: torch.Tensor
    chunk_begin: torch.Tensor  # stream position of each unique chunk
    occ_chunk: torch.Tensor  # unique chunk of every occurrence
    occ_text: torch.Tensor  # owning text of every occurrence (ascending)


def chunk_stream(chunks: Chunks, device: torch.device) -> ChunkStream:
    """Lay the distinct chunks of a batch end to end (repeated words share their lattice and forward pass)."""
    distinct = chunks.chunks
    chunk_len = long_tensor(array("q", map(len, distinct)))
    raw = "".join(distinct).encode("utf-32-le", errors="surrogatepass")
    codes = torch.frombuffer(bytearray(raw), dtype=torch.int32).to(torch.int64) if raw else torch.zeros(0).long()
    chunk_begin = torch.cumsum(chunk_len + 1, 0) - (chunk_len + 1)
    chunk_of = torch.repeat_interleave(torch.arange(len(distinct)), chunk_len + 1)
    units = torch.full_like(chunk_of, -1)
    units[torch.arange(codes.numel()) + torch.repeat_interleave(torch.arange(len(distinct)), chunk_len)] = codes
    parts = (units, chunk_of, chunk_len, chunk_begin, chunks.chunk, chunks.text)
    return ChunkStream(*(t.to(device) for t in parts))


def find_candidates(units: torch.Tensor, trie: PieceTrie, unk_id: int | None, compact: bool = True) -> Candidates:
    """Every ``(start, length, piece)`` with ``units[start:start+length]`` a piece, plus ``unk`` edges: a character
    with no single-character piece gets a one-unit ``unk_id`` edge (SentencePiece's rule) when there is an unk piece.

    One trie step per piece length over all positions. ``compact=True`` drops dead walks after every step (fewer
    elements, one host read per step); ``compact=False`` keeps every walk, so the loop never waits for the device.
    Both list the candidates in the same order (by length, then start).
    """
    cid = trie.code_ids(units)
    is_text = units >= 0
    pos = torch.nonzero(cid > 0).squeeze(1)
    state = torch.zeros_like(pos)
    last = units.numel() - 1  # a separator: every walk dies there
    starts, lengths, pieces = [], [], []
    for k in range(1, trie.max_len + 1):
        if compact:
            state = trie.child(state, cid.index_select(0, pos + (k - 1)))
            alive = torch.nonzero(state >= 0).squeeze(1)
            if alive.numel() == 0:
                break
            pos, state = pos.index_select(0, alive), state.index_select(0, alive)
            piece = trie.piece_of_state.index_select(0, state)
            hit = torch.nonzero(piece >= 0).squeeze(1)
            starts.append(pos.index_select(0, hit))
            lengths.append(torch.full_like(hit, k))
            pieces.append(piece.index_select(0, hit))
        else:
            dead = state < 0
            step = torch.where(dead, 0, cid.index_select(0, (pos + (k - 1)).clamp(max=last)))  # cid 0: no edge
            state = trie.child(state.clamp(min=0), step)
            pieces.append(torch.where(state >= 0, trie.piece_of_state.index_select(0, state.clamp(min=0)), -1))
    if not compact and pieces:
        dense = torch.stack(pieces)  # (max_len, positions)
        length, column = torch.nonzero(dense >= 0).unbind(1)
        starts, lengths, pieces = [pos.index_select(0, column)], [length + 1], [dense[length, column]]
    single = torch.full_like(units, -1)
    if starts:
        first = starts[0].numel() if compact else int((lengths[0] == 1).sum())
        single.index_copy_(0, starts[0][:first], pieces[0][:first])  # one-unit pieces come first
    uncovered = torch.nonzero(is_text & (single < 0)).squeeze(1)
    if uncovered.numel() and unk_id is not None:
        starts.append(uncovered)
        lengths.append(torch.ones_like(uncovered))
        pieces.append(torch.full_like(uncovered, unk_id))
    empty = torch.zeros(0, dtype=torch.int64, device=units.device)
    cat = lambda parts: torch.cat(parts) if parts else empty
    return Candidates(cat(starts), cat(lengths), cat(pieces))


def find_segments(units: torch.Tensor, cands: Candidates) -> Segments:
    """Split the stream at every boundary no candidate spans (and at separators)."""
    n = units.numel()
    multi = torch.nonzero(cands.length > 1).squeeze(1)
    start, length = cands.start.index_select(0, multi), cands.length.index_select(0, multi)
    cover = torch.zeros(n + 1, dtype=torch.int64, device=units.device)
    ones = torch.ones_like(multi)
    cover.index_add_(0, start + 1, ones)
    cover.index_add_(0, start + length, -ones)
    spanned = torch.cumsum(cover[:n], 0) > 0
    is_text = units >= 0
    starts_segment = is_text & ~spanned
    segment_of_unit = torch.cumsum(starts_segment.to(torch.int64), 0) - 1
    first = torch.nonzero(starts_segment).squeeze(1)
    length = torch.bincount(segment_of_unit[is_text], minlength=first.numel())
    return Segments(first, length, segment_of_unit.index_select(0, cands.start))


def bucket_lengths(lengths: torch.Tensor) -> list[tuple[int, int]]:
    """Inclusive length ranges of the buckets: 2, 3, 4, then ranges growing by about a third (few forward steps,
    little padding)."""
    if lengths.numel() == 0:
        return []
    top, ranges, lo = int(lengths.max()), [], 2
    while lo <= top:
        hi = lo if lo <= 4 else lo + max(1, lo // 3)
        ranges.append((lo, hi))
        lo = hi + 1
    return ranges


def edge_tables(cands: Candidates, segs: Segments, max_len: int) -> list[EdgeTable]:
    """One dense :class:`EdgeTable` per non-empty bucket of segments longer than one unit.

    All tables are views into one flat buffer, filled by a single scatter of every candidate.
    """
    ranges = bucket_lengths(segs.length)
    if not ranges:
        return []
    device = segs.length.device
    lows = torch.tensor([lo for lo, _ in ranges], device=device)
    bucket = torch.searchsorted(lows, segs.length, right=True) - 1  # -1: single-unit segments
    order = torch.argsort(bucket)
    cuts = torch.searchsorted(bucket[order], torch.arange(len(ranges) + 1, device=device)).tolist()
    highs = [hi for _, hi in ranges]
    widths = [min(max_len, hi) for hi in highs]
    sizes = [(cuts[k + 1] - cuts[k]) * highs[k] * widths[k] for k in range(len(ranges))]
    bases = [sum(sizes[:k]) for k in range(len(ranges))]
    per_bucket = lambda values: torch.tensor(values, dtype=torch.int64, device=device).index_select(0, b)
    multi = order[cuts[0] :]  # segments longer than one unit, by bucket
    b = bucket.index_select(0, multi)
    row = torch.arange(multi.numel(), device=device) + cuts[0] - per_bucket(cuts[:-1])
    # candidate (start, length) of segment g lands at offset[g] + (start + length) * width[g] - length, i.e. entry
    # [row, start + length - first - 1, width - length] of its table, with offset = base + (row * high - first) * width
    width = torch.zeros_like(segs.length).index_copy_(0, multi, per_bucket(widths))
    offset = per_bucket(bases) + (row * per_bucket(highs) - segs.first.index_select(0, multi)) * per_bucket(widths)
    offset = torch.zeros_like(segs.length).index_copy_(0, multi, offset)
    index = torch.nonzero(width.index_select(0, segs.of_candidate) > 0).squeeze(1)  # candidates of multi-unit segments
    seg = segs.of_candidate.index_select(0, index)
    length = cands.length.index_select(0, index)
    end = cands.start.index_select(0, index) + length
    flat = offset.index_select(0, seg) + end * width.index_select(0, seg) - length
    buffer = torch.full((sum(sizes),), cands.start.numel(), dtype=torch.int64, device=device)
    buffer.index_copy_(0, flat, index)
    tables = []
    for k in range(len(ranges)):
        if sizes[k]:
            rows = order[cuts[k] : cuts[k + 1]]
            table = buffer[bases[k] : bases[k] + sizes[k]].view(rows.numel(), highs[k], widths[k])
            tables.append(EdgeTable(rows, segs.length.index_select(0, rows), table))
    return tables


def require_segmentable(units: torch.Tensor, segs: Segments, reached: torch.Tensor) -> None:
    """Raise ``ValueError`` naming a chunk whose end no path of pieces reaches (``reached``: one flag per segment)."""
    if bool(reached.all()):
        return
    seg = int(torch.nonzero(~reached)[0])
    first = int(segs.first[seg])
    begin, end = first, first
    while begin > 0 and int(units[begin - 1]) >= 0:
        begin -= 1
    while end < units.numel() and int(units[end]) >= 0:
        end += 1
    text = "".join(chr(int(c)) for c in units[begin:end].tolist())
    raise ValueError(
        f"{text!r} cannot be segmented: no sequence of pieces covers it and the vocabulary has neither an unknown "
        "piece nor byte fallback (add single-character pieces, an unk piece or byte_fallback=True)"
    )
