"""Text before and after the lattice: normalisation, pre-tokenisation into chunks, decoding (docs/tokenization.md).

SentencePiece models normalise with :class:`~textdiff.tokenization.charsmap.SentencePieceNormalizer` (their own
precompiled rules, applied as SentencePiece applies them); tokenizer.json models with their `tokenizers` components.
Both serialise as JSON, so a saved textdiff tokenizer normalises exactly like its source.

Chunks are segmented independently (the segmentation law factorises over them). SentencePiece
models whose pieces hold ``▁`` only in front are cut before every ``▁`` (a boundary no piece spans); tokenizer.json
files with a pre-tokenizer give one chunk per pre-token, as HF does. :meth:`TextPipeline.words` lists the chunks of a
batch (keys for the word-lattice cache); for ASCII lines of SentencePiece models it works on the whole batch with
single C-level ``bytes`` calls and one numpy pass instead of line by line.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import PreTokenizedString, Regex, Tokenizer, decoders, normalizers
from tokenizers.models import WordLevel

from textdiff.tokenization.charsmap import METASPACE, SentencePieceNormalizer
from textdiff.tokenization.sentencepiece_model import SentencePieceModel

_EACH_CHAR = Regex("[\\s\\S]")
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)] + [0], dtype=np.uint64)  # by length; 9: longer


@dataclass
class Chunks:
    """The chunks of a batch: the distinct ``chunks`` and, for every occurrence in text order, its ``chunk`` id and
    its ``text`` (both int64, on the CPU)."""

    chunks: list[str]
    chunk: torch.Tensor
    text: torch.Tensor


@dataclass
class Words:
    """The chunks of a batch in text order (``text``: the text of every occurrence, int64).

    Every occurrence has a key: ``code[i]`` when nonzero (a word of at most 8 ASCII bytes taken by the batch route,
    packed little-endian into a uint64: the bytes ``code[i:i+1].view("S8")``), else the next entry of ``keys``
    (``bytes`` for a longer word of the batch route, without its ``▁``; the chunk itself otherwise). :func:`word_of`
    gives the chunk of a key."""

    keys: list[str | bytes]
    text: torch.Tensor
    code: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.keys) if self.code is None else len(self.code)

    def all_keys(self) -> list[str | bytes]:
        """The key of every occurrence."""
        if self.code is None:
            return self.keys
        packed = self.code != 0
        out = np.empty(len(self.code), dtype=object)
        out[packed] = self.code[packed].view("S8").tolist()
        out[~packed] = self.keys
        return out.tolist()

    def chunks(self) -> Chunks:
        """The distinct chunks and the chunk of every occurrence in text order."""
        keys = self.all_keys()
        index = dict.fromkeys(keys)
        index = dict(zip(index, range(len(index))))
        chunk = long_tensor(array("q", map(index.__getitem__, keys)))
        return Chunks([word_of(key) for key in index], chunk, self.text)


def word_of(key: str | bytes) -> str:
    """The chunk of a :class:`Words` key."""
    return METASPACE + key.decode("ascii") if isinstance(key, bytes) else key


@dataclass(frozen=True)
class _ByteRoute:
    """The batch route of :meth:`TextPipeline.chunks` for ASCII lines: a ``bytes.translate`` table equal to the
    normaliser's ASCII table (every character to at most one ASCII character), the first characters of the
    normaliser's multi-character rules (lines holding one go one by one) and the line separator: a character the
    table keeps as it is (lines holding it go one by one too)."""

    table: bytes
    delete: bytes
    triggers: str
    separator: str

    @classmethod
    def of(cls, ascii_table: dict[int, str], triggers: str) -> _ByteRoute | None:
        """The route for a normaliser's ASCII table and triggers (see :func:`_ascii_table`), or None if it has none."""
        if any(len(out) > 1 or not out.isascii() for out in ascii_table.values()):
            return None
        kept = [c for c in range(128) if c not in ascii_table and c != ord(" ")]
        if not kept:
            return None
        table = bytearray(range(256))
        for code, out in ascii_table.items():
            table[code] = ord(out) if out else code
        delete = bytes(code for code, out in ascii_table.items() if not out)
        return cls(bytes(table), delete, triggers, chr(kept[0]))

    def slow_lines(self, texts: list[str]) -> list[int]:
        """Lines the route cannot take: non-ASCII, holding a trigger or the separator (ascending). Each test runs
        on the joined lines first (one C-level call) and line by line only when it finds something."""
        joined = self.separator.join(texts)
        flags = lambda test: np.fromiter(map(test, texts), dtype=bool, count=len(texts))  # C-level loop
        slow = np.zeros(len(texts), dtype=bool)
        if not joined.isascii():
            slow |= ~flags(str.isascii)
        for c in self.triggers:
            if c in joined:
                slow |= flags(lambda text, c=c: c in text)
        if joined.count(self.separator) != max(len(texts) - 1, 0):
            slow |= flags(lambda text: self.separator in text)
        return np.flatnonzero(slow).tolist()

    def words(self, texts: list[str]) -> Words:
        """The words of lines the route takes, found by one numpy pass over the joined bytes: words of up to 8
        bytes as packed codes, longer ones as ``bytes`` keys (a chunk without its ``▁``)."""
        sep = ord(self.separator)
        joined = self.separator.join(texts).encode("ascii").translate(self.table, self.delete)
        size = len(joined)
        padded = np.frombuffer(joined + bytes(8), dtype=np.uint8)  # 8 zero bytes: every 8-byte window is inside
        buffer = padded[:size]
        in_word = np.zeros(size + 2, dtype=bool)  # [i + 1]: byte i belongs to a word
        np.not_equal(buffer, ord(" "), out=in_word[1:-1])
        separators = np.flatnonzero(buffer == sep)
        in_word[separators + 1] = False
        begins = np.flatnonzero(in_word[1:-1] > in_word[:-2])
        ends = np.flatnonzero(in_word[1:-1] > in_word[2:]) + 1
        line_words = np.diff(np.searchsorted(begins, separators), prepend=0, append=len(begins))
        text = np.repeat(np.arange(len(texts)), line_words)
        length = ends - begins
        # the 8 bytes from every word's first, read as one little-endian uint64 (an unaligned overlapping view),
        # cut to the word's length: the packed code of the words of up to 8 bytes
        windows = np.ndarray((size + 1,), dtype="<u8", buffer=padded, strides=(1,))
        code = windows[begins] & _LOW_BYTES[np.minimum(length, 9)]
        long = np.flatnonzero(length > 8)
        keys = [joined[b:e] for b, e in zip(begins[long].tolist(), ends[long].tolist())]
        return Words(keys, torch.from_numpy(text), code)


def long_tensor(values: array) -> torch.Tensor:
    """int64 tensor of an ``array('q')`` without a Python-level loop (``torch.tensor`` of a list is far slower)."""
    return torch.frombuffer(values, dtype=torch.int64) if len(values) else torch.zeros(0, dtype=torch.int64)


@dataclass
class TextPipeline:
    """Text before and after the lattice: either SentencePiece's normaliser (``sentencepiece``) or a `tokenizers`
    normaliser with an optional pre-tokenizer; a `tokenizers` decoder for non-SentencePiece models."""

    normalizer: normalizers.Normalizer | None = None
    sentencepiece: SentencePieceNormalizer | None = None
    pre_tokenizer: object | None = None
    decoder: decoders.Decoder | None = None

    def __post_init__(self) -> None:
        if self.sentencepiece is not None:
            self._ascii = self.sentencepiece.ascii_table()
            flags = self.sentencepiece
            default = flags.add_dummy_prefix and flags.remove_extra_whitespaces and flags.escape_whitespaces
            self._bytes = _ByteRoute.of(*self._ascii) if default else None
        else:
            self._ascii = _ascii_table(self.normalizer)
            self._bytes = None

    @classmethod
    def identity(cls) -> TextPipeline:
        """No normalisation, no chunking; decoding concatenates pieces and fuses byte-fallback pieces."""
        return cls(decoder=decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()]))

    @classmethod
    def from_sentencepiece(cls, model: SentencePieceModel, user_symbols: tuple[str, ...] = ()) -> TextPipeline:
        """SentencePiece's normaliser: charsmap, extra-whitespace removal, dummy prefix, ``' ' -> '▁'``."""
        if model.treat_whitespace_as_suffix:
            raise ValueError("SentencePiece models with treat_whitespace_as_suffix=true are not supported")
        return cls(sentencepiece=SentencePieceNormalizer(
            model.precompiled_charsmap, model.add_dummy_prefix, model.remove_extra_whitespaces,
            model.escape_whitespaces, user_symbols))

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TextPipeline:
        return cls(tokenizer.normalizer, None, tokenizer.pre_tokenizer, tokenizer.decoder)

    # -- serialisation (JSON, never pickle) ------------------------------------------------------------------------
    def to_json(self) -> str:
        holder = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
        for name in ("normalizer", "pre_tokenizer", "decoder"):
            if getattr(self, name) is not None:
                setattr(holder, name, getattr(self, name))
        full = json.loads(holder.to_str())
        parts = {name: full[name] for name in ("normalizer", "pre_tokenizer", "decoder")}
        parts["sentencepiece"] = None if self.sentencepiece is None else self.sentencepiece.to_dict()
        return json.dumps(parts)

    @classmethod
    def from_json(cls, text: str, user_symbols: tuple[str, ...] = ()) -> TextPipeline:
        """Read :meth:`to_json`'s output; ``user_symbols``: the vocabulary's user-defined pieces. Files written
        before the SentencePiece normaliser existed (a ``Precompiled`` normaliser plus ``whitespace`` flags) load
        with it."""
        parts = json.loads(text)
        spec = parts.pop("sentencepiece", None)
        legacy = parts.pop("whitespace", None)
        if legacy is not None:
            charsmap = (parts.pop("normalizer", None) or {}).get("precompiled_charsmap") or ""
            spec = dict(charsmap=charsmap, add_dummy_prefix=legacy["dummy_prefix"],
                        remove_extra_whitespaces=legacy["remove_extra"], escape_whitespaces=legacy["escape"])
        if spec is not None:
            return cls(sentencepiece=SentencePieceNormalizer.from_dict(spec, user_symbols))
        holder = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "post_processor": None}
        holder.update(parts, model={"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"})
        hf = Tokenizer.from_str(json.dumps(holder))
        return cls(hf.normalizer, None, hf.pre_tokenizer, hf.decoder)

    # -- text -> chunks ----------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """Normalised text. With a `tokenizers` normaliser, ASCII text takes a fast path through a per-character
        table that was checked against the normaliser when the pipeline was built (see :func:`_ascii_table`)."""
        if self.sentencepiece is not None:
            return self.sentencepiece.normalize(text)
        if self.normalizer is None:
            return text
        table, triggers = self._ascii
        if text.isascii() and not any(c in text for c in triggers):
            return text.translate(table)
        return self.normalizer.normalize_str(text)

    def chunks(self, texts: list[str], split_at: str | None) -> Chunks:
        """:meth:`words`, deduplicated."""
        return self.words(texts, split_at).chunks()

    def words(self, texts: list[str], split_at: str | None) -> Words:
        """Cut every text into chunks: its pre-tokens (pipelines with a pre-tokenizer), else the normalised text cut
        before every ``split_at`` character (the lattice cuts there anyway), else the whole normalised text.

        Lines that :meth:`normalize` would send through its ASCII fast path take a batch route when the pipeline has
        SentencePiece's default whitespace rules and ``split_at`` is ``▁``: the lines are joined, translated and split
        at spaces by single C-level ``bytes`` calls, each chunk being ``▁`` + one non-empty space-separated word
        (exactly what :meth:`normalize` followed by the cut gives). Other lines go one by one.
        """
        route = self._bytes if split_at == METASPACE and self.pre_tokenizer is None else None
        if route is None:
            return self._words_per_line(texts, split_at)
        slow = route.slow_lines(texts)
        if not slow:
            return route.words(texts)
        if len(slow) == len(texts):
            return self._words_per_line(texts, split_at)
        fast = list(texts)
        for i in slow:
            fast[i] = ""  # no chunks; the lines keep their numbers
        head = route.words(fast)
        tail = self._words_per_line([texts[i] for i in slow], split_at)
        tail_text = np.array(slow, dtype=np.int64)[tail.text.numpy()]
        # the slow lines' words go before the head's words of later lines (their own lines have none)
        at = np.searchsorted(head.text.numpy(), tail_text)
        key_at = np.searchsorted(np.flatnonzero(head.code == 0), at).tolist()  # the head's keys before each
        keys = []
        for key, (begin, end) in zip(tail.keys, zip([0, *key_at], key_at)):
            keys += head.keys[begin:end]
            keys.append(key)
        keys += head.keys[key_at[-1] if key_at else 0:]
        text = np.insert(head.text.numpy(), at, tail_text)
        return Words(keys, torch.from_numpy(text), np.insert(head.code, at, np.uint64(0)))

    def _words_per_line(self, texts: list[str], split_at: str | None) -> Words:
        """:meth:`words` one text at a time."""
        keys, counts = [], array("q")
        for text in map(self.normalize, texts):
            if self.pre_tokenizer is not None:
                parts = [word for word, _ in self.pre_tokenizer.pre_tokenize_str(text) if word]
            elif split_at is not None:
                head, *rest = text.split(split_at)
                parts = ([head] if head else []) + [split_at + part for part in rest]
            else:
                parts = [text] if text else []
            keys += parts
            counts.append(len(parts))
        return Words(keys, torch.repeat_interleave(torch.arange(len(counts)), long_tensor(counts)))

    def unit_offsets(self, text: str) -> list[tuple[int, int]]:
        """Original-text character span of every unit (code point) of ``text``'s chunks, in chunk order."""
        if self.sentencepiece is not None:
            return self.sentencepiece.normalize(text, with_spans=True)[1]  # the chunks partition the normalised text
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
        sorted({a for a in chars for b in chars
                if normalizer.normalize_str(a + b) != singles[ord(a)] + singles[ord(b)]})
    )
    return {i: s for i, s in enumerate(singles) if s != chr(i)}, triggers
