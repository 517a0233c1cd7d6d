"""HF `tokenizers` ``tokenizer.json`` files holding a ``Unigram`` model."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from textdiff.tokenization.formats import register
from textdiff.tokenization.normalization import TextPipeline
from textdiff.tokenization.sentencepiece_model import BYTE, CONTROL, NORMAL, UNKNOWN
from textdiff.tokenization.vocab import BYTE_PIECES, Vocab


@register(".json", names=("tokenizer.json",), priority=2)
def read_tokenizer_json(path: Path) -> tuple[Vocab, TextPipeline]:
    return parse_tokenizer_json(Path(path).read_text(encoding="utf-8"))


def parse_tokenizer_json(text: str) -> tuple[Vocab, TextPipeline]:
    """Vocabulary and `tokenizers` pipeline of a tokenizer.json text; ``ValueError`` if it is not a valid Unigram
    tokenizer.json. Added special tokens become control pieces; with ``byte_fallback`` the ``<0xNN>`` pieces are
    byte pieces."""
    try:
        spec = json.loads(text)
        hf = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises its own Exception type
        raise ValueError(f"not a valid tokenizer.json: {err}") from None
    model = spec.get("model") or {}
    if model.get("type") != "Unigram":
        raise ValueError(f"tokenizer.json holds a {model.get('type')!r} model; only 'Unigram' can be sampled")
    pieces = [p for p, _ in model["vocab"]]
    scores = [s for _, s in model["vocab"]]
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    byte_fallback = bool(model.get("byte_fallback"))
    unk_id = model.get("unk_id")
    kinds = [BYTE if byte_fallback and p in BYTE_PIECES else CONTROL if p in special else NORMAL for p in pieces]
    if isinstance(unk_id, int) and 0 <= unk_id < len(kinds):  # Vocab rejects any other unk_id
        kinds[unk_id] = UNKNOWN
    return Vocab(pieces, scores, kinds, unk_id, byte_fallback), TextPipeline.from_tokenizer(hf)
