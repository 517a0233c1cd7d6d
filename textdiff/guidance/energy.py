"""Guidance for the MCMC samplers (docs/guidance.md#mcmc): the score enters the target, so the chains' exact ratios
target the tilted law ``π(x) · w(x)^γ`` (with a classifier and ``γ = 1``: ``π(x) p(y | x)``, exactly).

* MH generation: :func:`target_term` is a soft term of ``ConstrainedLMTarget`` (``texts -> γ · log w``);
* Gibbs: :func:`tilted_energy` turns the MH-corrected variant's energy ``E`` into ``E − γ · log w``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from textdiff import checks
from textdiff.guidance.scores import GuidanceScore

Energy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def target_term(score: GuidanceScore, gamma: float) -> Callable[[Sequence[str]], torch.Tensor]:
    """``texts -> γ · log w(text)`` (float64), to add to an MH target's ``log π``."""
    gamma = checks.finite_float("gamma", gamma, low=0)

    def term(texts: Sequence[str]) -> torch.Tensor:
        return gamma * score.log_weight_texts(texts).cpu()

    return term


def tilted_energy(energy: Energy, score: GuidanceScore, gamma: float) -> Energy:
    """``E'(ids, attention_mask) = E − γ · log w`` (float64): the MH-corrected Gibbs chain then targets
    ``exp(−E) · w^γ / Z``."""
    gamma = checks.finite_float("gamma", gamma, low=0)

    def tilted(ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = energy(ids, attention_mask).double()
        return base - gamma * score.log_weight(ids, attention_mask).to(base.device)

    return tilted
