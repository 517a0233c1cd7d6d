"""A tiny word-level tokenizer and a toy corpus for the training tests (built offline in a temp dir)."""

from __future__ import annotations

import random

import pytest
import torch

WORDS = "the a cat dog sat ran on mat log and big small red blue".split()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("toy")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(root / "tokenizer")
    rng = random.Random(0)
    for name, n in (("train", 400), ("valid", 40)):
        lines = [f"the {rng.choice(['big', 'small'])} {rng.choice(['cat', 'dog'])} {rng.choice(['sat', 'ran'])} on "
                 f"the {rng.choice(['red', 'blue'])} {rng.choice(['mat', 'log'])}" for _ in range(n)]
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (restored afterwards): training numbers then do not depend on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
