"""Label-conditional masked-diffusion training (textdiff.training.conditional, recipes/train_conditional.py): row
format, protection, null-condition drop rate, a few optimisation steps, the saved condition table, the recipe's CLI
and model card."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from textdiff.training.conditional import (
    CONDITION_POSITION,
    CONDITION_TOKENS,
    ConditionalTrainer,
    ConditionDropStream,
    as_dataset,
    condition_ids,
    encode_rows,
    labeled_rows,
    padded_batch,
    save_condition_table,
)
from textdiff.training.trainer import TrainConfig
from textdiff.udm.masking import MaskingProcess
from textdiff.udm.process import Noise

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
WORDS = "the a film movie is was good bad great dull fun boring plot story".split()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A tiny WordPiece tokenizer with the bert-base-uncased special and ``[unusedN]`` tokens."""
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("condtok")
    specials = ["[PAD]", *(f"[unused{i}]" for i in range(5)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (root / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    return BertTokenizerFast(str(root / "vocab.txt"))


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """Both task files with a few sentences each (the split is decided by the text, so use many)."""
    import random

    root = tmp_path_factory.mktemp("labeled")
    rng = random.Random(0)
    for name, labels in (("sentence_polarity.tsv", ("positive", "negative")),
                         ("subjectivity.tsv", ("subjective", "objective"))):
        lines = [f"{rng.choice(labels)}\t" + " ".join(rng.choices(WORDS, k=rng.randint(2, 9))) for _ in range(300)]
        (root / name).write_text("label\ttext\n" + "\n".join(dict.fromkeys(lines)) + "\n")
    return root



def tiny_bert(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=80))


def test_rows_carry_the_condition_at_position_1(tokenizer, labeled):
    ids = condition_ids(tokenizer)
    rows = {mode: labeled_rows(tokenizer, "train", mode, folder=labeled) for mode in ("true", "null", "wrong", "none")}
    cond = rows["true"][:, CONDITION_POSITION]
    assert set(cond.tolist()) == {ids[k] for k in ("positive", "negative", "subjective", "objective")}
    assert (rows["null"][:, CONDITION_POSITION] == ids["null"]).all()
    flipped = {ids["positive"]: ids["negative"], ids["negative"]: ids["positive"],
               ids["subjective"]: ids["objective"], ids["objective"]: ids["subjective"]}
    assert rows["wrong"][:, CONDITION_POSITION].tolist() == [flipped[c] for c in cond.tolist()]
    assert (rows["true"][:, 0] == tokenizer.cls_token_id).all()
    assert torch.equal(rows["true"][:, 2:], rows["none"][:, 1:])  # same bodies, one prefix token fewer


def test_rows_are_truncated_and_right_padded(tokenizer):
    rows = encode_rows(tokenizer, ["good film", " ".join(["fun"] * 10)], [1, 2], body_len=4)
    pad, sep = tokenizer.pad_token_id, tokenizer.sep_token_id
    assert rows.shape == (2, 7)
    assert rows[0].tolist()[4:] == [sep, pad, pad] and rows[1, -1] == sep and rows[:, 1].tolist() == [1, 2]


def test_masking_never_touches_cls_condition_sep_or_padding(tokenizer):
    rows = encode_rows(tokenizer, ["good film", "the plot was dull and boring"], [1, 3])
    rows = torch.cat([rows, torch.full((2, 3), tokenizer.pad_token_id)], 1)  # extra padding is trimmed
    batch = padded_batch(rows, tokenizer.pad_token_id, 2)
    assert batch.ids.shape[1] == rows.shape[1] - 3
    process = MaskingProcess(tokenizer.mask_token_id)
    x_t = process.corrupt(batch, torch.ones(2, dtype=torch.float64), Noise(torch.zeros(batch.ids.shape)))
    masked = x_t.ids == tokenizer.mask_token_id
    assert torch.equal(masked, batch.corruptible)
    lengths = batch.attention_mask.sum(-1)
    for i, n in enumerate(lengths.tolist()):
        assert x_t.ids[i, 0] == tokenizer.cls_token_id and x_t.ids[i, 1] == rows[i, 1]
        assert x_t.ids[i, n - 1] == tokenizer.sep_token_id and masked[i, 2 : n - 1].all()
        assert (x_t.ids[i, n:] == tokenizer.pad_token_id).all()


def test_condition_drop_rate_is_p_uncond_and_seeded(tokenizer):
    n, batch, p = 4000, 200, 0.1
    ids = condition_ids(tokenizer)
    null = ids["null"]
    rows = as_dataset(encode_rows(tokenizer, ["good film"] * n, [ids["positive"]] * n))

    def drops(seed: int) -> torch.Tensor:
        stream = iter(ConditionDropStream(rows, batch, seed, 0, 1, null, p))
        return torch.cat([next(stream)[:, CONDITION_POSITION] == null for _ in range(n // batch)])

    dropped = drops(0)
    assert abs(int(dropped.sum()) - n * p) < 4 * math.sqrt(n * p * (1 - p))  # binomial, 4 sd
    assert torch.equal(dropped, drops(0)) and not torch.equal(dropped, drops(1))


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(tokenizer, labeled, tmp_path, one_thread):
    rows = as_dataset(labeled_rows(tokenizer, "train", folder=labeled)[:8])
    config = TrainConfig(batch_size=8, max_steps=30, lr=3e-3, warmup_steps=2, eval_every=0, save_every=0, seed=1)
    trainer = ConditionalTrainer(tiny_bert(tokenizer), config, tokenizer, rows, tmp_path, log=print)
    before = trainer.evaluate(rows, repeats=4).nll
    trainer.train(progress=False)
    after = trainer.evaluate(rows, repeats=4).nll
    assert after < before - 0.5, (before, after)


def test_saved_config_carries_the_condition_table(tokenizer, tmp_path):
    from transformers import AutoConfig

    model = tiny_bert(tokenizer)
    save_condition_table(model.config)
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.condition_tokens == CONDITION_TOKENS and config.condition_position == CONDITION_POSITION


def test_missing_condition_tokens_are_a_clear_error(tmp_path):
    from transformers import BertTokenizerFast

    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nfilm\n")
    with pytest.raises(ValueError, match=r"lacks the condition token"):
        condition_ids(BertTokenizerFast(str(tmp_path / "vocab.txt")))


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_conditional", REPO / "recipes" / "train_conditional.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_model_card(tmp_path):
    recipe = load_recipe()
    (tmp_path / "model.safetensors").write_bytes(b"0" * 1024)
    numbers = {k: {"nll": 3.0 + i, "ppl": math.exp(3.0 + i), "tokens": 100} for i, k in enumerate(recipe.COLUMNS)}
    numbers |= {"true-null": {"diff": -1.0, "se": 0.01}, "wrong-null": {"diff": 1.0, "se": 0.02}}
    metrics = {"history": [{"steps": 10, "seconds": 60.0, "end_step": 10, "lr": 1e-4, "batch_size": 32,
                            "max_steps": 10, "warmup_steps": 2, "seed": 0}],
               "train_sentences": 123, "p_uncond": 0.1, "repeats": 2, "platform": "x86_64", "command": "(defaults)",
               "valid_curve": [{"step": 10, "eval_nll": 3.5}], "test": {"all": numbers, "sentiment": numbers}}
    recipe.write_card(tmp_path, metrics)
    card = (tmp_path / "README.md").read_text()
    assert "| all | 3.0000 | 4.0000 | 5.0000 | 6.0000 | -1.0000 ± 0.0100 | +1.0000 ± 0.0200 | 100 |" in card
    assert "[unused0]" in card
    assert "not exact for w ≠ 0" in card
    assert json.loads((tmp_path / "training_metrics.json").read_text()) == metrics


@pytest.mark.parametrize("argv", [["--minutes", "0"], ["--p-uncond", "2"], ["--repeats", "x"]])
def test_recipe_rejects_bad_arguments(argv):
    done = subprocess.run([sys.executable, str(REPO / "recipes" / "train_conditional.py"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr
