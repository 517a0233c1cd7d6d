"""Public API: loaders, persistence, bad input, reproducibility, DataLoader workers, datasets transform, CLI."""

from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from textdiff.cli import main
from textdiff.tokenization import UnigramTokenizer

TEXT = "Stochastic segmentation regularises subword models, and textdiff samples it exactly."


@pytest.fixture(scope="module")
def tok(sp_model) -> UnigramTokenizer:
    return UnigramTokenizer.from_sentencepiece(sp_model)


# --- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_non_finite_alpha_is_rejected(tok, alpha):
    with pytest.raises(ValueError, match="alpha"):
        tok.encode([TEXT], alpha=alpha)


def test_wrong_types_are_rejected(tok):
    with pytest.raises(TypeError, match="alpha"):
        tok.encode([TEXT], alpha="0.1")
    with pytest.raises(TypeError, match="texts"):
        tok.encode([TEXT, 3])
    with pytest.raises(TypeError, match="seed"):
        tok.encode([TEXT], alpha=0.1, seed=1.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_cache_size_is_checked(tok):
    with pytest.raises(TypeError, match="cache_size"):
        UnigramTokenizer(tok.vocab, tok.pipeline, cache_size=1.5)
    with pytest.raises(ValueError, match="cache_size must be an integer >= 0"):
        tok.cache_size = -1


def test_cache_stays_within_its_size_across_alphas_and_calls(sp_model, corpus_lines):
    """Several stores (Viterbi, two alphas) share one bound; hits are counted per distinct word and call."""
    tok = UnigramTokenizer.from_sentencepiece(sp_model)
    tok.cache_size = 300_000
    lines = corpus_lines[:2000]
    for start in range(0, len(lines), 256):
        for alpha in (None, 0.1, 0.5):
            tok.encode(lines[start : start + 256], alpha=alpha, seed=0)
            assert tok.cache_info()["bytes"] <= tok.cache_size
    info = tok.cache_info()
    assert info["hits"] > 0 and info["misses"] > 0 and 0 < info["words"]
    tok.cache_clear()
    assert tok.cache_info() == {"hits": 0, "misses": 0, "words": 0, "bytes": 0, "cache_size": 300_000}


def test_vocabulary_without_single_characters_is_rejected():
    with pytest.raises(ValueError, match="single-character"):
        UnigramTokenizer.from_pieces(["ab", "abc", "bc"], [-1.0, -2.0, -2.0])


def test_unsegmentable_text_names_the_problem():
    tok = UnigramTokenizer.from_pieces(["a", "b", "ab"], [-1.0, -1.0, -1.5])
    assert tok.encode(["abba"], alpha=0.5, seed=0)[0]  # coverable text works
    for alpha in (None, 0.5):
        with pytest.raises(ValueError, match="'abc' cannot be segmented.*byte_fallback"):
            tok.encode(["ab", "abc"], alpha=alpha, seed=0)
    with pytest.raises(ValueError, match="cannot be segmented"):
        tok.segmentation_stats(["abc"], 0.5)
    fallback = UnigramTokenizer.from_pieces(["a", "b", "ab"], [-1.0, -1.0, -1.5], byte_fallback=True)
    assert fallback.decode(fallback.encode("abc€")) == "abc€"


def test_corrupt_model_file_is_rejected(tmp_path, sp_model):
    data = open(sp_model, "rb").read()
    for name, blob in {"truncated": data[: len(data) // 3], "garbage": os.urandom(2000), "empty": b""}.items():
        path = tmp_path / f"{name}.model"
        path.write_bytes(blob)
        with pytest.raises(ValueError, match="SentencePiece model"):
            UnigramTokenizer.from_sentencepiece(path)


def test_non_unigram_sentencepiece_model_is_rejected(tmp_path, corpus_lines):
    spm = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines[:2000]), model_writer=model, vocab_size=200,
                                   model_type="bpe", minloglevel=2, num_threads=1)
    (tmp_path / "bpe.model").write_bytes(model.getvalue())
    with pytest.raises(ValueError, match="BPE"):
        UnigramTokenizer.from_sentencepiece(tmp_path / "bpe.model")


def test_non_unigram_tokenizer_json_is_rejected(tmp_path, corpus_lines):
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(corpus_lines[:500], trainers.BpeTrainer(vocab_size=200, special_tokens=["[UNK]"]))
    bpe.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="'BPE'.*Unigram"):
        UnigramTokenizer.from_hf(tmp_path / "tokenizer.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        UnigramTokenizer.from_hf(tmp_path / "bad.json")


# --- loaders and persistence ---------------------------------------------------------------------------------------


def test_from_counts_scores_are_normalised_log_probabilities():
    tok = UnigramTokenizer.from_counts({"a": 3, "b": 1})
    assert [math.exp(s) for s in tok.vocab.scores] == pytest.approx([0.75, 0.25])


def test_train_and_hf_round_trip(tmp_path, corpus_lines):
    tok = UnigramTokenizer.train(corpus_lines[:1000], vocab_size=400, max_piece_length=8)
    assert tok.vocab.byte_fallback and 300 < tok.vocab_size <= 400 + 256
    lines = [line for line in corpus_lines[3000:3200] if line.isascii() and not line.startswith(" ")]
    for alpha in (None, 0.3):
        assert tok.decode(tok.encode(lines, alpha=alpha, seed=0)) == lines  # NFKC is the identity on ASCII
    hf = Tokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, unk_token="<unk>", special_tokens=["<unk>"], max_piece_length=8)
    hf.train_from_iterator(corpus_lines[:1000], trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = UnigramTokenizer.from_hf(tmp_path / "tokenizer.json")
    lines = [line for line in corpus_lines[3000:4000] if line.isascii()]
    same = sum(a == b.ids for a, b in zip(ours.encode(lines), hf.encode_batch(lines))) / len(lines)
    assert same >= 0.99  # HF's own Viterbi on the same tokenizer.json


@pytest.mark.parametrize("kind", ["sentencepiece", "pieces"])
def test_save_load_round_trip(tmp_path, tok, kind):
    model = tok if kind == "sentencepiece" else UnigramTokenizer.from_counts({"a": 2, "b": 1, "ab\nc": 1},
                                                                              byte_fallback=True)
    path = tmp_path / "sub" / "tok.safetensors"
    model.save(path)
    assert sorted(os.listdir(path.parent)) == ["tok.safetensors"]  # atomic write left no temporary file
    again = UnigramTokenizer.load(path)
    texts = [TEXT, "ab\nc ab  €", ""]
    assert again.encode(texts) == model.encode(texts)
    assert again.encode(texts, alpha=0.4, seed=9) == model.encode(texts, alpha=0.4, seed=9)
    assert again.decode(again.encode(texts)) == model.decode(model.encode(texts))
    model.save_pretrained(tmp_path / "dir")
    assert UnigramTokenizer.from_pretrained(tmp_path / "dir").encode(texts) == model.encode(texts)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a textdiff tokenizer"):
        UnigramTokenizer.load(tmp_path / "junk.safetensors")


# --- reproducibility and pipelines ---------------------------------------------------------------------------------


def test_seed_and_generator_reproduce_samples(tok):
    texts = [TEXT] * 8
    first = tok.encode(texts, alpha=0.2, seed=5)
    assert first == tok.encode(texts, alpha=0.2, seed=5)
    assert first == tok.encode(texts, alpha=0.2, generator=torch.Generator().manual_seed(5))
    assert first != tok.encode(texts, alpha=0.2, seed=6)
    assert len({tuple(row) for row in first}) > 1  # rows of one batch are independent draws


def collected(loader) -> list[list[list[int]]]:
    return [batch["input_ids"].tolist() for batch in loader]


@pytest.mark.parametrize("seed", [0, None])
def test_dataloader_workers_draw_different_segmentations(tok, seed):
    data = [TEXT] * 16
    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2, collate_fn=tok.collator(alpha=0.3,
                                                                                                     seed=seed))
    batches = collected(loader)
    assert batches[0] != batches[1]  # batch 0 from worker 0, batch 1 from worker 1: same texts
    assert batches[0] != batches[2]  # a worker re-samples for each batch
    if seed is not None:
        assert collected(loader) == batches  # ... reproducibly


def test_collator_pads_truncates_and_adds_specials(tok):
    collate = tok.collator(alpha=None, max_length=5, add_bos=True, pad_id=0)
    out = collate([{"text": TEXT}, {"text": "a"}])
    bos = tok.piece_to_id("<s>")
    assert out["input_ids"].shape == (2, 5) and out["input_ids"][:, 0].tolist() == [bos, bos]
    assert out["attention_mask"][1].tolist() == [1] * (1 + len(tok.encode("a"))) + [0] * (4 - len(tok.encode("a")))


def test_collator_suffix_and_truncation_per_row(tok):
    """EOS lands right after each row's own pieces; truncation cuts every row at ``max_length``."""
    eos, texts = tok.piece_to_id("</s>"), [TEXT, "a", ""]
    out = tok.collator(alpha=None, add_eos=True, pad_id=0)(texts)
    for row, mask, ids in zip(out["input_ids"].tolist(), out["attention_mask"].tolist(), tok.encode(texts)):
        assert row[: sum(mask)] == ids + [eos] and set(row[sum(mask):]) <= {0}
    short = tok.collator(alpha=None, add_eos=True, max_length=2, pad_id=0)(texts)
    assert short["input_ids"].tolist()[0] == tok.encode(TEXT)[:2] and short["attention_mask"].sum(1).tolist()[2] == 1


@pytest.mark.parametrize("alpha", [None, 0.3])
def test_tensor_output_equals_padded_lists(tok, device, alpha):
    """``return_tensors="pt"`` gives the same pieces as the list output (same draws), padded, on the device."""
    texts = [TEXT, "", "naïve café", "a"]
    lists = tok.encode(texts, alpha=alpha, seed=5, device=device)
    out = tok.encode(texts, alpha=alpha, seed=5, device=device, return_tensors="pt", pad_id=-1)
    assert out["input_ids"].device.type == torch.device(device).type
    assert out["input_ids"].shape == (4, max(map(len, lists)))
    for row, mask, ids in zip(out["input_ids"].tolist(), out["attention_mask"].tolist(), lists):
        assert row == ids + [-1] * (len(row) - len(ids)) and mask == [1] * len(ids) + [0] * (len(row) - len(ids))


def test_tensor_output_bad_options(tok):
    with pytest.raises(ValueError, match="return_tensors"):
        tok.encode([TEXT], return_tensors="np")
    with pytest.raises(ValueError, match="return_offsets"):
        tok.encode([TEXT], return_tensors="pt", return_offsets=True)


def test_datasets_transform_resamples_on_every_access(tok):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [TEXT, "short"], "label": [0, 1]})
    ds.set_transform(tok.as_transform(alpha=0.3, seed=0))
    draws = {tuple(ds[0]["input_ids"]) for _ in range(6)}
    assert len(draws) > 1 and ds[1]["label"] == 1
    assert all(tok.decode(list(d)) == TEXT for d in draws)


def test_segmentation_stats_describe_alpha(tok):
    low, high = tok.segmentation_stats([TEXT], 0.1), tok.segmentation_stats([TEXT], 2.0)
    assert low["expected_tokens"][0] > high["expected_tokens"][0] > high["viterbi_tokens"][0] - 1e-9
    assert low["entropy"][0] > high["entropy"][0] > 0
    with pytest.raises(ValueError, match="alpha"):
        tok.segmentation_stats([TEXT], -1.0)


def test_cuda_decoding_matches_cpu(tok, device):
    texts = [TEXT, "naïve café", ""]
    assert tok.encode(texts, device=device) == tok.encode(texts)
    sampled = tok.encode(texts, alpha=0.3, seed=0, device=device)
    assert tok.decode(sampled) == tok.decode(tok.encode(texts))


# --- CLI -------------------------------------------------------------------------------------------------------------


def run_cli(monkeypatch, capsys, args, stdin):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        code = main(["tokenize", *args])
    except SystemExit as exit:  # argparse rejects bad option values with exit status 2
        code = exit.code
    return code, capsys.readouterr()


def test_cli_tokenize(monkeypatch, capsys, sp_model, tok):
    lines = [TEXT, "second line"]
    code, out = run_cli(monkeypatch, capsys, ["--model", sp_model], "\n".join(lines) + "\n")
    assert code == 0 and out.out.splitlines() == [" ".join(row) for row in tok.tokenize(lines)]
    code, out = run_cli(monkeypatch, capsys, ["--model", sp_model, "--alpha", "0.1", "--seed", "3", "--ids"],
                        "\n".join(lines))
    ids = [list(map(int, row.split())) for row in out.out.splitlines()]
    assert code == 0 and tok.decode(ids) == lines
    code, out = run_cli(monkeypatch, capsys, ["--model", sp_model, "--stats", "--alpha", "0.2"], TEXT)
    assert code == 0 and "expected_tokens=" in out.out and "Viterbi" in out.err
    code, out = run_cli(monkeypatch, capsys, ["--model", sp_model, "--alpha", "nan"], TEXT)
    assert code == 2 and "alpha" in out.err


def test_cli_default_model_ships_with_the_repository(monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, [], "Hello world\n")
    assert code == 0 and out.out.strip().replace(" ", "").replace("\u2581", "") == "Helloworld"
    card = json.dumps(open(os.path.join(os.path.dirname(__file__), "..", "..", "data", "tokenizers",
                                        "README.md")).read())
    assert "licen" in card.lower()


# --- Encoding and formats ------------------------------------------------------------------------------------------


def test_encoding_agrees_with_the_older_call_forms(tok):
    texts = [TEXT, "", "naïve café 🙂"]
    enc = tok(texts, alpha=0.3, seed=4)
    assert len(enc) == 3
    assert enc.ids == tok.encode(texts, alpha=0.3, seed=4)
    assert enc.pieces == tok.tokenize(texts, alpha=0.3, seed=4) == [[tok.id_to_piece(i) for i in r] for r in enc.ids]
    assert (enc.ids, enc.offsets) == tok.encode(texts, alpha=0.3, seed=4, return_offsets=True)
    legacy = tok.encode(texts, alpha=0.3, seed=4, return_tensors="pt", pad_id=-1)
    for name, tensor in enc.to_tensors(pad_id=-1).items():
        assert torch.equal(tensor, legacy[name])
    assert tok("hello world").ids == [tok.encode("hello world")]


def test_a_new_format_is_one_registered_reader(tmp_path):
    from textdiff.tokenization import formats
    from textdiff.tokenization.normalization import TextPipeline
    from textdiff.tokenization.vocab import Vocab

    @formats.register(".toy", names=("*.toy",))
    def read_toy(path):
        pieces = path.read_text().split()
        return Vocab(pieces, [-1.0 - len(p) / 10 for p in pieces], [1] * len(pieces)), TextPipeline.identity()

    try:
        (tmp_path / "model.toy").write_text("a b ab")
        for source in (tmp_path / "model.toy", tmp_path):
            assert UnigramTokenizer.from_pretrained(source).tokenize("abab") == ["ab", "ab"]
    finally:
        formats.FORMATS[:] = [fmt for fmt in formats.FORMATS if fmt.read is not read_toy]
    with pytest.raises(ValueError, match="unknown tokenizer format"):
        UnigramTokenizer.from_pretrained(tmp_path / "model.toy")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        UnigramTokenizer.from_pretrained(tmp_path)


def test_files_saved_by_earlier_versions_still_load(tmp_path, tok):
    """Earlier versions stored a SentencePiece normaliser as `tokenizers` JSON (``Precompiled`` + whitespace flags)."""
    import base64

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tok.save(tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
    charsmap = base64.b64encode(tok.pipeline.sentencepiece.charsmap).decode("ascii")
    metadata["pipeline"] = json.dumps({
        "normalizer": {"type": "Precompiled", "precompiled_charsmap": charsmap}, "pre_tokenizer": None,
        "decoder": {"type": "Fuse"}, "whitespace": {"remove_extra": True, "dummy_prefix": True, "escape": True}})
    save_file(load_file(str(tmp_path / "new.safetensors")), str(tmp_path / "old.safetensors"), metadata=metadata)
    old = UnigramTokenizer.load(tmp_path / "old.safetensors")
    texts = [TEXT, "  ｸﾞ Ｈｅｌｌｏ  a\u2581", "naïve café 🙂"]
    assert old.encode(texts) == tok.encode(texts) and old.decode(old.encode(texts)) == tok.decode(tok.encode(texts))
