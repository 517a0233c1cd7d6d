"""The deletion forward process and its reverse insertion chain (ALGORITHMS.md §4).

Forward: every token gets the protocol's i.i.d. order noise ``u_i ~ U(0, 1)`` and is deleted at time ``t`` iff
``u_i ≤ 1 − α(t)`` (``textdiff.udm.process``), so survivor sets are nested in ``t`` and ``x_1 = []``; protected tokens
are never deleted (§4.9). Reverse: a latent-augmented predictor (§1.2) draws an insertion pattern — slot
counts, then the inserted tokens — which carries its own alignment; the corrector keeps every survivor and keeps
each inserted token with probability ``β(s, t)`` (§4.4).

Decisions (ALGORITHMS.md §10, D5):

* Joint count constraint: slot counts are drawn independently per slot, rows whose total exceeds the budget
  ``max_length − |x_t|`` are redrawn (rejection, exact for the truncated factorised law); after ``max_tries`` the
  remaining rows are trimmed from the last slot backwards (documented truncation policy, never silent overflow of
  the padded tensors). Counts beyond the budget and inside glued keyword pieces get probability 0.
* Fill: ``oneshot`` (factorised draw at the kept placeholders) or ``iterative`` (an inner masking chain that reveals
  ``tokens_per_step`` kept placeholders at a time in random order and stops, §4.4 "efficiency").
* Dropped placeholders are never filled: thinning happens before the fill (§4.4).
* Fill support restrictions (:func:`predictor_for`): special tokens and ``[unused*]`` pieces are never inserted, and
  no WordPiece continuation (``##``) is inserted as the first piece of a sentence or right after a keyword; logits
  at −inf, i.e. each fill categorical conditioned on the allowed set (see :class:`ModelInsertionPredictor`).
* ``max_length``: EXPAND raises ``ValueError`` when a row would exceed it; the samplers never produce such rows.
* Plugged into the generic loop (:func:`textdiff.udm.sampler.reverse_sample`): the predictor returns an
  :class:`InsertionOutput` (count draw + fill), :meth:`DeletionProcess.apply` runs counts → EXPAND → thin → fill →
  compact. Keyword rerank (:func:`generate_from_keywords`) uses the token head's pseudo-log-likelihood, a heuristic.
* Logits hooks (§5.2; ``reverse_sample(..., logits_hooks=...)``) act on the fill's token logits, i.e. on every
  inserted token's categorical; slot counts are not hooked (see :class:`ModelPrediction`).
* Fill cost: each fill call sends only the rows that still have kept placeholders to fill.
* Likelihood reporting: :func:`elbo_upper_bound` estimates the continuous-time bound of §4.7 by Monte Carlo with a
  Rao-Blackwellised, never-zero estimate of ``μ_θ(j, w)`` (D5 option iii); it is conservative in expectation.

Ragged edits work on padded tensors with cumulative sums and one scatter (§4.5), no Python loop over sequences.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import torch
from torch import Tensor

from textdiff.rng import make_generator, sample_categorical, uniform
from textdiff.udm.process import Batch, ForwardProcess, Noise, StepPlan, X0Draw, as_time
from textdiff.udm.sampler import LogitsHook, NetworkUsage, StepHooks, Trajectory, forbid, reverse_sample

__all__ = [
    "Reindex", "Expansion", "expand", "compact", "slot_counts", "count_embeddings", "sample_embedding",
    "DeletionProcess", "InsertionOutput", "ModelInsertionPredictor", "ModelPrediction", "sample_slot_counts",
    "TrainingTargets", "training_targets", "process_for", "predictor_for", "sample_delete",
    "decode", "sample_sentences", "KeywordSample", "keyword_orders", "keyword_start", "generate_from_keywords",
    "pseudo_log_likelihood", "elbo_upper_bound",
]


# ---------------------------------------------------------------------------------------------------------------
# Ragged operations on padded tensors (ALGORITHMS.md §4.5)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reindex:
    """Where each old position lands in a new padded tensor of width ``length`` (``length`` = dropped)."""

    target: Tensor  # [B, L_old] long, values in 0..length
    length: int

    def apply(self, values: Tensor, fill) -> Tensor:
        """Scatter per-token ``values [B, L_old]`` into a fresh ``[B, length]`` tensor filled with ``fill``."""
        out = torch.full((values.shape[0], self.length + 1), fill, dtype=values.dtype, device=values.device)
        out.scatter_(1, self.target, values)
        return out[:, : self.length]


@dataclass(frozen=True)
class Expansion:
    """Result of EXPAND: the expanded padded sequence, its mask, the placeholder positions and the survivor map."""

    ids: Tensor
    attention_mask: Tensor
    is_new: Tensor
    reindex: Reindex


def _check_batch(ids: Tensor, attention_mask: Tensor) -> Tensor:
    if ids.dim() != 2 or attention_mask.shape != ids.shape:
        raise ValueError(f"ids and attention_mask must both be [B, L], got {tuple(ids.shape)} and {tuple(attention_mask.shape)}")
    if attention_mask.dtype != torch.bool:
        raise TypeError(f"attention_mask must be a bool tensor, got {attention_mask.dtype}")
    lengths = attention_mask.sum(1)
    if ids.shape[1] and not bool((attention_mask == (torch.arange(ids.shape[1], device=ids.device) < lengths[:, None])).all()):
        raise ValueError("attention_mask must be left-aligned: True on a prefix of each row, padding on the right")
    return lengths


def expand(
    ids: Tensor,
    attention_mask: Tensor,
    counts: Tensor,
    placeholder_id: int,
    pad_id: int = 0,
    max_length: int | None = None,
) -> Expansion:
    """EXPAND (ALGORITHMS.md §4.5): insert ``counts[b, j]`` placeholders into slot ``j`` of row ``b``.

    Slot ``j`` lies before token ``j`` (slot ``m_b`` after the last). Survivor ``i`` moves to ``i + Σ_{j≤i} n_j``.
    ``counts`` is ``[B, L+1]`` with non-negative integers and zeros beyond each row's last slot.
    """
    lengths = _check_batch(ids, attention_mask)
    batch, width = ids.shape
    if counts.shape != (batch, width + 1):
        raise ValueError(f"counts must have shape [B, L+1] = {(batch, width + 1)}, got {tuple(counts.shape)}")
    if counts.dtype.is_floating_point or counts.dtype == torch.bool:
        raise TypeError(f"counts must be an integer tensor, got {counts.dtype}")
    counts = counts.long()
    if bool((counts < 0).any()):
        raise ValueError("counts must be >= 0 (number of tokens inserted per slot); got a negative count")
    slots = torch.arange(width + 1, device=ids.device)
    if bool((counts[slots[None, :] > lengths[:, None]] != 0).any()):
        raise ValueError("counts must be 0 beyond each row's last slot (slot index > row length)")
    cumulative = counts.cumsum(1)
    new_lengths = lengths + cumulative[:, -1]
    if max_length is not None and bool((new_lengths > max_length).any()):
        raise ValueError(f"expansion exceeds max_length={max_length}: longest row would have {int(new_lengths.max())} tokens")
    new_width = int(new_lengths.max()) if batch else 0
    target = torch.arange(width, device=ids.device) + cumulative[:, :width]
    reindex = Reindex(torch.where(attention_mask, target, new_width), new_width)
    new_mask = torch.arange(new_width, device=ids.device)[None, :] < new_lengths[:, None]
    occupied = reindex.apply(attention_mask, False)
    new_ids = reindex.apply(ids, placeholder_id).masked_fill(~new_mask, pad_id)
    return Expansion(new_ids, new_mask, new_mask & ~occupied, reindex)


def compact(ids: Tensor, attention_mask: Tensor, keep: Tensor, pad_id: int = 0) -> tuple[Tensor, Tensor, Reindex]:
    """Stable partition by ``keep`` (ALGORITHMS.md §4.5): kept tokens move to ``cumsum(keep) − 1``."""
    _check_batch(ids, attention_mask)
    if keep.shape != ids.shape or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape {tuple(ids.shape)}")
    keep = keep & attention_mask
    new_lengths = keep.sum(1)
    new_width = int(new_lengths.max()) if ids.shape[0] else 0
    reindex = Reindex(torch.where(keep, keep.cumsum(1) - 1, new_width), new_width)
    new_mask = torch.arange(new_width, device=ids.device)[None, :] < new_lengths[:, None]
    return reindex.apply(ids, pad_id), new_mask, reindex


def slot_counts(survive: Tensor, attention_mask: Tensor) -> Tensor:
    """Deleted tokens per slot of ``x_t`` (ALGORITHMS.md §4.6): ``c_j`` = deletions between survivors ``j−1`` and ``j``.

    Returns ``[B, m_max + 1]`` (zeros beyond each row's last slot).
    """
    survive = survive & attention_mask
    deleted = attention_mask & ~survive
    before = survive.long().cumsum(1) - survive.long()
    width = int(survive.sum(1).max()) if survive.shape[0] else 0
    counts = torch.zeros(survive.shape[0], width + 2, dtype=torch.long, device=survive.device)
    counts.scatter_add_(1, torch.where(deleted, before, width + 1), deleted.long())
    return counts[:, : width + 1]


# ---------------------------------------------------------------------------------------------------------------
# Embeddings of x_t in x0: counting and uniform sampling (ALGORITHMS.md §4.1, §4.2)
# ---------------------------------------------------------------------------------------------------------------


def _embedding_table(x0: Tensor, mask0: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """``F[b, i, j]`` = number of embeddings of ``x[b, :j]`` in ``x0[b, :i]`` (float64; loop over x0 positions only)."""
    batch, width0 = x0.shape
    width = x.shape[1]
    table = torch.zeros(batch, width0 + 1, width + 1, dtype=torch.float64, device=x0.device)
    table[:, 0, 0] = 1.0
    match = (x0[:, :, None] == x[:, None, :]) & mask0[:, :, None] & mask[:, None, :]
    for i in range(width0):
        row = table[:, i].clone()
        row[:, 1:] += match[:, i].double() * table[:, i, :-1]
        table[:, i + 1] = torch.where(mask0[:, i, None], row, table[:, i])
    return table


def count_embeddings(x0: Tensor, mask0: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """``N(x0, x)``: number of strictly increasing index maps ``K`` with ``x0[K] = x`` (ALGORITHMS.md §4.1), float64."""
    table = _embedding_table(x0, mask0, x, mask)
    rows = torch.arange(x0.shape[0], device=x0.device)
    return table[rows, mask0.sum(1), mask.sum(1)]


def sample_embedding(x0: Tensor, mask0: Tensor, x: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """A uniformly random embedding of ``x`` in ``x0`` as a survivor mask over ``x0`` (ALGORITHMS.md §4.2).

    Backward sampling through the embedding-count table; raises ``ValueError`` if ``x`` is not a subsequence of ``x0``.
    """
    table = _embedding_table(x0, mask0, x, mask)
    batch, width0 = x0.shape
    rows = torch.arange(batch, device=x0.device)
    j = mask.sum(1)
    if bool((table[rows, mask0.sum(1), j] == 0).any()):
        raise ValueError("x_t is not a subsequence of x0 in some row: no embedding exists")
    survive = torch.zeros_like(mask0)
    if x.shape[1] == 0:
        return survive
    u = uniform((batch, max(width0, 1)), generator, x0.device)
    for i in range(width0, 0, -1):
        active = mask0[:, i - 1] & (j > 0)
        prev_j = (j - 1).clamp(min=0)
        matches = active & (x0[:, i - 1] == x[rows, prev_j])
        take_weight = torch.where(matches, table[rows, i - 1, prev_j], torch.zeros((), dtype=torch.float64))
        take = active & (u[:, i - 1] * table[rows, i, j] < take_weight)
        survive[:, i - 1] = take
        j = j - take.long()
    return survive


# ---------------------------------------------------------------------------------------------------------------
# Forward process and corrector (ALGORITHMS.md §4.1, §4.4)
# ---------------------------------------------------------------------------------------------------------------


def _match_keys(x: Batch) -> Tensor:
    """Token ids with the protected flag folded in, so protected tokens only align with protected tokens."""
    return x.ids * 2 + x.protected.long()


class DeletionProcess(ForwardProcess):
    """``delete`` (ALGORITHMS.md §4): each corruptible token is deleted independently w.p. ``1 − α(t)``; ``x_1 = []``.

    ``placeholder_id`` is the ``[MASK]`` id EXPAND writes; ``max_length`` caps every state. ``continuation_ids``
    (e.g. WordPiece ``##`` pieces): a protected continuation piece right after a protected token closes the slot
    between them, so multi-piece keywords stay contiguous (§4.9). Continuous time only. States grow from ``x_1 = []``
    (``variable_length``), so the reverse loop accepts a template of width 0.
    """

    name = "delete"
    time_agnostic_posterior = False
    variable_length = True

    def __init__(self, placeholder_id: int, pad_id: int = 0, max_length: int = 64, schedule="linear",
                 corrector: str = "posterior", continuation_ids: Sequence[int] | Tensor | None = None):
        super().__init__(schedule, corrector)
        if self.schedule.is_count:
            raise ValueError("the deletion process is continuous-time only (ALGORITHMS.md §1.2 table); use another schedule")
        for name, value in (("placeholder_id", placeholder_id), ("pad_id", pad_id)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        self.placeholder_id, self.pad_id, self.max_length = placeholder_id, pad_id, max_length
        self.continuation_ids = torch.as_tensor([] if continuation_ids is None else continuation_ids, dtype=torch.long)

    # -- forward and inverse ------------------------------------------------------------------------------------
    def keep_tokens(self, x: Batch, keep: Tensor) -> Batch:
        """Compaction of a batch (ids and protected flags) to the positions in ``keep``."""
        ids, mask, reindex = compact(x.ids, x.attention_mask, keep, self.pad_id)
        return Batch(ids, mask, reindex.apply(x.protected, False))

    def corrupt(self, x0: Batch, t, noise: Noise) -> Batch:
        """``x_t = x0[K_t]`` (ALGORITHMS.md §4.1)."""
        return self.keep_tokens(x0, x0.attention_mask & ~self.corrupted_set(x0, t, noise))

    def posterior_corrupted(self, x0: Batch, x_t: Batch, t, generator: torch.Generator) -> Tensor:
        """Deleted set of a uniformly random embedding of ``x_t`` in ``x0`` (ALGORITHMS.md §4.2)."""
        survive = sample_embedding(_match_keys(x0), x0.attention_mask, _match_keys(x_t), x_t.attention_mask, generator)
        return x0.corruptible & ~survive

    def log_prob(self, x0: Batch, x_t: Batch, t) -> Tensor:
        """``log p(x_t | x0) = log N(x0, x_t) + m log α + (l − m) log(1 − α)`` over corruptible tokens (§4.1)."""
        alpha = self.schedule.alpha(as_time(t, x0.ids.shape[0], x0.device))
        embeddings = count_embeddings(_match_keys(x0), x0.attention_mask, _match_keys(x_t), x_t.attention_mask)
        l, m = x0.corruptible.sum(1).double(), x_t.corruptible.sum(1).double()
        return torch.log(embeddings) + torch.xlogy(m, alpha) + torch.xlogy(l - m, 1 - alpha)

    def time_for_survival(self, alpha) -> Tensor:
        """The ``t`` with ``α(t) = alpha`` (bisection on the non-increasing schedule), float64."""
        alpha = torch.as_tensor(alpha, dtype=torch.float64)
        low, high = torch.zeros_like(alpha), torch.ones_like(alpha)
        for _ in range(60):
            mid = (low + high) / 2
            above = self.schedule.alpha(mid) > alpha
            low, high = torch.where(above, mid, low), torch.where(above, high, mid)
        return (low + high) / 2

    # -- corrector ---------------------------------------------------------------------------------------------
    def thin(self, is_new: Tensor, attention_mask: Tensor, t, s, generator: torch.Generator) -> Tensor:
        """Corrector (ALGORITHMS.md §4.4): keep every survivor, keep each inserted token w.p. ``β(s, t)``."""
        batch = is_new.shape[0]
        beta = self.schedule.beta(as_time(s, batch, is_new.device), as_time(t, batch, is_new.device))
        reinsert = uniform(is_new.shape, generator, is_new.device) < beta[:, None]
        return attention_mask & (~is_new | reinsert)

    def closed_slots(self, x: Batch) -> Tensor:
        """``[B, L+1]``: slot ``j`` is closed when token ``j`` is a protected continuation of protected token ``j−1``."""
        glued = x.protected & torch.isin(x.ids, self.continuation_ids.to(x.device))
        glued[:, :1] = False
        glued &= x.protected.roll(1, dims=1)
        return torch.cat([glued, glued.new_zeros(glued.shape[0], 1)], dim=1)

    # -- reverse step (§1.6, §4.5) ------------------------------------------------------------------------------
    def plan(self, x_t: Batch, t: Tensor, s: Tensor, generator: torch.Generator) -> StepPlan:
        """Every row with ``s < t`` is active (even an empty ``x_t`` grows)."""
        return StepPlan(t, s, s < t)

    def apply(self, x_t: Batch, output: "InsertionOutput", plan: StepPlan, draw: X0Draw,
              generator: torch.Generator) -> Batch:
        """Counts → EXPAND → thin → fill the kept placeholders → compact (ALGORITHMS.md §4.5).

        With ``corrector="baseline"`` every placeholder is filled and ``x_s = F_s(x̂0, fresh noise)``.
        """
        budget = self.max_length - x_t.lengths
        counts = output.sample_counts(self.closed_slots(x_t), budget, generator)
        counts = counts * plan.active[:, None]
        grown = expand(x_t.ids, x_t.attention_mask, counts, self.placeholder_id, self.pad_id, self.max_length)
        expanded = Batch(grown.ids, grown.attention_mask, grown.reindex.apply(x_t.protected, False))
        if self.corrector == "baseline":
            return self.baseline_correct(output.sample_fill(expanded, grown.is_new, draw, generator), plan.s, generator)
        keep = self.thin(grown.is_new, grown.attention_mask, plan.t, plan.s, generator)
        return self.keep_tokens(output.sample_fill(expanded, grown.is_new & keep, draw, generator), keep)

    def prior_sample(self, template: Batch, generator: torch.Generator) -> Batch:
        """``x_1``: the empty sequence, or the template's protected tokens (never deleted, §4.9)."""
        return self.keep_tokens(template, template.attention_mask & template.protected)


@dataclass(frozen=True)
class TrainingTargets:
    """One forward draw for training (ALGORITHMS.md §4.6): ``x_t``, its slot counts, the expanded sequence ``y``
    (deleted tokens replaced by ``[MASK]``) and the deleted positions (``fill``), with ``x0`` for the token targets."""

    x_t: Batch
    counts: Tensor
    expanded: Tensor
    fill: Tensor


def training_targets(process: DeletionProcess, x0: Batch, t, generator: torch.Generator) -> TrainingTargets:
    """Targets from the forward process itself (ALGORITHMS.md §4.6): the survivor alignment is known."""
    deleted = process.corrupted_set(x0, t, process.sample_noise(x0, generator))
    x_t = process.keep_tokens(x0, x0.attention_mask & ~deleted)
    counts = slot_counts(x0.attention_mask & ~deleted, x0.attention_mask)
    return TrainingTargets(x_t, counts, x0.ids.masked_fill(deleted, process.placeholder_id), deleted)


# ---------------------------------------------------------------------------------------------------------------
# Latent-augmented insertion predictor (ALGORITHMS.md §1.2, §4.3)
# ---------------------------------------------------------------------------------------------------------------


class InsertionOutput(Protocol):
    """What an insertion predictor returns for ``x_t`` (ALGORITHMS.md §4.3): a pattern drawn in two stages.

    A trained network (:class:`ModelInsertionPredictor`) and an exact enumerated posterior in a test both return
    one; :meth:`DeletionProcess.apply` cannot tell them apart. Outputs that draw the fill from token logits may also
    define ``with_logits_hooks`` (:class:`textdiff.udm.sampler.StepHooks`); only those accept ``logits_hooks``.
    """

    def sample_counts(self, closed: Tensor, budget: Tensor, generator: torch.Generator) -> Tensor:
        """Slot counts ``[B, L+1]``: zero on ``closed`` slots and beyond each row, row total ≤ ``budget [B]``."""
        ...

    def sample_fill(self, expanded: Batch, fill: Tensor, draw: X0Draw, generator: torch.Generator) -> Batch:
        """``expanded`` with tokens drawn at the placeholders in ``fill`` (their joint law given the expansion)."""
        ...


def sample_slot_counts(count_logits: Tensor, lengths: Tensor, closed: Tensor, budget: Tensor,
                       generator: torch.Generator, max_tries: int = 64) -> Tensor:
    """Slot counts from per-slot logits ``[B, L+1, K+1]`` (ALGORITHMS.md §4.3, D5).

    Counts above the row's ``budget``, on ``closed`` slots and on slots beyond the row's length are impossible.
    Independent per-slot draws; rows whose total exceeds the budget are redrawn up to ``max_tries`` times, then
    trimmed from the last slot backwards.
    """
    batch, slots, classes = count_logits.shape
    if classes < 2:
        raise ValueError(f"count logits need K + 1 >= 2 classes (K >= 1), got K = {classes - 1}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    values = torch.arange(classes, device=count_logits.device)
    dead = closed | (torch.arange(slots, device=count_logits.device)[None, :] > lengths[:, None])
    allowed = (values[None, None, :] <= budget[:, None, None]) & ~(dead[:, :, None] & (values > 0))
    logits = count_logits.to(torch.float64).masked_fill(~allowed, -math.inf)
    counts = torch.zeros(batch, slots, dtype=torch.long, device=count_logits.device)
    pending = torch.ones(batch, dtype=torch.bool, device=count_logits.device)
    for _ in range(max_tries):
        rows = pending.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        counts[rows] = sample_categorical(logits[rows], generator)
        pending = counts.sum(1) > budget
    room = (budget[:, None] - (counts.cumsum(1) - counts)).clamp(min=0)
    return torch.minimum(counts, room)


def _fill_rank(fill: Tensor, first: Tensor, generator: torch.Generator) -> Tensor:
    """Rank of each fill position in a uniformly random order within its row (``-1`` elsewhere), the positions in
    ``first`` ranked before the others (each group in random order)."""
    keys = (uniform(fill.shape, generator, fill.device) - first.double()).masked_fill(~fill, 2.0)
    rank = torch.argsort(torch.argsort(keys, dim=1), dim=1)
    return torch.where(fill, rank, -1)


def _no_continuation(expanded: Batch, fill: Tensor, placeholder_id: int) -> Tensor:
    """Fill positions that must not hold a continuation piece: those whose left neighbour in the final (compacted)
    sequence is a protected token, and the first piece of the sequence (nothing kept before it)."""
    kept = expanded.attention_mask & ((expanded.ids != placeholder_id) | fill)
    positions = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
    last_kept = torch.where(kept, positions, -1).cummax(1).values
    previous = torch.cat([last_kept.new_full((kept.shape[0], 1), -1), last_kept[:, :-1]], dim=1)
    return fill & ((previous < 0) | expanded.protected.gather(1, previous.clamp(min=0)))


def _id_tensor(name: str, ids: Sequence[int] | Tensor | None, vocab_size: int) -> Tensor:
    """``ids`` as a long tensor; ``ValueError`` naming ``name`` unless every id lies in ``[0, vocab_size)``."""
    ids = torch.as_tensor([] if ids is None else ids, dtype=torch.long)
    outside = (ids < 0) | (ids >= vocab_size)
    if bool(outside.any()):
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}), got {ids[outside].tolist()}")
    return ids


@dataclass
class ModelPrediction:
    """:class:`InsertionOutput` of a network: count logits for ``x_t``; the fill calls the token head.

    ``hooks`` (set by :meth:`with_logits_hooks`, i.e. by ``reverse_sample``'s ``logits_hooks``) run on the fill's token
    logits ``[B', L', V]`` after the support restrictions, with ``x`` = the rows of the expanded sequence sent to the
    network (placeholders = ``[MASK]``, tokens revealed so far) and those rows' ``t``, ``s``; the draw uses their
    result. Each hooked fill categorical is conditioned / reweighted exactly (§5.2); with several kept placeholders
    per row the per-draw reweighting approximates reweighting the joint fill (§5.3). Hooks cannot apply to the count
    head (its logits are over counts ``0..K``, not tokens), so slot counts are drawn from the unhooked model: e.g.
    ``forbid_tokens`` conditions every fill categorical, not ``p_θ(x0 | no forbidden token inserted)``.
    """

    predictor: "ModelInsertionPredictor"
    x_t: Batch
    count_logits: Tensor
    hooks: StepHooks | None = None

    def with_logits_hooks(self, hooks: StepHooks) -> "ModelPrediction":
        return replace(self, hooks=hooks)

    def sample_counts(self, closed, budget, generator):
        return sample_slot_counts(self.count_logits, self.x_t.lengths, closed, budget, generator,
                                  self.predictor.max_tries)

    @torch.no_grad()
    def sample_fill(self, expanded: Batch, fill: Tensor, draw: X0Draw, generator) -> Batch:
        """``oneshot``: all of ``fill`` from one token-head call; ``iterative``: ``tokens_per_step`` at a time, the
        positions barred from continuation pieces first (support restrictions: :class:`ModelInsertionPredictor`).
        Each call sends only the rows with a position to draw; the same categoricals are drawn in the same order as
        from a whole-batch call, so a seed gives the same samples (up to the network's batch-size numerics)."""
        predictor = self.predictor
        restricted = (_no_continuation(expanded, fill, predictor.model.config.mask_token_id)
                      if predictor.continuation_ids.numel() else torch.zeros_like(fill))
        iterative = predictor.fill_mode == "iterative"
        rank = _fill_rank(fill, restricted, generator) if iterative else fill.long() - 1
        step = predictor.tokens_per_step if iterative else max(expanded.ids.shape[1], 1)
        ids = expanded.ids.clone()
        for start in range(0, int(fill.sum(1).max()) if fill.numel() else 0, step):
            now = (rank >= start) & (rank < start + step)
            rows = now.any(1).nonzero().squeeze(1)
            sent = Batch(ids[rows], expanded.attention_mask[rows], expanded.protected[rows])
            now = now[rows]
            logits = predictor.token_logits(sent.ids, sent.attention_mask)
            barred = now & restricted[rows]
            logits[barred] = forbid(logits[barred], predictor.continuation_ids)
            if self.hooks is not None:
                logits = self.hooks(logits, sent, rows)
            ids[rows] = draw.at(logits, now, sent.ids, generator)
        return expanded.with_ids(ids)


class ModelInsertionPredictor:
    """An insertion network (``count_logits(ids, mask, t)``, ``token_logits(ids, mask)``; see
    ``textdiff.models.insertion``) as the deletion process's predictor for :func:`textdiff.udm.sampler.reverse_sample`.

    ``fill_mode`` (D5): ``oneshot`` (factorised) or ``iterative`` (``tokens_per_step`` kept placeholders revealed at a
    time in random order, each draw conditioned on the tokens already revealed). Every network call (count head and
    fill) is metered in ``usage``, so ``reverse_sample``'s ``stats`` count the fill calls too.

    Support restrictions of the fill (ALGORITHMS.md §5.2; :func:`textdiff.udm.sampler.forbid`): ``forbidden_ids``
    (special tokens, ``[unused*]``) get logit −inf at every fill draw; with ``continuation_ids`` (WordPiece ``##``
    pieces), so do continuations at the first text piece (a kept placeholder with nothing kept before it, i.e. right
    after ``[CLS]``) and right after a protected token (keywords stay whole words). Logits at −inf followed by the
    softmax's renormalisation is exactly conditioning that categorical on the allowed set, so the oneshot fill (a
    product law) is exactly conditioned on all restrictions. The iterative fill reveals the continuation-restricted
    positions first; with one such position (a sentence grown from ``[]`` has at most one per step) the fill given
    the expansion is then exactly the model's fill law conditioned on the event "the first piece is not a
    continuation" (that token comes from its conditioned marginal, every later draw conditions on it). With several
    (keywords), and for ``forbidden_ids`` at every draw, sequential restriction approximates the joint conditioning.
    Slot counts are not reweighted by the event's probability: the chain samples the model with every fill so
    conditioned, not ``p_θ(x0 | first piece is not a continuation)``. The first piece of every state is kept from the
    previous state or is a restricted fill, so no sample starts with a continuation. ``reverse_sample``'s
    ``logits_hooks`` run on the fill logits after these restrictions (:class:`ModelPrediction`).
    """

    time_conditioned = True

    def __init__(self, model, fill_mode: str = "iterative", tokens_per_step: int = 1, max_tries: int = 64,
                 continuation_ids: Sequence[int] | Tensor | None = None,
                 forbidden_ids: Sequence[int] | Tensor | None = None):
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be an integer >= 1, got {tokens_per_step!r}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.model, self.fill_mode, self.tokens_per_step, self.max_tries = model, fill_mode, tokens_per_step, max_tries
        self.continuation_ids = _id_tensor("continuation_ids", continuation_ids, model.config.vocab_size)
        self.forbidden_ids = _id_tensor("forbidden_ids", forbidden_ids, model.config.vocab_size)
        self.usage = NetworkUsage()

    @torch.no_grad()
    def __call__(self, x_t: Batch, t: Tensor) -> ModelPrediction:
        self.usage.add(x_t.ids.shape[0])
        return ModelPrediction(self, x_t, self.model.count_logits(x_t.ids, x_t.attention_mask, t))

    @torch.no_grad()
    def token_logits(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Fill logits of the token head (one metered network call), ``forbidden_ids`` at −inf."""
        self.usage.add(ids.shape[0])
        return forbid(self.model.token_logits(ids, attention_mask), self.forbidden_ids)


FILL_MODES = ("oneshot", "iterative")


# ---------------------------------------------------------------------------------------------------------------
# Generation (ALGORITHMS.md §1.6, §4.5, §4.9)
# ---------------------------------------------------------------------------------------------------------------


def process_for(model, tokenizer=None, schedule="linear", corrector: str = "posterior") -> DeletionProcess:
    """The :class:`DeletionProcess` matching an insertion model (its ``[MASK]``, padding, length cap) and tokenizer
    (WordPiece ``##`` pieces glue multi-piece keywords)."""
    from textdiff.models.loading import continuation_pieces

    config = model.config
    continuation = None if tokenizer is None else continuation_pieces(tokenizer)
    return DeletionProcess(config.mask_token_id, config.pad_token_id, config.max_seq_length, schedule, corrector,
                           continuation)


def predictor_for(model, tokenizer, fill_mode: str = "iterative", tokens_per_step: int = 1,
                  max_tries: int = 64) -> ModelInsertionPredictor:
    """The :class:`ModelInsertionPredictor` of an insertion model with its tokenizer's support restrictions, built
    once: special tokens and ``[unused*]`` pieces are never inserted, ``##`` pieces never open a sentence or follow
    a keyword."""
    from textdiff.models.loading import continuation_pieces, excluded_mlm_ids

    return ModelInsertionPredictor(model, fill_mode, tokens_per_step, max_tries,
                                   continuation_ids=continuation_pieces(tokenizer),
                                   forbidden_ids=excluded_mlm_ids(tokenizer))


def sample_delete(
    predictor,
    process: DeletionProcess,
    n: int | None = None,
    *,
    start: Batch | None = None,
    steps: int = 16,
    t_start: float = 1.0,
    draw: X0Draw | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    trajectory: Trajectory | None = None,
    progress: bool = False,
    stats: dict | None = None,
    logits_hooks: Sequence[LogitsHook] = (),
    device: str | torch.device = "cpu",
) -> Batch:
    """Variable-length samples from the reverse insertion chain (ALGORITHMS.md §4.5) via the generic loop.

    From ``x_1 = []`` (``n`` rows), or from ``start`` at ``t_start`` (protected tokens of ``start`` are kept, in
    order, by construction: §4.9). ``predictor(x_t, t)`` returns an :class:`InsertionOutput`. ``stats`` receives
    ``reverse_sample``'s network counts (fill calls included for a :class:`ModelInsertionPredictor`);
    ``logits_hooks`` act on the fill's token logits (:class:`ModelPrediction`).
    """
    if (n is None) == (start is None):
        raise ValueError("give exactly one of n (start from the empty sequence) or start (a Batch at t_start)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if start is None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        start = Batch(torch.zeros(n, 0, dtype=torch.long, device=device))
    if int(start.lengths.max()) > process.max_length:
        raise ValueError(f"the start state has {int(start.lengths.max())} tokens, more than max_length={process.max_length}")
    grid = torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64, device=start.device)
    return reverse_sample(process, predictor, start, grid=grid, draw=draw, seed=seed, generator=generator,
                          trajectory=trajectory, x_init=start, progress=progress, stats=stats,
                          logits_hooks=logits_hooks)


def decode(tokenizer, x: Batch) -> list[str]:
    """The texts of a padded batch."""
    return [tokenizer.decode(row[: int(n)], skip_special_tokens=True) for row, n in zip(x.ids.tolist(), x.lengths.tolist())]


def sample_sentences(model, tokenizer, n: int, *, steps: int = 16, fill_mode: str = "iterative",
                     tokens_per_step: int = 1, draw: X0Draw | None = None, seed: int | None = None,
                     generator: torch.Generator | None = None, progress: bool = False) -> list[str]:
    """``n`` variable-length sentences grown from the empty sequence by an insertion model (``textdiff sample
    --process delete``)."""
    device = next(model.parameters()).device
    out = sample_delete(predictor_for(model, tokenizer, fill_mode, tokens_per_step), process_for(model, tokenizer), n,
                        steps=steps, draw=draw, seed=seed, generator=generator, progress=progress, device=device)
    return decode(tokenizer, out)


@dataclass(frozen=True)
class KeywordSample:
    """One keyword-anchored sentence: its text, the keyword order it started from and its rerank score."""

    text: str
    order: tuple[str, ...]
    score: float


def keyword_orders(keywords: Sequence[str], orders: str | int, generator: torch.Generator) -> list[tuple[str, ...]]:
    """``"given"``: the given order; ``"all"``: every permutation; an int ``k``: the given order + ``k − 1`` random
    distinct other permutations (all of them when there are fewer)."""
    every = list(itertools.permutations(keywords))
    if orders == "given":
        return [tuple(keywords)]
    if orders == "all":
        return every
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 1:
        raise ValueError(f"orders must be 'given', 'all' or an integer >= 1, got {orders!r}")
    if orders >= len(every):
        return every
    rest = torch.randperm(len(every) - 1, generator=generator, device=generator.device).tolist()
    return [tuple(keywords)] + [every[1 + i] for i in rest[: orders - 1]]


def keyword_start(tokenizer, orders: Sequence[Sequence[str]], copies: int, max_length: int) -> Batch:
    """``x_t`` = the keywords' WordPieces in each order (``copies`` rows per order), all protected (§4.9)."""
    rows = []
    for order in orders:
        pieces = [i for word in order for i in tokenizer(word, add_special_tokens=False)["input_ids"]]
        if len(pieces) > max_length:
            raise ValueError(f"keywords take {len(pieces)} tokens, more than max_length={max_length}")
        rows += [pieces] * copies
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)
    mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return Batch(ids, mask, mask.clone())


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


def generate_from_keywords(
    model,
    tokenizer,
    keywords: str | Sequence[str],
    n: int = 1,
    *,
    orders: str | int = 6,
    samples_per_order: int = 4,
    expected_length: int | None = None,
    steps: int = 12,
    fill_mode: str = "iterative",
    draw: X0Draw | None = None,
    rerank: str = "pll",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[KeywordSample]:
    """Sentences containing every keyword, in order, by the reverse insertion chain from ``x_{t*} = keywords``.

    ALGORITHMS.md §4.9: ``t*`` solves ``α(t*) = m / expected_length`` (``m`` keyword tokens; default
    ``expected_length = max(14, 2m)``). Each keyword order gets ``samples_per_order`` chains; the ``n`` best distinct
    sentences by the mean pseudo-log-likelihood of the token head are returned (``rerank="pll"``; ``"none"``: in
    generation order). Keywords are
    protected, so they are never removed; WordPiece continuations glue multi-piece keywords, and no continuation
    piece is ever inserted right after a keyword, so keywords stay whole words (lemma form). The law sampled is the
    length-tilted ``p(x0 | x_{t*} = kw)`` of §4.9, not ``p(x0 | kw ⊂ x0)``.
    """
    if isinstance(keywords, str):
        keywords = keywords.split()
    keywords = list(keywords)
    if not keywords or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ValueError(f"keywords must be a non-empty list of non-empty strings, got {keywords!r}")
    for name, value in (("n", n), ("samples_per_order", samples_per_order)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    process = process_for(model, tokenizer)
    device = next(model.parameters()).device
    gen = make_generator(seed, generator, device)
    chosen = keyword_orders(keywords, orders, gen)
    start = keyword_start(tokenizer, chosen, samples_per_order, process.max_length).to(device)
    m = int(start.lengths[0])
    target = max(14, 2 * m) if expected_length is None else expected_length
    if isinstance(target, bool) or not isinstance(target, int) or target < m or target > process.max_length:
        raise ValueError(f"expected_length must be an integer in [{m}, max_length={process.max_length}], got {target!r}")
    t_star = float(process.time_for_survival(torch.tensor(min(m / target, 0.95))))
    predictor = predictor_for(model, tokenizer, fill_mode)
    out = sample_delete(predictor, process, start=start, steps=steps, t_start=t_star,
                        draw=draw, generator=gen, progress=progress)
    if rerank not in ("pll", "none"):
        raise ValueError(f"rerank must be 'pll' or 'none', got {rerank!r}")
    scores = pseudo_log_likelihood(model, out).cpu() if rerank == "pll" else -torch.arange(len(out.ids), dtype=torch.float64)
    texts = decode(tokenizer, out)
    results, seen = [], set()
    for row in torch.argsort(scores, descending=True).tolist():
        text = texts[row]
        if text not in seen:
            seen.add(text)
            results.append(KeywordSample(text, chosen[row // samples_per_order], float(scores[row])))
    return results[:n]


# ---------------------------------------------------------------------------------------------------------------
# Likelihood bound (ALGORITHMS.md §4.7, D5 option iii)
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def elbo_upper_bound(model, process: DeletionProcess, x0: Batch, generator: torch.Generator,
                     chunk: int = 16) -> Tensor:
    """One-sample Monte Carlo estimate, per row, of the continuous-time bound on ``−log p_θ(x0)`` (nats, §4.7).

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
    log_p = torch.log_softmax(model.count_logits(x_t.ids, x_t.attention_mask, t).double().masked_fill(~allowed, -math.inf), -1)
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
