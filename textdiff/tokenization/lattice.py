"""The segmentation lattice of a batch: candidate edges, independent segments, dense per-bucket edge tables.

ALGORITHMS.md §8.1 (candidates ``(s, e, v)``) and §8.8 steps 1-2 (edge table ``E[b, e, k]``, bucketing).

All chunks of a batch are laid end to end as one stream of code points with a separator (-1) after each chunk.
Candidates come from a vectorised trie walk: one tensor step per piece length, over all positions at once.

Design decision (D10, cuts): a boundary that no candidate spans splits the lattice into independent factors (the
segmentation law is their product, §8.1 "chunking changes the distribution only by factorisation"). Cutting there
turns one long row per line into short rows (words, for SentencePiece models), which are bucketed by exact length
so the sequential forward pass has few steps and no padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    """Dense edges of one bucket: ``candidate[r, e-1, K-k]`` indexes the piece ``S_r[e-k:e]`` (-1: no piece)."""

    rows: torch.Tensor  # segment index of every row
    length: torch.Tensor  # units per row
    candidate: torch.Tensor  # (R, L, K) int64

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Per-candidate ``values`` laid out as ``(R, L, K)`` edge weights: -inf where no piece, 0 for the one-unit
        steps that keep padded positions beyond a row's end reachable."""
        present = self.candidate >= 0
        out = torch.where(present, values[self.candidate.clamp(min=0)], float("-inf"))
        pad = torch.arange(out.shape[1], device=out.device)[None, :] >= self.length[:, None]
        out[..., -1] = torch.where(pad, 0.0, out[..., -1])
        return out


def unit_stream(chunks: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Code points of all chunks with a ``-1`` separator after each; and the chunk of every stream position."""
    lengths = torch.tensor([len(c) for c in chunks], dtype=torch.int64)
    text = "".join(chunks).encode("utf-32-le", errors="surrogatepass")
    codes = torch.frombuffer(bytearray(text), dtype=torch.int32).to(torch.int64) if text else torch.zeros(0, dtype=torch.int64)
    owner = torch.repeat_interleave(torch.arange(len(chunks)), lengths)
    units = torch.full((codes.numel() + len(chunks),), -1, dtype=torch.int64)
    units[torch.arange(codes.numel()) + owner] = codes
    chunk_of = torch.repeat_interleave(torch.arange(len(chunks)), lengths + 1)
    return units.to(device), chunk_of.to(device)


def find_candidates(units: torch.Tensor, trie: PieceTrie, unk_id: int | None) -> Candidates:
    """Every ``(start, length, piece)`` with ``units[start:start+length]`` a piece, plus ``unk`` edges.

    A character with no single-character piece gets a one-unit ``unk_id`` edge (SentencePiece's rule); without an
    unk piece such a character raises ``ValueError``.
    """
    cid = trie.code_ids(units)
    is_text = units >= 0
    pos = torch.nonzero(cid > 0).flatten()
    state = trie.root[cid[pos]]
    starts, lengths, pieces = [], [], []
    single = torch.full_like(units, -1)
    for k in range(1, trie.max_len + 1):
        if k > 1:
            state = trie.child(state, cid[pos + k - 1])
        alive = state >= 0
        pos, state = pos[alive], state[alive]
        if pos.numel() == 0:
            break
        piece = trie.piece_of_state[state]
        is_piece = piece >= 0
        starts.append(pos[is_piece])
        lengths.append(torch.full_like(starts[-1], k))
        pieces.append(piece[is_piece])
        if k == 1:
            single[starts[-1]] = pieces[-1]
    uncovered = torch.nonzero(is_text & (single < 0)).flatten()
    if uncovered.numel():
        if unk_id is None:
            where = int(uncovered[0])
            raise ValueError(
                f"character {chr(int(units[where]))!r} is in no piece and the vocabulary has neither an unknown "
                "piece nor byte fallback, so the text has no segmentation"
            )
        starts.append(uncovered)
        lengths.append(torch.ones_like(uncovered))
        pieces.append(torch.full_like(uncovered, unk_id))
    empty = torch.zeros(0, dtype=torch.int64, device=units.device)
    cat = lambda parts: torch.cat(parts) if parts else empty  # noqa: E731
    return Candidates(cat(starts), cat(lengths), cat(pieces))


def find_segments(units: torch.Tensor, cands: Candidates) -> Segments:
    """Split the stream at every boundary no candidate spans (and at separators)."""
    n = units.numel()
    multi = cands.length > 1
    cover = torch.zeros(n + 1, dtype=torch.int64, device=units.device)
    ones = torch.ones(int(multi.sum()), dtype=torch.int64, device=units.device)
    cover.index_add_(0, cands.start[multi] + 1, ones)
    cover.index_add_(0, cands.start[multi] + cands.length[multi], -ones)
    spanned = torch.cumsum(cover[:n], 0) > 0
    is_text = units >= 0
    starts_segment = is_text & ~spanned
    segment_of_unit = torch.cumsum(starts_segment.to(torch.int64), 0) - 1
    first = torch.nonzero(starts_segment).flatten()
    length = torch.bincount(segment_of_unit[is_text], minlength=first.numel())
    return Segments(first, length, segment_of_unit[cands.start])


def bucket_lengths(lengths: torch.Tensor) -> list[tuple[int, int]]:
    """Inclusive length ranges of the buckets: exact lengths up to 32, then ranges doubling in width."""
    if lengths.numel() == 0:
        return []
    top = int(lengths.max())
    ranges = [(n, n) for n in range(2, min(top, 32) + 1)]
    lo = 33
    while lo <= top:
        ranges.append((lo, 2 * lo - 2))
        lo = 2 * lo - 1
    return ranges


def edge_tables(cands: Candidates, segs: Segments, max_len: int) -> list[EdgeTable]:
    """One dense :class:`EdgeTable` per non-empty bucket of segments longer than one unit (§8.8 step 1)."""
    tables = []
    rel_end = cands.start + cands.length - segs.first[segs.of_candidate]
    seg_len_of_cand = segs.length[segs.of_candidate]
    for lo, hi in bucket_lengths(segs.length):
        rows = torch.nonzero((segs.length >= lo) & (segs.length <= hi)).flatten()
        if rows.numel() == 0:
            continue
        width = min(max_len, hi)
        row_of_segment = torch.full_like(segs.length, -1)
        row_of_segment[rows] = torch.arange(rows.numel(), device=rows.device)
        chosen = torch.nonzero((seg_len_of_cand >= lo) & (seg_len_of_cand <= hi)).flatten()
        flat = (row_of_segment[segs.of_candidate[chosen]] * hi + rel_end[chosen] - 1) * width
        flat += width - cands.length[chosen]
        candidate = torch.full((rows.numel() * hi * width,), -1, dtype=torch.int64, device=rows.device)
        candidate[flat] = chosen
        tables.append(EdgeTable(rows, segs.length[rows], candidate.view(rows.numel(), hi, width)))
    return tables
