"""Oracle predictor, exact posterior ⇒ exact sampler, one-token steps need only marginals (the exactness properties,
docs/udm.md#exactness-properties-and-tests): with the exact posterior marginals plugged in through the predictor
interface, the generic reverse loop with one-token steps samples p_data exactly (chi-square, 1e5 chains); known-biased
variants fail the same test."""

from __future__ import annotations

import pytest
import torch
from udm_toys import ExactPosterior, PositionalPosterior, all_sequences, chi_square_pvalue, index_of, random_pdata

from textdiff.udm import Batch, MaskingProcess, make_template, reverse_sample
from textdiff.udm.replacement import ReplaceAnyProcess, ReplaceDiffProcess

V, L, MASK, N = 3, 3, 3, 100_000
XS = all_sequences(V, L)
P = random_pdata(len(XS), seed=11)


def exact_forward_state(process, t: float, g: torch.Generator) -> Batch:
    """x_t drawn from the exact forward marginal p_t (docs/numerics.md#d3: the exact prior, for the replacement
    processes)."""
    x0 = Batch(XS[torch.multinomial(P, N, replacement=True, generator=g)])
    return process.corrupt(x0, torch.full((N,), t, dtype=torch.float64), process.sample_noise(x0, g))


def output_pvalue(process, seed: int, exact_prior: bool = True, steps: int = L) -> float:
    g = torch.Generator().manual_seed(seed)
    x_init = exact_forward_state(process, 1.0, g) if exact_prior and not isinstance(process, MaskingProcess) else None
    oracle = ExactPosterior(process, XS, P, out_vocab=MASK + 1 if isinstance(process, MaskingProcess) else V)
    out = reverse_sample(process, oracle, make_template(N, L), steps, generator=g, x_init=x_init)
    return chi_square_pvalue(index_of(out.ids, V), P)


def test_masking_one_token_steps_are_exact():
    """Count form, one token per step (exact posterior marginals suffice,
    docs/udm.md#p4-one-token-steps-need-only-marginals)."""
    assert output_pvalue(MaskingProcess(MASK, "count"), seed=1) > 1e-4


def test_replace_diff_one_token_kernel_is_exact():
    assert output_pvalue(ReplaceDiffProcess(V, "count"), seed=3) > 1e-4


def test_replace_any_posterior_kernel_is_exact():
    assert output_pvalue(ReplaceAnyProcess(V, "count", corrector="posterior"), seed=4) > 1e-4


@pytest.mark.parametrize("variant", ["mask_baseline", "mask_confidence", "mask_multi_token", "replace_diff_baseline"])
def test_known_biased_variants_fail(variant):
    """Baseline re-corruption with factorised marginals (mask, replace_diff), confidence-ordered reveal and several
    tokens per step with a factorised predictor are all biased."""
    process, exact_prior, steps = {
        "mask_baseline": (MaskingProcess(MASK, "count", corrector="baseline"), True, L),
        "mask_confidence": (MaskingProcess(MASK, "count", reveal="confidence"), True, L),
        "mask_multi_token": (MaskingProcess(MASK, "count"), True, 1),
        "replace_diff_baseline": (ReplaceDiffProcess(V, "count", corrector="baseline"), True, L),
    }[variant]
    assert output_pvalue(process, seed=5, exact_prior=exact_prior, steps=steps) < 1e-6


@pytest.mark.parametrize("process", [MaskingProcess(MASK, "count"), MaskingProcess(MASK, "cosine"),
                                     MaskingProcess(MASK, "linear", corrector="baseline"),
                                     ReplaceDiffProcess(V, "count"), ReplaceDiffProcess(V, "linear"),
                                     ReplaceAnyProcess(V, "count"), ReplaceAnyProcess(V, "linear", "posterior")],
                         ids=repr)
def test_oracle_predictor_returns_target(process):
    """Oracle predictor (docs/udm.md#p2-oracle-predictor): with q(x0 | x_t) = δ(x0*) every variant returns x0*, for any
    grid."""
    target = torch.tensor([2, 0, 1])

    def delta(x, t):
        logits = torch.full((*x.ids.shape, MASK + 1), -torch.inf)
        logits[..., :][torch.arange(x.ids.shape[0])[:, None], torch.arange(L)[None], target[None]] = 0.0
        return logits[..., : (MASK + 1 if isinstance(process, MaskingProcess) else V)]

    for steps in (1, 2, 3):
        out = reverse_sample(process, delta, make_template(64, L), steps, seed=steps)
        assert (out.ids == target).all()


@pytest.mark.parametrize("process", [MaskingProcess(MASK, "count"), MaskingProcess(MASK, "linear"),
                                     MaskingProcess(MASK, "count", corrector="baseline"),
                                     MaskingProcess(MASK, "count", reveal="confidence")], ids=repr)
def test_logits_only_where_drawn_changes_no_draw(process):
    """With ``logits_at`` the masking loop asks for logits at the drawn positions only, and every seeded sample is
    the one the dense ``[B, L, V]`` path draws (the exact one-token steps and the biased variants alike). The exact
    steps ask for each position once, when it is revealed; the others at every masked position of every step."""
    template = make_template(2_000, L)
    dense = reverse_sample(process, ExactPosterior(process, XS, P, MASK + 1), template, L, seed=3)
    positional = PositionalPosterior(process, XS, P, MASK + 1)
    sparse = reverse_sample(process, positional, template, L, seed=3)
    assert torch.equal(dense.ids, sparse.ids)
    exact_steps = process.corrector == "posterior" and process.reveal == "random"
    assert positional.positions == 2_000 * L if exact_steps else positional.positions > 2_000 * L
    assert sparse.stats.network_rows <= dense.stats.network_rows


def test_masking_is_exact_through_logits_at_and_biased_variants_still_fail():
    """The oracle test of the path the loop now takes with a ``logits_at`` predictor: one-token steps pass, the
    multi-token variant fails."""
    def pvalue(process, steps, seed):
        g = torch.Generator().manual_seed(seed)
        out = reverse_sample(process, PositionalPosterior(process, XS, P, MASK + 1), make_template(N, L), steps,
                             generator=g)
        return chi_square_pvalue(index_of(out.ids, V), P)

    assert pvalue(MaskingProcess(MASK, "count"), L, seed=1) > 1e-4
    assert pvalue(MaskingProcess(MASK, "count"), 1, seed=5) < 1e-6
