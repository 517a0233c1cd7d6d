"""Deletion process: ragged ops vs a Python reference, marginal identity of the corrector, inverse, bad input."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from textdiff.rng import make_generator
from textdiff.udm.deletion import insertion as deletion_insertion
from textdiff.udm.deletion import (
    DeletionProcess,
    ModelInsertionPredictor,
    ModelPrediction,
    compact,
    count_embeddings,
    expand,
    sample_delete,
    sample_embedding,
    sample_slot_counts,
    slot_counts,
)
from textdiff.udm.process import Batch, X0Draw
from textdiff.udm.sampler import Trajectory, reverse_sample

MASK, PAD = 99, 0


def padded(rows: list[list[int]], device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    width = max([len(r) for r in rows] + [0])
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long, device=device).reshape(len(rows), width)
    mask = torch.tensor([[i < len(r) for i in range(width)] for r in rows], dtype=torch.bool, device=device).reshape(len(rows), width)
    return ids, mask


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [r[: int(n)] for r, n in zip(ids.tolist(), mask.sum(1).tolist())]


# ---------------------------------------------------------------------------------------------------------------
# Ragged operations (docs/deletion.md#batched-ragged-operations) against a simple Python reference
# ---------------------------------------------------------------------------------------------------------------

rows_and_counts = st.lists(st.lists(st.integers(1, 50), max_size=7), min_size=1, max_size=6).flatmap(
    lambda rows: st.tuples(
        st.just(rows),
        st.tuples(*[st.lists(st.integers(0, 3), min_size=len(r) + 1, max_size=len(r) + 1) for r in rows]),
        st.tuples(*[st.lists(st.booleans(), min_size=len(r), max_size=len(r)) for r in rows]),
    )
)


def reference_expand(row: list[int], counts: list[int]) -> tuple[list[int], list[bool]]:
    out, new = [], []
    for j, n in enumerate(counts):
        out += [MASK] * n
        new += [True] * n
        if j < len(row):
            out.append(row[j])
            new.append(False)
    return out, new


@settings(max_examples=150, deadline=None)
@given(rows_and_counts)
def test_ragged_ops_match_reference_and_round_trip(data):
    rows, counts, keeps = data
    ids, mask = padded(rows)
    width = ids.shape[1]
    count_tensor = torch.tensor([list(c) + [0] * (width + 1 - len(c)) for c in counts])
    grown = expand(ids, mask, count_tensor, MASK, PAD)
    reference = [reference_expand(r, list(c)) for r, c in zip(rows, counts)]
    assert unpadded(grown.ids, grown.attention_mask) == [r for r, _ in reference]
    assert [n[: len(r)] for n, (r, _) in zip(grown.is_new.tolist(), reference)] == [n for _, n in reference]
    assert not bool((grown.is_new & ~grown.attention_mask).any())
    assert bool((grown.ids[~grown.attention_mask] == PAD).all())
    # round trip: dropping the placeholders gives x back, and the slot counts of the survivors give the counts back
    back, back_mask, _ = compact(grown.ids, grown.attention_mask, ~grown.is_new, PAD)
    assert unpadded(back, back_mask) == rows
    recovered = slot_counts(~grown.is_new, grown.attention_mask)
    assert [recovered[b, : len(r) + 1].tolist() for b, r in enumerate(rows)] == [list(c) for c in counts]
    # compaction with an arbitrary keep mask is a stable filter
    keep = torch.tensor([list(k) + [False] * (width - len(k)) for k in keeps], dtype=torch.bool).reshape(ids.shape)
    kept, kept_mask, reindex = compact(ids, mask, keep, PAD)
    assert unpadded(kept, kept_mask) == [[w for w, k in zip(r, ks) if k] for r, ks in zip(rows, keeps)]
    assert unpadded(reindex.apply(ids, PAD), kept_mask) == unpadded(kept, kept_mask)


def test_ragged_ops_on_device(device):
    ids, mask = padded([[5, 6, 7], [8]], device)
    grown = expand(ids, mask, torch.tensor([[1, 0, 2, 0], [0, 3, 0, 0]], device=device), MASK, PAD)
    assert unpadded(grown.ids, grown.attention_mask) == [[MASK, 5, 6, MASK, MASK, 7], [8, MASK, MASK, MASK]]
    back, back_mask, _ = compact(grown.ids, grown.attention_mask, ~grown.is_new, PAD)
    assert unpadded(back, back_mask) == [[5, 6, 7], [8]]


# ---------------------------------------------------------------------------------------------------------------
# Forward process, inverse and the marginal identity of the corrector (docs/udm.md#predict-then-correct-reverse-step,
# docs/udm.md#p1-marginal-identity, docs/deletion.md#corrector)
# ---------------------------------------------------------------------------------------------------------------

X0 = [1, 2, 1, 1, 2]  # repeated tokens: alignments are ambiguous
SUBSEQUENCES = sorted({tuple(X0[i] for i in K) for n in range(len(X0) + 1) for K in itertools.combinations(range(len(X0)), n)})


def exact_law(process: DeletionProcess, s: float) -> dict[tuple, float]:
    """``p(x_s | x0) = N(x0, x) α^m (1 − α)^{l − m}`` by brute-force enumeration of embeddings."""
    alpha = float(process.schedule.alpha(torch.tensor(s, dtype=torch.float64)))
    law = {}
    for x in SUBSEQUENCES:
        n = sum(tuple(X0[i] for i in K) == x for K in itertools.combinations(range(len(X0)), len(x)))
        law[x] = n * alpha ** len(x) * (1 - alpha) ** (len(X0) - len(x))
    return law


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_corrector_marginal_identity_exact(schedule):
    """Σ_{x_t, K} c(x_s | x_t, x0, K) p(x_t, K | x0) = p(x_s | x0), with β from the production schedule."""
    process = DeletionProcess(MASK, PAD, 8, schedule)
    for t, s in [(1.0, 0.6), (0.7, 0.3), (0.5, 0.0), (0.9, 0.85)]:
        a_t = float(process.schedule.alpha(torch.tensor(t, dtype=torch.float64)))
        beta = float(process.schedule.beta(torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)))
        law = Counter()
        for n in range(len(X0) + 1):
            for K in itertools.combinations(range(len(X0)), n):
                p_k = a_t**n * (1 - a_t) ** (len(X0) - n)
                deleted = [i for i in range(len(X0)) if i not in K]
                for r in range(len(deleted) + 1):
                    for R in itertools.combinations(deleted, r):
                        law[tuple(X0[i] for i in sorted(K + R))] += p_k * beta**r * (1 - beta) ** (len(deleted) - r)
        target = exact_law(process, s)
        assert max(abs(law[x] - target[x]) for x in SUBSEQUENCES) < 1e-12


def chi_square(samples: Batch, target: dict[tuple, float]) -> float:
    seen = Counter(tuple(r) for r in unpadded(samples.ids, samples.attention_mask))
    assert set(seen) <= set(target)
    keys = [x for x in target if target[x] > 0]
    n = samples.ids.shape[0]
    return float(stats.chisquare([seen[x] for x in keys], [target[x] * n for x in keys]).pvalue)


@pytest.mark.parametrize("corrector", ["aligned", "noise_posterior", "baseline"])
def test_corrector_marginal_identity_sampled(corrector):
    """x_t from the production forward process, x_s from the production corrector: law of x_s = p(x_s | x0)."""
    process = DeletionProcess(MASK, PAD, 8)
    gen = make_generator(3)
    ids, mask = padded([X0] * 40_000)
    x0 = Batch(ids, mask)
    t, s = 0.7, 0.3
    noise = process.sample_noise(x0, gen)
    x_t = process.corrupt(x0, t, noise)
    if corrector == "aligned":  # the alignment K known: keep survivors, re-insert deleted tokens w.p. β
        deleted = process.corrupted_set(x0, t, noise)
        x_s = process.keep_tokens(x0, process.thin(deleted, mask, t, s, gen))
    elif corrector == "noise_posterior":
        # alignment re-drawn uniformly from the embeddings (docs/deletion.md#alignment-ambiguity)
        x_s = process.correct(x_t, x0, t, s, gen)
    else:
        x_s = process.baseline_correct(x0, s, gen)
    assert chi_square(x_t, exact_law(process, t)) > 1e-3
    assert chi_square(x_s, exact_law(process, s)) > 1e-3


def test_invert_draws_a_uniform_embedding():
    process = DeletionProcess(MASK, PAD, 8)
    ids0, mask0 = padded([X0] * 30_000)
    ids, mask = padded([[1, 2]] * 30_000)
    survive = sample_embedding(ids0, mask0, ids, mask, make_generator(5))
    picks = Counter(tuple(torch.nonzero(r).flatten().tolist()) for r in survive)
    assert set(picks) == {(0, 1), (0, 4), (2, 4), (3, 4)}
    assert stats.chisquare(list(picks.values())).pvalue > 1e-3
    noise = process.invert(Batch(ids0, mask0), Batch(ids, mask), 0.4, make_generator(6))
    again = process.corrupt(Batch(ids0, mask0), 0.4, noise)
    assert torch.equal(again.ids, ids) and torch.equal(again.attention_mask, mask)
    assert count_embeddings(ids0[:1], mask0[:1], ids[:1], mask[:1]).item() == 4


def test_protected_tokens_are_never_deleted_and_align_only_with_protected():
    process = DeletionProcess(MASK, PAD, 8)
    ids, mask = padded([[1, 2, 1, 3]] * 5)
    protected = torch.zeros_like(mask)
    protected[:, 2] = True
    x0 = Batch(ids, mask, protected)
    x_1 = process.corrupt(x0, 1.0, process.sample_noise(x0, make_generator(0)))
    assert unpadded(x_1.ids, x_1.attention_mask) == [[1]] * 5 and bool(x_1.protected.all())
    deleted = process.posterior_corrupted(x0, x_1, 1.0, make_generator(1))
    assert not bool(deleted[:, 2].any()) and bool(deleted[:, [0, 1, 3]].all())


class DeltaPrediction:
    """``q(x0 | x_t) = δ(x0*)`` with the leftmost alignment (oracle predictor, docs/udm.md#p2-oracle-predictor)."""

    def __init__(self, target: list[int], x_t: Batch):
        self.target, self.x_t = target, x_t

    def sample_counts(self, closed, budget, generator):
        counts = torch.zeros(self.x_t.ids.shape[0], self.x_t.ids.shape[1] + 1, dtype=torch.long)
        for b, row in enumerate(unpadded(self.x_t.ids, self.x_t.attention_mask)):
            position = -1
            for j, w in enumerate(row):
                nxt = self.target.index(w, position + 1)
                counts[b, j], position = nxt - position - 1, nxt
            counts[b, len(row)] = len(self.target) - position - 1
        return counts

    def sample_fill(self, expanded, fill, draw, generator):
        full = torch.tensor(self.target).expand(expanded.ids.shape[0], -1)
        return expanded.with_ids(torch.where(fill, full[:, : expanded.ids.shape[1]], expanded.ids))


@pytest.mark.parametrize("corrector", ["posterior", "baseline"])
def test_delta_predictor_returns_its_target(corrector):
    target = [4, 5, 4, 6, 7]
    process = DeletionProcess(MASK, PAD, 8, corrector=corrector)
    out = sample_delete(lambda x, t: DeltaPrediction(target, x), process, 64, steps=5, seed=0)
    assert unpadded(out.ids, out.attention_mask) == [target] * 64


def test_reverse_loop_grows_from_a_width_zero_template():
    """The generic loop accepts an empty template for the deletion process: x_1 = [] needs no dummy column."""
    target = [4, 5, 4, 6, 7]
    process = DeletionProcess(MASK, PAD, 8)
    trajectory = Trajectory()
    out = reverse_sample(process, lambda x, t: DeltaPrediction(target, x), torch.zeros(16, 0, dtype=torch.long), 4,
                         seed=0, trajectory=trajectory)
    assert trajectory.states[0].ids.shape == (16, 0) and len(trajectory.states) == 5
    assert unpadded(out.ids, out.attention_mask) == [target] * 16
    with pytest.raises(ValueError, match="steps must be given"):
        reverse_sample(process, lambda x, t: DeltaPrediction(target, x), torch.zeros(16, 0, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------------
# Fill support restriction "first piece is not a continuation" (ModelInsertionPredictor): exact conditioning
# ---------------------------------------------------------------------------------------------------------------

T, CONTINUATION = 5, [3, 4]  # text tokens 0..4, of which 3 and 4 are continuation pieces; id 5 is [MASK]


class TableFill:
    """A token head with the exact conditionals of an explicit joint law ``p(y1, y2)`` of two placeholders."""

    def __init__(self, joint: torch.Tensor):
        self.config = SimpleNamespace(vocab_size=T + 1, mask_token_id=T)
        self.log_joint = joint.log()

    def token_logits(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = torch.full((ids.shape[0], 2, T + 1), -math.inf, dtype=torch.float64)
        known = ids != T
        logits[:, 0, :T] = torch.where(known[:, 1:], self.log_joint[:, ids[:, 1].clamp(max=T - 1)].T,
                                       self.log_joint.logsumexp(1))
        logits[:, 1, :T] = torch.where(known[:, :1], self.log_joint[ids[:, 0].clamp(max=T - 1)],
                                       self.log_joint.logsumexp(0))
        return logits


@pytest.mark.parametrize("fill_mode, order", [("iterative", "restricted_first"), ("oneshot", "restricted_first"),
                                              ("iterative", "random")])
def test_first_piece_restriction_is_exact_conditioning(fill_mode, order, monkeypatch):
    """Fill of ``[MASK] [MASK]`` (the first is the sentence's first piece): the law of the fill is the model's fill
    law conditioned on "first piece not a continuation" — the joint for ``iterative`` (restricted position revealed
    first), the product of the marginals for ``oneshot``. Control: revealing in random order is biased."""
    joint = torch.exp(1.5 * torch.randn(T, T, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    joint /= joint.sum()
    law = joint if fill_mode == "iterative" else joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    law = law.clone()
    law[CONTINUATION] = 0.0
    law /= law.sum()
    if order == "random":
        rank = deletion_insertion._fill_rank
        monkeypatch.setattr(deletion_insertion, "_fill_rank", lambda fill, first, g: rank(fill, torch.zeros_like(first), g))
    n = 60_000
    predictor = ModelInsertionPredictor(TableFill(joint), fill_mode, continuation_ids=CONTINUATION)
    expanded = Batch(torch.full((n, 2), T))
    out = ModelPrediction(predictor, Batch(torch.zeros(n, 0, dtype=torch.long)), torch.zeros(n, 1, 2)).sample_fill(
        expanded, torch.ones(n, 2, dtype=torch.bool), X0Draw(), make_generator(7))
    observed = torch.bincount(out.ids[:, 0] * T + out.ids[:, 1], minlength=T * T).double()
    expected = law.flatten() * n
    assert observed[expected == 0].sum() == 0
    p_value = stats.chisquare(observed[expected > 0].numpy(), expected[expected > 0].numpy()).pvalue
    assert (p_value > 1e-3) if order == "restricted_first" else (p_value < 1e-6), p_value
    assert predictor.usage.calls == (2 if fill_mode == "iterative" else 1)


# ---------------------------------------------------------------------------------------------------------------
# Count sampling (docs/numerics.md#d5) and bad input
# ---------------------------------------------------------------------------------------------------------------


def test_slot_counts_respect_budget_closed_slots_and_row_length():
    gen = make_generator(0)
    logits = torch.zeros(500, 4, 6)
    logits[..., 5] = 3.0  # the model wants 5 tokens everywhere
    lengths = torch.full((500,), 3)
    lengths[:250] = 1
    closed = torch.zeros(500, 4, dtype=torch.bool)
    closed[:, 1] = True
    budget = torch.full((500,), 6)
    counts = sample_slot_counts(logits, lengths, closed, budget, gen, max_tries=3)
    assert bool((counts.sum(1) <= budget).all()) and bool((counts >= 0).all())
    assert bool((counts[:, 1] == 0).all()) and bool((counts[:250, 2:] == 0).all())


def test_bad_input_gives_clear_errors():
    ids, mask = padded([[5, 6]])
    with pytest.raises(ValueError, match="counts must be >= 0"):
        expand(ids, mask, torch.tensor([[0, -1, 0]]), MASK)
    with pytest.raises(ValueError, match="beyond each row"):
        expand(*padded([[5], []]), torch.tensor([[0, 0], [0, 1]]), MASK)
    with pytest.raises(ValueError, match="max_length=3"):
        expand(ids, mask, torch.tensor([[1, 1, 0]]), MASK, max_length=3)
    with pytest.raises(TypeError, match="integer"):
        expand(ids, mask, torch.zeros(1, 3), MASK)
    with pytest.raises(ValueError, match="K >= 1"):
        sample_slot_counts(torch.zeros(1, 3, 1), torch.tensor([2]), torch.zeros(1, 3, dtype=torch.bool),
                           torch.tensor([4]), make_generator(0))
    with pytest.raises(ValueError, match="max_length"):
        DeletionProcess(MASK, PAD, 0)
    with pytest.raises(ValueError, match="continuous-time"):
        DeletionProcess(MASK, PAD, 8, schedule="count")
    with pytest.raises(ValueError, match="exactly one of n"):
        sample_delete(None, DeletionProcess(MASK, PAD, 8))
    with pytest.raises(ValueError, match="more than max_length"):
        sample_delete(None, DeletionProcess(MASK, PAD, 1), start=Batch(ids, mask))
