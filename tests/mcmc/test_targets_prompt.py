"""The keyword-conditioned target (docs/mcmc.md#keyword-conditioned-target): each state is scored under its own set's
prompt, exactly ``log p(text + EOS | prompt)`` of a plain full forward, whatever shares the batch."""

from __future__ import annotations

import pytest
import torch

from textdiff.mcmc.mh import Move, MoveProbs, State, apply_move, transitions
from textdiff.mcmc.targets import CausalLMScorer, ConstrainedLMTarget

from .test_models import naive_log_prob, tiny_lm  # noqa: F401  (tiny_lm is a fixture)
from .toy import ToyProposal

PROMPTS = {0: [1, 40, 41], 1: [1, 50, 51, 52, 53, 54], 2: [1], 3: [1, *range(30, 40)]}  # prefixes padded to 8 and 16


def make_target(model, tok, prompts=PROMPTS, gamma=0.7, length_bonus=0.3):
    scorer = CausalLMScorer(model, tok, prefix_ids=[1, 60], max_batch_tokens=24)
    return ConstrainedLMTarget(scorer, str, list, gamma=gamma, length_bonus=length_bonus, prompts=prompts)


def test_each_state_is_scored_under_its_sets_prompt_as_a_full_forward(tiny_lm):  # noqa: F811
    model, tok = tiny_lm
    target = make_target(model, tok)
    tokens = [(5, 6, 7), (8,), (9, 10, 11, 12, 13, 14, 15, 16, 17), (5, 6, 7), (20, 21), (5, 6, 7)]
    states = [State(t, (0,) + (-1,) * (len(t) - 1), group) for t, group in zip(tokens, [0, 1, 2, 1, 0, 3])]
    got = target.log_prob(states)
    for state, value in zip(states, got.tolist()):
        prompt = PROMPTS[state.group]
        full = naive_log_prob(model, [*prompt, *state.tokens, 2]) - naive_log_prob(model, prompt)
        assert value == pytest.approx(0.7 * full + 0.3 * (len(state.tokens) + 1), abs=1e-4)
    assert got[0].item() != pytest.approx(got[3].item())  # same tokens, different sets: different π
    for state, value in zip(states, got):  # alone or in a mixed batch: the same bits
        assert torch.equal(target.log_prob([state]), value.reshape(1))
    assert torch.equal(target.log_prob(states[::-1]), got.flip(0))
    target.scorer.clear()  # nothing kept: every token computed anew, the same bits
    assert len(target.scorer.prompts) == 0 and len(getattr(target.scorer.engine, "tree", ())) == 0
    assert torch.equal(target.log_prob(states), got)


def test_without_prompts_every_state_uses_the_scorers_prefix(tiny_lm):  # noqa: F811
    model, tok = tiny_lm
    target = make_target(model, tok, prompts=None)
    states = [State((5, 6), (0, -1), group) for group in (0, 1, 2)]
    got = target.log_prob(states)
    assert torch.equal(got, got[:1].expand(3))
    full = naive_log_prob(model, [1, 60, 5, 6, 2]) - naive_log_prob(model, [1, 60])
    assert got[0].item() == pytest.approx(0.7 * full + 0.3 * 3, abs=1e-4)


def test_scorer_rejects_a_prefix_list_of_the_wrong_length(tiny_lm):  # noqa: F811
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="prefixes"):
        CausalLMScorer(model, tok).log_prob_ids([[5], [6]], [[1]])


def test_moves_keep_the_group_so_a_chain_never_changes_its_target():
    x = State((2, 0, 1), (-1, 0, -1), group=3)
    for move in (Move("replace", 0, 1), Move("insert", 3, 2), Move("delete", 2)):
        assert apply_move(x, move).group == 3
    proposal = ToyProposal()
    row = transitions(x, lambda ctx: proposal.log_probs([ctx])[0], lambda s: 0.0, MoveProbs(), 4,
                      proposal.placeholder, proposal.vocab_size)
    assert row and all(y.group == 3 for y in row)
