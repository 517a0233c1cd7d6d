"""Exact posterior ⇒ exact sampler for the deletion process (docs/deletion.md#exact-oracle-test), with both negative
controls.

V = {a, b}; all 15 sequences of length 0..3; random p_data; α(t) = 1 − t; grid {1, 0.75, 0.5, 0.25, 0}.
The oracle enumerates insertion patterns (x0, embedding K) with weight p_data(x0) α^m (1 − α)^{l − m}. Controls:
(i) ``leftmost``: correct posterior over x0 but always the leftmost embedding; (ii) ``spread``: one weight per x0
spread over its embeddings (multiplicity N(x0, x_t) ignored).
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
import torch
from scipy import stats

from textdiff.rng import sample_categorical
from textdiff.udm.deletion import DeletionProcess, count_embeddings, sample_delete
from textdiff.udm.process import Batch
from textdiff.udm.sampler import Trajectory

A, B_, MASK, PAD = 0, 1, 2, 3
MAX_LEN = 3
SEQS = [seq for n in range(MAX_LEN + 1) for seq in itertools.product((A, B_), repeat=n)]
GRID = [1.0, 0.75, 0.5, 0.25, 0.0]


def p_data() -> dict[tuple, float]:
    # log-normal weights; this seed gives control errors of 1e-2 (leftmost) and 2.5e-2 (spread), as in
    # docs/deletion.md#exact-oracle-test
    weights = torch.exp(1.5 * torch.randn(len(SEQS), generator=torch.Generator().manual_seed(10), dtype=torch.float64))
    weights = weights / weights.sum()
    return dict(zip(SEQS, weights.tolist()))


def embeddings(x0: tuple, x: tuple) -> list[tuple]:
    return [K for K in itertools.combinations(range(len(x0)), len(x)) if tuple(x0[i] for i in K) == x]


def pattern_counts(x0: tuple, K: tuple) -> tuple:
    """Slot counts of the pattern (x0, K): tokens of x0 between consecutive survivors."""
    bounds = (-1,) + K + (len(x0),)
    return tuple(bounds[j + 1] - bounds[j] - 1 for j in range(len(K) + 1))


def patterns(pdata, x: tuple, t: float, mode: str) -> list[tuple[tuple, tuple, float]]:
    """(x0, K, weight) for every pattern of x_t = x; unnormalised."""
    alpha = 1 - t
    out = []
    for x0, p in pdata.items():
        found = embeddings(x0, x)
        if not found:
            continue
        w = p * alpha ** len(x) * (1 - alpha) ** (len(x0) - len(x))
        if mode == "exact":
            out += [(x0, K, w) for K in found]
        elif mode == "leftmost":
            out.append((x0, found[0], w * len(found)))
        elif mode == "spread":
            out += [(x0, K, w / len(found)) for K in found]
        else:
            raise AssertionError(mode)
    return out


def forward_marginal(pdata, s: float) -> dict[tuple, float]:
    alpha = 1 - s
    law = defaultdict(float)
    for x0, p in pdata.items():
        for x in SEQS:
            n = len(embeddings(x0, x))
            if n:
                law[x] += p * n * alpha ** len(x) * (1 - alpha) ** (len(x0) - len(x))
    return law


def propagate(pdata, mode: str, process: DeletionProcess) -> list[dict]:
    """Exact law of the reverse chain after each step (β from the production schedule)."""
    law, laws = {(): 1.0}, []
    for t, s in zip(GRID[:-1], GRID[1:]):
        beta = float(process.schedule.beta(torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64)))
        new = defaultdict(float)
        for x, px in law.items():
            pats = patterns(pdata, x, t, mode)
            total = sum(w for *_, w in pats)
            for x0, K, w in pats:
                inserted = [i for i in range(len(x0)) if i not in K]
                for r in range(len(inserted) + 1):
                    for R in itertools.combinations(inserted, r):
                        keep = sorted(K + R)
                        q = beta**r * (1 - beta) ** (len(inserted) - r)
                        new[tuple(x0[i] for i in keep)] += px * w / total * q
        law = dict(new)
        laws.append(law)
    return laws


def max_error(law: dict, target: dict) -> float:
    return max(abs(law.get(x, 0.0) - target.get(x, 0.0)) for x in SEQS)


@pytest.fixture(scope="module")
def process():
    return DeletionProcess(MASK, PAD, MAX_LEN)


@pytest.mark.parametrize("mode", ["exact", "leftmost", "spread"])
def test_exact_propagation(mode, process):
    pdata = p_data()
    laws = propagate(pdata, mode, process)
    errors = [max_error(law, forward_marginal(pdata, s)) for law, s in zip(laws, GRID[1:])]
    assert errors[0] <= 1e-12  # the first step from [] is exact even for the controls (one embedding)
    if mode == "exact":
        assert max(errors) <= 1e-12
        assert max_error(laws[-1], pdata) <= 1e-12
    else:
        assert max(errors[1:]) > 1e-4, errors


def test_count_embeddings_matches_enumeration():
    rows = [(x0, x) for x0 in SEQS for x in SEQS if len(x) <= len(x0)]
    pad = lambda seqs: (torch.tensor([list(s) + [PAD] * (MAX_LEN - len(s)) for s in seqs]),
                        torch.tensor([[i < len(s) for i in range(MAX_LEN)] for s in seqs]))
    x0, m0 = pad([r[0] for r in rows])
    x, m = pad([r[1] for r in rows])
    assert count_embeddings(x0, m0, x, m).tolist() == [float(len(embeddings(a, b))) for a, b in rows]


# ---------------------------------------------------------------------------------------------------------------
# Sampling version: the oracle behind the production predictor interface, EXPAND, corrector and generic loop
# ---------------------------------------------------------------------------------------------------------------


def rows_as_tuples(ids: torch.Tensor, mask: torch.Tensor) -> list[tuple]:
    return [tuple(r[: int(n)]) for r, n in zip(ids.tolist(), mask.sum(1).tolist())]


def grouped(keys: list[tuple]) -> dict[tuple, torch.Tensor]:
    groups = defaultdict(list)
    for row, key in enumerate(keys):
        groups[key].append(row)
    return {key: torch.tensor(rows) for key, rows in groups.items()}


class OraclePrediction:
    """Exact (or control) pattern posterior as an ``InsertionOutput``; vectorised over rows sharing a state."""

    def __init__(self, pdata, mode, x_t: Batch, t: torch.Tensor):
        self.pdata, self.mode, self.x_t = pdata, mode, x_t
        self.t = float(t[0])

    def sample_counts(self, closed, budget, generator):
        counts = torch.zeros(self.x_t.ids.shape[0], self.x_t.ids.shape[1] + 1, dtype=torch.long)
        for x, rows in grouped(rows_as_tuples(self.x_t.ids, self.x_t.attention_mask)).items():
            law = defaultdict(float)
            for x0, K, w in patterns(self.pdata, x, self.t, self.mode):
                law[pattern_counts(x0, K)] += w
            options = list(law)
            logits = torch.log(torch.tensor([law[c] for c in options], dtype=torch.float64))
            picks = sample_categorical(logits.expand(len(rows), -1), generator)
            counts[rows[:, None], torch.arange(len(x) + 1)] = torch.tensor(options)[picks]
        assert bool((counts.sum(1) <= budget).all())
        return counts

    def sample_fill(self, expanded: Batch, fill, draw, generator):
        ids = expanded.ids.clone()
        for template, rows in grouped(rows_as_tuples(expanded.ids, expanded.attention_mask)).items():
            holes = [i for i, w in enumerate(template) if w == MASK]
            x = tuple(w for w in template if w != MASK)
            K = tuple(i for i, w in enumerate(template) if w != MASK)
            law = defaultdict(float)  # the pattern posterior restricted to this expansion (time cancels)
            for x0, K0, w in patterns(self.pdata, x, 0.5, self.mode):
                if len(x0) == len(template) and K0 == K:
                    law[x0] += w
            options = list(law)
            logits = torch.log(torch.tensor([law[c] for c in options], dtype=torch.float64))
            picks = torch.tensor(options, dtype=torch.long).reshape(len(options), -1)[sample_categorical(logits.expand(len(rows), -1), generator)]
            full = ids[rows, : len(template)].clone()
            full[:, holes] = picks[:, holes]
            ids[rows, : len(template)] = torch.where(fill[rows, : len(template)], full, ids[rows, : len(template)])
        return expanded.with_ids(ids)


class OraclePredictor:
    time_conditioned = True

    def __init__(self, pdata, mode):
        self.pdata, self.mode = pdata, mode

    def __call__(self, x_t: Batch, t):
        return OraclePrediction(self.pdata, self.mode, x_t, t)


N_CHAINS = 100_000


def chain_laws(mode, corrector="posterior", seed=0):
    process = DeletionProcess(MASK, PAD, MAX_LEN, corrector=corrector)
    trajectory = Trajectory()
    sample_delete(OraclePredictor(p_data(), mode), process, N_CHAINS, steps=len(GRID) - 1, seed=seed,
                  trajectory=trajectory)
    return [rows_as_tuples(x.ids, x.attention_mask) for x in trajectory.states[1:]]


def p_value(samples: list[tuple], target: dict) -> float:
    """Chi-square goodness of fit over the 15 sequences (cells with tiny expectation pooled)."""
    seen = defaultdict(int)
    for x in samples:
        seen[x] += 1
    assert set(seen) <= set(SEQS)
    observed = torch.tensor([seen[x] for x in SEQS], dtype=torch.float64)
    expected = torch.tensor([target.get(x, 0.0) for x in SEQS], dtype=torch.float64) * len(samples)
    keep = expected > 5
    assert observed[expected == 0].sum() == 0, "the chain produced a sequence of probability 0"
    if expected[~keep].sum() > 0:
        observed = torch.cat([observed[keep], observed[~keep].sum().reshape(1)])
        expected = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    else:
        observed, expected = observed[keep], expected[keep]
    return float(stats.chisquare(observed.numpy(), expected.numpy() * observed.sum().item() / expected.sum().item()).pvalue)


@pytest.mark.parametrize("corrector", ["posterior", "baseline"])
def test_sampler_with_exact_posterior_reproduces_p_data(corrector):
    pdata = p_data()
    laws = chain_laws("exact", corrector)
    p_values = [p_value(law, forward_marginal(pdata, s)) for law, s in zip(laws, GRID[1:])]
    assert min(p_values) > 1e-3, p_values
    lengths = torch.tensor([len(x) for x in laws[-1]])
    expected = [sum(p for x, p in pdata.items() if len(x) == n) * N_CHAINS for n in range(MAX_LEN + 1)]
    observed = torch.bincount(lengths, minlength=MAX_LEN + 1).tolist()
    assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize("mode", ["leftmost", "spread"])
def test_negative_controls_fail_the_sampling_test(mode):
    pdata = p_data()
    laws = chain_laws(mode)
    p_values = [p_value(law, forward_marginal(pdata, s)) for law, s in zip(laws, GRID[1:])]
    assert min(p_values[1:]) < 1e-6, p_values
