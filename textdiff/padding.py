"""Ragged id lists to padded tensors: the one padding helper of the package."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_flat(values: torch.Tensor, lengths: torch.Tensor, pad_id: int, *, left: bool = False,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, W], mask [N, W] bool)`` from the rows laid end to end in ``values`` (row ``i`` has ``lengths[i]``
    values), on their device, without Python lists; ``left=True`` pads on the left so every row ends at the last
    column; ``W`` = the longest row unless ``width`` is given. On the CPU the work is done in numpy (a fraction of
    torch's per-call cost, which dominates small batches such as a collator's)."""
    lengths = lengths.to(values.device)
    width = (int(lengths.max()) if len(lengths) else 0) if width is None else width
    if values.device.type == "cpu":
        count, columns = lengths.numpy(), np.arange(width)
        mask = (columns[None, :] >= width - count[:, None]) if left else (columns[None, :] < count[:, None])
        ids = np.full((len(count), width), pad_id, dtype=np.int64)
        ids[mask] = values.numpy()
        return torch.from_numpy(ids), torch.from_numpy(mask)
    columns = torch.arange(width, device=values.device)
    mask = (columns[None, :] >= width - lengths[:, None]) if left else (columns[None, :] < lengths[:, None])
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long, device=values.device)
    ids[mask] = values.long()
    return ids, mask


def pad(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False, width: int | None = None,
        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, W], mask [N, W] bool)`` of ``rows``, padded on the right (``left=True``: on the left, so that
    every row ends at the last column); ``W`` = the longest row unless ``width`` is given."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    flat = torch.tensor([int(i) for r in rows for i in r], dtype=torch.long)
    ids, mask = pad_flat(flat, lengths, pad_id, left=left, width=width)
    return ids.to(device), mask.to(device)


def bucket(length: int, multiple: int = 8) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, -(-length // multiple) * multiple)


def by_width(lengths: Sequence[int], multiple: int = 8, max_tokens: int | None = None
             ) -> list[tuple[int, list[int]]]:
    """Row indices grouped by their padded width (their own length rounded up to a multiple of ``multiple``), each
    group cut into chunks of at most ``max_tokens`` padded tokens (at least one row).

    A row's padded width then depends on its own length only, never on what shares its batch, so a forward pass
    gives it the same numbers whatever the batch composition (on CPU, where a row's result does not depend on the
    number of rows); the fixed widths are also the static shapes that graph capture wants.
    """
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(bucket(length, multiple), []).append(index)
    chunks = []
    for width in sorted(groups):
        rows = groups[width]
        step = len(rows) if max_tokens is None else max(1, max_tokens // width)
        chunks += [(width, rows[i: i + step]) for i in range(0, len(rows), step)]
    return chunks
