"""The device pipeline (docs/tokenization.md, "Device pipeline"): ``UnigramTokenizer.encode_bytes`` on UTF-8 bytes
and offsets must give exactly ``encode``'s law: identical Viterbi ids (device lines, host fallback lines, every
edge case), identical seeded samples on the CPU, and the exact law on enumerable toys (first sight and cache hits,
both loop forms), which a variant sharing one draw between the occurrences of a word fails; word lookup must stay
exact when every hash collides."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from test_exactness import ABABAB_COUNTS, N_DRAWS, exact_law, law_test

from textdiff import rng
from textdiff.tokenization import UnigramTokenizer, bytes_input, wordtables
from textdiff.tokenization.bytes_input import arrow_text
from textdiff.tokenization.charsmap import SentencePieceNormalizer
from textdiff.tokenization.normalization import METASPACE, TextPipeline

pa = pytest.importorskip("pyarrow")
EDGE_LINES = ["", " ", "    ", "\t", "a", " a  b   c ", "héllo wörld", "日本語 テキスト", "x\x01y \x7f z", "tab\there",
              "ｸﾞ full-width Ａ１", "a" * 300, "▁ literal", "end  ", "  start"]


def to_bytes(lines: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes and offsets of ``lines`` (through Arrow, as a datasets column gives them)."""
    return arrow_text(pa.array(lines))


def assert_same(ours: dict, reference: dict) -> None:
    assert torch.equal(ours["input_ids"].cpu(), reference["input_ids"].cpu())
    assert torch.equal(ours["attention_mask"].cpu(), reference["attention_mask"].cpu())


@pytest.mark.parametrize("model", ["sp_model", "sp_model_unk"])
def test_viterbi_ids_equal_encode(model, held_out, request, device):
    """Held-out corpus lines (some non-ASCII: host fallback) and edge cases, cold and warm cache."""
    tok = UnigramTokenizer.from_sentencepiece(request.getfixturevalue(model))
    lines = held_out[:3000] + EDGE_LINES
    assert any(not line.isascii() for line in held_out[:3000])
    data, offsets = to_bytes(lines)
    reference = tok.encode(lines, return_tensors="pt")
    fresh = UnigramTokenizer.from_sentencepiece(request.getfixturevalue(model))
    for _ in range(2):  # first sight, then from the cache
        assert_same(fresh.encode_bytes(data, offsets, device=device), reference)
    assert_same(tok.encode_bytes(data, offsets, device=device), reference)  # a cache that encode filled


def test_seeded_samples_equal_encode_on_ascii_lines(held_out):
    """On the CPU the device path walks exactly as encode does: same seed, same ids (cold, warm, evicting)."""
    model = "textdiff/assets/tokenizers/en-unigram-8k.model"
    lines = [line for line in held_out[:2000] if line.isascii()] + ["", "   ", "a  b"]
    data, offsets = to_bytes(lines)
    reference = UnigramTokenizer.from_sentencepiece(model).encode(lines, alpha=0.1, seed=5, return_tensors="pt")
    for cache_size in (None, 30_000):
        tok = UnigramTokenizer.from_sentencepiece(model)
        if cache_size:
            tok.cache_size = cache_size
        for _ in range(2):
            assert_same(tok.encode_bytes(data, offsets, alpha=0.1, seed=5), reference)


def test_fixed_shape_output_is_a_valid_segmentation(held_out, fixed_shapes):
    """The accelerator loops (table draws apart from walks, fixed shapes) on the CPU: every drawn segmentation
    spells its line (sampling), and decoding equals encode."""
    tok = UnigramTokenizer.from_sentencepiece("textdiff/assets/tokenizers/en-unigram-8k.model")
    lines = held_out[:500] + EDGE_LINES
    data, offsets = to_bytes(lines)
    assert_same(tok.encode_bytes(data, offsets), tok.encode(lines, return_tensors="pt"))
    out = tok.encode_bytes(data, offsets, alpha=0.1, seed=1)
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(out["input_ids"], out["attention_mask"])]
    assert [tok.decode(row) for row in rows] == tok.decode(tok.encode(lines))


# --- the exact law through the device path ---------------------------------------------------------------------------


def spaced(counts: dict[str, float]) -> UnigramTokenizer:
    """A toy with SentencePiece's default whitespace rules and no charsmap (its lines take the device path): the
    pieces of ``counts`` plus ``▁``, the only piece holding it, so ``▁word`` has the law of ``word``."""
    toy = UnigramTokenizer.from_counts({**counts, METASPACE: 4})
    return UnigramTokenizer(toy.vocab, TextPipeline(sentencepiece=SentencePieceNormalizer()))


def pair_draws(tok: UnigramTokenizer, word: str, alpha: float, seed: int) -> Counter:
    """``N_DRAWS // 2`` lines ``"word word"`` in one call: the pair of segmentations of every line."""
    data, offsets = to_bytes([f" {word}  {word} "] * (N_DRAWS // 2))
    out = tok.encode_bytes(data, offsets, alpha=alpha, seed=seed)
    rows = [row[mask.bool()].tolist() for row, mask in zip(out["input_ids"], out["attention_mask"])]
    space = tok.piece_to_id(METASPACE)
    counts = Counter()
    for row in rows:
        assert row[0] == space
        cut = row.index(space, 1)
        counts[(tuple(map(tok.id_to_piece, row[:cut])), tuple(map(tok.id_to_piece, row[cut:])))] += 1
    return counts


def joint_law(tok: UnigramTokenizer, word: str, alpha: float) -> dict:
    single = exact_law(METASPACE + word, tok, alpha)
    return {(a, b): p * q for a, p in single.items() for b, q in single.items()}


@pytest.mark.parametrize("limit", [wordtables.TABLE_LIMIT, 4, 0])
@pytest.mark.parametrize("loops", ["compact", "fixed_shapes"])
def test_device_path_draws_follow_exact_law(loops, limit, request, monkeypatch):
    """Two occurrences of ``ababab`` per line: the joint law of their segmentations is the product of the exact
    laws, on first sight (a miss built on the host) and from the cache (a hit found on the device); ``limit``: a
    table of the whole word, tables of its first units, or predecessor draws only."""
    monkeypatch.setattr(wordtables, "TABLE_LIMIT", limit)
    if loops == "fixed_shapes":
        request.getfixturevalue("fixed_shapes")
    tok = spaced(ABABAB_COUNTS)
    law = joint_law(tok, "ababab", 0.5)
    assert len(law) == 28 * 28
    first = pair_draws(tok, "ababab", 0.5, seed=31)
    assert tok.cache_info()["misses"] == 1 and tok.cache_info()["hits"] == 0
    again = pair_draws(tok, "ababab", 0.5, seed=32)
    assert tok.cache_info()["hits"] == 1
    for counts in (first, again):
        p_value, worst = law_test(counts, law)
        assert p_value > 1e-3 and worst < 4.5, (p_value, worst)


@pytest.mark.parametrize("loops", ["compact", "fixed_shapes"])
def test_sharing_a_draw_between_occurrences_fails(loops, request, monkeypatch):
    """Negative control: the two occurrences of the word in a line share their uniforms (one draw per word and
    line, the mistake a word cache invites); the same test must reject it."""
    if loops == "fixed_shapes":
        request.getfixturevalue("fixed_shapes")
    uniform = rng.uniform

    def shared(shape, generator, device=None):
        n = shape[0]
        return uniform(((n + 1) // 2,), generator, device).repeat_interleave(2)[:n]

    tok = spaced(ABABAB_COUNTS)
    pair_draws(tok, "ababab", 0.5, seed=33)  # cache the word
    monkeypatch.setattr(rng, "uniform", shared)
    p_value, worst = law_test(pair_draws(tok, "ababab", 0.5, seed=34), joint_law(tok, "ababab", 0.5))
    assert p_value < 1e-10 and worst > 10, (p_value, worst)


def test_lookup_is_exact_when_every_hash_collides(held_out, monkeypatch):
    """All words hash alike: hits are found by comparing bytes, the rest resolved on the host; ids unchanged."""
    model = "textdiff/assets/tokenizers/en-unigram-8k.model"
    lines = [line for line in held_out[:300] + EDGE_LINES if line.isascii()]  # seeded samples equal encode's
    reference = UnigramTokenizer.from_sentencepiece(model).encode(lines, return_tensors="pt")
    sampled = UnigramTokenizer.from_sentencepiece(model).encode(lines, alpha=0.1, seed=2, return_tensors="pt")
    monkeypatch.setattr(bytes_input, "word_hash", lambda data, start, length: torch.zeros_like(start))
    data, offsets = to_bytes(lines)
    tok = UnigramTokenizer.from_sentencepiece(model)
    for _ in range(2):  # first sight, then hits found by bytes among equal hashes
        assert_same(tok.encode_bytes(data, offsets), reference)
        assert_same(tok.encode_bytes(data, offsets, alpha=0.1, seed=2), sampled)


# --- edge cases and bad input -----------------------------------------------------------------------------------------


def test_empty_and_blank_batches():
    tok = UnigramTokenizer.from_sentencepiece("textdiff/assets/tokenizers/en-unigram-8k.model")
    out = tok.encode_bytes(torch.zeros(0, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), alpha=0.1)
    assert out["input_ids"].shape == (0, 0) and out["attention_mask"].shape == (0, 0)
    data, offsets = to_bytes(["", "   ", "\t \t"])
    out = tok.encode_bytes(data, offsets, alpha=0.1, seed=0)
    assert_same(out, tok.encode(["", "   ", "\t \t"], return_tensors="pt"))
    assert out["input_ids"].shape[0] == 3 and int(out["attention_mask"].sum()) == 0


def test_models_without_the_byte_route_take_the_host_path():
    """A tokenizer without SentencePiece's whitespace rules (here: pieces only, whole lines as chunks) is served
    by the host pipeline inside encode_bytes: same ids as encode."""
    tok = UnigramTokenizer.from_counts({**ABABAB_COUNTS, " ": 1.0}, byte_fallback=True)
    lines = ["ababab", "ab ab", "", "abx", "bäb"]
    data, offsets = to_bytes(lines)
    assert_same(tok.encode_bytes(data, offsets), tok.encode(lines, return_tensors="pt"))


def test_bad_input_names_the_parameter():
    tok = UnigramTokenizer.from_sentencepiece("textdiff/assets/tokenizers/en-unigram-8k.model")
    data, offsets = to_bytes(["abc", "de"])
    with pytest.raises(ValueError, match="data"):
        tok.encode_bytes(data.long(), offsets)
    with pytest.raises(ValueError, match="data"):
        tok.encode_bytes(data.view(1, -1), offsets)
    with pytest.raises(TypeError, match="data"):
        tok.encode_bytes(b"abcde", offsets)
    with pytest.raises(ValueError, match="offsets"):
        tok.encode_bytes(data, offsets.double())
    with pytest.raises(ValueError, match="offsets"):
        tok.encode_bytes(data, torch.tensor([0, 4, 3, 5]))
    with pytest.raises(ValueError, match="offsets"):
        tok.encode_bytes(data, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="offsets"):
        tok.encode_bytes(data, torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="data: line 1"):
        tok.encode_bytes(torch.tensor([97, 0xFF, 0xFE], dtype=torch.uint8), torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="alpha"):
        tok.encode_bytes(data, offsets, alpha=float("nan"))


def test_offsets_may_skip_bytes_and_start_late():
    """Line ``i`` is ``data[offsets[i]:offsets[i + 1]]`` whatever lies outside: an Arrow slice's buffers."""
    tok = UnigramTokenizer.from_sentencepiece("textdiff/assets/tokenizers/en-unigram-8k.model")
    data = torch.frombuffer(bytearray(b"xx hello world again"), dtype=torch.uint8)
    out = tok.encode_bytes(data, torch.tensor([3, 14, 14, 20]), alpha=None)
    assert_same(out, tok.encode(["hello world", "", " again"], return_tensors="pt"))


# --- Arrow input ------------------------------------------------------------------------------------------------------


def test_arrow_text_reads_every_string_layout():
    lines = ["alpha beta", "", "gamma", "δέλτα", "e" * 20]
    expected = b"".join(line.encode() for line in lines)
    bounds = np.cumsum([0] + [len(line.encode()) for line in lines]).tolist()
    for array in (pa.array(lines), pa.array(lines, pa.large_string()),
                  pa.chunked_array([pa.array(lines[:2]), pa.array(lines[2:])]),
                  pa.array(["skip"] + lines + ["skip"]).slice(1, len(lines))):
        data, offsets = arrow_text(array)
        assert data.dtype == torch.uint8 and offsets.dtype == torch.int64
        assert data.numpy().tobytes() == expected and offsets.tolist() == bounds
    table = pa.table({"text": lines})
    assert arrow_text(table, "text")[1].tolist() == bounds
    with pytest.raises(ValueError, match="null"):
        arrow_text(pa.array(["a", None]))
    with pytest.raises(ValueError, match="strings"):
        arrow_text(pa.array([1, 2]))
    with pytest.raises(ValueError, match="column"):
        arrow_text(table, "label")


def test_arrow_text_follows_a_datasets_row_order():
    datasets = pytest.importorskip("datasets")
    lines = [f"line {i} " + "w" * (i % 7) for i in range(50)]
    ds = datasets.Dataset.from_dict({"text": lines}).shuffle(seed=0).select(range(10, 40))
    data, offsets = arrow_text(ds, "text")
    bounds = offsets.tolist()
    assert [data[b:e].numpy().tobytes().decode() for b, e in zip(bounds, bounds[1:])] == ds["text"][:]
    tok = UnigramTokenizer.from_sentencepiece("textdiff/assets/tokenizers/en-unigram-8k.model")
    assert_same(tok.encode_bytes(data, offsets), tok.encode(list(ds["text"]), return_tensors="pt"))
