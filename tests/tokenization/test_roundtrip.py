"""Lossless round trips (property tests): a byte-fallback model with no normaliser gives back every input exactly,
for every alpha; a normalising SentencePiece model gives back the normalised text."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from textdiff.tokenization import UnigramTokenizer
from textdiff.tokenization.normalization import METASPACE

ALPHAS = [None, 0.0, 0.2, 1.0, 5.0]
PIECES = ["th", "he", "the", "in", "ing", "an", "er", "on", "re", " the", " a", "ation", "é", "🙂", "ab", "ba"]
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)  # emoji, combining marks, controls
MIXED = st.lists(st.sampled_from(list("the ing ation aé\u0301🙂\n\t\x00\u200b") + ["👩\u200d👩\u200d👧"]),
                 max_size=60).map("".join)


@pytest.fixture(scope="module")
def byte_model() -> UnigramTokenizer:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [" ", ".", ","]
    pieces = PIECES + letters
    return UnigramTokenizer.from_pieces(pieces, [-math.log(len(pieces)) - 0.1 * len(p) for p in pieces],
                                        byte_fallback=True)


@pytest.fixture(scope="module")
def sp_tokenizer(sp_model) -> UnigramTokenizer:
    return UnigramTokenizer.from_sentencepiece(sp_model)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.one_of(ANY_TEXT, MIXED))
@example("")
@example("a" * 5000 + " the end")
@example("e\u0301\u0308 🙂👩\u200d👩\u200d👧 \x00\x07\r\n\t\u202e")
def test_byte_fallback_round_trip_is_exact(byte_model, text):
    for alpha in ALPHAS:
        ids = byte_model.encode(text, alpha=alpha, seed=1)
        assert byte_model.decode(ids) == text


@SETTINGS
@given(st.lists(st.one_of(ANY_TEXT, MIXED), max_size=6))
def test_batches_decode_like_single_texts(byte_model, texts):
    batch = byte_model.encode(texts, alpha=0.3, seed=2)
    assert [byte_model.decode(ids) for ids in batch] == texts
    if texts:  # decode([]) is the empty text, not an empty batch
        assert byte_model.decode(batch) == texts
    assert byte_model.encode(texts) == [byte_model.encode(t) for t in texts]


def expected_decoding(tok: UnigramTokenizer, text: str) -> str:
    """normalise(x) as SentencePiece's decoder spells it: ``▁`` -> space, the dummy-prefix space dropped."""
    normalized = tok.normalize(text).replace(METASPACE, " ")
    return normalized[1:] if normalized.startswith(" ") else normalized


@SETTINGS
@given(st.one_of(ANY_TEXT, MIXED))
@example("")
@example("  Ｈｅｌｌｏ   ﬁne\tworld  ")
def test_normalising_model_round_trip_gives_normalised_text(sp_tokenizer, text):
    for alpha in ALPHAS:
        assert sp_tokenizer.decode(sp_tokenizer.encode(text, alpha=alpha, seed=3)) == expected_decoding(
            sp_tokenizer, text
        )


def test_offsets_point_at_the_pieces(sp_tokenizer, byte_model):
    text = "The  quick brown fox jumps over the lazy dog."
    for alpha in (None, 0.5):
        ids, offsets = sp_tokenizer.encode(text, alpha=alpha, seed=0, return_offsets=True)
        assert len(ids) == len(offsets)
        for i, (start, end) in zip(ids, offsets):
            assert sp_tokenizer.id_to_piece(i).replace(METASPACE, " ").strip() == text[start:end].strip()
    text = "naïve 🙂 text"
    ids, offsets = byte_model.encode(text, alpha=0.5, seed=0, return_offsets=True)
    spans = list(dict.fromkeys(offsets))  # byte pieces of one character share its span
    assert "".join(text[s:e] for s, e in spans) == text
