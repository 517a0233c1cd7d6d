"""Ragged id lists to padded tensors: the one padding helper of the package."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False, width: int | None = None,
        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, W], mask [N, W] bool)`` of ``rows``, padded on the right (``left=True``: on the left, so that
    every row ends at the last column); ``W`` = the longest row unless ``width`` is given."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if width is None and len(rows) else (width or 0)
    flat = torch.tensor([int(i) for r in rows for i in r], dtype=torch.long)
    columns = torch.arange(width)
    mask = (columns[None, :] >= width - lengths[:, None]) if left else (columns[None, :] < lengths[:, None])
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    ids[mask] = flat
    return ids.to(device), mask.to(device)
