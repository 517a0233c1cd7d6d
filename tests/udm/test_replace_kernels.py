"""Kernel (b) — the conditional-Bernoulli reverse kernel of ``replace_diff``
(docs/udm.md#kernel-b-conditional-bernoulli, docs/udm.md#exactness-properties-and-tests).

* The Poisson-binomial DP: inclusion probabilities equal subset enumeration (1e-12); sampled sets have exactly ``k``
  elements and the enumerated law (chi-square).
* What the kernel samples: ``x̂0 ~ Π_i P_i`` conditioned on Hamming distance ``k`` from ``x_k``. It is exact for every
  grid (one or several tokens per step) when that IS the posterior: product ``p_data`` (posterior
  ``Π_i p_i(x0_i) · 1[H = k]``) with the predictor outputting the factors ``p_i``. The top-k heuristic (c) and
  kernel (a) fail there.
* With the exact posterior *marginals* (what cross-entropy training targets) of a correlated ``p_data`` it is not
  exact, not even with one token per step (kernel (a) is: one-token steps need only marginals,
  docs/udm.md#p4-one-token-steps-need-only-marginals, test_exact_sampler); the unconditioned draw and top-k
  fail as well.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from udm_toys import (ExactPosterior, all_sequences, chi_square_pvalue, forward_state, index_of, product_pdata,
                      random_pdata)

from textdiff.rng import uniform
from textdiff.udm import Batch, make_process, make_template, reverse_sample
from textdiff.udm.replacement import (ReplaceDiffProcess, conditional_bernoulli_inclusion,
                                      conditional_bernoulli_sample)

V, N, N_BIASED = 3, 100_000, 30_000  # chains for exactness tests / for known-biased variants


def log_odds(d: torch.Tensor) -> torch.Tensor:
    return torch.log(d) - torch.log1p(-d)


def enumerated_law(d: torch.Tensor, k: int) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every ``k``-subset and its probability under independent Bernoulli(d) conditioned on the sum being ``k``."""
    subsets = list(itertools.combinations(range(len(d)), k))
    w = torch.tensor([math.prod(float(d[i]) if i in s else 1 - float(d[i]) for i in range(len(d))) for s in subsets],
                     dtype=torch.float64)
    return subsets, w / w.sum()


def test_inclusion_probabilities_match_enumeration():
    """κ_i = d_i P(Σ_{j≠i} = k−1) / P(Σ = k) from the DP equals brute force over all subsets, for every feasible k,
    including sure (d = 1) and impossible (d = 0) positions."""
    g = torch.Generator().manual_seed(0)
    for length in range(1, 8):
        d = torch.rand(4, length, generator=g, dtype=torch.float64)
        d[1, 0], d[2, -1] = 0.0, 1.0
        for k in range(length + 1):
            rows = [b for b in range(4) if int((d[b] == 1).sum()) <= k <= int((d[b] > 0).sum())]
            kappa = conditional_bernoulli_inclusion(log_odds(d[rows]), torch.full((len(rows),), k))
            for row, b in enumerate(rows):
                subsets, law = enumerated_law(d[b], k)
                expected = torch.zeros(length, dtype=torch.float64)
                for s, w in zip(subsets, law):
                    expected[list(s)] += w
                torch.testing.assert_close(kappa[row], expected, rtol=0, atol=1e-12)


def test_sampled_set_has_k_elements_and_the_enumerated_law():
    g = torch.Generator().manual_seed(1)
    d = torch.tensor([0.9, 0.05, 0.5, 1.0, 0.3, 0.0, 0.7], dtype=torch.float64)
    k = torch.tensor([2, 4]).repeat_interleave(N // 2)
    chosen = conditional_bernoulli_sample(log_odds(d).expand(N, -1).contiguous(), k, g)
    assert torch.equal(chosen.sum(-1), k)
    bits = (chosen.long() << torch.arange(len(d))).sum(-1)  # subset as a bit mask
    for size in (2, 4):
        subsets, law = enumerated_law(d, size)
        index = torch.full((2 ** len(d),), -1)
        index[[sum(1 << i for i in s) for s in subsets]] = torch.arange(len(subsets))
        assert chi_square_pvalue(index[bits[k == size]], law) > 1e-4


def test_infeasible_size_is_rejected():
    d = torch.tensor([[1.0, 1.0, 0.5, 0.0]], dtype=torch.float64)
    for k in (1, 4):
        with pytest.raises(ValueError, match="k must lie in"):
            conditional_bernoulli_sample(log_odds(d), torch.tensor([k]), torch.Generator())


def test_kernel_argument_is_validated():
    with pytest.raises(ValueError, match=r"kernel must be one of \('one_token', 'conditional_bernoulli'\)"):
        ReplaceDiffProcess(V, "count", kernel="top_k")
    with pytest.raises(ValueError, match="needs schedule='count'"):
        ReplaceDiffProcess(V, "linear", kernel="conditional_bernoulli")
    with pytest.raises(ValueError, match="corrector='posterior'"):
        ReplaceDiffProcess(V, "count", corrector="baseline", kernel="conditional_bernoulli")
    assert make_process("replace_diff", vocab_size=V, schedule="count", kernel="conditional_bernoulli").kernel == \
        "conditional_bernoulli"


class TopK(ReplaceDiffProcess):
    """Known-biased (c): D̂ = the k positions with the largest d_i."""

    def edited_set(self, log_odds, k, generator):
        return log_odds.argsort(dim=-1, descending=True, stable=True).argsort(-1) < k[:, None]


class Unconditioned(ReplaceDiffProcess):
    """Known-biased: D̂ drawn from the factorised predictor without the Hamming constraint (|D̂| ≠ k in general)."""

    def edited_set(self, log_odds, k, generator):
        return uniform(log_odds.shape, generator) < torch.sigmoid(log_odds)


def kernel(name: str) -> ReplaceDiffProcess:
    if name in ("one_token", "conditional_bernoulli"):
        return ReplaceDiffProcess(V, "count", kernel=name)
    return {"top_k": TopK, "unconditioned": Unconditioned}[name](V, "count", kernel="conditional_bernoulli")


def output_pvalue(process, predictor, xs: torch.Tensor, p: torch.Tensor, steps: int, seed: int, n: int = N) -> float:
    """Reverse chain from the exact prior (docs/numerics.md#d3) with ``n`` chains; chi-square of the output against
    ``p``."""
    g = torch.Generator().manual_seed(seed)
    x_init = forward_state(process, xs, p, n, 1.0, g)
    out = reverse_sample(process, predictor, make_template(n, xs.shape[1]), steps, generator=g, x_init=x_init)
    return chi_square_pvalue(index_of(out.ids, V), p)


L_PRODUCT = 4
FACTORS, P_PRODUCT = product_pdata(V, L_PRODUCT, seed=7)
XS_PRODUCT = all_sequences(V, L_PRODUCT)


def factor_predictor(x: Batch, t: torch.Tensor) -> torch.Tensor:
    """The factors of the product p_data (not the posterior marginals): Π_i P_i conditioned on H = k is the exact
    posterior p(x0 | x_k) ∝ Π_i p_i(x0_i) 1[H(x0, x_k) = k]."""
    return FACTORS.log().expand(x.ids.shape[0], -1, -1)


@pytest.mark.parametrize("steps", [4, 3, 2, 1])
def test_conditional_bernoulli_is_exact_when_the_posterior_is_a_conditioned_product(steps):
    """One token per step (steps = 4) and several (3: 1+2+1 tokens; 2: 2+2; 1: all at once)."""
    assert output_pvalue(kernel("conditional_bernoulli"), factor_predictor, XS_PRODUCT, P_PRODUCT, steps,
                         seed=steps) > 1e-4


@pytest.mark.parametrize("name,steps", [("top_k", 4), ("top_k", 2), ("one_token", 4)])
def test_biased_kernels_fail_when_the_posterior_is_a_conditioned_product(name, steps):
    """The top-k heuristic (c) is biased; kernel (a) needs the posterior marginals, not the factors."""
    pvalue = output_pvalue(kernel(name), factor_predictor, XS_PRODUCT, P_PRODUCT, steps, seed=10 + steps, n=N_BIASED)
    assert pvalue < 1e-6


L_CORR = 3
XS_CORR = all_sequences(V, L_CORR)
P_CORR = random_pdata(len(XS_CORR), seed=11)


@pytest.mark.parametrize("name,steps", [("conditional_bernoulli", 3), ("conditional_bernoulli", 2),
                                        ("unconditioned", 2), ("top_k", 2)])
def test_posterior_marginals_of_a_correlated_pdata_are_not_enough(name, steps):
    """Exact posterior marginals P_i(w) = p(x0_i = w | x_k) (from the enumerated joint posterior; the toy of
    test_exact_sampler, where kernel (a) with one token per step passes: one-token steps need only marginals,
    docs/udm.md#p4-one-token-steps-need-only-marginals): kernel (b) is biased, even with one token per step — at k = 1
    it picks position i with probability ∝ d_i / (1 − d_i) instead of d_i (exact propagation on this toy: total
    variation 0.030 for steps = 3, 0.13 for steps = 2); the unconditioned draw and top-k are biased too."""
    process = kernel(name)
    oracle = ExactPosterior(process, XS_CORR, P_CORR, out_vocab=V)
    assert output_pvalue(process, oracle, XS_CORR, P_CORR, steps, seed=20 + steps, n=N_BIASED) < 1e-6


def test_oracle_predictor_returns_target():
    """Oracle predictor (docs/udm.md#p2-oracle-predictor) with the degenerate-row rule: a point-mass predictor makes
    |D̂| = k infeasible whenever the uniform prior agrees with the target somewhere; the kernel conditions on the
    feasible Hamming distance and still returns x0*."""
    target = torch.tensor([2, 0, 1, 1])

    def delta(x, t):
        logits = torch.full((*x.ids.shape, V), -torch.inf, dtype=torch.float64)
        logits[:, torch.arange(len(target)), target] = 0.0
        return logits

    for steps in (1, 2, 3, 4):
        out = reverse_sample(kernel("conditional_bernoulli"), delta, make_template(256, len(target)), steps, seed=steps)
        assert (out.ids == target).all()
