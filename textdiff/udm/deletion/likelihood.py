"""Likelihood numbers of an insertion model: the continuous-time bound (docs/deletion.md#elbo) and a
pseudo-log-likelihood used to rerank samples."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from textdiff.rng import sample_categorical, uniform
from textdiff.udm.deletion.process import DeletionProcess, training_targets
from textdiff.udm.deletion.ragged import expand
from textdiff.udm.process import Batch


@torch.no_grad()
def pseudo_log_likelihood(model, x: Batch, chunk: int = 256) -> Tensor:
    """Mean over tokens of ``log P_fill(x_i | x with position i masked)`` per row (a rerank heuristic, not a bound)."""
    lengths = x.lengths
    rows = torch.repeat_interleave(torch.arange(x.ids.shape[0], device=x.device), lengths)
    positions = torch.cat([torch.arange(int(n), device=x.device) for n in lengths])
    total = torch.zeros(x.ids.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, len(rows), chunk):
        r, p = rows[start : start + chunk], positions[start : start + chunk]
        ids = x.ids[r].clone()
        targets = ids[torch.arange(len(r)), p]
        ids[torch.arange(len(r)), p] = model.config.mask_token_id
        logits = model.token_logits(ids, x.attention_mask[r])[torch.arange(len(r)), p].double()
        total.index_add_(0, r, torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1))
    return total / lengths.clamp(min=1)


@torch.no_grad()
def elbo_upper_bound(model, process: DeletionProcess, x0: Batch, generator: torch.Generator,
                     chunk: int = 16) -> Tensor:
    """One-sample Monte Carlo estimate, per row, of the continuous-time bound on ``−log p_θ(x0)`` (nats,
    docs/deletion.md#elbo).

    ``t ~ U(0, 1)`` stratified over the batch, ``x_t`` and its survivor set from the forward process; then
    ``η(t) [Σ_j E_θ n_j − Σ_{(j,w)} c log μ̂_θ(j, w) + Σ_{(j,w)} (c log c − c)]`` with the sampled survivor set's
    counts ``c`` (unbiased for the θ-part, an over-estimate of ``C(x0)`` by convexity) and
    ``μ̂_θ(j, w) = P(n_j ≥ 1) Σ_r P_fill(w at the r-th placeholder of slot j)`` with ``n_j ~ P(· | n_j ≥ 1)`` and the
    other slots' counts drawn from the count head and trimmed to the length budget (never zero; ``E log μ̂ ≤ log μ``
    makes it conservative).
    The bound is for the aligned-path model with oneshot fill and untruncated independent slot counts (restricted
    to the length budget), in the fine-grid limit.
    """
    batch = x0.ids.shape[0]
    t = ((uniform((1,), generator, x0.device) + torch.arange(batch, device=x0.device) / batch) % 1.0).clamp(min=1e-4)
    targets = training_targets(process, x0, t, generator)
    x_t, counts, deleted = targets.x_t, targets.counts, targets.fill
    budget = process.max_length - x_t.lengths
    values = torch.arange(model.config.max_count + 1, device=x0.device)
    slots = torch.arange(counts.shape[1], device=x0.device)[None, :] <= x_t.lengths[:, None]
    allowed = (values[None, None, :] <= budget[:, None, None]) & (slots[:, :, None] | (values == 0))
    count_logits = model.count_logits(x_t.ids, x_t.attention_mask, t).double()
    log_p = torch.log_softmax(count_logits.masked_fill(~allowed, -math.inf), -1)
    expected_total = (log_p.exp() * values).sum((1, 2))

    # slot of every deleted token of x0, and the (row, slot) pairs that need μ̂
    slot_of = (x0.attention_mask & ~deleted).long().cumsum(1)
    pairs = counts.nonzero()
    pair_index = torch.full(counts.shape, -1, dtype=torch.long, device=x0.device)
    pair_index[pairs[:, 0], pairs[:, 1]] = torch.arange(len(pairs), device=x0.device)
    rows, j = pairs[:, 0], pairs[:, 1]
    sampled = sample_categorical(log_p[rows], generator)
    at_least_one = log_p[rows, j].clone()
    at_least_one[:, 0] = -math.inf
    forced = sample_categorical(at_least_one, generator)
    sampled[torch.arange(len(pairs)), j] = 0
    room = (budget[rows] - forced)[:, None] - (sampled.cumsum(1) - sampled)
    sampled = torch.minimum(sampled, room.clamp(min=0))  # other slots trimmed to the length budget
    sampled[torch.arange(len(pairs)), j] = forced
    log_p_occupied = torch.logsumexp(at_least_one, -1)
    grown = expand(x_t.ids[rows], x_t.attention_mask[rows], sampled, process.placeholder_id, process.pad_id)
    placeholder_slot = (~grown.is_new & grown.attention_mask).long().cumsum(1)
    in_slot = grown.is_new & (placeholder_slot == j[:, None])
    log_mu = []
    for start in range(0, len(pairs), chunk):
        part = slice(start, start + chunk)
        logits = model.token_logits(grown.ids[part], grown.attention_mask[part]).double()
        log_probs = torch.log_softmax(logits, -1).masked_fill(~in_slot[part, :, None], -math.inf)
        log_mu.append(torch.logsumexp(log_probs, 1) + log_p_occupied[part, None])
    log_mu = torch.cat(log_mu) if log_mu else torch.zeros(0, model.config.vocab_size, dtype=torch.float64)

    b_idx, i_idx = deleted.nonzero(as_tuple=True)
    p_idx = pair_index[b_idx, slot_of[b_idx, i_idx]]
    cross = torch.zeros(batch, dtype=torch.float64, device=x0.device)
    cross.index_add_(0, b_idx, log_mu[p_idx, x0.ids[b_idx, i_idx]])
    keys = torch.stack([b_idx, slot_of[b_idx, i_idx], x0.ids[b_idx, i_idx]], 1)
    unique, multiplicity = torch.unique(keys, dim=0, return_counts=True) if len(keys) else (keys, keys[:, 0])
    c_log_c = torch.zeros(batch, dtype=torch.float64, device=x0.device)
    c_log_c.index_add_(0, unique[:, 0], torch.xlogy(multiplicity.double(), multiplicity.double()))
    eta = process.schedule.eta(t)
    return eta * (expected_total - cross + c_log_c - deleted.sum(1).double())
