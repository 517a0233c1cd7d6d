"""Guidance on an enumerable joint p(x, y) (docs/guidance.md#exact-candidate-reweighting): one-token candidate
reweighting with the toy's exact noisy classifier p(y | x_t) and γ = 1 samples p(x0 | y) exactly (chi-square); the
multi-token variant and a clean-data classifier used on x_t fail the same test. Classifier-free mixing with w = 0 is
the conditional model."""

from __future__ import annotations

import pytest
import torch
from udm_toys import ExactPosterior, PositionalPosterior, all_sequences, chi_square_pvalue, index_of, random_pdata

from textdiff.guidance import CandidateReweighting, ClassifierFreePredictor, ClassifierScore, mix_log_probs
from textdiff.udm import Batch, MaskingProcess, make_template, reverse_sample

V, L, MASK, N = 3, 3, 3, 60_000
XS = all_sequences(V, L)
P = random_pdata(len(XS), seed=21)
P_Y = 0.05 + 0.9 * torch.rand(len(XS), generator=torch.Generator().manual_seed(22), dtype=torch.float64)


class NoisyClassifier:
    """The exact ``log p(y = 1 | x_t) = log Σ_x0 p(x0 | x_t) p(y = 1 | x0)`` of masked states, by enumeration."""

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        consistent = ((XS[None] == ids[:, None]) | (ids[:, None] == MASK)).all(-1)  # [N, |X|]
        joint = (P * consistent).sum(-1)
        return ((P * P_Y * consistent).sum(-1) / joint).log()


class CleanClassifier:
    """A clean-data classifier ``p(y = 1 | x0)`` applied to ``x_t`` as if its masks were token 0 (biased)."""

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return P_Y[index_of(ids.masked_fill(ids == MASK, 0), V)].log()


def guided_sample(classifier, steps: int, gamma: float = 1.0, seed: int = 0, positional: bool = False,
                  n: int = N) -> torch.Tensor:
    """Samples of the guided masking loop; ``positional``: the oracle offers ``logits_at``, so the loop and the hook
    work on the logits at the drawn positions only."""
    process = MaskingProcess(MASK, "count")
    oracle = (PositionalPosterior if positional else ExactPosterior)(process, XS, P, out_vocab=MASK + 1)
    hook = CandidateReweighting(ClassifierScore(classifier), gamma, MASK, top_k=None)
    out = reverse_sample(process, oracle, make_template(n, L), steps, seed=seed, logits_hooks=[hook])
    assert not positional or oracle.positions == n * L  # the sparse path was taken
    return out.ids


def guided_pvalue(classifier, steps: int, gamma: float = 1.0, seed: int = 0, positional: bool = False) -> float:
    tilted = P * P_Y ** gamma
    return chi_square_pvalue(index_of(guided_sample(classifier, steps, gamma, seed, positional), V),
                             tilted / tilted.sum())


@pytest.mark.parametrize("positional", [False, True], ids=["dense", "logits_at"])
def test_one_token_reweighting_with_the_exact_noisy_classifier_samples_the_posterior(positional):
    assert guided_pvalue(NoisyClassifier(), steps=L, positional=positional) > 1e-4


def test_reweighting_the_logits_at_drawn_positions_changes_no_draw():
    """The hook on ``PositionLogits`` (the sparse path) and on dense logits: the same seeded samples."""
    for steps in (L, 1):
        dense = guided_sample(NoisyClassifier(), steps, seed=4, n=3_000)
        assert torch.equal(dense, guided_sample(NoisyClassifier(), steps, seed=4, n=3_000, positional=True))


@pytest.mark.parametrize("variant", ["multi_token", "clean_classifier_on_x_t"])
def test_known_biased_guidance_variants_fail(variant):
    classifier, steps = {"multi_token": (NoisyClassifier(), 1),
                         "clean_classifier_on_x_t": (CleanClassifier(), L)}[variant]
    assert guided_pvalue(classifier, steps=steps) < 1e-6


def test_top_k_reweights_only_the_top_candidates_at_the_drawn_positions():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2, 0.0], [0.1, 0.6, 0.3, 0.0]]], dtype=torch.float64))
    x = Batch(torch.tensor([[MASK, MASK]]))
    score = ClassifierScore(lambda ids, mask: ids[:, 0].double())  # log w = the first token's id
    where = torch.tensor([[True, False]])
    out = CandidateReweighting(score, 2.0, MASK, top_k=2)(logits, x, None, None, where)
    assert torch.equal(out[0, 1], logits[0, 1])  # not drawn this step: untouched
    expected = torch.tensor([0.5 * 1.0, 0.3 * torch.e ** 2, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(torch.softmax(out[0, 0], -1), expected / expected.sum())


def test_cfg_mixing_law_and_w_zero_is_the_conditional_model():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(4, 5, 7, generator=g), torch.randn(4, 5, 7, generator=g)
    cond[..., 0] = -torch.inf
    assert torch.allclose(torch.softmax(mix_log_probs(cond, uncond, 0.0), -1), torch.softmax(cond, -1))
    q = torch.softmax(mix_log_probs(cond, uncond, 2.0), -1)
    expected = torch.softmax(cond, -1) ** 3 / torch.softmax(uncond, -1) ** 2
    assert torch.allclose(q, expected / expected.sum(-1, keepdim=True), atol=1e-6)

    def predictor(x: Batch, t: torch.Tensor) -> torch.Tensor:  # condition at position 0: 1 = labelled, 0 = null
        return torch.where(x.ids[:, :1, None] == 1, cond[: 1].expand(len(x.ids), -1, -1),
                           uncond[: 1].expand(len(x.ids), -1, -1))

    x = Batch(torch.ones(3, 5, dtype=torch.long))
    t = torch.ones(3, dtype=torch.float64)
    guided = ClassifierFreePredictor(predictor, position=0, null_id=0, scale=2.0)
    assert torch.allclose(guided(x, t), mix_log_probs(cond[:1], uncond[:1], 2.0).expand(3, -1, -1))
    assert guided.usage.rows == 6
    assert not hasattr(guided, "logits_at")  # its predictor has none

    predictor.logits_at = lambda x, t, where: predictor(x, t)[where]
    guided = ClassifierFreePredictor(predictor, position=0, null_id=0, scale=2.0)
    where = torch.rand(3, 5, generator=g) < 0.5
    assert torch.allclose(guided.logits_at(x, t, where), guided(x, t)[where])


@pytest.mark.parametrize("kwargs, name", [({"gamma": -1.0}, "gamma"), ({"gamma": float("nan")}, "gamma"),
                                          ({"top_k": 0}, "top_k")])
def test_bad_guidance_settings_name_the_parameter(kwargs, name):
    settings = {"gamma": 1.0, "top_k": 4} | kwargs
    with pytest.raises(ValueError, match=name):
        CandidateReweighting(ClassifierScore(NoisyClassifier()), settings["gamma"], MASK, top_k=settings["top_k"])
