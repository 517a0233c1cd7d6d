"""Replacement ("edit") processes ``replace_any`` and ``replace_diff`` (docs/udm.md#replacement-processes).

Both corrupt a token by overwriting it with a replacement token (Su's "edit model", docs/index.md#sources):
``replace_any`` (Su's version 1) draws it from ``U(V)`` (it may equal the original), ``replace_diff`` (version 2)
from ``U(V \\ {x0_i})``.

Design decisions (docs/numerics.md#explicit-decisions):

* The count-form reverse step of ``replace_diff`` with a per-position predictor (docs/numerics.md#d1,
  docs/udm.md#count-form-reverse-kernels), ``kernel=``:

  - ``"one_token"`` (default, (a)): position ``i ∝ d_i = 1 − P_i(x_i)``, token ``w ∝ P_i(w)`` over ``w ≠ x_i``.
    Exact with the exact posterior *marginals* for one token per step
    (docs/udm.md#p4-one-token-steps-need-only-marginals). Steps that revert ``m > 1`` tokens draw ``m`` distinct
    positions ``∝ d_i`` without replacement (Gumbel-top-m) — an approximation, exact only for ``m = 1``.
  - ``"conditional_bernoulli"`` ((b)): the factorised predictor is conditioned on the Hamming distance ``k``:
    positions differ independently with probability ``d_i``, and ``D̂`` is drawn given ``|D̂| = k`` exactly
    (:func:`conditional_bernoulli_sample`, a log-space Poisson-binomial DP, ``O(l·k)``, batched); the reverted
    positions are then the noise-posterior corrector's (``k − j`` uniformly chosen positions of ``D̂``, via the
    schedule's ``posterior_noise``/``corrupted``, as in :meth:`ForwardProcess.correct`), with tokens ``∝ P_i(w)``
    over ``w ≠ x_i``. Any number of tokens per step. What it samples: ``x̂0 ~ Π_i P_i`` conditioned on
    ``H(x̂0, x_k) = k``. That is the exact posterior — hence exact for every grid — iff the posterior has the form
    ``Π_i f_i(x0_i) · 1[H(x0, x_k) = k]`` and the predictor outputs the *factors* ``P_i ∝ f_i`` (e.g. product
    ``p_data`` with ``P_i`` its marginals). It is NOT exact with the posterior *marginals* (what cross-entropy
    training targets), not even for one token per step: the conditional-Bernoulli inclusion probabilities of the
    working probabilities ``d_i`` differ from ``d_i`` (at ``k = 1``: ``P(D̂ = {i}) ∝ d_i / (1 − d_i)``, not ``d_i``);
    with such a predictor prefer (a) (on the enumerable toys of tests/udm/test_replace_kernels.py, (b) is not closer
    to ``p_data`` than (a) for several tokens per step either).
    Degenerate rows (``|D̂| = k`` impossible under the predictor: more than ``k`` positions with ``P_i(x_i) = 0`` or
    fewer than ``k`` with ``P_i(x_i) < 1``) are conditioned on the nearest feasible Hamming distance (an explicit
    rule, no epsilons: docs/numerics.md#degenerate-normalisers); this never happens with an exact predictor.
* Continuous time (both processes, noise-posterior corrector): each position gets a revert coin with probability
  ``β(s, t)`` before the predictor is called; ``x_s = x̂0`` at coin positions, ``x_t`` elsewhere (reverting a
  position where ``x̂0`` agrees with ``x_t`` is a no-op). ``x̂0`` is drawn only at coin positions.
* ``replace_any``: default ``corrector="baseline"`` (Su's version 1 sampler); ``corrector="posterior"`` is the
  noise-posterior corrector of docs/udm.md#the-replace_any-process. Its count-form reverse step fuses predict and
  correct like (a): the reverse event changes a token with probability ``min(1, Σ_j d_j / k)`` (with exact
  marginals, ``Σ d = E|D̂| ≤ k``: exactly "revert one position of ``D̂`` with probability ``|D̂|/k``"), then position
  ``∝ d_i`` and token as in (a). ``correct()`` itself is the generic noise-posterior corrector (used by the
  marginal-identity tests).
* Prior (docs/numerics.md#d3): ``l`` uniform tokens (production, as Su); exactness tests pass the exact forward
  marginal as ``x_init``.
* Replacement tokens are drawn from ``range(vocab_size)``; protected tokens and padding are never replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textdiff import checks
from textdiff.rng import gumbel, uniform
from textdiff.udm.process import Batch, CountSchedule, ForwardProcess, Noise, StepPlan, X0Draw, as_time
from textdiff.udm.registry import register_process

#: ``replace_diff`` count-form reverse kernels (docs/udm.md#count-form-reverse-kernels)
KERNELS = ("one_token", "conditional_bernoulli")


# ----------------------------------------------------------------------------------------------------------------
# Conditional Bernoulli: independent Bernoulli(d_i) conditioned on their sum
# (docs/udm.md#kernel-b-conditional-bernoulli)
# ----------------------------------------------------------------------------------------------------------------


def _free_target(log_odds: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split off the sure positions (``log_odds = +inf``): ``(sure [B, L], free log-odds [B, L], target [B])``, the
    target being how many free positions must still be drawn. Checks ``#sure <= k <= #sure + #free`` per row."""
    if log_odds.dim() != 2 or k.shape != log_odds.shape[:1]:
        raise ValueError(f"log_odds must be [B, L] and k [B], got {tuple(log_odds.shape)} and {tuple(k.shape)}")
    if bool(torch.isnan(log_odds).any()):
        raise ValueError("log_odds must not contain NaN")
    sure = torch.isposinf(log_odds)
    free = log_odds.masked_fill(sure, -math.inf)
    target = k - sure.sum(-1)
    if bool(((target < 0) | (target > torch.isfinite(free).sum(-1))).any()):
        raise ValueError("k must lie in [#(log_odds = +inf), #(log_odds > -inf)] for every row (|D| = k impossible)")
    return sure, free, target


def _suffix_log_esp(log_odds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``R[:, i, r] = log e_r(odds_i, …, odds_{L−1})``, the log elementary symmetric polynomials of every suffix —
    the Poisson-binomial DP (``log P(Σ_{j≥i} = r) = R[:, i, r] + Σ_{j≥i} log(1 − d_j)``), ``[B, L+1, max target+1]``."""
    B, L = log_odds.shape
    k_max = int(target.max()) if target.numel() else 0
    R = log_odds.new_full((B, L + 1, k_max + 1), -math.inf)
    R[:, :, 0] = 0.0
    for i in range(L - 1, -1, -1):
        R[:, i, 1:] = torch.logaddexp(R[:, i + 1, 1:], log_odds[:, i, None] + R[:, i + 1, :-1])
    return R


def _log_include(R: torch.Tensor, log_odds: torch.Tensor, i: int, r: torch.Tensor) -> torch.Tensor:
    """``log P(i ∈ D | r of positions i.. are in D) = log odds_i + R[i+1, r−1] − R[i, r]`` for ``r [B, M]``
    (``−inf`` for ``r = 0`` and for unreachable ``(i, r)``)."""
    rest = R[:, i + 1].gather(1, (r - 1).clamp(min=0))
    here = R[:, i].gather(1, r)
    ok = (r > 0) & torch.isfinite(here)
    return torch.where(ok, log_odds[:, i, None] + rest - here.masked_fill(~ok, 0.0), -math.inf)


def conditional_bernoulli_inclusion(log_odds: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``κ_i = P(i ∈ D | |D| = k)`` for independent ``i ∈ D`` with probability ``d_i`` (kernel (b); equals
    ``d_i · P(Σ_{j≠i} = k−1) / P(Σ = k)``). ``log_odds [B, L] = log d_i − log(1 − d_i)`` in float64 (``±inf`` for
    ``d_i ∈ {1, 0}``), ``k [B]``. ``O(L·k)``: the sequential sampler's include probabilities pushed forward over the
    remaining count."""
    sure, free, target = _free_target(log_odds, k)
    R = _suffix_log_esp(free, target)
    counts = torch.arange(R.shape[-1], device=log_odds.device).expand(len(target), -1)
    remaining = torch.nn.functional.one_hot(target, R.shape[-1]).to(log_odds.dtype)  # law of the remaining count
    kappa = torch.zeros_like(free)
    for i in range(free.shape[1]):
        q = _log_include(R, free, i, counts).exp()
        taken = remaining * q
        kappa[:, i] = taken.sum(-1)
        remaining = remaining - taken
        remaining[:, :-1] += taken[:, 1:]
    return torch.where(sure, torch.ones_like(kappa), kappa)


def conditional_bernoulli_sample(log_odds: torch.Tensor, k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw ``D [B, L]`` (bool) with ``|D| = k`` exactly from independent Bernoulli(``d_i``) conditioned on their sum
    (kernel (b)): sequentially, position ``i`` joins with ``P(i ∈ D | r still to place)`` from the same DP as
    :func:`conditional_bernoulli_inclusion`; log-space, float64 uniforms."""
    sure, free, target = _free_target(log_odds, k)
    R = _suffix_log_esp(free, target)
    log_u = torch.log(uniform(free.shape, generator, free.device))
    chosen = sure.clone()
    r = target.clone()
    for i in range(free.shape[1]):
        take = log_u[:, i] < _log_include(R, free, i, r[:, None]).squeeze(1)
        chosen[:, i] |= take
        r -= take.long()
    return chosen


@dataclass
class RevertCoinPlan(StepPlan):
    """Continuous-time plan: ``revert [B, L]``, the positions whose revert coin came up."""

    revert: torch.Tensor


@dataclass
class RevertCountPlan(StepPlan):
    """Count-form plan: ``n_revert [B]`` reverse events this step, ``k [B]`` corrupted tokens at ``t``."""

    n_revert: torch.Tensor
    k: torch.Tensor


class ReplacementProcess(ForwardProcess):
    """Shared mechanics of ``replace_any`` / ``replace_diff``; subclasses choose the replacement law."""

    #: True when a replacement token always differs from the original (``replace_diff``)
    differs: bool = False

    @classmethod
    def for_vocabulary(cls, *, mask_id=None, vocab_size=None, **options) -> ReplacementProcess:
        return cls(cls._required("vocab_size", vocab_size, cls.name), **options)

    def __init__(self, vocab_size: int, schedule="linear", corrector: str = "posterior"):
        super().__init__(schedule, corrector)
        checks.positive_int("vocab_size", vocab_size, minimum=2)
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
        """``x_t``: positions with ``τ_i ≤ t`` take their replacement token."""
        return x0.with_ids(torch.where(self.corrupted_set(x0, t, noise), noise.tokens, x0.ids))

    def posterior_tokens(self, x0, x_t, corrupted, generator):
        """Identified on the corrupted set (they are ``x_t``); resampled elsewhere."""
        return torch.where(corrupted, x_t.ids, self.replacement_tokens(x0, generator))

    def prior_sample(self, template: Batch, generator: torch.Generator) -> Batch:
        """The production prior (docs/numerics.md#d3): uniform tokens at every corruptible position."""
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
            return RevertCountPlan(t, s, k_t > k_s, k_t - k_s, k_t)
        beta = self.schedule.beta(s, t)[:, None]
        coin = x_t.corruptible & (uniform(x_t.ids.shape, generator, x_t.device) < beta)
        return RevertCoinPlan(t, s, coin.any(-1), coin)

    def apply(self, x_t, logits, plan, draw, generator) -> Batch:
        self.validate_logits(x_t, logits)
        if isinstance(plan, RevertCoinPlan):
            return x_t.with_ids(draw.at(logits, plan.revert, x_t.ids, generator))
        if isinstance(plan, RevertCountPlan):
            return self.revert_kernel(x_t, logits, plan, draw, generator)
        return super().apply(x_t, logits, plan, draw, generator)

    def n_changes(self, n_revert: torch.Tensor, k: torch.Tensor, sum_d: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
        """How many of the ``n_revert`` reverse events change a token (all of them for ``replace_diff``)."""
        return n_revert

    def revert_kernel(self, x_t: Batch, logits: torch.Tensor, plan: StepPlan, draw: X0Draw,
                      generator: torch.Generator) -> Batch:
        """Count-form reverse step (docs/udm.md#count-form-reverse-kernels): the positions to revert
        (:meth:`revert_positions`), then their tokens ``∝ P_i(w)`` over ``w ≠ x_t,i``."""
        log_stay = torch.log_softmax(logits.double(), -1).gather(-1, x_t.ids[..., None]).squeeze(-1)
        chosen = self.revert_positions(x_t, log_stay.masked_fill(~x_t.corruptible, 0.0), plan, generator)
        other = logits.scatter(-1, x_t.ids[..., None], -math.inf)
        return x_t.with_ids(draw.at(other, chosen, x_t.ids, generator))

    def revert_positions(self, x_t: Batch, log_stay: torch.Tensor, plan: StepPlan,
                         generator: torch.Generator) -> torch.Tensor:
        """Kernel (a) (docs/udm.md#kernel-a-one-token): positions ``∝ d_i = 1 − P_i(x_t,i)``
        (``log_stay = log P_i(x_t,i)``, 0 where not corruptible), without replacement when several change. Rows with
        ``Σ d = 0`` are left unchanged (self-loop)."""
        d = (-torch.expm1(log_stay)).clamp(min=0.0)
        n_change = self.n_changes(plan.n_revert, plan.k, d.sum(-1), generator)
        keys = torch.log(d) + gumbel(d.shape, generator, d.device)
        rank = keys.argsort(dim=-1, descending=True).argsort(dim=-1)
        return (rank < n_change[:, None]) & (d > 0)


@register_process("replace_any")
class ReplaceAnyProcess(ReplacementProcess):
    """``replace_any`` (Su's version 1): a corrupted token is redrawn from ``U(V)``; not invertible."""


    def __init__(self, vocab_size: int, schedule="linear", corrector: str = "baseline"):
        super().__init__(vocab_size, schedule, corrector)

    def n_changes(self, n_revert, k, sum_d, generator):
        """Each reverse event changes a token with probability ``min(1, Σ d / k)`` (a reverted position may have
        been replaced by itself); exact for one event per step with exact marginals
        (docs/udm.md#p4-one-token-steps-need-only-marginals)."""
        p = (sum_d / k.clamp(min=1)).clamp(max=1.0)[:, None]
        events = torch.arange(int(n_revert.max()), device=p.device)[None] < n_revert[:, None]
        return (events & (uniform(events.shape, generator, p.device) < p)).sum(-1)

    def posterior_corrupted(self, x0, x_t, t, generator):
        """``D = {x_t ≠ x0}`` plus self-replaced agreeing positions drawn from their posterior
        (docs/udm.md#the-replace_any-process)."""
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
            lb = lambda a, b: torch.lgamma(a + 1) - torch.lgamma(b + 1) - torch.lgamma(a - b + 1)
            lp = torch.where(d <= k, lb(n - d, (k - d).clamp(min=0)) - lb(n, k) - k * log_v,
                             torch.full_like(n, -math.inf))
        else:
            a = self.schedule.alpha(t)
            lp = (n - d) * torch.log(a + (1 - a) / self.vocab_size) + torch.xlogy(d, (1 - a) / self.vocab_size)
        return torch.where(fixed_ok, lp, torch.full_like(lp, -math.inf))


@register_process("replace_diff")
class ReplaceDiffProcess(ReplacementProcess):
    """``replace_diff`` (Su's version 2): a corrupted token is redrawn from ``U(V \\ {x0_i})``; the edited set is
    identified by ``(x0, x_t)`` (invertible up to the order inside it). ``kernel`` selects the count-form reverse step
    (docs/numerics.md#d1): ``"one_token"`` (a, default) or ``"conditional_bernoulli"`` (b; count form, posterior
    corrector)."""

    differs = True

    def __init__(self, vocab_size: int, schedule="linear", corrector: str = "posterior", kernel: str = "one_token"):
        super().__init__(vocab_size, schedule, corrector)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "conditional_bernoulli" and not (self.schedule.is_count and corrector == "posterior"):
            raise ValueError("kernel='conditional_bernoulli' needs schedule='count' and corrector='posterior', got "
                             f"schedule={self.schedule.name!r}, corrector={corrector!r}")
        self.kernel = kernel

    def revert_positions(self, x_t, log_stay, plan, generator):
        """Kernel (b): ``D̂`` from the predictor conditioned on ``|D̂| = k`` (:meth:`edited_set`; ``k`` clamped
        to the feasible range, see the module docstring), then the noise-posterior corrector's reverted positions
        (``k − j`` uniformly chosen positions of ``D̂``). Kernel (a) otherwise."""
        if self.kernel == "one_token":
            return super().revert_positions(x_t, log_stay, plan, generator)
        log_odds = torch.log(-torch.expm1(log_stay)) - log_stay  # log d − log(1 − d); −inf where not corruptible
        k = torch.minimum(torch.maximum(plan.k, torch.isposinf(log_odds).sum(-1)),
                          (log_odds > -math.inf).sum(-1))
        edited = self.edited_set(log_odds, k, generator)
        u = self.schedule.posterior_noise(edited, x_t.corruptible, plan.t, generator)
        reverted = edited & ~self.schedule.corrupted(u, plan.s, x_t.corruptible)
        return reverted & (plan.n_revert > 0)[:, None]

    def edited_set(self, log_odds: torch.Tensor, k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``D̂ [B, L]`` with ``|D̂| = k``: the conditional-Bernoulli draw of kernel (b)."""
        return conditional_bernoulli_sample(log_odds, k, generator)

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

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, kernel={self.kernel!r})"


