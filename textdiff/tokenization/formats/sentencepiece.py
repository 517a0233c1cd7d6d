"""SentencePiece unigram ``.model`` files (a serialised ``ModelProto``, read without protobuf)."""

from __future__ import annotations

from pathlib import Path

from textdiff.tokenization.formats import register
from textdiff.tokenization.normalization import TextPipeline
from textdiff.tokenization.sentencepiece_model import parse_model
from textdiff.tokenization.vocab import Vocab


@register(".model", names=("*.model",), priority=3)
def read_sentencepiece(path: Path) -> tuple[Vocab, TextPipeline]:
    """Pieces, float32 scores and kinds, and SentencePiece's own normaliser (charsmap, whitespace flags,
    user-defined symbols)."""
    model = parse_model(Path(path).read_bytes())
    vocab = Vocab(model.pieces, model.scores, model.kinds, None, model.byte_fallback, model.unk_surface, True)
    return vocab, TextPipeline.from_sentencepiece(model, vocab.user_symbols)
