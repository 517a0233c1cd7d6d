"""textdiff's own format: one safetensors file (scores, kinds, pieces as UTF-8) with the configuration and the
normaliser as JSON metadata. Written atomically; never pickled."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from textdiff.tokenization.formats import register
from textdiff.tokenization.normalization import TextPipeline
from textdiff.tokenization.vocab import Vocab

FORMAT = "textdiff-unigram-tokenizer"
WEIGHTS_NAME = "tokenizer.safetensors"


def write(path: str | os.PathLike, vocab: Vocab, pipeline: TextPipeline) -> None:
    """Write ``vocab`` and ``pipeline`` to ``path`` (atomic: a temporary file renamed into place)."""
    path = Path(path)
    blob = "\n".join(vocab.pieces).encode("utf-8")
    tensors = {
        "scores": torch.tensor(vocab.scores, dtype=torch.float64),
        "kinds": torch.tensor(vocab.kinds, dtype=torch.int8),
        "pieces_utf8": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone(),
    }
    config = {"unk_id": vocab.unk_id, "byte_fallback": vocab.byte_fallback}
    config.update(unk_surface=vocab.unk_surface, float32_scores=vocab.float32_scores)
    if any("\n" in p for p in vocab.pieces):
        config["pieces"] = vocab.pieces
    metadata = {"format": FORMAT, "config": json.dumps(config), "pipeline": pipeline.to_json()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@register(".safetensors", names=(WEIGHTS_NAME,), priority=1)
def read(path: Path) -> tuple[Vocab, TextPipeline]:
    """Read a file written by :func:`write`; ``ValueError`` naming the file for anything else or a damaged one
    (hand-edited metadata, missing tensors, an ``unk_id`` outside the vocabulary, ...)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a textdiff tokenizer file: {err}") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a textdiff tokenizer file (format={metadata.get('format')!r})")
    try:
        config = json.loads(metadata["config"])
        if not isinstance(config, dict):
            raise TypeError("config is not a JSON object")
        pieces = config.pop("pieces", None) or bytes(tensors["pieces_utf8"].tolist()).decode("utf-8").split("\n")
        vocab = Vocab(pieces, tensors["scores"].tolist(), tensors["kinds"].tolist(), **config)
        return vocab, TextPipeline.from_json(metadata["pipeline"], vocab.user_symbols)
    except Exception as err:  # KeyError, JSONDecodeError, IndexError, ... and `tokenizers`' own Exception
        problem = f"missing entry {err}" if isinstance(err, KeyError) else str(err)
        raise ValueError(f"{path} is a damaged textdiff tokenizer file: {problem}") from None
