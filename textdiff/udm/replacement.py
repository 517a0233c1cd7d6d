"""Replacement ("edit") processes ``replace_any`` and ``replace_diff`` (ALGORITHMS.md §3; A9271 §编辑模型).

Both corrupt a token by overwriting it with a replacement token: ``replace_any`` (A9271 version 1) draws it from
``U(V)`` (it may equal the original), ``replace_diff`` (version 2) from ``U(V \\ {x0_i})``.

Design decisions (ALGORITHMS.md §10):

* D1 — ``replace_diff`` in the count form uses the one-token kernel (a): position ``i ∝ d_i = 1 − P_i(x_i)``, token
  ``w ∝ P_i(w)`` over ``w ≠ x_i`` (exact with exact marginals, P4). Steps that revert ``m > 1`` tokens draw ``m``
  distinct positions ``∝ d_i`` without replacement (Gumbel-top-m) — an approximation, exact only for ``m = 1``.
* Continuous time (both processes, noise-posterior corrector): each position gets a revert coin with probability
  ``β(s, t)`` before the predictor is called; ``x_s = x̂0`` at coin positions, ``x_t`` elsewhere (reverting a
  position where ``x̂0`` agrees with ``x_t`` is a no-op). ``x̂0`` is drawn only at coin positions.
* ``replace_any``: default ``corrector="baseline"`` (A9271's version 1 sampler); ``corrector="posterior"`` is the §3.1
  corrector. Its count-form reverse step fuses predict and correct like (a): the reverse event changes a token with
  probability ``min(1, Σ_j d_j / k)`` (with exact marginals, ``Σ d = E|D̂| ≤ k``: exactly "revert one position of
  ``D̂`` with probability ``|D̂|/k``"), then position ``∝ d_i`` and token as in (a). ``correct()`` itself is the
  generic noise-posterior corrector (used by the marginal-identity tests).
* D3 — prior: ``l`` uniform tokens (production, as Su); exactness tests pass the exact forward marginal as ``x_init``.
* Replacement tokens are drawn from ``range(vocab_size)``; protected tokens and padding are never replaced.
"""

from __future__ import annotations

import math

import torch

from textdiff.rng import gumbel, uniform
from textdiff.udm.process import Batch, CountSchedule, ForwardProcess, Noise, StepPlan, X0Draw, as_time


class ReplacementProcess(ForwardProcess):
    """Shared mechanics of ``replace_any`` / ``replace_diff``; subclasses choose the replacement law."""

    #: True when a replacement token always differs from the original (``replace_diff``)
    differs: bool = False

    def __init__(self, vocab_size: int, schedule="linear", corrector: str = "posterior"):
        super().__init__(schedule, corrector)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
        self.vocab_size = vocab_size

    # -- forward ------------------------------------------------------------------------------------------------
    def replacement_tokens(self, x0: Batch, generator: torch.Generator) -> torch.Tensor:
        """Fresh replacement tokens for every position (``U(V)`` or ``U(V \\ {x0_i})``)."""
        n_choices = self.vocab_size - 1 if self.differs else self.vocab_size
        r = (uniform(x0.ids.shape, generator, x0.device) * n_choices).long().clamp_(max=n_choices - 1)
        return (x0.ids + 1 + r) % self.vocab_size if self.differs else r

    def sample_noise(self, x0, generator):
        return Noise(uniform(x0.ids.shape, generator, x0.device), self.replacement_tokens(x0, generator))

    def corrupt(self, x0: Batch, t, noise: Noise) -> Batch:
        """``x_t``: positions with ``τ_i ≤ t`` take their replacement token (§3.1, §3.2)."""
        return x0.with_ids(torch.where(self.corrupted_set(x0, t, noise), noise.tokens, x0.ids))

    def posterior_tokens(self, x0, x_t, corrupted, generator):
        """Identified on the corrupted set (they are ``x_t``); resampled elsewhere."""
        return torch.where(corrupted, x_t.ids, self.replacement_tokens(x0, generator))

    def prior_sample(self, template: Batch, generator: torch.Generator) -> Batch:
        """D3: uniform tokens at every corruptible position."""
        r = (uniform(template.ids.shape, generator, template.device) * self.vocab_size).long()
        return template.with_ids(torch.where(template.corruptible, r.clamp_(max=self.vocab_size - 1), template.ids))

    # -- reverse step ------------------------------------------------------------------------------------------
    def plan(self, x_t, t, s, generator) -> StepPlan:
        """Posterior corrector. Continuous time: revert coins ``~ Bernoulli(β(s, t))`` per corruptible position.
        Count form: ``m = k_t − k_s`` reverse events per row."""
        if self.corrector == "baseline":
            return super().plan(x_t, t, s, generator)
        if self.schedule.is_count:
            k_t, k_s = CountSchedule.count(t, x_t.corruptible), CountSchedule.count(s, x_t.corruptible)
            return StepPlan(t, s, k_t > k_s, {"n_revert": k_t - k_s, "k": k_t})
        beta = self.schedule.beta(s, t)[:, None]
        coin = x_t.corruptible & (uniform(x_t.ids.shape, generator, x_t.device) < beta)
        return StepPlan(t, s, coin.any(-1), {"revert": coin})

    def apply(self, x_t, logits, plan, draw, generator) -> Batch:
        self.validate_logits(x_t, logits)
        if "revert" in plan.extra:
            return x_t.with_ids(draw.at(logits, plan.extra["revert"], x_t.ids, generator))
        if "n_revert" in plan.extra:
            return self.revert_kernel(x_t, logits, plan.extra["n_revert"], plan.extra["k"], draw, generator)
        return super().apply(x_t, logits, plan, draw, generator)

    def n_changes(self, n_revert: torch.Tensor, k: torch.Tensor, sum_d: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        """How many of the ``n_revert`` reverse events change a token (all of them for ``replace_diff``)."""
        return n_revert

    def revert_kernel(self, x_t: Batch, logits: torch.Tensor, n_revert: torch.Tensor, k: torch.Tensor,
                      draw: X0Draw, generator: torch.Generator) -> Batch:
        """ALGORITHMS.md §3.3 (a): positions ``∝ d_i = 1 − P_i(x_t,i)`` (without replacement when several change),
        tokens ``∝ P_i(w)`` over ``w ≠ x_t,i``. Rows with ``Σ d = 0`` are left unchanged (self-loop)."""
        logp = torch.log_softmax(logits.double(), -1)
        d = (-torch.expm1(logp.gather(-1, x_t.ids[..., None]).squeeze(-1))).clamp(min=0.0)
        d = d.masked_fill(~x_t.corruptible, 0.0)
        n_change = self.n_changes(n_revert, k, d.sum(-1), generator)
        keys = torch.log(d) + gumbel(d.shape, generator, d.device)
        rank = keys.argsort(dim=-1, descending=True).argsort(dim=-1)
        chosen = (rank < n_change[:, None]) & (d > 0)
        other = logits.scatter(-1, x_t.ids[..., None], -math.inf)
        return x_t.with_ids(draw.at(other, chosen, x_t.ids, generator))


class ReplaceAnyProcess(ReplacementProcess):
    """``replace_any`` (A9271 version 1): a corrupted token is redrawn from ``U(V)``; not invertible."""

    name = "replace_any"

    def __init__(self, vocab_size: int, schedule="linear", corrector: str = "baseline"):
        super().__init__(vocab_size, schedule, corrector)

    def n_changes(self, n_revert, k, sum_d, generator):
        """Each reverse event changes a token with probability ``min(1, Σ d / k)`` (a reverted position may have
        been replaced by itself); exact for one event per step with exact marginals (P4)."""
        p = (sum_d / k.clamp(min=1)).clamp(max=1.0)[:, None]
        events = torch.arange(int(n_revert.max()), device=p.device)[None] < n_revert[:, None]
        return (events & (uniform(events.shape, generator, p.device) < p)).sum(-1)

    def posterior_corrupted(self, x0, x_t, t, generator):
        """``D = {x_t ≠ x0}`` plus self-replaced agreeing positions drawn from their posterior (§3.1)."""
        t = as_time(t, x0.ids.shape[0], x0.device)
        differ = x0.corruptible & (x_t.ids != x0.ids)
        agree = x0.corruptible & ~differ
        v = uniform(x0.ids.shape, generator, x0.device)
        if self.schedule.is_count:
            extra = CountSchedule.count(t, x0.corruptible) - differ.sum(-1)
            if bool((extra < 0).any()):
                raise ValueError("replace_any count form: x_t differs from x0 in more than k positions")
            rank = v.masked_fill(~agree, math.inf).argsort(dim=-1).argsort(dim=-1)
            return differ | (agree & (rank < extra[:, None]))
        c = 1 - self.schedule.alpha(t)[:, None]
        p_self = (c / self.vocab_size) / (c / self.vocab_size + 1 - c)
        return differ | (agree & (v < p_self))

    def log_prob(self, x0, x_t, t):
        """``log p(x_t | x0)``: per token ``α + (1−α)/|V|`` (agree) or ``(1−α)/|V|`` (differ); count form
        ``C(n−d, k−d) / (C(n, k) |V|^k)``."""
        t = as_time(t, x0.ids.shape[0], x0.device)
        fixed_ok = ((x_t.ids == x0.ids) | x0.corruptible).all(-1)
        n = x0.corruptible.sum(-1).double()
        d = (x0.corruptible & (x_t.ids != x0.ids)).sum(-1).double()
        log_v = math.log(self.vocab_size)
        if self.schedule.is_count:
            k = CountSchedule.count(t, x0.corruptible).double()
            lb = lambda a, b: torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)  # noqa: E731
            lp = torch.where(d <= k, lb(n - d, (k - d).clamp(min=0)) - lb(n, k) - k * log_v,
                             torch.full_like(n, -math.inf))
        else:
            a = self.schedule.alpha(t)
            lp = (n - d) * torch.log(a + (1 - a) / self.vocab_size) + torch.xlogy(d, (1 - a) / self.vocab_size)
        return torch.where(fixed_ok, lp, torch.full_like(lp, -math.inf))


class ReplaceDiffProcess(ReplacementProcess):
    """``replace_diff`` (A9271 version 2): a corrupted token is redrawn from ``U(V \\ {x0_i})``; the edited set is
    identified by ``(x0, x_t)`` (invertible up to the order inside it)."""

    name = "replace_diff"
    differs = True

    def posterior_corrupted(self, x0, x_t, t, generator):
        """``D = {i : x_t,i ≠ x0_i}`` (count form: ``|D| = k`` is required)."""
        return x0.corruptible & (x_t.ids != x0.ids)

    def log_prob(self, x0, x_t, t):
        """``log p(x_t | x0) = log P(corrupted set D) − |D| log(|V| − 1)``."""
        t = as_time(t, x0.ids.shape[0], x0.device)
        fixed_ok = ((x_t.ids == x0.ids) | x0.corruptible).all(-1)
        d = (x0.corruptible & (x_t.ids != x0.ids)).sum(-1)
        lp = self.schedule.log_prob_corrupted(d, x0.corruptible.sum(-1), t) - d.double() * math.log(self.vocab_size - 1)
        return torch.where(fixed_ok, lp, torch.full_like(lp, -math.inf))

PROCESSES = {"replace_any": ReplaceAnyProcess, "replace_diff": ReplaceDiffProcess}
