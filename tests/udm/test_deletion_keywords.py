"""Keyword-anchored generation with the deletion process (docs/deletion.md#conditioning-on-keywords)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from textdiff.keywords.diffusion import generate_from_keywords, keyword_orders, keyword_start
from textdiff.models import InsertionConfig, InsertionModel, load_insertion
from textdiff.udm.deletion import (
    ModelInsertionPredictor,
    predictor_for,
    process_for,
    sample_delete,
    sample_sentences,
)
from textdiff.rng import make_generator
from textdiff.udm.sampler import Trajectory

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "models" / "insertion"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(SHIPPED))


@pytest.fixture(scope="module")
def shipped_model():
    return load_insertion()[0]


@pytest.fixture(scope="module")
def random_model(tokenizer):
    """An untrained network: it inserts anything anywhere, the harshest test of the keyword guarantees."""
    torch.manual_seed(0)
    config = InsertionConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=64, max_seq_length=20, max_count=20,
                             excluded_token_ids=tuple(tokenizer.all_special_ids))
    return InsertionModel(config).eval()


def contains_in_order(ids: list[int], pieces: list[list[int]]) -> bool:
    """Every keyword's WordPieces appear contiguously, keywords in the given order."""
    at = 0
    for word in pieces:
        while at + len(word) <= len(ids) and ids[at : at + len(word)] != word:
            at += 1
        if at + len(word) > len(ids):
            return False
        at += len(word)
    return True


def test_keywords_stay_in_order_and_intact(random_model, tokenizer):
    orders = keyword_orders(["skateboard", "dog", "frisbee"], "all", make_generator(0))
    assert len(orders) == 6 and len(set(orders)) == 6
    start = keyword_start(tokenizer, orders, 8, 20)
    process = process_for(random_model, tokenizer)
    predictor = ModelInsertionPredictor(random_model, "oneshot", continuation_ids=process.continuation_ids)
    out = sample_delete(predictor, process, start=start, steps=6, t_start=0.8, seed=0)
    grew = 0
    for row in range(out.ids.shape[0]):
        ids = out.ids[row, : int(out.lengths[row])].tolist()
        pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in orders[row // 8]]
        assert any(len(p) > 1 for p in pieces)  # "skateboard"/"frisbee" are multi-piece: glue is exercised
        assert contains_in_order(ids, pieces), tokenizer.convert_ids_to_tokens(ids)
        assert set(orders[row // 8]) <= set(re.findall(r"\w+", tokenizer.decode(ids))), tokenizer.decode(ids)
        grew += len(ids) > sum(map(len, pieces))
    assert grew > out.ids.shape[0] // 2


def test_shipped_model_writes_sentences_around_keywords(shipped_model, tokenizer):
    samples = generate_from_keywords(shipped_model, tokenizer, "dog frisbee catch", n=3, orders=3, samples_per_order=2,
                                     steps=8, seed=0)
    assert 1 <= len(samples) <= 3
    for sample in samples:
        ids = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
        pieces = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in sample.keywords]
        assert contains_in_order(ids, pieces), sample
        assert set(sample.keywords) <= set(re.findall(r"\w+", sample.text)), sample  # whole words
        assert len(sample.text.split()) > 3
    assert [s.score for s in samples] == sorted((s.score for s in samples), reverse=True)


def test_keyword_bad_input(random_model, tokenizer):
    with pytest.raises(ValueError, match="max_length=20"):
        generate_from_keywords(random_model, tokenizer, ["antidisestablishmentarianism", "counterrevolutionaries", "internationalization",
                                                        "electroencephalography", "uncharacteristically"], seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        generate_from_keywords(random_model, tokenizer, [], seed=0)
    with pytest.raises(ValueError, match="orders"):
        generate_from_keywords(random_model, tokenizer, "dog", orders=0, seed=0)
    with pytest.raises(ValueError, match="expected_length"):
        generate_from_keywords(random_model, tokenizer, "dog cat", expected_length=99, seed=0)
    with pytest.raises(ValueError, match=r"forbidden_ids must be token ids in \[0, 30522\)"):
        ModelInsertionPredictor(random_model, forbidden_ids=[5, 30522])
    with pytest.raises(ValueError, match="continuation_ids"):
        ModelInsertionPredictor(random_model, continuation_ids=[-1])


def test_elbo_bound_is_finite_and_lower_for_the_trained_model(shipped_model, random_model, tokenizer):
    """Monte Carlo ELBO bound (docs/deletion.md#elbo): finite and positive; the trained model explains English better
    than an untrained one."""
    from textdiff.udm.deletion import elbo_upper_bound
    from textdiff.udm.process import Batch

    sentences = ["a dog catches a frisbee in the park .", "the man is standing in a field ."] * 8
    encoded = tokenizer(sentences, add_special_tokens=False, padding=True, return_tensors="pt")
    x0 = Batch(encoded["input_ids"], encoded["attention_mask"].bool())
    bounds = {}
    for name, model in (("trained", shipped_model), ("random", random_model)):
        values = elbo_upper_bound(model, process_for(model, tokenizer), x0, make_generator(0))
        assert bool(torch.isfinite(values).all()) and bool((values > 0).all())
        bounds[name] = float(values.sum() / x0.lengths.sum())
    assert bounds["trained"] < bounds["random"] - 1.0, bounds


def test_sentences_from_the_empty_sequence_on_device(random_model, tokenizer, device):
    model = random_model.to(device)
    texts = sample_sentences(model, tokenizer, 6, steps=4, fill_mode="oneshot", seed=3)
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
    assert len({len(t.split()) for t in texts}) > 1  # variable length
    assert texts == sample_sentences(model, tokenizer, 6, steps=4, fill_mode="oneshot", seed=3)  # seeded
    random_model.to("cpu")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_insertion(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Fill support restrictions and cost accounting (docs/deletion.md#insertion-model,
# docs/guidance.md#exact-candidate-reweighting)
# ---------------------------------------------------------------------------------------------------------------


def pieces_of(tokenizer, out) -> list[list[str]]:
    return [tokenizer.convert_ids_to_tokens(row[: int(n)]) for row, n in zip(out.ids.tolist(), out.lengths.tolist())]


def biased(model, token_id: int):
    """A copy of ``model`` whose token head puts (almost) all its mass on ``token_id`` (bias +30)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.token_decoder.bias[token_id] += 30.0
    return model


def test_fill_never_draws_forbidden_tokens(random_model, tokenizer):
    """A token head with all its mass on [unused5]: the tokenizer's forbidden set is at -inf and never drawn (both
    fill modes draw from ``predictor.token_logits``)."""
    unused5 = tokenizer.convert_tokens_to_ids("[unused5]")
    model = biased(random_model, unused5)
    process = process_for(model, tokenizer)
    predictor = predictor_for(model, tokenizer, "oneshot")
    forbidden = set(predictor.forbidden_ids.tolist())
    assert unused5 in forbidden and set(tokenizer.all_special_ids) <= forbidden
    assert tokenizer.convert_tokens_to_ids("[unused993]") in forbidden
    assert tokenizer.convert_tokens_to_ids("dog") not in forbidden
    ids = torch.tensor([[tokenizer.mask_token_id] * 3])
    logits = predictor.token_logits(ids, torch.ones_like(ids, dtype=torch.bool))
    assert bool(torch.isneginf(logits[..., sorted(forbidden)]).all()) and bool(torch.isfinite(logits[..., 1000:]).all())
    out = sample_delete(predictor, process, 16, steps=4, seed=0)
    drawn = [p for row in pieces_of(tokenizer, out) for p in row]
    assert len(drawn) > 16 and not any(p.startswith("[unused") or p in tokenizer.all_special_tokens for p in drawn)
    # control: without the forbidden set the same network inserts [unused5] almost everywhere
    control = sample_delete(ModelInsertionPredictor(model, "oneshot"), process, 16, steps=4, seed=0)
    drawn = [p for row in pieces_of(tokenizer, control) for p in row]
    assert drawn.count("[unused5]") > 0.9 * len(drawn)


@pytest.mark.parametrize("fill_mode", ["oneshot", "iterative"])
def test_no_sample_starts_with_a_continuation_piece(random_model, tokenizer, fill_mode):
    """A token head with all its mass on "##s": "##s" is inserted anywhere but as the first piece (a non-"##" piece
    appears only where a step inserted a new first piece)."""
    model = biased(random_model, tokenizer.convert_tokens_to_ids("##s"))
    process = process_for(model, tokenizer)
    rows = pieces_of(tokenizer, sample_delete(predictor_for(model, tokenizer, fill_mode), process, 8, steps=3, seed=1))
    assert all(row and not row[0].startswith("##") for row in rows), rows
    assert sum(row[1:].count("##s") for row in rows) > 0.5 * sum(len(row) - 1 for row in rows) > 0
    control = sample_delete(ModelInsertionPredictor(model, fill_mode), process, 8, steps=3, seed=1)
    control = pieces_of(tokenizer, control)
    assert sum(row[0] == "##s" for row in control if row) >= 6


def test_shipped_model_samples_have_no_unused_piece_and_no_leading_continuation(shipped_model, tokenizer):
    out = sample_delete(predictor_for(shipped_model, tokenizer, "oneshot"), process_for(shipped_model, tokenizer), 32,
                        steps=8, seed=0)
    rows = pieces_of(tokenizer, out)
    assert sum(map(len, rows)) > 5 * 32
    assert not any(p.startswith("[unused") for row in rows for p in row)
    assert not any(row and row[0].startswith("##") for row in rows)


@pytest.mark.parametrize("fill_mode", ["oneshot", "iterative"])
def test_stats_count_every_network_call(random_model, tokenizer, fill_mode):
    """stats.network_calls / network_rows = encoder forward passes / rows, counted by a hook on the encoder; a
    fill call sends only the rows with tokens left to insert (counts per step from the trajectory's growth)."""
    measured = {"calls": 0, "rows": 0}

    def count(module, args, kwargs, output):
        measured["calls"] += 1
        measured["rows"] += kwargs["inputs_embeds"].shape[0]

    handle = random_model.encoder.register_forward_hook(count, with_kwargs=True)
    trajectory = Trajectory()
    try:
        stats = sample_delete(predictor_for(random_model, tokenizer, fill_mode), process_for(random_model, tokenizer),
                              8, steps=4, seed=2, trajectory=trajectory).stats
    finally:
        handle.remove()
    assert stats.network_calls == measured["calls"] > stats.steps  # one count-head call per step + the fills
    assert stats.network_rows == measured["rows"] < 8 * measured["calls"]
    # tokens inserted per row and step (posterior corrector: survivors stay, each kept placeholder is filled)
    filled = [b.lengths - a.lengths for a, b in zip(trajectory.states[:-1], trajectory.states[1:])]
    if fill_mode == "iterative":  # one token per call: a row is sent once per token it receives
        calls = sum(1 + int(n.max()) for n in filled)
        rows = sum(8 + int(n.sum()) for n in filled)
    else:  # one call per step that fills anything, with the rows that receive tokens
        calls = sum(1 + int(bool((n > 0).any())) for n in filled)
        rows = sum(8 + int((n > 0).sum()) for n in filled)
    assert any(bool(n.min() < n.max()) for n in filled)  # rows finish their fills at different calls
    assert (stats.network_calls, stats.network_rows) == (calls, rows)
