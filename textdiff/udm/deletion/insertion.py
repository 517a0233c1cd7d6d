"""The latent-augmented insertion predictor: slot counts, then the inserted tokens
(docs/deletion.md#insertion-model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from textdiff import checks
from textdiff.rng import sample_categorical, uniform
from textdiff.support import TokenSupport, forbid
from textdiff.udm.deletion.process import DeletionProcess
from textdiff.udm.process import Batch, X0Draw
from textdiff.udm.sampler import NetworkUsage, StepHooks


class InsertionOutput(Protocol):
    """What an insertion predictor returns for ``x_t``: a pattern drawn in two stages.

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
    """Slot counts from per-slot logits ``[B, L+1, K+1]`` (docs/deletion.md#slot-counts, docs/numerics.md#d5).

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
    result. Each hooked fill categorical is conditioned / reweighted exactly
    (docs/guidance.md#exact-candidate-reweighting); with several kept placeholders per row the per-draw reweighting
    approximates reweighting the joint fill (docs/guidance.md#multi-token-steps). Hooks cannot apply to the count head
    (its logits are over counts ``0..K``, not tokens), so slot counts are drawn from the unhooked model: e.g.
    ``forbid_tokens`` conditions every fill categorical, not ``p_θ(x0 | no forbidden token inserted)``.
    """

    predictor: ModelInsertionPredictor
    x_t: Batch
    count_logits: Tensor
    hooks: StepHooks | None = None

    def with_logits_hooks(self, hooks: StepHooks) -> ModelPrediction:
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
                logits = self.hooks(logits, sent, rows, where=now)
            ids[rows] = draw.at(logits, now, sent.ids, generator)
        return expanded.with_ids(ids)


class ModelInsertionPredictor:
    """An insertion network (``count_logits(ids, mask, t)``, ``token_logits(ids, mask)``; see
    ``textdiff.models.insertion``) as the deletion process's predictor for :func:`textdiff.udm.sampler.reverse_sample`.

    ``fill_mode`` (docs/numerics.md#d5): ``oneshot`` (factorised) or ``iterative`` (``tokens_per_step`` kept
    placeholders revealed at a time in random order, each draw conditioned on the tokens already revealed). Every
    network call (count head and fill) is metered in ``usage``, so ``reverse_sample``'s ``stats`` count the fill calls
    too.

    Support restrictions of the fill (docs/guidance.md#support-restrictions-as-conditioning;
    :func:`textdiff.udm.sampler.forbid`): ``forbidden_ids`` (special tokens, ``[unused*]``) get logit −inf at every fill
    draw; with ``continuation_ids`` (WordPiece ``##`` pieces), so do continuations at the first text piece (a kept
    placeholder with nothing kept before it, i.e. right after ``[CLS]``) and right after a protected token (keywords
    stay whole words). Logits at −inf followed by the softmax's renormalisation is exactly conditioning that categorical
    on the allowed set, so the oneshot fill (a product law) is exactly conditioned on all restrictions. The iterative
    fill reveals the continuation-restricted positions first; with one such position (a sentence grown from ``[]`` has
    at most one per step) the fill given the expansion is then exactly the model's fill law conditioned on the event
    "the first piece is not a continuation" (that token comes from its conditioned marginal, every later draw conditions
    on it). With several (keywords), and for ``forbidden_ids`` at every draw, sequential restriction approximates the
    joint conditioning. Slot counts are not reweighted by the event's probability: the chain samples the model with
    every fill so conditioned, not ``p_θ(x0 | first piece is not a continuation)``. The first piece of every state is
    kept from the previous state or is a restricted fill, so no sample starts with a continuation. ``reverse_sample``'s
    ``logits_hooks`` run on the fill logits after these restrictions (:class:`ModelPrediction`).
    """

    time_conditioned = True

    def __init__(self, model, fill_mode: str = "iterative", tokens_per_step: int = 1, max_tries: int = 64,
                 continuation_ids: Sequence[int] | Tensor | None = None,
                 forbidden_ids: Sequence[int] | Tensor | None = None):
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
        checks.positive_int("tokens_per_step", tokens_per_step)
        checks.positive_int("max_tries", max_tries)
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


def process_for(model, support=None, schedule="linear", corrector: str = "posterior") -> DeletionProcess:
    """The :class:`DeletionProcess` matching an insertion model (its ``[MASK]``, padding, length cap); with a
    tokenizer or :class:`~textdiff.support.TokenSupport`, its continuation pieces glue multi-piece keywords."""
    config = model.config
    continuation = None if support is None else TokenSupport.of(support, config.vocab_size).continuation_ids
    return DeletionProcess(config.mask_token_id, config.pad_token_id, config.max_seq_length, schedule, corrector,
                           continuation)


def predictor_for(model, support, fill_mode: str = "iterative", tokens_per_step: int = 1,
                  max_tries: int = 64) -> ModelInsertionPredictor:
    """The :class:`ModelInsertionPredictor` of an insertion model with the support rules of its tokenizer (or a
    :class:`~textdiff.support.TokenSupport`): excluded tokens are never inserted, continuation pieces never open a
    sentence or follow a keyword."""
    support = TokenSupport.of(support, model.config.vocab_size)
    return ModelInsertionPredictor(model, fill_mode, tokens_per_step, max_tries,
                                   continuation_ids=support.continuation_ids, forbidden_ids=support.excluded_ids)
