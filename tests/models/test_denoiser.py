"""The denoiser network and the masked-LM predictor wrapper: HF save/load (safetensors only), time conditioning,
causality of the AR baseline, SUBS parameterisation."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from textdiff.models import DenoiserConfig, DenoiserModel, DenoiserPredictor, MaskedLMPredictor, load_masked_lm
from textdiff.udm import Batch

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16)


def test_save_and_load_roundtrip_is_safetensors_only(tmp_path):
    torch.manual_seed(0)
    model = DenoiserModel(DenoiserConfig(**TINY)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = DenoiserModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 50, (2, 10))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.embed_tokens.weight.data_ptr()  # tied


def test_pickle_checkpoint_is_refused(tmp_path):
    DenoiserConfig(**TINY).save_pretrained(tmp_path)
    torch.save(DenoiserModel(DenoiserConfig(**TINY)).state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        DenoiserModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="pickle"):
        load_masked_lm(tmp_path)


def test_time_conditioning_is_optional():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    plain = DenoiserPredictor(DenoiserModel(DenoiserConfig(**TINY)).eval())
    assert not plain.time_conditioned
    torch.testing.assert_close(plain(Batch(ids), torch.tensor([0.1, 0.1])), plain(Batch(ids), torch.tensor([0.9, 0.9])))
    timed = DenoiserPredictor(DenoiserModel(DenoiserConfig(**TINY, time_conditioning=True)).eval())
    assert timed.time_conditioned
    assert not torch.allclose(timed(Batch(ids), torch.tensor([0.1, 0.1])), timed(Batch(ids), torch.tensor([0.9, 0.9])))
    with pytest.raises(ValueError, match="time-conditioned"):
        timed.model(ids)


def test_causal_baseline_ignores_the_future():
    torch.manual_seed(0)
    model = DenoiserModel(DenoiserConfig(**TINY, causal=True)).eval()
    a = torch.randint(0, 50, (1, 12))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 50
    torch.testing.assert_close(model(a).logits[0, :8], model(b).logits[0, :8])
    assert not torch.allclose(model(a).logits[0, 8:], model(b).logits[0, 8:])


def test_rotary_scores_depend_on_relative_position_only():
    from textdiff.models.denoiser import apply_rotary, rotary_tables

    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)
    rotary = rotary_tables(40, 16, "cpu")

    def score(i, j):
        at = lambda x, n: apply_rotary(x.expand(1, 1, 40, 16), rotary)[0, 0, n]
        return float(at(q, i) @ at(k, j))

    assert score(3, 7) == pytest.approx(score(20, 24), rel=1e-5)
    assert score(3, 7) != pytest.approx(score(3, 9), rel=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_does_not_leak_into_real_tokens(causal):
    """Appended padding (attention_mask 0) leaves the real tokens' logits unchanged; bidirectional models do see a
    later real token."""
    torch.manual_seed(0)
    model = DenoiserModel(DenoiserConfig(**TINY, causal=causal)).eval()
    ids = torch.randint(0, 50, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    torch.testing.assert_close(model(padded, attention_mask=mask).logits[:, :6], model(ids).logits)
    assert torch.isfinite(model(padded, attention_mask=mask).logits).all()
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 50
    assert torch.allclose(model(changed).logits[0, 0], model(ids).logits[0, 0]) == causal


def test_masked_lm_predictor_is_subs(tmp_path):
    """Any AutoModelForMaskedLM, wrapped: −inf on [MASK], point mass on visible tokens (carry-over)."""
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32)).eval()
    mask_id = 4
    predictor = MaskedLMPredictor(bert, mask_id)
    ids = torch.tensor([[2, 7, mask_id, 9, mask_id, 3]])
    logits = predictor(Batch(ids), torch.tensor([0.5]))
    assert torch.isinf(logits[..., mask_id]).all()
    visible = ids[0] != mask_id
    assert (logits[0, visible].argmax(-1) == ids[0, visible]).all()
    assert torch.isinf(logits[0, visible]).sum(-1).eq(49).all()
    probs = torch.softmax(logits[0, ~visible].double(), -1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, dtype=torch.float64))
    assert (probs > 0).sum(-1).eq(49).all() and math.isfinite(float(logits[0, 2, 0]))


@pytest.mark.parametrize("kind", ["masked_lm", "denoiser"])
def test_logits_at_equals_the_full_output_there(kind, device):
    """``logits_at`` (what the masking sampler asks for, docs/udm.md#logits-only-where-drawn) gives the predictor's
    own ``[B, L, V]`` output at the asked positions, the output head run there only; padding and rows without a
    position included."""
    torch.manual_seed(0)
    mask_id = 4
    if kind == "masked_lm":
        predictor = MaskedLMPredictor(BertForMaskedLM(BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32)).eval(), mask_id)
    else:
        predictor = DenoiserPredictor(DenoiserModel(DenoiserConfig(**TINY, time_conditioning=True)).eval())
    predictor.model.to(device)
    ids = torch.randint(5, 50, (4, 10), generator=torch.Generator().manual_seed(1))
    ids[ids % 3 == 0] = mask_id
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[1, 7:] = False
    x, t = Batch(ids, attention).to(device), torch.tensor([0.2, 0.5, 0.7, 0.9], device=device)
    where = (x.ids == mask_id) & x.attention_mask
    where[3] = False
    values = predictor.logits_at(x, t, where)
    assert values.shape == (int(where.sum()), 50) and values.device.type == torch.device(device).type
    torch.testing.assert_close(values, predictor(x, t)[where].to(values.dtype), atol=1e-4, rtol=1e-4)
