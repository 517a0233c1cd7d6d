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


@dataclass(frozen=True)
class SentencePieceWhitespace:
    """SentencePiece's whitespace rules after the charsmap: drop leading/trailing spaces and collapse runs
    (``remove_extra``), prepend one space to non-empty text (``dummy_prefix``), spaces -> ``▁`` (``escape``)."""

    remove_extra: bool = True
    dummy_prefix: bool = True
    escape: bool = True

    def steps(self) -> list[normalizers.Normalizer]:
        """The rules as `tokenizers` normalisers (alignment-tracking; used for offsets and non-ASCII text)."""
        steps = []
        if self.remove_extra:
            steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
        if self.dummy_prefix:
            steps.append(normalizers.Prepend(" "))
        if self.escape:
            steps.append(normalizers.Replace(" ", METASPACE))
        return steps

    def apply(self, text: str) -> str:
        """The same rules with plain ``str`` methods (fast path)."""
        if self.remove_extra:
            text = " ".join(filter(None, text.split(" ")))
        if self.dummy_prefix and text:
            text = " " + text
        return text.replace(" ", METASPACE) if self.escape else text


@dataclass
class TextPipeline:
    """`tokenizers` normaliser, optional SentencePiece whitespace rules, pre-tokenizer and decoder (each optional)."""

    normalizer: normalizers.Normalizer | None = None
    whitespace: SentencePieceWhitespace | None = None
    pre_tokenizer: object | None = None
    decoder: decoders.Decoder | None = None

    def __post_init__(self) -> None:
        steps = ([self.normalizer] if self.normalizer is not None else []) + (
            self.whitespace.steps() if self.whitespace is not None else []
        )
        self._full = normalizers.Sequence(steps) if steps else None
        self._ascii = _ascii_table(self.normalizer)

    @classmethod
    def identity(cls) -> TextPipeline:
        """No normalisation, no chunking; decoding concatenates pieces and fuses byte-fallback pieces."""
        return cls(decoder=decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()]))

    @classmethod
    def sentencepiece(cls, model: SentencePieceModel) -> TextPipeline:
        """SentencePiece's normaliser: charsmap, extra-whitespace removal, dummy prefix, ``' ' -> '▁'``."""
        if model.treat_whitespace_as_suffix:
            raise ValueError("SentencePiece models with treat_whitespace_as_suffix=true are not supported")
        charsmap = normalizers.Precompiled(model.precompiled_charsmap) if model.precompiled_charsmap else None
        whitespace = SentencePieceWhitespace(
            model.remove_extra_whitespaces, model.add_dummy_prefix, model.escape_whitespaces
        )
        decoding = [decoders.Replace(METASPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        if model.add_dummy_prefix:
            decoding.append(decoders.Strip(" ", 1, 0))
        return cls(charsmap, whitespace, None, decoders.Sequence(decoding))

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TextPipeline:
        return cls(tokenizer.normalizer, None, tokenizer.pre_tokenizer, tokenizer.decoder)

    # -- serialisation (tokenizers JSON, never pickle) ------------------------------------------------------------
    def to_json(self) -> str:
        holder = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
        for name in ("normalizer", "pre_tokenizer", "decoder"):
            if getattr(self, name) is not None:
                setattr(holder, name, getattr(self, name))
        full = json.loads(holder.to_str())
        parts = {name: full[name] for name in ("normalizer", "pre_tokenizer", "decoder")}
        parts["whitespace"] = None if self.whitespace is None else vars(self.whitespace)
        return json.dumps(parts)

    @classmethod
    def from_json(cls, text: str) -> TextPipeline:
        parts = json.loads(text)
        whitespace = parts.pop("whitespace", None)
        holder = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "post_processor": None}
        holder.update(parts, model={"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"})
        hf = Tokenizer.from_str(json.dumps(holder))
        rules = None if whitespace is None else SentencePieceWhitespace(**whitespace)
        return cls(hf.normalizer, rules, hf.pre_tokenizer, hf.decoder)

    # -- text -> chunks ----------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Normalised text. ASCII text takes a fast path through a per-character table that was checked against
        the `tokenizers` normaliser when the pipeline was built (see :func:`_ascii_table`)."""
        table, triggers = self._ascii
        if text.isascii() and not any(c in text for c in triggers):
            text = text.translate(table)
            return text if self.whitespace is None else self.whitespace.apply(text)
        return text if self._full is None else self._full.normalize_str(text)

    def pieces_of_text(self, texts: list[str]) -> list[str] | list[list[str]]:
        """Normalised texts, or the list of pre-tokens of each when the pipeline has a pre-tokenizer."""
        normalized = list(texts) if self._full is None else [self.normalize(text) for text in texts]
        if self.pre_tokenizer is None:
            return normalized
        return [[word for word, _ in self.pre_tokenizer.pre_tokenize_str(text)] for text in normalized]

    def unit_offsets(self, text: str) -> list[tuple[int, int]]:
        """Original-text character span of every unit (code point) of ``text``'s chunks, in chunk order."""
        pretok = PreTokenizedString(text)
        if self._full is not None:
            pretok.normalize(lambda ns: self._full.normalize(ns))
        if self.pre_tokenizer is not None:
            self.pre_tokenizer.pre_tokenize(pretok)
        pretok.split(lambda _, ns: ns.split(_EACH_CHAR, "isolated"))
        return [span for _, span, _ in pretok.get_splits(offset_referential="original", offset_type="char")]

    # -- pieces -> text ----------------------------------------------------------------------------------------
    def decode(self, pieces: list[str]) -> str:
        return "".join(pieces) if self.decoder is None else self.decoder.decode(pieces)


def _ascii_table(normalizer: normalizers.Normalizer | None) -> tuple[dict[int, str], str] | None:
    """``str.translate`` table reproducing ``normalizer`` on ASCII text, and the characters that start multi-character
    rules (text containing one takes the slow path; SentencePiece's nmt_nfkc has ``\\r\\n -> ' '``).

    Checked on every single ASCII character and on all 16,384 ordered pairs (rules keyed by three or more pure-ASCII
    characters would go unnoticed; SentencePiece's and NFKC's charsmaps have none).
    """
    if normalizer is None:
        return {}, ""
    chars = [chr(i) for i in range(128)]
    singles = [normalizer.normalize_str(c) for c in chars]
    triggers = "".join(
        sorted({a for a in chars for b in chars if normalizer.normalize_str(a + b) != singles[ord(a)] + singles[ord(b)]})
    )
    return {i: s for i, s in enumerate(singles) if s != chr(i)}, triggers
