"""textdiff against SentencePiece itself, on models trained with sentencepiece on the English corpus: deterministic
encoding agrees on real lines; sampled segmentations follow the same law (two-sample test, and both against the exact
law by enumeration)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from textdiff.tokenization import UnigramTokenizer

spm = pytest.importorskip("sentencepiece")


def assert_same_ids_up_to_exact_ties(model: str, lines: list[str]) -> None:
    """Viterbi ids equal SentencePiece's on every line, except exact ties: the same pieces in another order (equal
    scores; SentencePiece's pick then depends on the float32 rounding of its running sum)."""
    ours = UnigramTokenizer.from_sentencepiece(model).encode(lines)
    theirs = spm.SentencePieceProcessor(model_file=model).encode(lines)
    ties = [(a, b) for a, b in zip(ours, theirs) if a != b]
    assert all(sorted(a) == sorted(b) for a, b in ties), ties[:3]
    assert len(ties) <= len(lines) // 5000


def test_viterbi_matches_sentencepiece_on_real_lines(sp_model, held_out):
    assert_same_ids_up_to_exact_ties(sp_model, held_out)


def test_fixed_shape_loops_decode_like_sentencepiece(sp_model, held_out, fixed_shapes):
    """The CUDA code path (fixed-shape loops), run on the CPU."""
    assert_same_ids_up_to_exact_ties(sp_model, held_out[:5000])


def test_viterbi_matches_sentencepiece_with_unknown_characters(sp_model_unk, held_out):
    sp = spm.SentencePieceProcessor(model_file=sp_model_unk)
    with_unk = [line for line in held_out[:8000] if sp.unk_id() in sp.encode(line)]
    assert len(with_unk) > 50  # the test exercises unknown characters
    assert_same_ids_up_to_exact_ties(sp_model_unk, with_unk)


def test_normalisation_corner_cases_match_sentencepiece(sp_model):
    """Plain ASCII lines take a batched route, the others go one by one; mixed batches must keep the line order."""
    texts = ["", " ", "  leading and   inner  spaces ", "tab\there\r\nnewline", "ﬁ ① Ｈｅｌｌｏ ½ é é",
             "emoji 🙂 and 中文",
             "\u200b zero width", "control \x07 bell", "nul \x00 inside", "ascii line between the others", "\x00"]
    tok = UnigramTokenizer.from_sentencepiece(sp_model)
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    for batch in (texts, texts[::-1] * 3, texts[4:7]):  # mixed, repeated, no ASCII-route line at all
        assert tok.encode(batch) == sp.encode(batch)
    assert tok.decode(tok.encode(texts)) == sp.decode(sp.encode(texts))


def exact_law(tok: UnigramTokenizer, text: str, alpha: float) -> dict[tuple[int, ...], float]:
    """All segmentations of the normalised ``text`` into lattice pieces, with their probabilities."""
    normalized = tok.normalize(text)
    scores = tok.vocab.lattice_scores().double().tolist()
    ids = {p: i for i, p in enumerate(tok.vocab.pieces) if not math.isnan(scores[i])}

    def walk(rest: str):
        if not rest:
            yield (), 0.0
        for end in range(1, len(rest) + 1):
            if rest[:end] in ids:
                head = ids[rest[:end]]
                for tail, score in walk(rest[end:]):
                    yield (head,) + tail, scores[head] + score

    scored = dict(walk(normalized))
    top = max(alpha * s for s in scored.values())
    log_z = top + math.log(math.fsum(math.exp(alpha * s - top) for s in scored.values()))
    return {seg: math.exp(alpha * s - log_z) for seg, s in scored.items()}


def pooled_table(a: Counter, b: Counter, min_count: int = 10) -> np.ndarray:
    cells = set(a) | set(b)
    big = [c for c in cells if a[c] + b[c] >= min_count]
    rest = [c for c in cells if a[c] + b[c] < min_count]
    table = [[a[c] for c in big], [b[c] for c in big]]
    if rest:
        table[0].append(sum(a[c] for c in rest))
        table[1].append(sum(b[c] for c in rest))
    return np.array(table)


N_SAMPLES = 20_000
SHORT = ["unbelievable", "the cat sat", "Wherever"]


@pytest.mark.parametrize("text", SHORT)
def test_sampling_law_matches_sentencepiece(sp_model, text):
    tok = UnigramTokenizer.from_sentencepiece(sp_model)
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    ours = Counter(map(tuple, tok.encode([text] * N_SAMPLES, alpha=0.5, seed=1)))
    theirs = Counter(map(tuple, sp.encode([text] * N_SAMPLES, enable_sampling=True, alpha=0.5, nbest_size=-1)))
    table = pooled_table(ours, theirs)
    assert table.shape[1] > 3  # a real distribution, not one dominant segmentation
    assert stats.chi2_contingency(table).pvalue > 1e-3
    law = exact_law(tok, text, 0.5)
    for counts in (ours, theirs):  # both against the exact law (cells pooled below 5 expected)
        expected = np.array([law[c] * N_SAMPLES for c in law])
        observed = np.array([counts.get(c, 0) for c in law], dtype=float)
        small = expected < 5
        expected = np.append(expected[~small], expected[small].sum())
        observed = np.append(observed[~small], observed[small].sum())
        assert sum(counts.values()) == N_SAMPLES and set(counts) <= set(law)
        assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_two_sample_test_detects_a_different_alpha(sp_model):
    """Negative control for the test above: SentencePiece at alpha 0.5 vs textdiff at alpha 0.3 must differ."""
    tok = UnigramTokenizer.from_sentencepiece(sp_model)
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    text = SHORT[0]
    ours = Counter(map(tuple, tok.encode([text] * N_SAMPLES, alpha=0.3, seed=1)))
    theirs = Counter(map(tuple, sp.encode([text] * N_SAMPLES, enable_sampling=True, alpha=0.5, nbest_size=-1)))
    assert stats.chi2_contingency(pooled_table(ours, theirs)).pvalue < 1e-6


def test_word_cache_changes_no_output(sp_model, held_out):
    """Viterbi ids equal SentencePiece's with the cache cold, warm, disabled and evicting on every call, and seeded
    samples are the same draws whatever the cache holds (the walk's randomness does not depend on it)."""
    lines = held_out[:5000]
    batches = [lines[i : i + 256] for i in range(0, len(lines), 256)]
    warm, off, tiny = (UnigramTokenizer.from_sentencepiece(sp_model) for _ in range(3))
    off.cache_size, tiny.cache_size = 0, 20_000
    assert_same_ids_up_to_exact_ties(sp_model, lines)
    viterbi = warm.encode(lines)  # cold: every word is a miss
    assert warm.encode(lines) == viterbi and warm.cache_info()["hits"] > 0
    assert off.encode(lines) == viterbi and off.cache_info()["words"] == 0
    assert [ids for batch in batches for ids in tiny.encode(batch)] == viterbi
    assert tiny.cache_info()["bytes"] <= 20_000
    sampled = warm.encode(lines, alpha=0.1, seed=3)
    assert sampled == warm.encode(lines, alpha=0.1, seed=3) == off.encode(lines, alpha=0.1, seed=3)
    assert [warm.encode(b, alpha=0.1, seed=i) for i, b in enumerate(batches)] == \
        [tiny.encode(b, alpha=0.1, seed=i) for i, b in enumerate(batches)]
    assert warm.decode(sampled) == warm.decode(viterbi)


def test_walk_finishes_path_by_path_with_the_same_draws(sp_model, held_out, monkeypatch):
    """The Python tail of a compact walk (few paths left) makes the draws the vectorised steps make."""
    from textdiff.tokenization import wordwalks

    tok = UnigramTokenizer.from_sentencepiece(sp_model)
    lines = held_out[:2000]
    outputs = []
    for paths in (0, wordwalks.SCALAR_PATHS, 10**9):  # never, by default, after the first step
        monkeypatch.setattr(wordwalks, "SCALAR_PATHS", paths)
        outputs.append((tok.encode(lines, alpha=0.1, seed=4), [tok.encode(lines[i : i + 256], alpha=0.3, seed=i)
                                                               for i in range(0, len(lines), 256)]))
    assert outputs[0] == outputs[1] == outputs[2]
