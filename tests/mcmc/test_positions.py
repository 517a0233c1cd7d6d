"""``logits_at``: the output head at one position per row gives the plain forward's logits there, and a model that
cannot be split that way runs whole."""

from __future__ import annotations

import torch
import transformers

from textdiff.mcmc.positions import _SPLITS, logits_at


def tiny_bert() -> transformers.BertForMaskedLM:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    return transformers.BertForMaskedLM(config).eval()


def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (6, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    return ids, mask, torch.tensor([1, 3, 5, 0, 8, 2])


def test_split_head_matches_the_plain_forward_and_is_used():
    model, (ids, mask, positions) = tiny_bert(), batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits[torch.arange(6), positions]
    first = logits_at(model, ids, mask, positions)  # the split is checked on the first row, then used
    assert _SPLITS[model] is not None and _SPLITS[model][1] is model.cls
    second = logits_at(model, ids, mask, positions)
    assert torch.allclose(first, expected, atol=1e-6) and torch.equal(first, second)


class ScaledHead(torch.nn.Module):
    """A masked LM whose logits are scaled after its head: encoder + head alone would give other numbers."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.scale = inner, torch.nn.Parameter(torch.tensor(2.0))
        self.base_model = inner.bert

    def forward(self, input_ids, attention_mask):
        return transformers.modeling_outputs.MaskedLMOutput(logits=self.inner(input_ids=input_ids,
                                                                               attention_mask=attention_mask).logits
                                                            * self.scale)


def test_a_model_the_split_would_change_runs_whole():
    model, (ids, mask, positions) = ScaledHead(tiny_bert()), batch()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits[torch.arange(6), positions]
    for _ in range(2):
        assert torch.equal(logits_at(model, ids, mask, positions), expected)
    assert _SPLITS[model] is None


def test_a_plain_callable_runs_whole():
    ids, mask, positions = batch()
    table = torch.randn(50, 50, generator=torch.Generator().manual_seed(2))

    def oracle(input_ids, attention_mask):
        return transformers.modeling_outputs.MaskedLMOutput(logits=table[input_ids])

    assert torch.equal(logits_at(oracle, ids, mask, positions), table[ids[torch.arange(6), positions]])


def test_a_position_mask_gives_the_plain_forward_logits_there():
    model, (ids, mask, _) = tiny_bert(), batch()
    where = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.4
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits[where]
    for _ in range(2):  # plain forward + split check, then the split path
        assert torch.allclose(logits_at(model, ids, mask, where), expected, atol=1e-6)
    assert logits_at(model, ids, mask, torch.zeros_like(where)).shape == (0, 50)
