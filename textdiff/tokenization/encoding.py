"""``Encoding``: the result of segmenting a batch of texts (ids, pieces, offsets, padded tensors)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from textdiff.padding import pad_flat
from textdiff.tokenization.normalization import TextPipeline


@dataclass
class Tokens:
    """Chosen pieces of a batch in text order, flat: the number of pieces of every text, piece ids and the unit
    span of each piece inside the concatenation of its text's chunks."""

    count: torch.Tensor
    piece: torch.Tensor
    start: torch.Tensor | None
    end: torch.Tensor | None
    span_of: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def text(self, index: torch.Tensor) -> torch.Tensor:
        """The text of the pieces at ``index``."""
        return torch.searchsorted(torch.cumsum(self.count, 0), index, right=True)

    def spans(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start, end)``, computed on first use by ``span_of`` when they were left out (None): padded ids and
        id lists need none."""
        if self.start is None:
            self.start, self.end = self.span_of()
            self.span_of = None
        return self.start, self.end


class Encoding:
    """Segmentations of a batch of texts (see docs/tokenization.md).

    ``ids`` and ``pieces``: one list per text; ``offsets``: the ``(start, end)`` character span in the original text
    of every piece (byte-fallback pieces of one character share its span); ``to_tensors()``: padded ``input_ids`` and
    ``attention_mask``. Lists are built on first access only, so ``to_tensors()`` alone builds none."""

    def __init__(self, tokens: Tokens, texts: list[str], pieces: list[str], pipeline: TextPipeline,
                 device: torch.device, pad_id: int) -> None:
        self._tokens, self._texts, self._vocab_pieces = tokens, texts, pieces
        self._pipeline, self.device, self._pad_id = pipeline, device, pad_id

    def __len__(self) -> int:
        return len(self._texts)

    def __repr__(self) -> str:
        return f"Encoding(texts={len(self)}, pieces={int(self._tokens.count.sum())}, device={self.device})"

    @cached_property
    def ids(self) -> list[list[int]]:
        return split_rows(self._tokens.piece, self._tokens.count)

    @cached_property
    def pieces(self) -> list[list[str]]:
        """Pieces as strings (byte-fallback pieces read ``<0xNN>``)."""
        vocab = self._vocab_pieces
        return [[vocab[i] for i in row] for row in self.ids]

    @cached_property
    def offsets(self) -> list[list[tuple[int, int]]]:
        start, end = self._tokens.spans()
        starts = split_rows(start, self._tokens.count)
        ends = split_rows(end, self._tokens.count)
        out = []
        for text, row_starts, row_ends in zip(self._texts, starts, ends):
            spans = self._pipeline.unit_offsets(text)
            out.append([(spans[s][0], spans[e - 1][1]) for s, e in zip(row_starts, row_ends)])
        return out

    def to_tensors(self, pad_id: int | None = None) -> dict[str, torch.Tensor]:
        """``input_ids`` / ``attention_mask``: ``[texts, longest]`` long tensors on the encoding's device, padded
        with ``pad_id`` (default: the ``<pad>`` piece, else 0)."""
        pad_id = self._pad_id if pad_id is None else pad_id
        input_ids, mask = pad_flat(self._tokens.piece.to(self.device), self._tokens.count, pad_id)
        return {"input_ids": input_ids, "attention_mask": mask.long()}


def split_rows(values: torch.Tensor, count: torch.Tensor) -> list[list[int]]:
    """Split a flat tensor into Python lists of ``count[i]`` consecutive values.

    The cyclic garbage collector is paused meanwhile: lists of ints cannot form cycles, and the collections that
    their allocation would trigger (scanning every tracked object of the process) cost more than building them."""
    ends = torch.cumsum(count, 0)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        flat = _python_ints(values.cpu().numpy())
        return [flat[begin:end] for begin, end in zip((ends - count).tolist(), ends.tolist())]
    finally:
        if was_enabled:
            gc.enable()


_SHARED_INTS = 1 << 18  # values in [0, this) come from a table of int objects, grown as needed (at most ~10 MB)
_int_objects = np.zeros(0, dtype=object)


def _python_ints(values: np.ndarray) -> list[int]:
    """``values.tolist()`` (a 1-D integer array). Values in ``[0, _SHARED_INTS)`` (piece ids, offsets) are taken
    from a table of int objects instead of allocating one per element, which costs more than the lookup."""
    global _int_objects
    top = int(values.max()) if len(values) else -1
    if top < 0 or top >= _SHARED_INTS or values.min() < 0:
        return values.tolist()
    table = _int_objects  # another thread may replace the global meanwhile: this table covers ``values``
    if top >= len(table):
        table = _int_objects = np.arange(min(_SHARED_INTS, max(2 * len(table), top + 1))).astype(object)
    return table[values].tolist()
