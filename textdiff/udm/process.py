"""The UDM forward-process protocol, token batches and time schedules (docs/udm.md#forward-processes).

A forward process is ``x_t = F_t(x0, ε)``. Every textdiff process draws, per token, a uniform *order noise* ``u``
(the token is corrupted at time ``t`` iff its corruption time ``τ ≤ t``) plus process-specific noise (replacement
tokens). The generic noise-posterior corrector (docs/udm.md#noise-posterior-corrector) is then one line, shared by
all processes::

    correct(x_t, x̂0, t, s) = corrupt(x̂0, s, invert(x̂0, x_t, t))

and the baseline corrector is ``corrupt(x̂0, s, fresh noise)``. Processes override :meth:`ForwardProcess.plan` /
:meth:`ForwardProcess.apply` only to draw fewer categoricals (sample only where tokens change,
docs/numerics.md#float64-categorical-draws) or to fuse predict-and-correct (the ``replace_diff`` one-token kernel,
docs/udm.md#kernel-a-one-token; the deletion insertion model, docs/deletion.md#insertion-model).

Design decisions (docs/numerics.md#explicit-decisions):

* Schedules (docs/numerics.md#d6): ``α(t) = 1 − t`` by default; ``cosine`` ``α = cos(πt/2)``; ``loglinear`` is MDLM's
  ``α = 1 − (1 − ε) t`` (``ε = 1e-3``; ``α(1) = ε``, so starting the reverse chain from the all-corrupted prior is a
  ``l·ε`` approximation). Grids are uniform in ``t``.
* Time conventions: continuous ``t ∈ [0, 1]`` (each token corrupted independently with probability ``1 − α(t)``)
  and the count form (:class:`CountSchedule`): exactly ``k = round(t · n)`` of the ``n`` corruptible tokens of a row
  are corrupted, ``T = n``, one token per step on the grid ``t_k = k / n``.
* Protected tokens (prompt, infilling, keywords; docs/udm.md#protected-tokens-and-logits-hooks) and padding have
  ``τ = ∞``: never corrupted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

import torch

from textdiff import checks
from textdiff.rng import uniform

# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Padded token sequences. ``ids [B, L]`` long; ``attention_mask [B, L]`` bool (True = real token);
    ``protected [B, L]`` bool (True = never corrupted: prompt, infilling context, fixed keywords)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    protected: torch.Tensor | None = None

    def __post_init__(self):
        if not isinstance(self.ids, torch.Tensor) or self.ids.dim() != 2:
            raise TypeError("Batch.ids must be a 2-D LongTensor [B, L]")
        if self.attention_mask is None:
            self.attention_mask = torch.ones_like(self.ids, dtype=torch.bool)
        if self.protected is None:
            self.protected = torch.zeros_like(self.ids, dtype=torch.bool)
        for name in ("attention_mask", "protected"):
            value = getattr(self, name)
            if value.shape != self.ids.shape:
                raise ValueError(f"Batch.{name} has shape {tuple(value.shape)}, ids has {tuple(self.ids.shape)}")
            setattr(self, name, value.to(torch.bool))

    @property
    def corruptible(self) -> torch.Tensor:
        """``[B, L]`` bool: real, unprotected tokens (the only ones a process may corrupt)."""
        return self.attention_mask & ~self.protected

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(-1)

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def with_ids(self, ids: torch.Tensor) -> Batch:
        return replace(self, ids=ids)

    def rows(self, selector: torch.Tensor) -> Batch:
        """The rows picked by ``selector`` (``[B]`` bool or indices)."""
        return Batch(self.ids[selector], self.attention_mask[selector], self.protected[selector])

    def to(self, device) -> Batch:
        return Batch(self.ids.to(device), self.attention_mask.to(device), self.protected.to(device))


def as_batch(x: Batch | torch.Tensor) -> Batch:
    """Accept a :class:`Batch` or a bare ``ids [B, L]`` tensor (all tokens real and unprotected)."""
    return x if isinstance(x, Batch) else Batch(torch.as_tensor(x, dtype=torch.long))


def as_time(t: float | torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """A float64 ``[B]`` time tensor from a scalar or a tensor; checks ``0 <= t <= 1``."""
    t = torch.as_tensor(t, dtype=torch.float64, device=device)
    if t.dim() == 0:
        t = t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"t must be a scalar or have shape [{batch_size}], got {tuple(t.shape)}")
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("t must lie in [0, 1]")
    return t


# ----------------------------------------------------------------------------------------------------------------
# Schedules (docs/udm.md#notation-and-schedules)
# ----------------------------------------------------------------------------------------------------------------


class Schedule(ABC):
    """Survival schedule ``α(t)`` (probability that a token is still clean at ``t``) and what it implies."""

    name: str = ""
    is_count: bool = False

    @abstractmethod
    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``α(t)``, non-increasing, ``α(0) = 1``."""

    @abstractmethod
    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        """``α'(t)``."""

    def beta(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Reveal probability ``β(s, t) = (α(s) − α(t)) / (1 − α(t))``; ``β(0, t) = 1``."""
        a_t = self.alpha(t)
        return torch.where(s <= 0, torch.ones_like(a_t), (self.alpha(s) - a_t) / (1 - a_t))

    def eta(self, t: torch.Tensor) -> torch.Tensor:
        """Reverse hazard ``η(t) = −α'(t) / (1 − α(t))``; ``1/t`` for the linear schedule."""
        return -self.alpha_derivative(t) / (1 - self.alpha(t))

    # The corrupted set as a function of the order noise u (continuous time: τ_i ≤ t  ⟺  u_i ≤ 1 − α(t)).
    def corrupted(self, u: torch.Tensor, t: torch.Tensor, corruptible: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` bool: the positions corrupted at time ``t`` given order noise ``u``."""
        return corruptible & (u <= (1 - self.alpha(t))[:, None])

    def posterior_noise(self, corrupted: torch.Tensor, corruptible: torch.Tensor, t: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
        """Draw ``u ~ q(u | corrupted set at t)`` (the noise posterior of the noise-posterior corrector): uniform
        below / above ``1 − α(t)``."""
        c = (1 - self.alpha(t))[:, None]
        v = uniform(corrupted.shape, generator, corrupted.device)
        return torch.where(corrupted, v * c, c + v * (1 - c))

    def log_prob_corrupted(self, n_corrupted: torch.Tensor, n_corruptible: torch.Tensor,
                           t: torch.Tensor) -> torch.Tensor:
        """``log P(this particular corrupted set)``: ``k log(1 − α) + (n − k) log α``
        (docs/udm.md#masking-forward-process)."""
        a = self.alpha(t)
        return torch.xlogy(n_corrupted.double(), 1 - a) + torch.xlogy((n_corruptible - n_corrupted).double(), a)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(Schedule):
    """``α(t) = 1 − t``; ``β(s, t) = (t − s)/t``; ``η(t) = 1/t`` (the default schedule, docs/numerics.md#d6)."""

    name = "linear"

    def alpha(self, t):
        return 1 - t

    def alpha_derivative(self, t):
        return -torch.ones_like(t)


class CosineSchedule(Schedule):
    """``α(t) = cos(πt/2)``."""

    name = "cosine"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class LogLinearSchedule(Schedule):
    """MDLM's log-linear noise ``σ(t) = −log(1 − (1 − ε) t)``, i.e. ``α(t) = 1 − (1 − ε) t`` (``α(1) = ε``)."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        if not 0 <= eps < 1:
            raise ValueError(f"eps must be in [0, 1), got {eps}")
        self.eps = eps

    def alpha(self, t):
        return 1 - (1 - self.eps) * t

    def alpha_derivative(self, t):
        return torch.full_like(t, -(1 - self.eps))


class CountSchedule(Schedule):
    """Su's count form (docs/index.md#sources): exactly ``k = round(t · n)`` of the ``n`` corruptible tokens are
    corrupted; the corrupted set is uniform given ``k`` (it is the continuous process conditioned on the count,
    docs/udm.md#continuous-time-and-the-count-form)."""

    name = "count"
    is_count = True

    def alpha(self, t):
        return 1 - t

    def alpha_derivative(self, t):
        return -torch.ones_like(t)

    @staticmethod
    def count(t: torch.Tensor, corruptible: torch.Tensor) -> torch.Tensor:
        """``k = round(t · n)`` per row."""
        return torch.round(t * corruptible.sum(-1)).long()

    def corrupted(self, u, t, corruptible):
        """The ``k`` corruptible positions with the smallest ``u`` (``u`` plays the random permutation ``π``)."""
        keys = u.masked_fill(~corruptible, math.inf)
        rank = keys.argsort(dim=-1, stable=True).argsort(-1)
        return corruptible & (rank < self.count(t, corruptible)[:, None])

    def posterior_noise(self, corrupted, corruptible, t, generator):
        """Given the corrupted set, the order inside it and outside it is uniform: ``u`` below / above 1/2."""
        v = uniform(corrupted.shape, generator, corrupted.device)
        return torch.where(corrupted, 0.5 * v, 0.5 + 0.5 * v)

    def log_prob_corrupted(self, n_corrupted, n_corruptible, t):
        """``−log C(n, k)`` if ``k = round(t n)``, else ``−inf``."""
        k = torch.round(t * n_corruptible).long()
        n, m = n_corruptible.double(), n_corrupted.double()
        log_binom = torch.lgamma(n + 1) - torch.lgamma(m + 1) - torch.lgamma(n - m + 1)
        return torch.where(n_corrupted == k, -log_binom, torch.full_like(log_binom, -math.inf))


SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (LinearSchedule, CosineSchedule, LogLinearSchedule, CountSchedule)
}


def get_schedule(schedule: str | Schedule) -> Schedule:
    """A :class:`Schedule` from its name (``linear``, ``cosine``, ``loglinear``, ``count``) or as given."""
    if isinstance(schedule, Schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    return SCHEDULES[schedule]()


def time_grid(steps: int, device="cpu") -> torch.Tensor:
    """Uniform grid ``1 = t_K > … > t_0 = 0`` with ``K = steps`` (docs/numerics.md#d6)."""
    checks.positive_int("steps", steps)
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64, device=device)


# ----------------------------------------------------------------------------------------------------------------
# Noise and step plans
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Noise:
    """The reparameterisation noise ε: per-token order noise ``u [B, L]`` (float64) plus process extras
    (``tokens [B, L]``: replacement tokens for ``replace_*``)."""

    u: torch.Tensor
    tokens: torch.Tensor | None = None


@dataclass
class StepPlan:
    """The part of a reverse step ``t → s`` drawn before the predictor is called.

    ``active [B]``: rows the step may change (rows with ``False`` need no predictor call; first-hitting skip).
    Processes that pre-draw more randomness return a subclass with typed fields (e.g. the positions a masking step
    reveals).
    """

    t: torch.Tensor
    s: torch.Tensor
    active: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# x̂0 draws (docs/udm.md#the-x0-predictor; default ``sample``: docs/numerics.md#d12)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class X0Draw:
    """How ``x̂0`` is taken from predictor logits: ``sample`` (default, exact) or ``argmax``; ``temperature``,
    ``top_k``, ``top_p`` are engineering knobs that void exactness (report them with results). Draws are float64."""

    mode: str = "sample"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.mode not in ("sample", "argmax"):
            raise ValueError(f"x0_mode must be 'sample' or 'argmax', got {self.mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def exact(self) -> bool:
        return self.mode == "sample" and self.temperature == 1.0 and self.top_k is None and self.top_p is None

    def __call__(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One token per row of ``logits [..., V]``."""
        from textdiff.rng import filter_logits, sample_categorical

        if self.mode == "argmax":
            return filter_logits(logits.double(), self.top_k, self.top_p).argmax(-1)
        return sample_categorical(logits, generator, self.temperature, self.top_k, self.top_p)

    def at(self, logits: torch.Tensor | PositionLogits, where: torch.Tensor, fallback: torch.Tensor,
           generator: torch.Generator) -> torch.Tensor:
        """Draw only at ``where [B, L]`` (fewer categoricals, docs/numerics.md#float64-categorical-draws); elsewhere
        return ``fallback``."""
        return self.into(logits_where(logits, where), where, fallback, generator)

    def into(self, values: torch.Tensor, where: torch.Tensor, fallback: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        """``fallback`` with one draw from each row of ``values [n, V]`` written at ``where [B, L]`` (row-major)."""
        out = fallback.clone()
        if values.shape[0]:
            out[where] = self(values, generator)
        return out


@dataclass(frozen=True)
class PositionLogits:
    """A predictor's logits at some positions only (docs/udm.md#logits-only-where-drawn): ``values [n, V]`` at the
    ``n`` True entries of ``where [B, L]``, in row-major order. What a predictor's ``logits_at`` gives the loop when
    the process reads logits only at its drawn positions; ``[B, L, V]`` is never materialised."""

    where: torch.Tensor
    values: torch.Tensor


def logits_where(logits: torch.Tensor | PositionLogits, where: torch.Tensor) -> torch.Tensor:
    """``[n, V]``: the rows of ``logits`` (dense ``[B, L, V]`` or :class:`PositionLogits`) at ``where [B, L]``."""
    if not isinstance(logits, PositionLogits):
        return logits[where]
    if logits.where is not where and not torch.equal(logits.where, where):
        raise ValueError("the predictor's logits were computed at other positions than the step draws from")
    return logits.values


# ----------------------------------------------------------------------------------------------------------------
# The protocol
# ----------------------------------------------------------------------------------------------------------------


CORRECTORS = ("posterior", "baseline")


class ForwardProcess(ABC):
    """A UDM forward process on token batches (docs/udm.md#forward-processes).

    Subclasses define the corruption (:meth:`corrupt`), which positions ``(x0, x_t)`` identify as corrupted
    (:meth:`posterior_corrupted`), the replacement-noise posterior (:meth:`posterior_tokens`) and the prior.
    The noise-posterior corrector, the baseline corrector and the default reverse step are shared.
    """

    name: str = ""
    #: whether the exact posterior p(x0 | x_t) is independent of t (then the sampler may cache predictor calls)
    time_agnostic_posterior: bool = False
    #: whether the reverse chain changes sequence lengths (then it may start from the empty sequence, width 0)
    variable_length: bool = False
    #: the schedule the CLI uses unless told otherwise
    default_schedule: str = "count"
    #: whether its predictor is SUBS-parameterised (visible tokens carried over; masking) or predicts every position
    subs_predictor: bool = False

    def __init__(self, schedule: str | Schedule = "linear", corrector: str = "posterior"):
        self.schedule = get_schedule(schedule)
        if corrector not in CORRECTORS:
            raise ValueError(f"corrector must be one of {CORRECTORS}, got {corrector!r}")
        self.corrector = corrector

    @classmethod
    def for_vocabulary(cls, *, mask_id: int | None = None, vocab_size: int | None = None, **options) -> ForwardProcess:
        """Build the process for a vocabulary (the registry's constructor; processes that need neither id ignore
        both). Subclasses that need ``mask_id`` or ``vocab_size`` override it and say so when it is missing."""
        return cls(**options)

    @staticmethod
    def _required(name: str, value, process: str):
        if value is None:
            raise ValueError(f"process {process!r} needs {name}")
        return value

    # -- forward ------------------------------------------------------------------------------------------------
    def sample_noise(self, x0: Batch, generator: torch.Generator) -> Noise:
        """ε ~ q(ε): order noise for every token (+ process extras)."""
        return Noise(uniform(x0.ids.shape, generator, x0.device))

    @abstractmethod
    def corrupt(self, x0: Batch, t: torch.Tensor, noise: Noise) -> Batch:
        """``x_t = F_t(x0, ε)`` (deterministic in ``(t, x0, ε)``)."""

    def corrupted_set(self, x0: Batch, t: torch.Tensor, noise: Noise) -> torch.Tensor:
        """``[B, L]`` bool: positions with ``τ_i ≤ t`` under ``noise``."""
        return self.schedule.corrupted(noise.u, as_time(t, x0.ids.shape[0], x0.device), x0.corruptible)

    # -- inverse ------------------------------------------------------------------------------------------------
    @abstractmethod
    def posterior_corrupted(self, x0: Batch, x_t: Batch, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw the corrupted set from ``q(· | x0, x_t)`` (a point mass when ``F_t`` identifies it)."""

    def posterior_tokens(self, x0: Batch, x_t: Batch, corrupted: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor | None:
        """Replacement tokens given the corrupted set: identified where corrupted, resampled elsewhere."""
        return None

    def invert(self, x0: Batch, x_t: Batch, t: torch.Tensor, generator: torch.Generator) -> Noise:
        """``ε' ~ q(ε | x0, x_t)`` (docs/udm.md#noise-posterior-corrector): the identified part of ε is kept, the rest
        resampled."""
        t = as_time(t, x0.ids.shape[0], x0.device)
        corrupted = self.posterior_corrupted(x0, x_t, t, generator)
        u = self.schedule.posterior_noise(corrupted, x0.corruptible, t, generator)
        return Noise(u, self.posterior_tokens(x0, x_t, corrupted, generator))

    # -- correctors (docs/udm.md#predict-then-correct-reverse-step) ---------------------------------------------
    def correct(self, x_t: Batch, x0_hat: Batch, t, s, generator: torch.Generator) -> Batch:
        """Noise-posterior corrector ``x_s = F_s(x̂0, ε')``, ``ε' ~ q(ε | x̂0, x_t)``
        (docs/udm.md#correctors-of-the-token-processes)."""
        return self.corrupt(x0_hat, s, self.invert(x0_hat, x_t, t, generator))

    def baseline_correct(self, x0_hat: Batch, s, generator: torch.Generator) -> Batch:
        """Baseline corrector ``x_s = F_s(x̂0, fresh ε)`` (docs/udm.md#baseline-corrector)."""
        return self.corrupt(x0_hat, s, self.sample_noise(x0_hat, generator))

    # -- prior and likelihood ------------------------------------------------------------------------------------
    def prior_sample(self, template: Batch, generator: torch.Generator) -> Batch:
        """``x_1`` for every row of ``template`` (its protected tokens are kept; other ids are ignored)."""
        ones = torch.ones(template.ids.shape[0], dtype=torch.float64, device=template.device)
        return self.corrupt(template, ones, self.sample_noise(template, generator))

    def log_prob(self, x0: Batch, x_t: Batch, t) -> torch.Tensor:
        """``log p(x_t | x0)`` per row (exact; used by oracle posteriors in tests and by ELBO checks)."""
        raise NotImplementedError(f"{type(self).__name__} does not define log p(x_t | x0)")

    # -- the reverse step used by the generic loop (docs/udm.md#generic-reverse-loop) ---------------------------
    def plan(self, x_t: Batch, t: torch.Tensor, s: torch.Tensor, generator: torch.Generator) -> StepPlan:
        """Randomness drawn before the predictor is called; default: every row with ``s < t`` is active."""
        return StepPlan(t, s, (s < t) & x_t.corruptible.any(-1))

    def drawn_positions(self, x_t: Batch, plan: StepPlan) -> torch.Tensor | None:
        """``[B, L]``: the positions whose token this step draws, for logits hooks that work per position
        (docs/guidance.md#logits-hooks); ``None`` when they are not known before the draw (default). A process that
        returns them reads the predictor's logits there and nowhere else, so :meth:`apply` also accepts
        :class:`PositionLogits` at exactly these positions (docs/udm.md#logits-only-where-drawn)."""
        return None

    def apply(self, x_t: Batch, output: Any, plan: StepPlan, draw: X0Draw, generator: torch.Generator) -> Batch:
        """Draw ``x̂0`` from the predictor ``output`` (logits ``[B, L, V]``) and correct ``t → s``
        (predict-then-correct)."""
        x0_hat = self.draw_x0(x_t, output, draw, generator)
        if self.corrector == "baseline":
            return self.baseline_correct(x0_hat, plan.s, generator)
        return self.correct(x_t, x0_hat, plan.t, plan.s, generator)

    def draw_x0(self, x_t: Batch, logits: torch.Tensor, draw: X0Draw, generator: torch.Generator) -> Batch:
        """``x̂0 ~ q_θ(x0 | x_t)`` at every corruptible position (protected and padding positions are copied)."""
        return x_t.with_ids(draw.at(logits, x_t.corruptible, x_t.ids, generator))

    def validate_logits(self, x_t: Batch, logits: torch.Tensor | PositionLogits) -> None:
        if isinstance(logits, PositionLogits) and logits.where.shape == x_t.ids.shape:
            return
        if not isinstance(logits, torch.Tensor) or logits.shape[:2] != x_t.ids.shape:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"predictor must return logits [B, L, V] with [B, L] = {tuple(x_t.ids.shape)}, "
                             f"got {shape}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule.name!r}, corrector={self.corrector!r})"
