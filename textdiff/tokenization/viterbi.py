"""Viterbi decoding and exact Viterbi sampling on dense edge tables, batched over rows (docs/tokenization.md).

Rows are independent lattice segments of one length bucket. ``weights[r, e-1, j]`` belongs to the edge from
``s = e - K + j`` to ``e`` (``j = 0`` is the longest piece), so the predecessors of ``e`` are one contiguous window
``prefix[:, e-1 : e-1+K]`` of the padded prefix table (``prefix[:, K-1+s]`` holds position ``s``); the forward pass
reads only its last ``min(e, K)`` entries (predecessors ``s >= 0``), which halves the work of short buckets.

Design decisions:
* alpha semantics of BytePiece >= 0.5: ``alpha < 0`` (or ``None``) decodes, ``alpha >= 0`` samples exactly.
* Sampling keeps ``log Z`` in float64 (rows are short after cutting). The forward pass
  also stores, for every end position, the cumulative distribution of its predecessor
  ``P(s_j | e) = Z(s_j) e^{alpha v_j} / Z(e)`` in float64 (the exponentials its log-sum-exp forms anyway). The
  backward walk (:func:`textdiff.tokenization.wordwalks.walk`) then draws each visited predecessor by inverse CDF
  from one float64 uniform (any exact draw from that categorical gives the exact path law), instead of ``K``
  Gumbels.
* Decoding runs the max-plus pass in float64 (exact sums of the float32 scores of SentencePiece models) and takes
  the first maximum = the longest last piece on exact ties. SentencePiece keeps float32 running sums along the whole
  line, so on exact ties (e.g. the same pieces in another order) its pick depends on rounding.
* Host synchronisation: the forward pass never reads a tensor value on the host.
"""

from __future__ import annotations

import torch


def forward_best(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Viterbi decoding's forward pass: the prefix table ``best(e)`` (column ``K-1+e``) and the window index of the
    best last edge into every position, ``(R, L)``; ``weights`` ``(R, L, K)``, -inf = no edge.

    Sums are exact float64 sums of the (float32) scores; among exactly equal sums the first maximum wins, i.e. the
    longest last piece (window index 0 is the longest)."""
    rows, length, width = weights.shape
    prefix = torch.full((rows, width + length), float("-inf"), dtype=torch.float64, device=weights.device)
    prefix[:, width - 1] = 0.0
    choice = torch.zeros((rows, length), dtype=torch.int64, device=weights.device)
    for e in range(1, length + 1):
        first = max(0, width - e)  # window entries before it would start before position 0
        best, index = (prefix[:, e - 1 + first : e - 1 + width] + weights[:, e - 1, first:]).max(1)
        prefix[:, width - 1 + e] = best
        choice[:, e - 1] = first + index
    return prefix, choice


def forward(weights: torch.Tensor, with_cdf: bool = False):
    """Exact sampling's forward pass: the prefix table ``log Z(e)`` at column ``K-1+e``.

    ``weights`` has shape ``(R, L, K)``: ``alpha * score``; -inf = no edge. ``with_cdf=True`` also returns
    ``cdf[r, e-1, j] = P(last piece of S_r[:e] is edge j or an earlier one)``, the predecessor law in float64; its
    last entry is exactly 1 (``x / x``; NaN where ``e`` is unreachable).
    """
    rows, length, width = weights.shape
    prefix = torch.full((rows, width + length), float("-inf"), dtype=weights.dtype, device=weights.device)
    prefix[:, width - 1] = 0.0
    cdf = torch.zeros_like(weights) if with_cdf else None  # zero mass before the first reachable predecessor
    for e in range(1, length + 1):
        first = max(0, width - e)  # window entries before it would start before position 0
        window = prefix[:, e - 1 + first : e - 1 + width] + weights[:, e - 1, first:]
        if cdf is None:
            prefix[:, width - 1 + e] = torch.logsumexp(window, 1)
        else:
            top = window.max(1, keepdim=True).values
            top = top.masked_fill(top == float("-inf"), 0.0)  # unreachable e: exp(-inf) = 0, log 0 = -inf
            mass = torch.cumsum(torch.exp(window - top), 1)
            total = mass[:, -1:]
            prefix[:, width - 1 + e] = (top + torch.log(total)).squeeze(1)
            cdf[:, e - 1, first:] = mass / total
    return (prefix, cdf) if with_cdf else prefix


def log_partition(prefix: torch.Tensor, weights: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``log Z`` of every row: the prefix table at the row's own end."""
    width = weights.shape[2]
    return prefix.gather(1, (width - 1 + length)[:, None]).squeeze(1)
