"""Linear weights laid out for few rows (docs/design.md#weights-laid-out-for-few-rows): the same model, values and
saved files, ties kept, gradients intact; the CPU loaders hand it out."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors.torch import load_file

from textdiff.models import for_few_rows, hub


def llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True)).eval()


def bert():
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)).eval()


def linear_weights(model):
    return {name: m.weight for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("make", [llama, bert])
def test_the_same_model_with_every_linear_weight_stored_in_out(make):
    plain, relaid = make(), for_few_rows(make())
    ids = torch.tensor([[1, 7, 3, 9, 4, 2]])
    for (name, before), after in zip(linear_weights(plain).items(), linear_weights(relaid).values()):
        assert torch.equal(before, after) and after.shape == before.shape, name
        assert after.t().is_contiguous() and not after.is_contiguous(), name
    with torch.no_grad():
        assert torch.allclose(relaid(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5)
    again = dict(relaid.named_parameters())
    for_few_rows(relaid)  # a second call changes nothing
    assert all(p is again[name] for name, p in relaid.named_parameters())
    assert len(relaid._state_dict_hooks) == 1


def test_a_tied_head_stays_tied_and_gradients_match():
    plain, relaid = llama().train(), for_few_rows(llama().train())
    assert relaid.lm_head.weight is relaid.model.embed_tokens.weight
    assert relaid.lm_head.weight.requires_grad
    ids = torch.tensor([[1, 7, 3, 9, 4, 2]])
    for model in (plain, relaid):
        model(input_ids=ids, labels=ids).loss.backward()
    for (name, p), q in zip(plain.named_parameters(), relaid.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_a_weight_of_a_parameter_subclass_is_left_alone():
    class Quantised(torch.nn.Parameter):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight = Quantised(model[0].weight.detach())
    kept = model[0].weight
    for_few_rows(model)
    assert model[0].weight is kept and kept.is_contiguous()
    assert model[1].weight.t().is_contiguous()


@pytest.mark.parametrize("make", [llama, bert])
def test_save_pretrained_writes_the_file_of_the_plain_model(make, tmp_path):
    make().save_pretrained(tmp_path / "plain")
    relaid = for_few_rows(make())
    relaid.save_pretrained(tmp_path / "relaid")
    before, after = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "relaid"))
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert all(t.is_contiguous() for t in relaid.state_dict().values())
    assert any(not p.is_contiguous() for p in relaid.parameters())  # saving left the model as it was


def test_the_cpu_loaders_hand_out_the_layout(tmp_path):
    llama().save_pretrained(tmp_path / "lm")
    transformers.PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer()).save_pretrained(tmp_path / "lm")
    model, _ = hub.load_lm(tmp_path / "lm")
    weights = linear_weights(model)
    assert weights and all(w.t().is_contiguous() for w in weights.values())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer
