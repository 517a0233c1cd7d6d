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
    from textdiff.tokenization.segmenter import WordSegmenter

    monkeypatch.setattr(WordSegmenter, "compact", staticmethod(lambda device: False))


def _cjk_lines(n: int, seed: int = 0) -> list[str]:
    """Synthetic Japanese-like text: Zipf-distributed words over 3,000 ideographs and the kana, with half-width and
    full-width forms, so that the charsmap's composition rules matter."""
    rng = random.Random(seed)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)] + [chr(c) for c in range(0x3041, 0x3097)]
    extra = ["ｸﾞ", "ｶﾞ", "ﾊﾟ", "ｱ", "Ａ", "１", "、", "。", "\u3000", " "]
    words = ["".join(rng.choice(chars) for _ in range(rng.randint(1, 4))) for _ in range(3000)] + extra
    weights = [1 / (i + 1) for i in range(len(words) - len(extra))] + [0.05] * len(extra)
    return ["".join(rng.choices(words, weights, k=rng.randint(5, 20))) for _ in range(n)]


FIDELITY_OPTIONS = {
    "nmt_nfkc": dict(vocab_size=400),
    "nfkc": dict(vocab_size=400, normalization_rule_name="nfkc"),
    "identity": dict(vocab_size=400, normalization_rule_name="identity"),
    "spaces_kept": dict(vocab_size=400, remove_extra_whitespaces=False),
    "no_dummy_prefix": dict(vocab_size=400, add_dummy_prefix=False, byte_fallback=True),
    "user_symbols": dict(vocab_size=400, user_defined_symbols=["ing", "<sep>", "ｸﾞ", "\u2581\u2581", "a\tb"]),
    "cjk_bytes": dict(vocab_size=6000, byte_fallback=True, character_coverage=0.9995, user_defined_symbols=["ｶﾞｶﾞ"]),
}


@pytest.fixture(scope="session")
def fidelity_models(tmp_path_factory, corpus_lines) -> dict[str, str]:
    """SentencePiece models that provoke each normalisation and scoring rule (about 5 s to train in all)."""
    folder = tmp_path_factory.mktemp("fidelity")
    english = corpus_lines[:1200]
    return {name: _train(_cjk_lines(4000) if name.startswith("cjk") else english, folder / f"{name}.model", **options)
            for name, options in FIDELITY_OPTIONS.items()}


@pytest.fixture(scope="session")
def cjk_lines():
    """``cjk_lines(n, seed)``: synthetic Japanese-like lines (Zipf words over 3,000 ideographs, kana, width forms)."""
    return _cjk_lines
