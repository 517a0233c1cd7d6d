"""A batch of MH chain states as padded tensors, and the edits of one step (docs/mcmc.md#state-moves-and-position-sets).

``Chains`` holds ``B`` states of at most ``L`` tokens (``L = max_length``) on one device: ``tokens [B, L]`` (0 at
pads), ``lengths [B]``, ``blocks [B, L]`` (keyword index, ``FREE = -1`` for a free token, ``PAD = -2`` past the end)
and ``group [B]``. Every operation is a gather / scatter / scan over whole rows, so a step needs no host round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from textdiff.padding import pad

if TYPE_CHECKING:
    from textdiff.mcmc.mh import State

FREE, PAD = -1, -2
REPLACE, INSERT, DELETE = 0, 1, 2  # indices into mh.MOVES


@dataclass(frozen=True)
class Chains:
    """``B`` padded states; see the module docs for the layout."""

    tokens: torch.Tensor   # [B, L] long
    lengths: torch.Tensor  # [B] long
    blocks: torch.Tensor   # [B, L] long
    group: torch.Tensor    # [B] long

    @classmethod
    def from_states(cls, states: Sequence[State], max_length: int, device: torch.device | str = "cpu") -> Chains:
        tokens, _ = pad([x.tokens for x in states], 0, width=max_length, device=device)
        blocks, _ = pad([x.blocks for x in states], PAD, width=max_length, device=device)
        lengths = torch.tensor([len(x.tokens) for x in states], dtype=torch.long, device=device)
        group = torch.tensor([x.group for x in states], dtype=torch.long, device=device)
        return cls(tokens, lengths, blocks, group)

    def to_states(self) -> list[State]:
        """The rows as ``State`` tuples (a host sync)."""
        from textdiff.mcmc.mh import State  # mh builds on this module

        tokens, blocks, lengths, group = (t.tolist() for t in (self.tokens, self.blocks, self.lengths, self.group))
        return [State(tuple(t[:n]), tuple(b[:n]), g) for t, b, n, g in zip(tokens, blocks, lengths, group)]

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    def columns(self, extra: int = 0) -> torch.Tensor:
        return torch.arange(self.width + extra, device=self.tokens.device)

    def select(self, rows: torch.Tensor, other: Chains) -> Chains:
        """Row ``b`` from ``self`` where ``rows[b]``, else from ``other``."""
        pick = rows[:, None]
        return Chains(torch.where(pick, self.tokens, other.tokens), torch.where(rows, self.lengths, other.lengths),
                      torch.where(pick, self.blocks, other.blocks), other.group)

    def index(self, rows: torch.Tensor) -> Chains:
        return Chains(self.tokens[rows], self.lengths[rows], self.blocks[rows], self.group[rows])

    def free_mask(self) -> torch.Tensor:
        """``D(x)`` as ``[B, L]`` bool: the free positions."""
        return self.blocks == FREE

    def slot_mask(self) -> torch.Tensor:
        """``S(x)`` as ``[B, L + 1]`` bool: slots ``0..l`` except those strictly inside a keyword block."""
        inside = (self.blocks[:, :-1] >= 0) & (self.blocks[:, :-1] == self.blocks[:, 1:])  # slot j, 0 < j < L
        edge = torch.zeros_like(self.lengths, dtype=torch.bool)[:, None]
        inside = torch.cat([edge, inside, edge], 1)
        return (self.columns(1)[None] <= self.lengths[:, None]) & ~inside

    def edit(self, kind: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> Chains:
        """Every row with its move applied (``kind`` REPLACE / INSERT / DELETE at ``position`` with ``token``; the
        new token is free). An INSERT needs ``lengths < L``."""
        j, i = self.columns()[None], position[:, None]
        shift = torch.where(kind[:, None] == INSERT, -(j > i).long(), (kind[:, None] == DELETE).long() * (j >= i))
        source = (j + shift).clamp(0, self.width - 1)  # [B, L]: the old column each new column comes from
        lengths = self.lengths + (kind == INSERT).long() - (kind == DELETE).long()
        written = (j == i) & (kind[:, None] != DELETE)
        tokens = torch.where(written, token[:, None], self.tokens.gather(1, source))
        blocks = torch.where(written, FREE, self.blocks.gather(1, source))
        past = j >= lengths[:, None]
        return Chains(tokens.masked_fill(past, 0), lengths, blocks.masked_fill(past, PAD), self.group)

    def masked(self, position: torch.Tensor, placeholder: int) -> torch.Tensor:
        """``[B, L]`` ids with ``position`` replaced by the placeholder (a context over these tokens)."""
        return self.tokens.scatter(1, position[:, None], placeholder)

    def run_bounds(self, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` of the maximal run of equal free tokens containing ``position``
        (docs/mcmc.md#multiplicities-and-zero-reverse-probabilities): a scan over ``[B, L]``."""
        free, t, j = self.free_mask(), self.tokens, self.columns()[None]
        joins = free[:, 1:] & free[:, :-1] & (t[:, 1:] == t[:, :-1])  # [B, L-1]: column c+1 continues column c
        none = torch.zeros_like(joins[:, :1])
        start = torch.where(torch.cat([none, joins], 1), 0, j).cummax(1).values
        end = torch.where(torch.cat([joins, none], 1), self.width, j).flip(1).cummin(1).values.flip(1)
        at = position[:, None]
        return start.gather(1, at)[:, 0], end.gather(1, at)[:, 0]


def nth_true(mask: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, available)``: per row the ``floor(u · count)``-th True column of ``mask [B, W]`` (uniform over the
    True columns), and whether the row has any (0 stands in where it has none)."""
    count = mask.sum(1)
    k = (u * count).long().clamp(max=(count - 1).clamp(min=0))
    index = (mask.long().cumsum(1) <= k[:, None]).sum(1)
    available = count > 0
    return torch.where(available, index, 0), available
