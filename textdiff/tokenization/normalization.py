"""Text before and after the lattice: normalisation, pre-tokenisation into chunks, decoding (ALGORITHMS.md §8.1).

Nothing here re-implements Unicode normalisation: a :class:`TextPipeline` holds `tokenizers` components (the
``Precompiled`` charsmap normaliser SentencePiece models carry, Metaspace-style ``▁`` handling, byte-fallback
decoders) and serialises them as `tokenizers` JSON, so a saved textdiff tokenizer normalises exactly like its source.

Design decision (D10): chunks are segmented independently. SentencePiece models give one chunk per line (the lattice
then finds the word cuts itself); tokenizer.json files with a pre-tokenizer give one chunk per pre-token, as HF does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tokenizers import PreTokenizedString, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import WordLevel

from textdiff.tokenization.sentencepiece_model import SentencePieceModel

METASPACE = "\u2581"
_EACH_CHAR = Regex("[\\s\\S]")


@dataclass
class TextPipeline:
    """`tokenizers` normaliser, pre-tokenizer and decoder around the unigram lattice (each may be ``None``)."""

    normalizer: normalizers.Normalizer | None = None
    pre_tokenizer: object | None = None
    decoder: decoders.Decoder | None = None

    @classmethod
    def identity(cls) -> TextPipeline:
        """No normalisation, no chunking; decoding concatenates pieces and fuses byte-fallback pieces."""
        return cls(decoder=decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()]))

    @classmethod
    def sentencepiece(cls, model: SentencePieceModel) -> TextPipeline:
        """SentencePiece's normaliser: charsmap, extra-whitespace removal, dummy prefix, ``' ' -> '▁'``."""
        if model.treat_whitespace_as_suffix:
            raise ValueError("SentencePiece models with treat_whitespace_as_suffix=true are not supported")
        steps = []
        if model.precompiled_charsmap:
            steps.append(normalizers.Precompiled(model.precompiled_charsmap))
        if model.remove_extra_whitespaces:
            steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
        if model.add_dummy_prefix:
            steps.append(normalizers.Prepend(" "))
        if model.escape_whitespaces:
            steps.append(normalizers.Replace(" ", METASPACE))
        decoding = [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if model.add_dummy_prefix:
            decoding.append(decoders.Strip(" ", 1, 0))
        return cls(normalizers.Sequence(steps), None, decoders.Sequence(decoding))

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TextPipeline:
        return cls(tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.decoder)

    # -- serialisation (tokenizers JSON, never pickle) ------------------------------------------------------------
    def to_json(self) -> str:
        holder = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
        for name in ("normalizer", "pre_tokenizer", "decoder"):
            if getattr(self, name) is not None:
                setattr(holder, name, getattr(self, name))
        full = json.loads(holder.to_str())
        return json.dumps({name: full[name] for name in ("normalizer", "pre_tokenizer", "decoder")})

    @classmethod
    def from_json(cls, text: str) -> TextPipeline:
        parts = json.loads(text)
        holder = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "post_processor": None}
        holder.update(parts, model={"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"})
        return cls.from_tokenizer(Tokenizer.from_str(json.dumps(holder)))

    # -- text -> chunks ----------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        return text if self.normalizer is None else self.normalizer.normalize_str(text)

    def chunks(self, texts: list[str]) -> tuple[list[str], list[int]]:
        """Normalised, pre-tokenised chunks of all ``texts`` and the index of the text each chunk came from."""
        normalized = [self.normalize(text) for text in texts]
        if self.pre_tokenizer is None:
            owners = [i for i, text in enumerate(normalized) if text]
            return [normalized[i] for i in owners], owners
        chunks, owners = [], []
        for i, text in enumerate(normalized):
            for word, _ in self.pre_tokenizer.pre_tokenize_str(text):
                if word:
                    chunks.append(word)
                    owners.append(i)
        return chunks, owners

    def unit_offsets(self, text: str) -> list[tuple[int, int]]:
        """Original-text character span of every unit (code point) of ``text``'s chunks, in chunk order."""
        pretok = PreTokenizedString(text)
        if self.normalizer is not None:
            pretok.normalize(lambda ns: self.normalizer.normalize(ns))
        if self.pre_tokenizer is not None:
            self.pre_tokenizer.pre_tokenize(pretok)
        pretok.split(lambda _, ns: ns.split(_EACH_CHAR, "isolated"))
        return [span for _, span, _ in pretok.get_splits(offset_referential="original", offset_type="char")]

    # -- pieces -> text ----------------------------------------------------------------------------------------
    def decode(self, pieces: list[str]) -> str:
        return "".join(pieces) if self.decoder is None else self.decoder.decode(pieces)
