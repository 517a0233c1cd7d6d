"""MLM Gibbs: exact-oracle chi-square test (docs/mcmc.md#gibbs-tests), a biased variant that fails it,
special tokens."""

from __future__ import annotations

import itertools
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare

from textdiff.support import TokenSupport

from textdiff.mcmc.gibbs import (GibbsResult, gibbs_sample, masked_init, pseudo_log_likelihood_energy,
                                 random_lengths)

V, L = 3, 3
CLS, SEP, MASK, PAD = 3, 4, 5, 6
SPECIAL = [CLS, SEP, MASK, PAD]
SUPPORT = TokenSupport(PAD + 1, special_ids=SPECIAL, mask_id=MASK, pad_id=PAD)


class ExactConditionals:
    """A joint ``p`` over ``V^L`` exposed as an MLM: logits at a ``[MASK]`` are ``log p(x_i = v | x_{-i})``."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.log_joint = torch.log_softmax(1.5 * torch.randn(V**L, generator=gen, dtype=torch.float64), 0)
        self.log_joint = self.log_joint.view(*([V] * L))
        self.config = SimpleNamespace(vocab_size=V + len(SPECIAL))
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def conditional(self, body: tuple[int, ...]) -> torch.Tensor:
        """``log p(x_i = ·, visible tokens)`` at the first ``[MASK]`` of ``body`` (other masks marginalised): the
        conditional up to its normaliser, i.e. its logits."""
        if body not in self.cache:
            i = body.index(MASK)
            sub = self.log_joint[tuple(slice(None) if t == MASK else t for t in body)]
            self.cache[body] = torch.logsumexp(sub.movedim(body[:i].count(MASK), 0).reshape(V, -1), -1)
        return self.cache[body]

    def __call__(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, V + len(SPECIAL), dtype=torch.float64)
        for b, row in enumerate(input_ids.tolist()):
            body = tuple(row[1: 1 + L])
            logits[b, 1 + body.index(MASK), :V] = self.conditional(body)
        return SimpleNamespace(logits=logits)


def final_states(result: GibbsResult) -> list[tuple[int, ...]]:
    return [tuple(chain[-1][1:-1]) for chain in result.samples]


def run(oracle, n_chains: int, steps: int, seed: int, start=None, token_support=SUPPORT, **kwargs) -> list[tuple[int, ...]]:
    """Final states of chains started uniformly at random (or from exact draws of ``start``, a log joint)."""
    gen = torch.Generator().manual_seed(seed)
    if start is None:
        init = [[CLS, *torch.randint(0, V, (L,), generator=gen).tolist(), SEP] for _ in range(n_chains)]
    else:
        support = list(itertools.product(range(V), repeat=L))
        picks = torch.multinomial(start.exp().flatten(), n_chains, replacement=True, generator=gen).tolist()
        init = [[CLS, *support[i], SEP] for i in picks]
    result = gibbs_sample(oracle, init, token_support, steps=steps, burn_in=steps - 1, seed=seed, **kwargs)
    return final_states(result)


def chi_square_p(states, log_joint) -> float:
    counts = Counter(states)
    support = list(itertools.product(range(V), repeat=L))
    observed = [counts[s] for s in support]
    expected = (len(states) * log_joint.exp().flatten()).tolist()
    return chisquare(observed, expected).pvalue


@pytest.mark.parametrize("order", ["random", "sweep"])
def test_exact_conditionals_sample_the_joint(order):
    oracle = ExactConditionals()
    states = run(oracle, n_chains=2000, steps=24, seed=1, order=order)
    assert chi_square_p(states, oracle.log_joint) > 1e-3


def test_biased_variant_fails():
    """Temperature 0.5 sharpens every conditional: the same test must reject it."""
    oracle = ExactConditionals()
    states = run(oracle, n_chains=2000, steps=24, seed=1, temperature=0.5)
    assert chi_square_p(states, oracle.log_joint) < 1e-6


def test_masked_init_fills_masks_and_never_returns_them():
    oracle = ExactConditionals()
    tok = SimpleNamespace(cls_token_id=CLS, sep_token_id=SEP, mask_token_id=MASK)
    result = gibbs_sample(oracle, masked_init(tok, [L] * 2000), SUPPORT,
                          steps=24, burn_in=0, seed=2)
    assert all(MASK not in s for chain in result.samples for s in chain)
    assert all(len(chain) == 24 - L + 1 for chain in result.samples)  # first complete state after L fills
    assert chi_square_p(final_states(result), oracle.log_joint) > 1e-3


def test_protected_positions_and_specials_never_change():
    oracle = ExactConditionals()
    init = [[CLS, 0, 1, 2, SEP]] * 50
    result = gibbs_sample(oracle, init, SUPPORT, steps=30,
                          protected=[[False, True, False, False, False]] * 50, seed=3)
    for chain in result.samples:
        for s in chain:
            assert s[0] == CLS and s[-1] == SEP and s[1] == 0
            assert all(t < V for t in s[1:-1])
    assert result.changed.any()
    assert torch.isfinite(result.chosen_log_probs).all() and (result.chosen_log_probs <= 0).all()


def test_variable_lengths_and_tiny_bert(device):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval().to(device)
    specials = [0, 1, 2, 3]  # pad, cls, sep, mask
    support = TokenSupport(40, special_ids=specials, mask_id=3, pad_id=0)
    tok = SimpleNamespace(cls_token_id=1, sep_token_id=2, mask_token_id=3)
    lengths = random_lengths(6, 2, 9, torch.Generator().manual_seed(0))
    result = gibbs_sample(model, masked_init(tok, lengths), support, steps=40,
                          burn_in=20, thin=5, seed=4, device=device, top_k=10)
    for chain, n in zip(result.samples, lengths):
        assert len(chain) == 4
        for s in chain:
            assert len(s) == n + 2 and not set(s[1:-1]) & set(specials)
    again = gibbs_sample(model, masked_init(tok, lengths), support, steps=40,
                         burn_in=20, thin=5, seed=4, device=device, top_k=10)
    assert again.samples == result.samples
    assert len(result.changes_per_sweep()[0]) == 40 // lengths[0]


@pytest.mark.parametrize("kwargs, name", [({"steps": 0}, "steps"), ({"temperature": 0.0}, "temperature"),
                                          ({"order": "left"}, "order"), ({"thin": 0}, "thin"),
                                          ({"steps": 4, "burn_in": 10}, "burn_in")])
def test_bad_input(kwargs, name):
    args = dict(steps=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        gibbs_sample(ExactConditionals(), [[CLS, 0, 1, 2, SEP]], SUPPORT, **args)


class IncompatibleConditionals(ExactConditionals):
    """Exact conditionals of one joint plus a position-dependent bias: no joint has these conditionals."""

    def conditional(self, body):
        bias = torch.tensor([0.8, -0.4, 0.0], dtype=torch.float64) * (body.index(MASK) - 1)
        return torch.log_softmax(super().conditional(body) + bias, -1)


def test_mh_corrected_gibbs_targets_the_energy():
    """MH-corrected Gibbs (docs/mcmc.md#exactness-caveat-and-the-mh-corrected-variant): with incompatible conditionals
    as proposal and E = -log p_target, chains started from p_target stay there when corrected (the MH test leaves
    p_target invariant); uncorrected chains drift away."""
    proposal, target = IncompatibleConditionals(seed=0), ExactConditionals(seed=5)

    def energy(ids, attention):
        return torch.stack([-target.log_joint[tuple(row[1: 1 + L])] for row in ids.tolist()])

    corrected = run(proposal, n_chains=2000, steps=10, seed=6, start=target.log_joint, energy=energy)
    plain = run(proposal, n_chains=2000, steps=10, seed=6, start=target.log_joint)
    assert chi_square_p(corrected, target.log_joint) > 1e-3
    assert chi_square_p(plain, target.log_joint) < 1e-6


def test_pseudo_log_likelihood_energy_on_exact_conditionals():
    oracle = ExactConditionals()
    energy = pseudo_log_likelihood_energy(oracle, SUPPORT)
    ids = torch.tensor([[CLS, 0, 1, 2, SEP], [CLS, 2, 2, 0, SEP]])
    def masked_log_prob(r, i):
        body = tuple(MASK if k == i else t for k, t in enumerate(r))
        return float(torch.log_softmax(oracle.conditional(body), 0)[r[i]])

    expected = [-sum(masked_log_prob(r, i) for i in range(L)) for r in ([0, 1, 2], [2, 2, 0])]
    assert energy(ids, torch.ones_like(ids)).tolist() == pytest.approx(expected)


def _restricted_to_opening(log_joint: torch.Tensor, banned: int) -> torch.Tensor:
    """``p`` restricted to sequences whose first token is not ``banned``, renormalised."""
    restricted = log_joint.clone()
    restricted[banned] = float("-inf")
    return restricted - torch.logsumexp(restricted.flatten(), 0)


def test_opening_exclusion_samples_the_restricted_joint():
    """Token 0 may not open a sentence (a ``##`` piece): the chains target p restricted to x_1 ≠ 0; forbidding it
    everywhere (``excluded_ids``, the blunt fix) samples another law and fails the same test."""
    oracle = ExactConditionals()
    target = _restricted_to_opening(oracle.log_joint, 0)
    support = [s for s in itertools.product(range(V), repeat=L) if s[0] != 0]

    def p_value(states):
        counts = Counter(states)
        assert all(s[0] != 0 for s in states)
        expected = [len(states) * float(target[s].exp()) for s in support]
        return chisquare([counts[s] for s in support], expected).pvalue

    assert p_value(run(oracle, n_chains=2000, steps=24, seed=2, start=target,
                           token_support=TokenSupport(PAD + 1, SPECIAL, continuation_ids=[0], mask_id=MASK, pad_id=PAD))) > 1e-3
    assert p_value(run(oracle, n_chains=2000, steps=24, seed=2, start=target,
                           token_support=TokenSupport(PAD + 1, SPECIAL, excluded_ids=[0], mask_id=MASK, pad_id=PAD))) < 1e-6
