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


def predecessors(prefix: torch.Tensor, weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Window index ``j`` of the chosen last edge into every position (§8.5 Gumbel-max form, §8.8 step 4).

    With a generator: ``argmax_j (prefix[s_j] + weights[j] + G_j)``, an exact draw from ``Z(s) e^{αv} / Z(e)``.
    Without: the max-plus argmax (decoding); the first maximum (longest piece) wins ties.
    """
    width = weights.shape[2]
    windows = prefix[:, :-1].unfold(1, width, 1)  # (R, L, K)
    total = windows + weights
    if generator is not None:
        total = total + rng.gumbel(total.shape, generator, total.device)
    return total.argmax(2)


def backtrack(choice: torch.Tensor, candidate: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Candidate indices on the path of every row, from its end back to 0 (§8.8 step 5, vectorised over rows)."""
    width = candidate.shape[2]
    rows = torch.arange(choice.shape[0], device=choice.device)
    end = length.clone()
    picked = []
    while rows.numel():
        j = choice[rows, end - 1]
        picked.append(candidate[rows, end - 1, j])
        end = end - (width - j)
        alive = end > 0
        rows, end = rows[alive], end[alive]
    return torch.cat(picked) if picked else torch.zeros(0, dtype=torch.int64, device=choice.device)


def log_partition(prefix: torch.Tensor, weights: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``log Z`` of every row: the prefix table at the row's own end (§8.5)."""
    width = weights.shape[2]
    return prefix.gather(1, (width - 1 + length)[:, None]).squeeze(1)
