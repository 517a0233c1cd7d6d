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


class _NullCondition:
    """Runs a network call on ``ids`` and on ``ids`` with the null token at ``position``, in one batch, and mixes."""

    def __init__(self, *, position: int, null_id: int, scale: float):
        checks.positive_int("position", position, minimum=0)
        self.scale = checks.finite_float("scale", scale, low=0)
        self.position, self.null_id = position, null_id

    def mixed(self, call, ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        """``mix_log_probs(call(ids, …), call(ids with ∅, …))``; ``call`` alone when the scale is 0."""
        if self.scale == 0:
            return call(ids, attention_mask, *rest)
        null = ids.clone()
        null[:, self.position] = self.null_id
        twice = [torch.cat([value, value]) for value in (attention_mask, *rest)]
        conditional, unconditional = call(torch.cat([ids, null]), *twice).chunk(2)
        return mix_log_probs(conditional, unconditional, self.scale)


class ClassifierFreePredictor(_NullCondition):
    """An x0 predictor (``(x_t, t) -> logits [B, L, V]``) for a model trained with a condition token at
    ``position`` and a null condition ``null_id`` (dropped with probability ``p_uncond``): each call runs ``x_t`` and
    ``x_t`` with the null token in one batch and mixes them with scale ``w``. ``usage`` meters the rows sent."""

    def __init__(self, predictor: Predictor, *, position: int, null_id: int, scale: float):
        super().__init__(position=position, null_id=null_id, scale=scale)
        self.predictor = predictor
        self.time_conditioned = getattr(predictor, "time_conditioned", False)
        self.usage = NetworkUsage()
        if callable(getattr(predictor, "logits_at", None)):  # then offer it too (docs/udm.md#logits-only-where-drawn)
            self.logits_at = self._logits_at

    @torch.no_grad()
    def __call__(self, x_t: Batch, t: torch.Tensor):
        return self._guided(self.predictor, x_t, t)

    @torch.no_grad()
    def _logits_at(self, x_t: Batch, t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """``self(x_t, t)[where]`` (``[n, V]``), both passes asked for the logits at ``where`` only."""
        return self._guided(self.predictor.logits_at, x_t, t, where)

    def _guided(self, forward, x_t: Batch, t: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        """``forward(x_t, t, *rest)`` mixed with the same call on the null condition; the rows sent are metered."""
        def call(ids, attention_mask, protected, times, *more):
            self.usage.add(ids.shape[0])
            return forward(Batch(ids, attention_mask, protected), times, *more)

        return self.mixed(call, x_t.ids, x_t.attention_mask, x_t.protected, t, *rest)


class ClassifierFreeInsertion(_NullCondition):
    """An insertion network (``count_logits(ids, mask, t)``, ``token_logits(ids, mask)``, ``config``;
    docs/deletion.md#insertion-model) trained with a condition token at body ``position`` and a null condition: both
    heads are mixed, so the slot counts and the fill are guided alike. It stands wherever the network does
    (e.g. ``predictor_for(ClassifierFreeInsertion(model, ...), tokenizer)``)."""

    def __init__(self, model, *, position: int, null_id: int, scale: float):
        super().__init__(position=position, null_id=null_id, scale=scale)
        self.model, self.config = model, model.config

    def parameters(self):
        return self.model.parameters()

    @torch.no_grad()
    def count_logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.mixed(self.model.count_logits, ids, attention_mask, t)

    @torch.no_grad()
    def token_logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mixed(self.model.token_logits, ids, attention_mask)
