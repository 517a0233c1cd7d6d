"""Viterbi decoding and exact Viterbi sampling on dense edge tables, batched over rows (ALGORITHMS.md §8.2, §8.5, §8.8).

Rows are independent lattice segments of one length bucket. ``weights[r, e-1, j]`` belongs to the edge from
``s = e - K + j`` to ``e`` (``j = 0`` is the longest piece), so the predecessors of ``e`` are one contiguous window
``prefix[:, e-1 : e-1+K]`` of the padded prefix table (``prefix[:, K-1+s]`` holds position ``s``).

Design decisions (D10):
* alpha semantics of BytePiece >= 0.5: ``alpha < 0`` (or ``None``) decodes, ``alpha >= 0`` samples exactly.
* Sampling keeps ``log Z`` in float64 (rows are short after cutting; §8.8 step 3, float64 option) and draws every
  predecessor at once by Gumbel-argmax with float64 noise (§8.8 step 4).
* Decoding runs the max-plus pass in the scores' own precision (float32 for SentencePiece models): the sums are the
  very float32 sums SentencePiece forms, and ``argmax`` returns the first maximum = the longest last piece (§8.2 tie
  rule, also SentencePiece's), so ties break identically.
"""

from __future__ import annotations

import torch

from textdiff import rng


def forward(weights: torch.Tensor, semiring: str) -> torch.Tensor:
    """Prefix table: ``log Z(e)`` (semiring ``"log"``, §8.5) or ``best(e)`` (``"max"``, §8.2) at column ``K-1+e``.

    ``weights`` has shape ``(R, L, K)``: ``alpha * score`` for ``"log"``, ``score`` for ``"max"``; -inf = no edge.
    """
    rows, length, width = weights.shape
    prefix = torch.full((rows, width + length), float("-inf"), dtype=weights.dtype, device=weights.device)
    prefix[:, width - 1] = 0.0
    for e in range(1, length + 1):
        window = prefix[:, e - 1 : e - 1 + width] + weights[:, e - 1]
        prefix[:, width - 1 + e] = torch.logsumexp(window, 1) if semiring == "log" else window.max(1).values
    return prefix


def best_predecessors(prefix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Window index of the best last edge into every position (max-plus argmax, §8.2); the first maximum (longest
    piece) wins ties."""
    windows = prefix[:, :-1].unfold(1, weights.shape[2], 1)  # (R, L, K)
    return (windows + weights).argmax(2)


def backtrack(
    candidate: torch.Tensor,
    length: torch.Tensor,
    table_row: torch.Tensor,
    choice: torch.Tensor | None = None,
    prefix: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pieces on one path per row, from the row's end back to 0 (§8.8 step 5, vectorised over rows).

    Row ``i`` reads edge-table row ``table_row[i]`` (several rows may share one: repeated chunks). Decoding passes
    ``choice`` (per table row, from :func:`best_predecessors`). Sampling passes ``prefix``, ``weights`` and a
    ``generator`` and draws the predecessor of each visited position as
    ``argmax_j (log Z(s_j) + alpha v_j + G_j)`` with float64 Gumbel noise (§8.5 Gumbel-max form): an exact draw from
    ``Z(s) e^{alpha v} / Z(e)``. Draws are independent across positions, so drawing only at the positions the path
    visits gives the same law as drawing everywhere (§8.8 step 4) at a fraction of the noise.
    Returns the picked candidates and the row each belongs to.
    """
    width = candidate.shape[2]
    rows = torch.arange(table_row.numel(), device=table_row.device)
    end = length[table_row]
    scores = None if prefix is None else prefix[:, :-1].unfold(1, width, 1) + weights  # log Z(s) + alpha v
    picked, owner = [], []
    while rows.numel():
        source = table_row[rows]
        if choice is not None:
            j = choice[source, end - 1]
        else:
            total = scores[source, end - 1]
            j = (total + rng.gumbel(total.shape, generator, total.device)).argmax(1)
        picked.append(candidate[source, end - 1, j])
        owner.append(rows)
        end = end - (width - j)
        alive = end > 0
        rows, end = rows[alive], end[alive]
    if not picked:
        empty = torch.zeros(0, dtype=torch.int64, device=table_row.device)
        return empty, empty
    return torch.cat(picked), torch.cat(owner)


def log_partition(prefix: torch.Tensor, weights: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``log Z`` of every row: the prefix table at the row's own end (§8.5)."""
    width = weights.shape[2]
    return prefix.gather(1, (width - 1 + length)[:, None]).squeeze(1)
