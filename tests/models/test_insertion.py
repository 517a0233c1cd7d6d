"""Insertion model (docs/deletion.md#insertion-model): shapes, heads, HF save/load as safetensors,
training signal, bad config."""

from __future__ import annotations

import pytest
import torch

from textdiff.models.insertion import InsertionConfig, InsertionModel
from textdiff.rng import make_generator
from textdiff.udm.deletion import DeletionProcess, training_targets
from textdiff.udm.process import Batch

VOCAB, MASK = 40, 3


def tiny(**overrides) -> InsertionModel:
    config = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  max_seq_length=12, max_count=12, cls_token_id=1, sep_token_id=2, mask_token_id=MASK,
                  excluded_token_ids=(0, 1, 2, 3), hidden_dropout_prob=0.0)
    config.update(overrides)
    torch.manual_seed(0)
    return InsertionModel(InsertionConfig(**config)).eval()


def test_heads_shapes_time_conditioning_and_excluded_tokens():
    model = tiny()
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    mask = torch.tensor([[True] * 3, [True, True, False]])
    counts = model.count_logits(ids, mask, torch.tensor([0.2, 0.9]))
    assert counts.shape == (2, 4, 13)
    assert not torch.allclose(counts, model.count_logits(ids, mask, torch.tensor([0.8, 0.1])))
    tokens = model.token_logits(ids, mask)
    assert tokens.shape == (2, 3, VOCAB) and bool(torch.isinf(tokens[..., :4]).all())
    # padding does not leak: row 1 alone gives the same logits on its real positions
    alone = model.token_logits(ids[1:, :2], mask[1:, :2])
    assert torch.allclose(alone, tokens[1:, :2], atol=1e-5)
    empty = torch.zeros(2, 0, dtype=torch.long)
    assert model.count_logits(empty, empty.bool(), torch.tensor([1.0, 1.0])).shape == (2, 1, 13)


def test_save_load_round_trip_fp16_safetensors(tmp_path):
    model = tiny()
    model.half().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = InsertionModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert loaded.token_decoder.weight.data_ptr() == loaded.encoder.embeddings.word_embeddings.weight.data_ptr()
    ids, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool)
    reference = model.float().count_logits(ids, mask, torch.tensor([0.5]))
    assert torch.allclose(loaded.count_logits(ids, mask, torch.tensor([0.5])), reference, atol=1e-5)


def test_loss_from_forward_process_targets_decreases():
    """A few optimiser steps on forward-process targets (docs/deletion.md#training) lower the pattern NLL on that
    data."""
    model = tiny().train()
    process = DeletionProcess(MASK, 0, 12)
    ids0 = torch.randint(4, VOCAB, (16, 8), generator=torch.Generator().manual_seed(1))
    mask0 = torch.ones_like(ids0, dtype=torch.bool)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_at(seed: int) -> torch.Tensor:
        t = torch.rand(16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        target = training_targets(process, Batch(ids0, mask0), t, make_generator(seed))
        count_nll, fill_nll = model(target.x_t.ids, target.x_t.attention_mask, t, target.expanded, mask0,
                                    target.counts, target.fill, ids0)
        return (count_nll + fill_nll).sum() / mask0.sum()

    with torch.no_grad():
        before = loss_at(123).item()
    for step in range(60):
        optimizer.zero_grad()
        loss_at(step).backward()
        optimizer.step()
    with torch.no_grad():
        assert loss_at(123).item() < before - 0.5


def test_bad_config():
    with pytest.raises(ValueError, match="max_count"):
        InsertionConfig(max_count=0)
    with pytest.raises(ValueError, match="max_seq_length"):
        InsertionConfig(max_seq_length=0)
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_length"):
        model.token_logits(torch.full((1, 13), 5), torch.ones(1, 13, dtype=torch.bool))
