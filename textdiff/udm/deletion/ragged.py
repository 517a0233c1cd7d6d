"""Ragged edits on padded batches (docs/deletion.md#batched-ragged-operations): EXPAND inserts placeholders, COMPACT
keeps a subset, both with cumulative sums and one scatter (no Python loop over sequences)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Reindex:
    """Where each old position lands in a new padded tensor of width ``length`` (``length`` = dropped)."""

    target: Tensor  # [B, L_old] long, values in 0..length
    length: int

    def apply(self, values: Tensor, fill) -> Tensor:
        """Scatter per-token ``values [B, L_old]`` into a fresh ``[B, length]`` tensor filled with ``fill``."""
        out = torch.full((values.shape[0], self.length + 1), fill, dtype=values.dtype, device=values.device)
        out.scatter_(1, self.target, values)
        return out[:, : self.length]


@dataclass(frozen=True)
class Expansion:
    """Result of EXPAND: the expanded padded sequence, its mask, the placeholder positions and the survivor map."""

    ids: Tensor
    attention_mask: Tensor
    is_new: Tensor
    reindex: Reindex


def _check_batch(ids: Tensor, attention_mask: Tensor) -> Tensor:
    if ids.dim() != 2 or attention_mask.shape != ids.shape:
        raise ValueError(f"ids and attention_mask must both be [B, L], got {tuple(ids.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        raise TypeError(f"attention_mask must be a bool tensor, got {attention_mask.dtype}")
    lengths = attention_mask.sum(1)
    left_aligned = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
    if ids.shape[1] and not bool((attention_mask == left_aligned).all()):
        raise ValueError("attention_mask must be left-aligned: True on a prefix of each row, padding on the right")
    return lengths


def expand(
    ids: Tensor,
    attention_mask: Tensor,
    counts: Tensor,
    placeholder_id: int,
    pad_id: int = 0,
    max_length: int | None = None,
) -> Expansion:
    """EXPAND (docs/deletion.md#reverse-loop): insert ``counts[b, j]`` placeholders into slot ``j`` of row ``b``.

    Slot ``j`` lies before token ``j`` (slot ``m_b`` after the last). Survivor ``i`` moves to ``i + Σ_{j≤i} n_j``.
    ``counts`` is ``[B, L+1]`` with non-negative integers and zeros beyond each row's last slot.
    """
    lengths = _check_batch(ids, attention_mask)
    batch, width = ids.shape
    if counts.shape != (batch, width + 1):
        raise ValueError(f"counts must have shape [B, L+1] = {(batch, width + 1)}, got {tuple(counts.shape)}")
    if counts.dtype.is_floating_point or counts.dtype == torch.bool:
        raise TypeError(f"counts must be an integer tensor, got {counts.dtype}")
    counts = counts.long()
    if bool((counts < 0).any()):
        raise ValueError("counts must be >= 0 (number of tokens inserted per slot); got a negative count")
    slots = torch.arange(width + 1, device=ids.device)
    if bool((counts[slots[None, :] > lengths[:, None]] != 0).any()):
        raise ValueError("counts must be 0 beyond each row's last slot (slot index > row length)")
    cumulative = counts.cumsum(1)
    new_lengths = lengths + cumulative[:, -1]
    if max_length is not None and bool((new_lengths > max_length).any()):
        raise ValueError(f"expansion exceeds max_length={max_length}: longest row would have "
                         f"{int(new_lengths.max())} tokens")
    new_width = int(new_lengths.max()) if batch else 0
    target = torch.arange(width, device=ids.device) + cumulative[:, :width]
    reindex = Reindex(torch.where(attention_mask, target, new_width), new_width)
    new_mask = torch.arange(new_width, device=ids.device)[None, :] < new_lengths[:, None]
    occupied = reindex.apply(attention_mask, False)
    new_ids = reindex.apply(ids, placeholder_id).masked_fill(~new_mask, pad_id)
    return Expansion(new_ids, new_mask, new_mask & ~occupied, reindex)


def compact(ids: Tensor, attention_mask: Tensor, keep: Tensor, pad_id: int = 0) -> tuple[Tensor, Tensor, Reindex]:
    """COMPACT, a stable partition by ``keep`` (docs/deletion.md#reverse-loop): kept tokens move to
    ``cumsum(keep) − 1``."""
    _check_batch(ids, attention_mask)
    if keep.shape != ids.shape or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape {tuple(ids.shape)}")
    keep = keep & attention_mask
    new_lengths = keep.sum(1)
    new_width = int(new_lengths.max()) if ids.shape[0] else 0
    reindex = Reindex(torch.where(keep, keep.cumsum(1) - 1, new_width), new_width)
    new_mask = torch.arange(new_width, device=ids.device)[None, :] < new_lengths[:, None]
    return reindex.apply(ids, pad_id), new_mask, reindex


def slot_counts(survive: Tensor, attention_mask: Tensor) -> Tensor:
    """Deleted tokens per slot of ``x_t`` (docs/deletion.md#training): ``c_j`` = deletions between survivors ``j−1``
    and ``j``.

    Returns ``[B, m_max + 1]`` (zeros beyond each row's last slot).
    """
    survive = survive & attention_mask
    deleted = attention_mask & ~survive
    before = survive.long().cumsum(1) - survive.long()
    width = int(survive.sum(1).max()) if survive.shape[0] else 0
    counts = torch.zeros(survive.shape[0], width + 2, dtype=torch.long, device=survive.device)
    counts.scatter_add_(1, torch.where(deleted, before, width + 1), deleted.long())
    return counts[:, : width + 1]
