"""Fixtures for the tokenizer tests: real corpus lines and small SentencePiece unigram models trained on them."""

from __future__ import annotations

import io
import random

import pytest

spm = pytest.importorskip("sentencepiece")

CORPUS_FILES = ("gutenberg.txt", "movie_reviews.txt", "wordnet_examples.txt", "state_union.txt", "inaugural.txt")


@pytest.fixture(scope="session")
def corpus_lines(corpus_dir) -> list[str]:
    """Non-empty lines of several English corpora (or of the shipped subsample), shuffled with a fixed seed."""
    paths = [corpus_dir / name for name in CORPUS_FILES if (corpus_dir / name).is_file()]
    lines = []
    for path in paths or sorted(corpus_dir.glob("*.txt")):
        lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(0).shuffle(lines)
    return lines


def _train(lines: list[str], path, **options) -> str:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="unigram", num_threads=1, minloglevel=2,
        **options,
    )
    path.write_bytes(model.getvalue())
    return str(path)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, corpus_lines) -> str:
    """A 1000-piece SentencePiece unigram model with byte fallback (trained on 10k lines in a few seconds)."""
    path = tmp_path_factory.mktemp("spm") / "bytes.model"
    return _train(corpus_lines[:10000], path, vocab_size=1000, byte_fallback=True)


@pytest.fixture(scope="session")
def sp_model_unk(tmp_path_factory, corpus_lines) -> str:
    """A 400-piece model without byte fallback and with 99 % character coverage, so real text meets ``<unk>``."""
    path = tmp_path_factory.mktemp("spm") / "unk.model"
    return _train(corpus_lines[:10000], path, vocab_size=400, character_coverage=0.99)


@pytest.fixture(scope="session")
def held_out(corpus_lines) -> list[str]:
    """Lines no fixture model was trained on."""
    return corpus_lines[-20000:]


@pytest.fixture
def fixed_shapes(monkeypatch):
    """Run the CUDA code path on the CPU: loops of fixed shape that never read device values on the host
    (``compact=False`` in ``textdiff.tokenization.viterbi`` and ``lattice``)."""
    from textdiff.tokenization import UnigramTokenizer

    monkeypatch.setattr(UnigramTokenizer, "_compact", staticmethod(lambda device: False))
