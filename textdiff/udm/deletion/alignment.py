"""Embeddings of ``x_t`` in ``x0``: how many index maps align them, and a uniform draw of one
(docs/deletion.md#alignment-ambiguity)."""

from __future__ import annotations

import torch
from torch import Tensor

from textdiff.rng import uniform


def _embedding_table(x0: Tensor, mask0: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """``F[b, i, j]`` = number of embeddings of ``x[b, :j]`` in ``x0[b, :i]`` (float64; loop over x0 positions only)."""
    batch, width0 = x0.shape
    width = x.shape[1]
    table = torch.zeros(batch, width0 + 1, width + 1, dtype=torch.float64, device=x0.device)
    table[:, 0, 0] = 1.0
    match = (x0[:, :, None] == x[:, None, :]) & mask0[:, :, None] & mask[:, None, :]
    for i in range(width0):
        row = table[:, i].clone()
        row[:, 1:] += match[:, i].double() * table[:, i, :-1]
        table[:, i + 1] = torch.where(mask0[:, i, None], row, table[:, i])
    return table


def count_embeddings(x0: Tensor, mask0: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """``N(x0, x)``: number of strictly increasing index maps ``K`` with ``x0[K] = x``, float64
    (docs/deletion.md#forward-process)."""
    table = _embedding_table(x0, mask0, x, mask)
    rows = torch.arange(x0.shape[0], device=x0.device)
    return table[rows, mask0.sum(1), mask.sum(1)]


def sample_embedding(x0: Tensor, mask0: Tensor, x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """A uniformly random embedding of ``x`` in ``x0`` as a survivor mask over ``x0``.

    Backward sampling through the embedding-count table; raises ``ValueError`` if ``x`` is not a subsequence of ``x0``.
    """
    table = _embedding_table(x0, mask0, x, mask)
    batch, width0 = x0.shape
    rows = torch.arange(batch, device=x0.device)
    j = mask.sum(1)
    if bool((table[rows, mask0.sum(1), j] == 0).any()):
        raise ValueError("x_t is not a subsequence of x0 in some row: no embedding exists")
    survive = torch.zeros_like(mask0)
    if x.shape[1] == 0:
        return survive
    u = uniform((batch, max(width0, 1)), generator, x0.device)
    for i in range(width0, 0, -1):
        active = mask0[:, i - 1] & (j > 0)
        prev_j = (j - 1).clamp(min=0)
        matches = active & (x0[:, i - 1] == x[rows, prev_j])
        take_weight = torch.where(matches, table[rows, i - 1, prev_j], torch.zeros((), dtype=torch.float64))
        take = active & (u[:, i - 1] * table[rows, i, j] < take_weight)
        survive[:, i - 1] = take
        j = j - take.long()
    return survive
