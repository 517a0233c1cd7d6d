"""Logits hooks with the deletion process (docs/guidance.md#exact-candidate-reweighting): they act on the fill's token
logits.

``reverse_sample(..., logits_hooks=...)`` reaches the token logits every inserted token is drawn from (count head
untouched): ``forbid_tokens`` keeps its ids out of every insertion, protected keyword tokens stay; an exact toy shows
a reweighting hook gives the law of the reweighted fill categoricals.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from scipy import stats

from test_deletion import MASK, PAD, T, DeltaPrediction, TableFill
from test_deletion_keywords import biased, random_model, shipped_model, tokenizer  # noqa: F401 (fixtures)
from textdiff.rng import make_generator
from textdiff.keywords.diffusion import keyword_start
from textdiff.udm.deletion import DeletionProcess, ModelInsertionPredictor, predictor_for, process_for, sample_delete
from textdiff.udm.process import Batch
from textdiff.udm.sampler import forbid_tokens, reverse_sample


def test_forbid_tokens_hook_keeps_frequent_tokens_out_of_shipped_model_samples(shipped_model, tokenizer):
    """The shipped model's 6 most frequent inserted tokens are never inserted under ``forbid_tokens`` (both fill
    modes); without the hook they make over a tenth of the text."""
    model, process = shipped_model, process_for(shipped_model, tokenizer)
    control = sample_delete(predictor_for(model, tokenizer, "oneshot"), process, 16, steps=6, seed=0)
    tokens = [w for row, n in zip(control.ids.tolist(), control.lengths.tolist()) for w in row[:n]]
    frequent = [w for w, _ in Counter(tokens).most_common(6)]
    assert sum(w in frequent for w in tokens) > 0.1 * len(tokens)
    for fill_mode in ("oneshot", "iterative"):
        out = sample_delete(predictor_for(model, tokenizer, fill_mode), process, 16, steps=6, seed=0,
                            logits_hooks=[forbid_tokens(frequent)])
        assert int(out.lengths.sum()) > 4 * 16
        assert not bool(torch.isin(out.ids[out.attention_mask], torch.tensor(frequent)).any()), fill_mode


@pytest.mark.parametrize("fill_mode", ["oneshot", "iterative"])
def test_forbid_tokens_hook_applies_to_insertions_not_to_keywords(random_model, tokenizer, fill_mode):
    """A token head with all its mass on "dog", the keyword "dog" protected: under ``forbid_tokens(["dog"])`` every
    "dog" is the keyword (never inserted); control: without the hook "dog" is inserted almost everywhere."""
    dog = tokenizer.convert_tokens_to_ids("dog")
    model = biased(random_model, dog)
    process = process_for(model, tokenizer)
    start = keyword_start(tokenizer, [("dog",)], 8, process.max_length)
    seen = []

    def checked(logits, x, t, s):  # the hook sees the rows sent to the network, their x and their times
        assert logits.shape[:2] == x.ids.shape and t.shape == s.shape == (x.ids.shape[0],)
        assert bool((s < t).all()) and bool((x.ids == tokenizer.mask_token_id).any())
        seen.append(x.ids.shape[0])
        return logits

    out = sample_delete(predictor_for(model, tokenizer, fill_mode), process, start=start, steps=4, t_start=0.8,
                        seed=0, logits_hooks=[checked, forbid_tokens([dog])])
    assert seen and int(out.lengths.sum()) > 2 * 8
    assert torch.equal((out.ids == dog) & out.attention_mask, out.protected)  # "dog" exactly where protected
    assert bool((out.protected.sum(1) == 1).all())
    control = sample_delete(predictor_for(model, tokenizer, fill_mode), process, start=start, steps=4, t_start=0.8,
                            seed=0)
    inserted = control.attention_mask & ~control.protected
    assert int((control.ids[inserted] == dog).sum()) > 0.9 * int(inserted.sum()) > 0


class TwoPlaceholders(TableFill):
    """:class:`TableFill` with a count head putting both tokens in slot 0 of ``[]``: one reverse step ``1 → 0``
    returns exactly one fill of ``[MASK] [MASK]``."""

    def count_logits(self, ids: torch.Tensor, attention_mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = torch.full((ids.shape[0], ids.shape[1] + 1, 3), -math.inf)
        logits[..., 2] = 0.0
        return logits


def tilted(law: torch.Tensor, weight: torch.Tensor, dim: int) -> torch.Tensor:
    """``law`` reweighted by ``weight`` along ``dim`` and renormalised along it."""
    shape = [1, 1]
    shape[dim] = -1
    out = law * weight.reshape(shape)
    return out / out.sum(dim, keepdim=True)


@pytest.mark.parametrize("fill_mode", ["oneshot", "iterative"])
def test_reweighting_hook_gives_the_law_of_the_reweighted_fill_categoricals(fill_mode):
    """Hook ``logits + f`` through ``reverse_sample``: each fill categorical becomes ``∝ P(w) e^{f(w)}``
    (docs/guidance.md#exact-candidate-reweighting).
    ``oneshot``: product of the reweighted marginals; ``iterative`` (one token per call, random order): the
    reweighted first marginal times the reweighted conditional, averaged over the two orders. Controls that must
    fail: the unhooked law, and (iterative) the jointly reweighted law ``∝ p(y1, y2) e^{f(y1) + f(y2)}`` (sequential
    per-draw reweighting is not joint reweighting, docs/guidance.md#multi-token-steps)."""
    g = torch.Generator().manual_seed(4)
    joint = torch.exp(1.5 * torch.randn(T, T, generator=g, dtype=torch.float64))
    joint /= joint.sum()
    f = 1.5 * torch.randn(T, generator=g, dtype=torch.float64)
    weight = f.exp()
    first, second = joint.sum(1), joint.sum(0)
    if fill_mode == "oneshot":
        unhooked = first[:, None] * second[None, :]
        law = tilted(first[:, None], weight, 0) * tilted(second[None, :], weight, 1)
    else:
        unhooked = joint
        law = 0.5 * (tilted(first[:, None], weight, 0) * tilted(joint, weight, 1)
                     + tilted(second[None, :], weight, 1) * tilted(joint, weight, 0))
    jointly = joint * weight[:, None] * weight[None, :]
    jointly /= jointly.sum()
    n = 60_000
    process = DeletionProcess(T, PAD, 2)
    predictor = ModelInsertionPredictor(TwoPlaceholders(joint), fill_mode)
    shift = torch.cat([f, torch.zeros(1, dtype=torch.float64)])  # the [MASK] column stays at -inf
    out = reverse_sample(process, predictor, torch.zeros(n, 0, dtype=torch.long), grid=torch.tensor([1.0, 0.0]),
                         seed=7, logits_hooks=[lambda logits, x, t, s: logits + shift])
    assert bool(out.attention_mask.all()) and out.ids.shape == (n, 2)
    observed = torch.bincount(out.ids[:, 0] * T + out.ids[:, 1], minlength=T * T).double().numpy()
    p_value = lambda target: stats.chisquare(observed, (target.flatten() * n).numpy()).pvalue
    assert p_value(law) > 1e-3
    assert p_value(unhooked) < 1e-6
    if fill_mode == "iterative":
        assert p_value(jointly) < 1e-6


def test_hooks_need_an_output_that_draws_from_logits():
    """An insertion output without token logits (an exact toy that samples directly) cannot take hooks: clear error."""
    process = DeletionProcess(MASK, PAD, 8)
    with pytest.raises(ValueError, match="logits_hooks need a predictor returning logits"):
        sample_delete(lambda x, t: DeltaPrediction([4, 5], x), process, 4, steps=2, seed=0,
                      logits_hooks=[forbid_tokens([4])])
    out = sample_delete(lambda x, t: DeltaPrediction([4, 5], x), process, 4, steps=2, seed=0)
    assert isinstance(out, Batch) and out.ids.tolist() == [[4, 5]] * 4


def test_classifier_free_insertion_mixes_both_heads_and_samples(random_model, tokenizer):
    """CFG for the deletion process (docs/guidance.md#classifier-free-guidance): the slot-count head and the fill head
    are both mixed with the null-condition pass; w = 0 is the network itself; the mixture samples like a network."""
    from textdiff.guidance import ClassifierFreeInsertion, mix_log_probs

    condition, null = tokenizer.convert_tokens_to_ids(["[unused1]", "[unused0]"])
    ids = torch.tensor([[condition, 2000, 2001, 0], [condition, 2002, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    t = torch.tensor([0.5, 0.7])
    nulled = ids.clone()
    nulled[:, 0] = null
    with torch.no_grad():
        heads = [(lambda i: random_model.count_logits(i, mask, t)), (lambda i: random_model.token_logits(i, mask))]
        plain = ClassifierFreeInsertion(random_model, position=0, null_id=null, scale=0.0)
        guided = ClassifierFreeInsertion(random_model, position=0, null_id=null, scale=2.0)
        for head, name in zip(heads, ("count_logits", "token_logits")):
            args = (ids, mask, t) if name == "count_logits" else (ids, mask)
            assert torch.equal(getattr(plain, name)(*args), head(ids))
            assert torch.allclose(getattr(guided, name)(*args), mix_log_probs(head(ids), head(nulled), 2.0), atol=1e-5)
    start = Batch(torch.full((3, 1), condition), torch.ones(3, 1, dtype=torch.bool), torch.ones(3, 1, dtype=torch.bool))
    out = sample_delete(predictor_for(guided, tokenizer), process_for(guided, tokenizer), start=start, steps=4,
                        t_start=0.9, seed=0)
    assert ((out.ids == condition) & out.protected).sum(-1).tolist() == [1, 1, 1]  # the condition is kept
