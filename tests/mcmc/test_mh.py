"""Exact Metropolis-Hastings (docs/mcmc.md#mh-tests): kernels built by the production ``mh.transitions``, chains run
by ``MetropolisHastings.run``, Su's simplified ratios as the negative control."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from textdiff.mcmc.mh import (MetropolisHastings, Move, MoveProbs, State, apply_move, log_acceptance,
                              log_proposal_pair, temperature_schedule)
from textdiff.mcmc.targets import KeywordMeasure, keyword_placements, keywords_whole

from .toy import ToyProposal, ToyTarget, exact_kernel

CASES = {  # keyword spans, max length
    "one keyword": ([(0,)], 4),
    "two-token keyword": ([(0, 1)], 4),
    "two keywords": ([(0,), (1,)], 4),
}


def stationary_and_kernel(spans, max_length, top_k=None, faithful=None, measure=True, probs=MoveProbs()):
    proposal, target = ToyProposal(top_k=top_k), ToyTarget(max_length=max_length)
    target = KeywordMeasure(target) if measure else target
    states, kernel = exact_kernel(State.from_keywords(spans), proposal, target, probs, max_length,
                                  faithful=faithful)
    return states, kernel, torch.softmax(target.log_prob(states), 0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("top_k", [None, 2])
def test_exact_kernel_detailed_balance_and_stationarity(case, top_k):
    states, kernel, pi = stationary_and_kernel(*CASES[case], top_k=top_k)
    assert torch.allclose(kernel.sum(1), torch.ones(len(states), dtype=torch.float64), atol=1e-14)
    flow = pi[:, None] * kernel
    assert (flow - flow.T).abs().max() <= 1e-15
    assert (pi @ kernel - pi).abs().max() <= 1e-14
    assert len(states) > 20  # the enumeration really covers many (sequence, mask) pairs


def test_unequal_move_probabilities_stay_exact():
    states, kernel, pi = stationary_and_kernel([(0,)], 3, probs=MoveProbs(0.5, 0.3, 0.2))
    flow = pi[:, None] * kernel
    assert (flow - flow.T).abs().max() <= 1e-15


@pytest.mark.parametrize("case", CASES)
def test_su_ratios_fail_detailed_balance(case):
    states, kernel, pi = stationary_and_kernel(*CASES[case], faithful="su")
    flow = pi[:, None] * kernel
    assert (flow - flow.T).abs().max() > 1e-4
    assert (pi @ kernel - pi).abs().max() > 1e-4


def sequence_marginal(states, pi):
    out = Counter()
    for s, p in zip(states, pi.tolist()):
        out[s.tokens] += p
    return out


@pytest.mark.parametrize("measure", [True, False])
def test_sequence_marginal_with_and_without_keyword_measure(measure):
    """Pairs target: sequence law ∝ π(x) N_K(x); with ``KeywordMeasure``: ∝ π(x)
    (docs/mcmc.md#exact-acceptance-ratios)."""
    spans, max_length = [(0,)], 3
    states, kernel, pi_pairs = stationary_and_kernel(spans, max_length, measure=measure)
    evals, evecs = torch.linalg.eig(kernel.T)
    stationary = evecs[:, torch.argmin((evals - 1).abs())].real
    marginal = sequence_marginal(states, stationary / stationary.sum())
    base = ToyTarget(max_length=max_length).table
    weights = {seq: math.exp(base[seq]) * (1 if measure else keyword_placements(seq, spans)) for seq in marginal}
    z = sum(weights.values())
    assert any(keyword_placements(seq, spans) > 1 for seq in marginal)
    for seq, p in marginal.items():
        assert abs(p - weights[seq] / z) < 1e-10


def test_multiplicity_of_runs():
    """Deleting any token of a run of equal free tokens gives the same state: multiplicity 3 in q_del."""
    x = State((2, 2, 2, 0), (-1, -1, -1, 0))
    proposal = ToyProposal()
    table = lambda ctx: proposal.log_probs([ctx])[0]  # noqa: E731
    fwd, bwd = log_proposal_pair(x, Move("delete", 1), table, MoveProbs(), proposal.placeholder)
    assert fwd == pytest.approx(math.log(1 / 3) - math.log(3) + math.log(3))
    y = apply_move(x, Move("delete", 1))
    ins = [math.exp(float(table(((2, 2, 2, 0)[:k] + (3,) + (2, 2, 2, 0)[k + 1:], k))[2])) for k in range(3)]
    assert bwd == pytest.approx(math.log(1 / 3) - math.log(len(y.insertion_slots())) + math.log(sum(ins)))


def test_long_chains_keep_pi_and_su_drifts():
    """Chains started from exact draws of π stay π-distributed (chi-square); Su's chains drift away."""
    spans, max_length = [(0, 1)], 4
    states, _, pi = stationary_and_kernel(spans, max_length)
    gen = torch.Generator().manual_seed(0)
    start = [states[i] for i in torch.multinomial(pi, 2000, replacement=True, generator=gen)]
    p_values = {}
    for faithful in (None, "su"):
        sampler = MetropolisHastings(ToyProposal(), KeywordMeasure(ToyTarget(max_length=max_length)),
                                     max_length=max_length, faithful=faithful)
        final = Counter(sampler.run(start, 25, seed=1).final)
        p_values[faithful] = chisquare([final[s] for s in states], (2000 * pi).tolist()).pvalue
    assert p_values[None] > 1e-3
    assert p_values["su"] < 1e-6


def test_keyword_blocks_intact_in_every_visited_state():
    spans = [(0, 1), (2,), (1, 1)]
    sampler = MetropolisHastings(ToyProposal(vocab_size=3), KeywordMeasure(ToyTarget(max_length=8)), max_length=8)
    starts = [State.from_keywords(spans), State.from_keywords(spans[::-1])]

    def check(step, states):
        for chain, x in enumerate(states):
            order = spans if chain % 2 == 0 else spans[::-1]
            blocks = [b for b in x.blocks if b >= 0]
            assert blocks == sorted(blocks) and len(blocks) == sum(map(len, spans))
            for k, span in enumerate(order):
                where = [i for i, b in enumerate(x.blocks) if b == k]
                assert where == list(range(where[0], where[0] + len(span)))
                assert tuple(x.tokens[i] for i in where) == span

    result = sampler.run(starts * 20, 60, seed=2, callback=check)
    assert sum(result.accepted) > 100


def test_annealing_at_zero_temperature_never_accepts_a_decrease():
    """Replace-only moves with a uniform proposal are symmetric: as τ -> 0 MH is hill climbing
    (docs/mcmc.md#simulated-annealing)."""
    uniform = ToyProposal()
    uniform.table.zero_()
    target = ToyTarget(max_length=6, scale=3.0)
    sampler = MetropolisHastings(uniform, target, move_probs=(1.0, 0.0, 0.0), max_length=6)
    start = [State((1, 2, 0, 1, 2, 1), (-1, -1, 0, -1, -1, -1))] * 30
    result = sampler.run(start, 40, temperatures=[1e-12] * 40, seed=3, trace=True)
    trace = torch.tensor(result.trace)
    assert (trace[1:] >= trace[:-1]).all()
    assert (trace[-1] > trace[0]).any()


def test_log_space_ratios_of_long_sentences_are_finite():
    """200-token states with log π ≈ -2000: every log-ratio term stays finite (no underflow)."""
    proposal = ToyProposal()
    gen = torch.Generator().manual_seed(4)
    tokens = tuple(torch.randint(0, 3, (200,), generator=gen).tolist())
    x = State(tokens, (0,) + (-1,) * 199)
    log_pi = lambda s: -10.0 * len(s.tokens) + 0.1 * sum(s.tokens)  # noqa: E731
    table = lambda ctx: proposal.log_probs([ctx])[0]  # noqa: E731
    for move in (Move("replace", 50, 1), Move("insert", 120, 2), Move("delete", 7)):
        y = apply_move(x, move)
        fwd, bwd = log_proposal_pair(x, move, table, MoveProbs(), proposal.placeholder)
        assert math.isfinite(fwd) and math.isfinite(bwd)
        acc = log_acceptance(log_pi(x), log_pi(y), fwd, bwd)
        assert math.isfinite(acc) and acc <= 0
        assert math.exp(log_pi(x)) == 0.0  # the probabilities themselves underflow


def test_schedules():
    geo = temperature_schedule(100, "geometric", 1.0, 0.05, 0.8)
    assert geo[0] == 1.0 and geo[80] == pytest.approx(0.05) and min(geo) == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(geo, geo[1:]))
    lin = temperature_schedule(10, "linear", 1.0, 0.5, 1.0)
    assert lin[0] == 1.0 and lin[5] == pytest.approx(0.75)
    assert temperature_schedule(3, "constant", 0.7) == [0.7] * 3
    with pytest.raises(ValueError, match="schedule"):
        temperature_schedule(3, "cosine")
    with pytest.raises(ValueError, match="tau"):
        temperature_schedule(3, "constant", 0.0)


def test_same_seed_same_chains_and_bad_input():
    sampler = MetropolisHastings(ToyProposal(), ToyTarget(max_length=5), max_length=5)
    start = [State.from_keywords([(0,)])] * 4
    assert sampler.run(start, 30, seed=7).final == sampler.run(start, 30, seed=7).final
    with pytest.raises(ValueError, match="steps"):
        sampler.run(start, 0)
    with pytest.raises(ValueError, match="faithful"):
        MetropolisHastings(ToyProposal(), ToyTarget(), faithful="cgmh-ish")
    with pytest.raises(ValueError, match="move_probs"):
        MetropolisHastings(ToyProposal(), ToyTarget(), move_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="temperatures"):
        sampler.run(start, 2, temperatures=[1.0, 0.0])


def test_whole_word_keywords_keep_the_restricted_marginal():
    """Token 2 continues a word (a ``##`` piece): with ``continuation=[2]`` no visited state glues it onto the keyword,
    the kernel stays reversible, and the sequence law is π restricted to sequences holding the keyword whole. The
    plain measure puts mass on glued states, and dropping the whole-placement count from N_K biases the marginal."""
    spans, max_length, glue = [(0,)], 3, 2
    proposal, base = ToyProposal(), ToyTarget(max_length=max_length)

    def marginal_of(target):
        states, kernel = exact_kernel(State.from_keywords(spans), proposal, target, MoveProbs(), max_length)
        pi = torch.softmax(target.log_prob(states), 0)
        flow = pi[:, None] * kernel
        assert (flow - flow.T).abs().max() <= 1e-15
        evals, evecs = torch.linalg.eig(kernel.T)
        stationary = evecs[:, torch.argmin((evals - 1).abs())].real
        return states, sequence_marginal(states, stationary / stationary.sum())

    def whole(seq):
        return keyword_placements(seq, spans, frozenset({glue})) > 0

    states, marginal = marginal_of(KeywordMeasure(base, continuation=[glue]))
    assert all(keywords_whole(s, frozenset({glue})) for s in states)
    weights = {seq: math.exp(base.table[seq]) for seq in marginal if whole(seq)}
    z = sum(weights.values())
    for seq, p in marginal.items():
        assert abs(p - weights.get(seq, 0.0) / z) < 1e-10
    _, plain = marginal_of(KeywordMeasure(base))
    assert sum(p for seq, p in plain.items() if not whole(seq)) > 0.05

    class WholeButUncounted(KeywordMeasure):  # forbids glued pairs but divides by the plain N_K
        def log_prob(self, states):
            out = KeywordMeasure(self.target).log_prob(states)
            out[[not keywords_whole(s, self.continuation) for s in states]] = -math.inf
            return out

    _, biased = marginal_of(WholeButUncounted(base, continuation=[glue]))
    assert max(abs(biased[seq] - weights.get(seq, 0.0) / z) for seq in biased) > 1e-3
