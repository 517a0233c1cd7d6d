"""Bad input to the unigram tokenizer, through the Python API and ``textdiff tokenize`` (subprocesses with timeouts):
a ``ValueError``/``TypeError`` naming the parameter, or a non-zero exit with a one-line message naming the input;
never a traceback, an abort, a hang or silently different output."""

from __future__ import annotations

import json

import pytest
from conftest import assert_clean_failure, run_cli
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from textdiff.defaults import default_asset
from textdiff.tokenization import UnigramTokenizer
from textdiff.tokenization.tokenizer import ALPHA_MAX

MODEL = str(default_asset("tokenizer"))


@pytest.fixture(scope="module")
def tok() -> UnigramTokenizer:
    return UnigramTokenizer.from_sentencepiece(MODEL)


# --- Python API ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "error", "needle"), [
    (dict(vocab_size=10**9), ValueError, "vocab_size"),
    (dict(vocab_size=1), ValueError, "vocab_size"),
    (dict(vocab_size=2.5), TypeError, "vocab_size"),
    (dict(vocab_size=100, max_piece_length=0), ValueError, "max_piece_length"),
])
def test_train_rejects_unusable_sizes(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        UnigramTokenizer.train(["hello world"], **kwargs)


@pytest.mark.parametrize(("ids", "error"), [
    ("hello", TypeError), (b"hi", TypeError), (7, TypeError), ({1: 2}, TypeError), ([1.5], TypeError),
    ([True], TypeError), ([[1], "x"], TypeError), ([-1], ValueError), ([10**9], ValueError),
])
def test_decode_rejects_what_is_not_ids(tok, ids, error):
    with pytest.raises(error, match="id"):
        tok.decode(ids)


@pytest.mark.parametrize("alpha", [ALPHA_MAX * 2, 5e307, 1e308, float("inf"), float("nan")])
def test_alpha_outside_the_exact_range_is_rejected(tok, alpha):
    for call in (lambda: tok.encode(["hello"], alpha=alpha, seed=0), lambda: tok.segmentation_stats(["hello"], alpha)):
        with pytest.raises(ValueError, match=r"alpha must be a finite number <= 1e\+06"):
            call()


@pytest.mark.parametrize(("texts", "error", "needle"), [
    (["fine", "lone \ud800 surrogate"], ValueError, r"texts\[1\] holds a lone surrogate U\+D800 at index 5"),
    ("\udfff", ValueError, "surrogate"), ([b"bytes"], TypeError, "item 0 is a bytes"), (b"bytes", TypeError, "texts"),
    (12, TypeError, "texts"), (["ok", None], TypeError, "item 1"),
])
def test_encode_rejects_what_is_not_text(tok, texts, error, needle):
    for call in (tok, tok.encode, tok.tokenize):
        with pytest.raises(error, match=needle):
            call(texts)


def test_alpha_at_the_bound_is_viterbi(tok):
    texts = ["hello world, stochastic segmentation"] * 4
    assert tok.encode(texts, alpha=ALPHA_MAX, seed=0) == tok.encode(texts)


def _edited(tmp_path, tok: UnigramTokenizer, name: str, edit) -> str:
    """``tok`` saved, then its metadata or tensors changed by ``edit(metadata, tensors)`` as a user might by hand."""
    path = tmp_path / "tok.safetensors"
    tok.save(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    edit(metadata, tensors)
    out = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return str(out)


def _config(**changes):
    def edit(metadata, tensors):
        config = json.loads(metadata["config"])
        config.update(changes)
        metadata["config"] = json.dumps(config)
    return edit


EDITS = {
    "config missing": lambda m, t: m.pop("config"),
    "config not json": lambda m, t: m.update(config="{unk_id: 0"),
    "config a list": lambda m, t: m.update(config="[1, 2]"),
    "pipeline missing": lambda m, t: m.pop("pipeline"),
    "pipeline not json": lambda m, t: m.update(pipeline="{"),
    "charsmap garbage": lambda m, t: m.update(pipeline=json.dumps({"sentencepiece": {"charsmap": "AAAA////"}})),
    "pieces missing": lambda m, t: t.pop("pieces_utf8"),
    "kinds truncated": lambda m, t: t.update(kinds=t["kinds"][:-3]),
    "kind unknown": lambda m, t: t["kinds"].__setitem__(5, 9),
    "score nan": lambda m, t: t["scores"].__setitem__(5, float("nan")),
    "unk_id negative": _config(unk_id=-5),
    "unk_id too large": _config(unk_id=10**7),
    "unk_id a normal piece": _config(unk_id=100),
    "unknown option": _config(colour="blue"),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_hand_edited_tokenizer_file_fails_at_load(tmp_path, tok, name):
    path = _edited(tmp_path, tok, name.replace(" ", "_"), EDITS[name])
    with pytest.raises(ValueError, match="tokenizer file"):
        UnigramTokenizer.load(path)


def test_unedited_file_still_loads(tmp_path, tok):
    path = _edited(tmp_path, tok, "same", lambda m, t: None)
    assert UnigramTokenizer.load(path).encode(["hello world"]) == tok.encode(["hello world"])


# --- CLI -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "needles"), [
    (["--alpha", "5e307"], ["--alpha", "1e+06"]),
    (["--alpha", "1e307"], ["--alpha", "1e+06"]),
    (["--stats", "--alpha", "1e308"], ["--alpha", "1e+06"]),
    (["--alpha", "nan"], ["--alpha"]),
    (["--threads", "-2"], ["--threads", ">= 1"]),
    (["--seed", "-1"], ["--seed"]),
    (["--model", "no/such/model.model"], ["no/such/model.model"]),
])
def test_cli_bad_options(args, needles):
    assert_clean_failure(run_cli("tokenize", "--model", MODEL, *args, stdin=b"hello\n", timeout=120), *needles)


def test_cli_non_utf8_line_is_named_and_the_others_kept():
    lines = [b"first line", b"caf\xe9 in latin-1", b"third line"]
    outcome = run_cli("tokenize", "--model", MODEL, stdin=b"\n".join(lines) + b"\n", timeout=120)
    assert_clean_failure(outcome, "line 2", "utf-8")
    good = run_cli("tokenize", "--model", MODEL, stdin=b"first line\nthird line\n", timeout=120)
    assert good.code == 0 and outcome.out == good.out and len(good.out.splitlines()) == 2
