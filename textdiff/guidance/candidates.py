"""Exact candidate reweighting (docs/guidance.md#exact-candidate-reweighting): a logits hook that tilts each drawn
token categorical by the guidance score of the state that token would make.

At a position ``i`` of ``x`` whose token is drawn, the categorical ``P_i(w)`` becomes
``P_i(w) · w(x[i←w])^γ`` over the top-``K`` candidates of ``P_i`` (renormalised by the draw). For the masking process
in one-token steps with a classifier of partially masked states and ``γ = 1`` this is exactly ``p(x0 | y)``'s reverse
step; several positions per step are reweighted independently (an approximation, docs/guidance.md#multi-token-steps).
"""

from __future__ import annotations

import torch

from textdiff import checks
from textdiff.guidance.scores import GuidanceScore
from textdiff.udm import Batch, PositionLogits


class CandidateReweighting:
    """A positional logits hook (``textdiff.udm.sampler.LogitsHook``) with strength ``gamma`` over ``top_k``
    candidates (``None``: every candidate with a finite logit). Without a ``where`` from the step it reweights every
    ``[MASK]`` position of ``x`` (``mask_id``), which is where the masking and deletion processes draw. Given
    :class:`~textdiff.udm.PositionLogits` it reweights them in place of dense logits."""

    positional = True
    position_logits = True

    def __init__(self, score: GuidanceScore, gamma: float, mask_id: int, top_k: int | None = 32):
        gamma = checks.finite_float("gamma", gamma, low=0)
        if top_k is not None:
            checks.positive_int("top_k", top_k)
        self.score, self.gamma, self.mask_id, self.top_k = score, gamma, mask_id, top_k
        self.states_scored = 0

    def __call__(self, logits: torch.Tensor | PositionLogits, x: Batch, t, s, where: torch.Tensor | None = None
                 ) -> torch.Tensor | PositionLogits:
        if self.gamma == 0:
            return logits
        sparse = isinstance(logits, PositionLogits)  # the logits at the drawn positions only
        if sparse:
            where = logits.where
        elif where is None:
            where = x.ids == self.mask_id
        rows, cols = where.nonzero(as_tuple=True)  # P drawn positions
        if len(rows) == 0:
            return logits
        candidates = (logits.values if sparse else logits[rows, cols]).double()  # [P, V]
        candidates = candidates.index_fill(-1, torch.tensor([self.mask_id], device=candidates.device), -torch.inf)
        k = candidates.shape[-1] if self.top_k is None else min(self.top_k, candidates.shape[-1])
        top, tokens = candidates.topk(k, -1)  # [P, K]
        usable = torch.isfinite(top)
        states = x.ids[rows][:, None, :].repeat(1, k, 1)  # [P, K, L]
        states[torch.arange(len(rows))[:, None], torch.arange(k)[None, :], cols[:, None]] = tokens
        attention = x.attention_mask[rows][:, None, :].expand(-1, k, -1)
        weights = torch.zeros(usable.shape, dtype=torch.float64, device=candidates.device)
        weights[usable] = self.score.log_weight(states[usable], attention[usable]).to(weights.device)
        self.states_scored += int(usable.sum())
        tilted = torch.full_like(candidates, -torch.inf)
        tilted.scatter_(-1, tokens, torch.where(usable, top + self.gamma * weights, -torch.inf))
        if sparse:
            return PositionLogits(where, tilted.to(logits.values.dtype))
        out = logits.clone()
        out[rows, cols] = tilted.to(out.dtype)
        return out
