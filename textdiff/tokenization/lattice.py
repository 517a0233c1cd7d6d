"""The segmentation lattice of a batch: candidate edges, independent segments, dense per-bucket edge tables.

ALGORITHMS.md §8.1 (candidates ``(s, e, v)``) and §8.8 steps 1-2 (edge table ``E[b, e, k]``, bucketing).

The distinct chunks of a batch are laid end to end as one stream of code points with a separator (-1) after each
chunk. Candidates come from a vectorised trie walk: one tensor step per piece length, over all positions at once.

Design decisions (D10):
* cuts: a boundary that no candidate spans splits the lattice into independent factors (the segmentation law is
  their product, §8.1 "chunking changes the distribution only by factorisation"). Cutting there turns one long row
  per line into short rows (words, for SentencePiece models), bucketed by length (exact up to 4, then ranges
  growing by a third) so the sequential forward pass has few steps and little padding;
* chunk sharing: repeated chunks (words) are laid out once; their lattice, edge table and forward pass are shared
  and only the random predecessor draws happen per occurrence.
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

    def gather(self, values: torch.Tensor, reach_padding: bool = False) -> torch.Tensor:
        """Per-candidate ``values`` laid out as ``(R, L, K)`` edge weights, -inf where no piece.

        ``reach_padding=True`` adds free one-unit steps beyond each row's end, so that every position is reachable
        (needed when differentiating through the forward pass: an all -inf window has a NaN gradient).
        """
        out = torch.cat([values, values.new_full((1,), float("-inf"))])[self.candidate]  # index -1: the -inf
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
    occ_base: torch.Tensor  # units of the same text before this occurrence


def chunk_stream(texts: list[list[str]] | list[str], split_at: str | None, device: torch.device) -> ChunkStream:
    """Cut each text into chunks (its listed pre-tokens, or before every ``split_at`` character, or whole) and keep
    one copy of each distinct chunk (design decision D10: repeated words share their lattice and forward pass)."""
    words: list[str] = []  # one key per occurrence; with split_at, keys omit the leading split_at character
    counts = []
    for text in texts:
        if isinstance(text, list):
            parts = [chunk for chunk in text if chunk]
        elif split_at is not None:
            parts = text.split(split_at)
            if parts[0]:
                parts[0] = split_at + parts[0]  # a head without split_at: a key no other part can have
            else:
                del parts[0]
        else:
            parts = [text] if text else []
        words += parts
        counts.append(len(parts))
    index = {key: i for i, key in enumerate(dict.fromkeys(words))}
    occurrences = list(map(index.__getitem__, words))
    if split_at is None or (texts and isinstance(texts[0], list)):
        chunks = list(index)
    else:
        chunks = [key[1:] if key[:1] == split_at else split_at + key for key in index]
    chunk_len = torch.tensor([len(c) for c in chunks], dtype=torch.int64)
    raw = "".join(chunks).encode("utf-32-le", errors="surrogatepass")
    codes = torch.frombuffer(bytearray(raw), dtype=torch.int32).to(torch.int64) if raw else torch.zeros(0, dtype=torch.int64)
    chunk_begin = torch.cumsum(chunk_len + 1, 0) - (chunk_len + 1)
    chunk_of = torch.repeat_interleave(torch.arange(len(chunks)), chunk_len + 1)
    units = torch.full_like(chunk_of, -1)
    units[torch.arange(codes.numel()) + torch.repeat_interleave(torch.arange(len(chunks)), chunk_len)] = codes
    occ_chunk = torch.tensor(occurrences, dtype=torch.int64)
    occ_text = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64))
    occ_len = chunk_len[occ_chunk]
    before = torch.cumsum(occ_len, 0) - occ_len
    occ_base = before - before[torch.searchsorted(occ_text, occ_text)]
    parts = (units, chunk_of, chunk_len, chunk_begin, occ_chunk, occ_text, occ_base)
    return ChunkStream(*(t.to(device) for t in parts))


def find_candidates(units: torch.Tensor, trie: PieceTrie, unk_id: int | None) -> Candidates:
    """Every ``(start, length, piece)`` with ``units[start:start+length]`` a piece, plus ``unk`` edges: a character
    with no single-character piece gets a one-unit ``unk_id`` edge (SentencePiece's rule) when there is an unk piece.
    """
    cid = trie.code_ids(units)
    is_text = units >= 0
    pos = torch.nonzero(cid > 0).flatten()
    state = torch.zeros_like(pos)
    starts, lengths, pieces = [], [], []
    single = torch.full_like(units, -1)
    for k in range(1, trie.max_len + 1):
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
    if uncovered.numel() and unk_id is not None:
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
    """One dense :class:`EdgeTable` per non-empty bucket of segments longer than one unit (§8.8 step 1).

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
    highs = torch.tensor([hi for _, hi in ranges], device=device)
    widths = highs.clamp(max=max_len)
    rows_per_bucket = torch.tensor([cuts[b + 1] - cuts[b] for b in range(len(ranges))], device=device)
    base = torch.cumsum(rows_per_bucket * highs * widths, 0) - rows_per_bucket * highs * widths
    row = torch.empty_like(segs.length)
    row[order] = torch.arange(order.numel(), device=device) - torch.tensor(cuts[:-1], device=device)[bucket[order].clamp(min=0)]

    seg = segs.of_candidate
    b = bucket[seg]
    keep = b >= 0
    b, seg, index = b[keep], seg[keep], torch.nonzero(keep).flatten()
    rel_end = cands.start[index] + cands.length[index] - segs.first[seg]
    width = widths[b]
    flat = base[b] + (row[seg] * highs[b] + rel_end - 1) * width + width - cands.length[index]
    buffer = torch.full((int((rows_per_bucket * highs * widths).sum()),), -1, dtype=torch.int64, device=device)
    buffer[flat] = index
    tables = []
    for k, (_, hi) in enumerate(ranges):
        n, w = cuts[k + 1] - cuts[k], min(max_len, hi)
        if n:
            start = int(base[k])
            rows = order[cuts[k] : cuts[k + 1]]
            tables.append(EdgeTable(rows, segs.length[rows], buffer[start : start + n * hi * w].view(n, hi, w)))
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
