"""The masking (absorbing) process (docs/udm.md#masking-process; Su's "mask model", docs/index.md#sources).

Design decisions (docs/numerics.md#explicit-decisions):

* SUBS parameterisation (docs/udm.md#subs-parameterisation-and-time-agnostic-posterior): the sampler sets the
  ``[MASK]`` logit to ``−inf`` and copies unmasked tokens (carry-over); the predictor needs no time input (the
  posterior is time-agnostic), so the sampler may cache it.
* Baseline corrector (docs/numerics.md#d4): visible positions of ``x̂0`` are copied; the baseline then re-masks
  uniformly among all corruptible positions (``x_s = F_s(x̂0, fresh ε)``).
* Reverse step (noise-posterior corrector): the revealed set ``R`` is drawn *before* the predictor is called
  (continuous time: each masked position with probability ``β(s, t)``; count form: ``k − j`` masked positions chosen
  uniformly); steps with ``R = ∅`` need no network call (first-hitting skip), and categoricals are drawn only on ``R``.
* ``reveal="confidence"`` is the LLaDA ``low_confidence`` heuristic: it reveals the same *number* of positions but
  picks the masked positions whose sampled token is most probable. It is NOT a UDM corrector and not exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textdiff import checks
from textdiff.support import subs
from textdiff.udm.process import Batch, ForwardProcess, Noise, StepPlan, X0Draw, as_time, logits_where
from textdiff.udm.registry import register_process

REVEAL_STRATEGIES = ("random", "confidence")


@dataclass
class RevealPlan(StepPlan):
    """A masking step's plan: ``reveal [B, L]``, the masked positions this step reveals."""

    reveal: torch.Tensor


@register_process("mask")
class MaskingProcess(ForwardProcess):
    """``mask``: corrupted tokens become ``mask_id``; the state at ``t = 1`` is all ``[MASK]``."""

    time_agnostic_posterior = True
    subs_predictor = True

    @classmethod
    def for_vocabulary(cls, *, mask_id=None, vocab_size=None, **options) -> MaskingProcess:
        return cls(cls._required("mask_id (the tokenizer's [MASK] id)", mask_id, "mask"), **options)

    def __init__(self, mask_id: int, schedule="linear", corrector: str = "posterior", reveal: str = "random"):
        super().__init__(schedule, corrector)
        checks.positive_int("mask_id", mask_id, minimum=0)
        if reveal not in REVEAL_STRATEGIES:
            raise ValueError(f"reveal must be one of {REVEAL_STRATEGIES}, got {reveal!r}")
        self.mask_id, self.reveal = mask_id, reveal

    def masked(self, x: Batch) -> torch.Tensor:
        return x.corruptible & (x.ids == self.mask_id)

    def corrupt(self, x0: Batch, t, noise: Noise) -> Batch:
        """``x_t``: positions with ``τ_i ≤ t`` set to ``[MASK]`` (docs/udm.md#masking-forward-process)."""
        return x0.with_ids(x0.ids.masked_fill(self.corrupted_set(x0, t, noise), self.mask_id))

    def posterior_corrupted(self, x0, x_t, t, generator):
        """The masked set is identified by ``x_t`` alone."""
        return self.masked(x_t)

    def prior_sample(self, template: Batch, generator: torch.Generator) -> Batch:
        """``[MASK]`` at every corruptible position (also for schedules with ``α(1) > 0``)."""
        return template.with_ids(template.ids.masked_fill(template.corruptible, self.mask_id))

    def log_prob(self, x0: Batch, x_t: Batch, t) -> torch.Tensor:
        """``log p(x_t | x0)``: ``α^{n−k} (1−α)^k`` (count form ``1/C(n, k)``) if ``x_t`` is ``x0`` with ``k`` masks."""
        t = as_time(t, x0.ids.shape[0], x0.device)
        masked = self.masked(x_t)
        consistent = ((x_t.ids == x0.ids) | masked).all(-1)
        lp = self.schedule.log_prob_corrupted(masked.sum(-1), x0.corruptible.sum(-1), t)
        return torch.where(consistent, lp, torch.full_like(lp, -math.inf))

    # -- reverse step ------------------------------------------------------------------------------------------
    def plan(self, x_t, t, s, generator) -> StepPlan:
        """Draw the revealed set ``R`` (the noise posterior of the noise-posterior corrector restricted to what
        changes)."""
        masked = self.masked(x_t)
        u = self.schedule.posterior_noise(masked, x_t.corruptible, t, generator)
        reveal = masked & ~self.schedule.corrupted(u, s, x_t.corruptible)
        active = reveal.any(-1) if self.corrector == "posterior" else (s < t) & x_t.corruptible.any(-1)
        return RevealPlan(t, s, active, reveal)

    def drawn_positions(self, x_t: Batch, plan: StepPlan) -> torch.Tensor:
        """The revealed set ``R`` (random reveal, posterior corrector); the confidence heuristic and the baseline
        corrector draw at every masked position. Logits are read there only (:class:`PositionLogits` accepted)."""
        if self.corrector == "posterior" and self.reveal == "random":
            return plan.reveal
        return self.masked(x_t)

    def subs(self, logits: torch.Tensor) -> torch.Tensor:
        """SUBS (see the module docs): the ``[MASK]`` logit is ``−inf``."""
        return subs(logits, self.mask_id)

    def draw_x0(self, x_t, logits, draw, generator):
        """``x̂0``: masked positions drawn from the SUBS logits, visible positions copied (docs/numerics.md#d4)."""
        masked = self.masked(x_t)
        return x_t.with_ids(draw.into(self.subs(logits_where(logits, masked)), masked, x_t.ids, generator))

    def apply(self, x_t: Batch, logits, plan: StepPlan, draw: X0Draw, generator) -> Batch:
        self.validate_logits(x_t, logits)
        if self.corrector == "baseline":
            return super().apply(x_t, logits, plan, draw, generator)
        reveal = plan.reveal
        if self.reveal == "confidence":
            return self._reveal_confident(x_t, logits, reveal.sum(-1), draw, generator)
        return x_t.with_ids(draw.into(self.subs(logits_where(logits, reveal)), reveal, x_t.ids, generator))

    def _reveal_confident(self, x_t: Batch, logits, n_reveal: torch.Tensor, draw: X0Draw, generator) -> Batch:
        """Non-exact heuristic: draw x̂0 at all masked positions, keep the ``n_reveal`` most probable per row."""
        masked = self.masked(x_t)
        values = self.subs(logits_where(logits, masked))
        x0_hat = draw.into(values, masked, x_t.ids, generator)
        logp = torch.full(masked.shape, -math.inf, dtype=torch.float64, device=masked.device)
        logp[masked] = torch.log_softmax(values.double(), -1).gather(-1, x0_hat[masked][:, None])[:, 0]
        rank = logp.argsort(dim=-1, descending=True, stable=True).argsort(-1)
        chosen = masked & (rank < n_reveal[:, None])
        return x_t.with_ids(torch.where(chosen, x0_hat, x_t.ids))
