"""Classifier-free guidance for categorical heads (docs/guidance.md#classifier-free-guidance).

``log q_w(· | x_t, y) = (1 + w) · log q(· | x_t, y) − w · log q(· | x_t, ∅)``, renormalised by the draw: the
conditional and the null-condition pass share one batched forward. ``w = 0`` is the conditional model itself; for
``w ≠ 0`` the result is not the exact conditional.
"""

from __future__ import annotations

import torch

from textdiff import checks
from textdiff.udm import Batch
from textdiff.udm.sampler import NetworkUsage, Predictor


def mix_log_probs(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """``(1 + w) · log_softmax(c) − w · log_softmax(u)`` over the last axis; a token outside either support stays
    impossible."""
    cond, uncond = torch.log_softmax(conditional.float(), -1), torch.log_softmax(unconditional.float(), -1)
    mixed = (1 + scale) * cond - scale * uncond
    return mixed.masked_fill(torch.isinf(cond) | torch.isinf(uncond), -torch.inf)


class ClassifierFreePredictor:
    """An x0 predictor (``(x_t, t) -> logits [B, L, V]``) for a model trained with a condition token at
    ``position`` and a null condition ``null_id`` (dropped with probability ``p_uncond``): each call runs ``x_t`` and
    ``x_t`` with the null token in one batch and mixes them with scale ``w``. ``usage`` meters the rows sent."""

    def __init__(self, predictor: Predictor, *, position: int, null_id: int, scale: float):
        checks.positive_int("position", position, minimum=0)
        self.scale = checks.finite_float("scale", scale, low=0)
        self.predictor, self.position, self.null_id = predictor, position, null_id
        self.time_conditioned = getattr(predictor, "time_conditioned", False)
        self.usage = NetworkUsage()

    @torch.no_grad()
    def __call__(self, x_t: Batch, t: torch.Tensor):
        if self.scale == 0:
            self.usage.add(x_t.ids.shape[0])
            return self.predictor(x_t, t)
        null = x_t.ids.clone()
        null[:, self.position] = self.null_id
        both = Batch(torch.cat([x_t.ids, null]), torch.cat([x_t.attention_mask] * 2), torch.cat([x_t.protected] * 2))
        self.usage.add(both.ids.shape[0])
        conditional, unconditional = self.predictor(both, torch.cat([t, t])).chunk(2)
        return mix_log_probs(conditional, unconditional, self.scale)
