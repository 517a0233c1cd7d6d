"""The deletion forward process, its corrector and its training targets (docs/deletion.md#forward-process)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from textdiff import checks
from textdiff.rng import uniform
from textdiff.udm.deletion.alignment import count_embeddings, sample_embedding
from textdiff.udm.deletion.ragged import compact, expand, slot_counts
from textdiff.udm.process import Batch, ForwardProcess, Noise, StepPlan, X0Draw, as_time
from textdiff.udm.registry import register_process

if TYPE_CHECKING:
    from textdiff.udm.deletion.insertion import InsertionOutput


def _match_keys(x: Batch) -> Tensor:
    """Token ids with the protected flag folded in, so protected tokens only align with protected tokens."""
    return x.ids * 2 + x.protected.long()


@register_process("delete")
class DeletionProcess(ForwardProcess):
    """``delete``: each corruptible token is deleted independently w.p. ``1 − α(t)``; ``x_1 = []``.

    ``placeholder_id`` is the ``[MASK]`` id EXPAND writes; ``max_length`` caps every state. ``continuation_ids`` (e.g.
    WordPiece ``##`` pieces): a protected continuation piece right after a protected token closes the slot between them,
    so multi-piece keywords stay contiguous (docs/deletion.md#conditioning-on-keywords). Continuous time only. States
    grow from ``x_1 = []`` (``variable_length``), so the reverse loop accepts a template of width 0.
    """

    time_agnostic_posterior = False
    variable_length = True
    default_schedule = "linear"

    @classmethod
    def for_vocabulary(cls, *, mask_id=None, vocab_size=None, **options) -> DeletionProcess:
        return cls(cls._required("mask_id (the placeholder id EXPAND writes)", mask_id, "delete"), **options)

    def __init__(self, placeholder_id: int, pad_id: int = 0, max_length: int = 64, schedule="linear",
                 corrector: str = "posterior", continuation_ids: Sequence[int] | Tensor | None = None):
        super().__init__(schedule, corrector)
        if self.schedule.is_count:
            raise ValueError("the deletion process is continuous-time only; use the linear, cosine or loglinear "
                             "schedule")
        checks.positive_int("placeholder_id", placeholder_id, minimum=0)
        checks.positive_int("pad_id", pad_id, minimum=0)
        checks.positive_int("max_length", max_length)
        self.placeholder_id, self.pad_id, self.max_length = placeholder_id, pad_id, max_length
        self.continuation_ids = torch.as_tensor([] if continuation_ids is None else continuation_ids, dtype=torch.long)

    # -- forward and inverse ------------------------------------------------------------------------------------
    def keep_tokens(self, x: Batch, keep: Tensor) -> Batch:
        """Compaction of a batch (ids and protected flags) to the positions in ``keep``."""
        ids, mask, reindex = compact(x.ids, x.attention_mask, keep, self.pad_id)
        return Batch(ids, mask, reindex.apply(x.protected, False))

    def corrupt(self, x0: Batch, t, noise: Noise) -> Batch:
        """``x_t = x0[K_t]``: the survivors of ``x0``, in order."""
        return self.keep_tokens(x0, x0.attention_mask & ~self.corrupted_set(x0, t, noise))

    def posterior_corrupted(self, x0: Batch, x_t: Batch, t, generator: torch.Generator) -> Tensor:
        """Deleted set of a uniformly random embedding of ``x_t`` in ``x0`` (docs/deletion.md#alignment-ambiguity)."""
        survive = sample_embedding(_match_keys(x0), x0.attention_mask, _match_keys(x_t), x_t.attention_mask, generator)
        return x0.corruptible & ~survive

    def log_prob(self, x0: Batch, x_t: Batch, t) -> Tensor:
        """``log p(x_t | x0) = log N(x0, x_t) + m log α + (l − m) log(1 − α)`` over corruptible tokens."""
        alpha = self.schedule.alpha(as_time(t, x0.ids.shape[0], x0.device))
        embeddings = count_embeddings(_match_keys(x0), x0.attention_mask, _match_keys(x_t), x_t.attention_mask)
        n0, m = x0.corruptible.sum(1).double(), x_t.corruptible.sum(1).double()
        return torch.log(embeddings) + torch.xlogy(m, alpha) + torch.xlogy(n0 - m, 1 - alpha)

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
        """Corrector (docs/deletion.md#corrector): keep every survivor, keep each inserted token w.p. ``β(s, t)``."""
        batch = is_new.shape[0]
        beta = self.schedule.beta(as_time(s, batch, is_new.device), as_time(t, batch, is_new.device))
        reinsert = uniform(is_new.shape, generator, is_new.device) < beta[:, None]
        return attention_mask & (~is_new | reinsert)

    def closed_slots(self, x: Batch) -> Tensor:
        """``[B, L+1]``: slot ``j`` is closed when token ``j`` is a protected continuation of protected token
        ``j−1``."""
        glued = x.protected & torch.isin(x.ids, self.continuation_ids.to(x.device))
        glued[:, :1] = False
        glued &= x.protected.roll(1, dims=1)
        return torch.cat([glued, glued.new_zeros(glued.shape[0], 1)], dim=1)

    # -- reverse step (docs/deletion.md#reverse-loop) -----------------------------------------------------------
    def plan(self, x_t: Batch, t: Tensor, s: Tensor, generator: torch.Generator) -> StepPlan:
        """Every row with ``s < t`` is active (even an empty ``x_t`` grows)."""
        return StepPlan(t, s, s < t)

    def apply(self, x_t: Batch, output: InsertionOutput, plan: StepPlan, draw: X0Draw,
              generator: torch.Generator) -> Batch:
        """Counts → EXPAND → thin → fill the kept placeholders → compact (docs/deletion.md#reverse-loop).

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
        """``x_1``: the empty sequence, or the template's protected tokens (never deleted,
        docs/deletion.md#conditioning-on-keywords)."""
        return self.keep_tokens(template, template.attention_mask & template.protected)


@dataclass(frozen=True)
class TrainingTargets:
    """One forward draw for training (docs/deletion.md#training): ``x_t``, its slot counts, the expanded sequence ``y``
    (deleted tokens replaced by ``[MASK]``) and the deleted positions (``fill``), with ``x0`` for the token targets."""

    x_t: Batch
    counts: Tensor
    expanded: Tensor
    fill: Tensor


def training_targets(process: DeletionProcess, x0: Batch, t, generator: torch.Generator) -> TrainingTargets:
    """Targets from the forward process itself (docs/deletion.md#training): the survivor alignment is known."""
    deleted = process.corrupted_set(x0, t, process.sample_noise(x0, generator))
    x_t = process.keep_tokens(x0, x0.attention_mask & ~deleted)
    counts = slot_counts(x0.attention_mask & ~deleted, x0.attention_mask)
    return TrainingTargets(x_t, counts, x0.ids.masked_fill(deleted, process.placeholder_id), deleted)
