"""Guided MCMC (docs/guidance.md#mcmc) on enumerable toys: MH with the target ``π(x) · p(y | x)^γ`` (a guidance
term of the production ``ConstrainedLMTarget``) has the tilted law as its exact stationary law and chains started
from it stay there (chi-square) for γ = 1 and 2; MH-corrected Gibbs with the tilted energy samples
``p(x) · p(y | x)^γ``. The unguided chains fail the same tests."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from textdiff.guidance import ClassifierScore, target_term, tilted_energy
from textdiff.mcmc.mh import MetropolisHastings, MoveProbs, State
from textdiff.mcmc.targets import ConstrainedLMTarget, KeywordMeasure, keyword_placements

from .test_gibbs import ExactConditionals, chi_square_p, run
from .toy import ToyProposal, ToyTarget, exact_kernel

MAX_LENGTH, SPANS = 4, [(0,)]


def text(tokens) -> str:
    return " ".join(f"t{token}" for token in tokens)


class TableScorer:
    """A causal-LM scorer stand-in: ``log p(ids)`` from a table (the interface ``ConstrainedLMTarget`` uses)."""

    def __init__(self, table: dict):
        self.table = table

    def log_prob_ids(self, seqs):
        return torch.tensor([self.table[tuple(s)] for s in seqs], dtype=torch.float64)


class TextClassifier:
    """``p(y | text)`` for labels (neg, pos): a fixed pseudo-random table over every toy sentence."""

    labels = ("neg", "pos")

    def __init__(self, seed: int = 3):
        gen = torch.Generator().manual_seed(seed)
        self.table = {text(seq): torch.log_softmax(2 * torch.randn(2, generator=gen, dtype=torch.float64), 0)
                      for n in range(MAX_LENGTH + 1) for seq in itertools.product(range(3), repeat=n)}

    def log_probs_texts(self, texts):
        return torch.stack([self.table[t] for t in texts])


def guided_target(gamma: float) -> KeywordMeasure:
    score = ClassifierScore(TextClassifier(), "pos")
    lm = ConstrainedLMTarget(TableScorer(ToyTarget(max_length=MAX_LENGTH).table), text, list, gamma=1.0,
                             soft=[target_term(score, gamma)] if gamma else [])
    return KeywordMeasure(lm)


def tilted_law(states, gamma: float) -> torch.Tensor:
    """``π(x) p(pos | x)^γ / N_K(x)`` normalised over the enumerated states, from the tables directly."""
    base, classifier = ToyTarget(max_length=MAX_LENGTH).table, TextClassifier().table
    log_pi = [base[s.tokens] + gamma * float(classifier[text(s.tokens)][1])
              - math.log(keyword_placements(s.tokens, SPANS)) for s in states]
    return torch.softmax(torch.tensor(log_pi, dtype=torch.float64), 0)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_guided_mh_kernel_leaves_the_tilted_law_invariant(gamma):
    states, kernel = exact_kernel(State.from_keywords(SPANS), ToyProposal(), guided_target(gamma), MoveProbs(),
                                  MAX_LENGTH)
    pi = tilted_law(states, gamma)
    assert (pi @ kernel - pi).abs().max() <= 1e-14
    flow = pi[:, None] * kernel
    assert (flow - flow.T).abs().max() <= 1e-15


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_guided_mh_chains_sample_the_tilted_law_and_unguided_ones_do_not(gamma):
    states, _ = exact_kernel(State.from_keywords(SPANS), ToyProposal(), guided_target(gamma), MoveProbs(),
                             MAX_LENGTH)
    pi = tilted_law(states, gamma)
    gen = torch.Generator().manual_seed(0)
    start = [states[i] for i in torch.multinomial(pi, 2000, replacement=True, generator=gen)]
    p_values = {}
    for name, g in (("guided", gamma), ("unguided", 0.0)):
        sampler = MetropolisHastings(ToyProposal(), guided_target(g), max_length=MAX_LENGTH)
        final = Counter(sampler.run(start, 60, seed=4).final)
        p_values[name] = chisquare([final[s] for s in states], (2000 * pi).tolist()).pvalue
    assert p_values["guided"] > 1e-3
    assert p_values["unguided"] < 1e-6


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_mh_corrected_gibbs_with_the_tilted_energy_samples_the_tilted_joint(gamma):
    oracle = ExactConditionals(seed=0)
    log_p_y = torch.log_softmax(torch.randn(27, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64),
                                -1)[:, 1]

    def body_index(ids: torch.Tensor) -> torch.Tensor:
        return (ids[:, 1:4] * torch.tensor([9, 3, 1])).sum(-1)

    def energy(ids, attention):
        return -oracle.log_joint.flatten()[body_index(ids)]

    score = ClassifierScore(lambda ids, attention: log_p_y[body_index(ids)])
    tilted = torch.log_softmax(oracle.log_joint.flatten() + gamma * log_p_y, 0).view_as(oracle.log_joint)
    guided = run(oracle, n_chains=2000, steps=40, seed=7, energy=tilted_energy(energy, score, gamma))
    plain = run(oracle, n_chains=2000, steps=40, seed=7, energy=energy)
    assert chi_square_p(guided, tilted) > 1e-3
    assert chi_square_p(plain, tilted) < 1e-6
