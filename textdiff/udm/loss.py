"""UDM training loss and ELBOs: masking and replace_diff, count form and continuous time (docs/udm.md#training-loss,
docs/udm.md#elbo).

Design decisions (docs/numerics.md#d2):

* Time sampling: continuous ``t ~ U[t_min, 1]`` with ``t_min = 1e-3``, antithetic over the batch
  (``t_b = (u + b/B) mod 1`` mapped to ``[t_min, 1]``); count form ``k ~ U{1..n}`` per row (:func:`sample_count_times`,
  ``t = k/n``).
* Training loss: unweighted UDM cross-entropy ``−log q(x0_i | x_t)`` averaged over the corrupted positions of the
  batch (the network is trained as a plain MLM at a random mask rate). Likelihoods are always reported with the ELBO
  weights: ``η(t)`` per masked token (continuous) or ``n/k`` (count form).
* Padding and protected tokens are never corrupted nor scored; ``n`` is the number of corruptible tokens of a row.
* Cross-entropy is computed in float32 or higher (logits are upcast under bf16/fp16, docs/numerics.md#loss-precision).
"""

from __future__ import annotations

import math

import torch

from textdiff.rng import uniform
from textdiff.support import subs
from textdiff.udm.process import Schedule, get_schedule


def sample_times(batch_size: int, generator: torch.Generator, t_min: float = 1e-3, antithetic: bool = True,
                 device=None) -> torch.Tensor:
    """``t ∈ [t_min, 1]`` per example, float64; antithetic (stratified) over the batch by default."""
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must be in [0, 1), got {t_min}")
    if antithetic:
        u = (uniform((1,), generator, device) + torch.arange(batch_size, dtype=torch.float64, device=device)
             / batch_size) % 1.0
    else:
        u = uniform((batch_size,), generator, device)
    return t_min + (1 - t_min) * u


def sample_count_times(corruptible_count: torch.Tensor, generator: torch.Generator,
                       antithetic: bool = True) -> torch.Tensor:
    """Count-form times ``t = k/n`` with ``k ~ U{1..n}`` per row (``n`` = corruptible tokens; ``t = 0`` when
    ``n = 0``), float64; antithetic (stratified) over the batch by default. ``CountSchedule.count(t) = k``."""
    n = corruptible_count.double()
    u = sample_times(len(n), generator, 0.0, antithetic, n.device)
    return torch.where(n > 0, (torch.floor(u * n) + 1).clamp(max=n) / n.clamp(min=1), torch.zeros_like(n))


def masked_token_nll(logits: torch.Tensor, x0: torch.Tensor, mask_id: int | None = None) -> torch.Tensor:
    """``−log P_i(x0_i)`` for logits ``[..., V]`` and targets ``[...]``, in float32+; with ``mask_id`` the SUBS
    parameterisation (``[MASK]`` logit = −inf, docs/udm.md#subs-parameterisation-and-time-agnostic-posterior) is
    applied first."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if mask_id is not None:
        logits = subs(logits, mask_id)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x0.reshape(-1),
                                             reduction="none").view(x0.shape)


def masking_elbo_weight(t: torch.Tensor, corrupted_count: torch.Tensor, corruptible_count: torch.Tensor,
                        schedule: Schedule | str = "linear") -> torch.Tensor:
    """Weight of the per-sequence step term in the masking and replace_diff ELBOs (docs/udm.md#elbo-closed-forms):
    continuous ``η(t)`` (``1/t`` for the linear schedule); count form ``n/k``. Unbiased single-sample estimate per
    sequence (``t ~ U[0, 1]``, resp. ``k ~ U{1..n}``)."""
    schedule = get_schedule(schedule)
    if schedule.is_count:
        return corruptible_count.double() / corrupted_count.double().clamp(min=1)
    return schedule.eta(t)


def masking_elbo(nll: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, corruptible: torch.Tensor,
                 schedule: Schedule | str = "linear") -> torch.Tensor:
    """Per-sequence ELBO estimate (upper bound on ``−log p_θ(x0)`` in nats) from per-position NLL ``[B, L]``, the
    masked set ``M [B, L]`` and the times ``t [B]``: ``w(t) Σ_{i∈M} −log P_i(x0_i)`` (docs/udm.md#elbo-closed-forms)."""
    total = (nll.double() * masked).sum(-1)
    return masking_elbo_weight(t, masked.sum(-1), corruptible.sum(-1), schedule) * total


def udm_loss(nll: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Unweighted UDM loss: mean ``−log q(x0_i | x_t)`` over the corrupted positions of the batch."""
    return (nll * corrupted).sum() / corrupted.sum().clamp(min=1)


def replace_diff_elbo(logits: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                      corruptible: torch.Tensor, vocab_size: int, schedule: Schedule | str = "linear") -> torch.Tensor:
    """Per-sequence single-sample ELBO estimate (upper bound on ``−log p_θ(x0)`` in nats) for ``replace_diff`` with a
    uniform prior (docs/udm.md#elbo-closed-forms, docs/udm.md#replacement-training-and-elbo); ``P`` = softmax of the
    predictor ``logits [B, L, V]`` at ``x_t``, ``d_i = 1 − P_i(x_t,i)``, ``D = {i : x_t,i ≠ x0_i}``, ``k = |D|``,
    ``n`` corruptible tokens:

    * continuous time: ``η(t) [Σ_i d_i − k − Σ_{i∈D} log P_i(x0_i)] + n log(|V|/(|V|−1))``, ``t ~ U[0, 1]``;
    * count form (one-token kernel (a), ``T = n`` steps): ``(n/k) [k log(Σ_i d_i / k) − Σ_{i∈D} log P_i(x0_i)]
      + n log(|V|/(|V|−1))``, ``k ~ U{1..n}`` (:func:`sample_count_times`); its mean is
      ``Σ_{k=1..n} E_{|D|=k}[log(Σ d / k) − (1/k) Σ_{i∈D} log P_i(x0_i)]`` plus the prior term.

    The bracket is the model-vs-true reverse rate mismatch plus the reverted tokens' NLL; it is ``+inf`` where the model
    cannot produce ``x0`` (some ``P_i(x0_i) = 0``, ``i ∈ D``), and the step term is 0 for rows with ``k = 0``."""
    schedule = get_schedule(schedule)
    logp = torch.log_softmax(logits.double(), -1)
    d = -torch.expm1(logp.gather(-1, x_t[..., None]).squeeze(-1)) * corruptible
    edited = corruptible & (x_t != x0)
    k = edited.sum(-1).double()
    nll = -torch.where(edited, logp.gather(-1, x0[..., None]).squeeze(-1), 0.0).sum(-1)
    if schedule.is_count:
        mismatch = torch.where(k > 0, k * torch.log(d.sum(-1) / k.clamp(min=1)), 0.0)
        bracket = torch.where(torch.isinf(nll), nll, mismatch + nll)
    else:
        bracket = d.sum(-1) - k + nll
    prior = corruptible.sum(-1).double() * math.log(vocab_size / (vocab_size - 1))
    return masking_elbo_weight(t, edited.sum(-1), corruptible.sum(-1), schedule) * bracket + prior
