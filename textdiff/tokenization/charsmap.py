"""SentencePiece's normaliser, re-implemented: the precompiled charsmap rules and the whitespace rules.

A SentencePiece model carries its normalisation rules as a *precompiled charsmap*: a little-endian ``uint32`` byte
size, a Darts-clone double-array trie of that size whose keys are UTF-8 strings, then a pool of NUL-terminated
replacement strings that the trie values point into. :func:`parse_charsmap` reads every rule out of the trie.

:class:`SentencePieceNormalizer` then applies them as SentencePiece does (see docs/tokenization.md,
"Normalisation"): at every position, the longest user-defined symbol that starts there is copied verbatim; else the
longest rule that matches is replaced by its output; else one character is copied. The outputs then go through the
whitespace rules (drop leading spaces, collapse runs, prepend one ``▁``, spaces to ``▁``, drop trailing ``▁``).
Stretches of characters that start no rule and no symbol are copied in bulk.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass

import numpy as np

from textdiff.tokenization.sentencepiece_model import BYTE, CONTROL, UNKNOWN

METASPACE = "\u2581"
_MAX_KEY_BYTES = 256
_MAX_RULES = 1 << 22
_SURROGATE = re.compile("[\udc80-\udcff]")


def parse_charsmap(blob: bytes) -> dict[str, str]:
    """Every ``{key: replacement}`` rule of a precompiled charsmap; ``ValueError`` if the blob is malformed.

    Keys that are not valid UTF-8 (no SentencePiece builder writes them) are skipped."""
    if not blob:
        return {}
    if len(blob) < 4:
        raise ValueError("precompiled charsmap is truncated")
    (trie_size,) = struct.unpack_from("<I", blob)
    if trie_size % 4 or trie_size == 0 or 4 + trie_size > len(blob):
        raise ValueError(f"precompiled charsmap declares a trie of {trie_size} bytes in a blob of {len(blob)}")
    units = np.frombuffer(blob, dtype="<u4", count=trie_size // 4, offset=4).astype(np.int64)
    pool = blob[4 + trie_size :]
    offset = (units >> 10) << ((units & (1 << 9)) >> 6)
    has_leaf = (units >> 8) & 1
    label = units & ((1 << 31) | 0xFF)
    is_child = (label >= 1) & (label <= 255)  # a unit with label c sits at (its parent's base) ^ c
    child_at = np.nonzero(is_child)[0]
    parent_base = child_at ^ label[child_at]
    order = np.argsort(parent_base, kind="stable")
    child_at, parent_base = child_at[order], parent_base[order]
    strings = _pool_strings(pool)
    rules: dict[str, str] = {}
    nodes, keys = np.zeros(1, dtype=np.int64), np.zeros((1, 0), dtype=np.uint8)  # breadth first, by key length
    for _ in range(_MAX_KEY_BYTES + 1):  # a DAWG: a shared suffix is visited once per key that reaches it
        if not nodes.size:
            break
        base = nodes ^ offset[nodes]
        leaf = np.nonzero(has_leaf[nodes])[0]
        if leaf.size:
            at = base[leaf]
            if int(at.max()) >= units.size:
                raise ValueError("precompiled charsmap points outside its trie")
            starts = (units[at] & ((1 << 31) - 1)).tolist()
            joined = np.concatenate([keys[leaf], np.zeros((leaf.size, 1), dtype=np.uint8)], 1).tobytes()
            names = joined[:-1].decode("utf-8", "surrogateescape").split("\0")
            for name, start in zip(names, starts):
                value = strings.get(start)
                if value is None:
                    value = _pool_string(pool, start)
                if not _SURROGATE.search(name + value):  # keys that are not UTF-8 never match a str
                    rules[name] = value
        lo = np.searchsorted(parent_base, base, "left")
        count = np.searchsorted(parent_base, base, "right") - lo
        if count.sum() > _MAX_RULES:
            raise ValueError("precompiled charsmap trie is malformed (too many keys)")
        parent = np.repeat(np.arange(nodes.size), count)
        nodes = child_at[np.arange(parent.size) - np.repeat(np.cumsum(count) - count - lo, count)]
        keys = np.concatenate([keys[parent], label[nodes].astype(np.uint8)[:, None]], 1)
    else:
        raise ValueError(f"precompiled charsmap holds keys longer than {_MAX_KEY_BYTES} bytes (malformed)")
    return rules


def _char_class(chars: set[str]) -> str:
    """A regex character class of the (non-empty) ``chars``, runs of consecutive code points written as ranges."""
    ranges: list[list[int]] = []
    for code in sorted(map(ord, chars)):
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "") for a, b in ranges) + "]"


def _pool_strings(pool: bytes) -> dict[int, str]:
    """The NUL-terminated strings of the pool by byte offset (decoded in one call)."""
    text = pool.decode("utf-8", "surrogateescape").split("\0")[:-1]
    offsets, at = {}, 0
    for item in text:
        offsets[at] = item
        at += len(item.encode("utf-8", "surrogateescape")) + 1
    return offsets


def _pool_string(pool: bytes, start: int) -> str:
    """The pool string at ``start`` (a value may point inside another string)."""
    end = pool.find(b"\0", start)
    if start >= len(pool) or end < 0:
        raise ValueError("precompiled charsmap points outside its string pool")
    try:
        return pool[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("precompiled charsmap holds a replacement that is not UTF-8") from None


@dataclass
class SentencePieceNormalizer:
    """SentencePiece's ``Normalizer``: a precompiled ``charsmap`` (empty: no rules), the whitespace flags and the
    model's user-defined symbols (matched before the rules and kept verbatim)."""

    charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    user_symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.rules = parse_charsmap(self.charsmap)
        self._space = METASPACE if self.escape_whitespaces else " "
        starts = {key[0] for key in self.rules}
        # A user-defined symbol changes the output only if a rule starts inside it or it holds a space (copied
        # verbatim it escapes spaces but never collapses them); the others equal a character-by-character copy.
        self._symbols = {s for s in self.user_symbols if " " in s or any(c in starts for c in s)}
        lengths: dict[str, set[int]] = {}
        for key in list(self.rules) + list(self._symbols):
            lengths.setdefault(key[0], set()).add(len(key))
        self._lengths = {c: sorted(n, reverse=True) for c, n in lengths.items()}
        # Positions where a rule or symbol may match: a character with a one-character rule or starting a symbol,
        # or the first two characters of a longer rule (NFKC keys "e\u0301": plain letters stay on the bulk path).
        single = {key for key in self.rules if len(key) == 1} | {s[0] for s in self._symbols}
        longer = [key for key in self.rules if len(key) > 1]
        seconds = {key[1] for key in longer}
        parts = []
        for plane in (lambda c: c <= "\uffff", lambda c: c > "\uffff"):  # BMP classes are bitmaps in `re`
            alternatives = []
            if any(map(plane, single)):
                alternatives.append(_char_class({c for c in single if plane(c)}))
            firsts = {key[0] for key in longer if plane(key[0])}
            if firsts:
                alternatives.append(_char_class(firsts) + f"(?={_char_class(seconds)})")
            if alternatives:
                parts.append("|".join(alternatives))
        if len(parts) == 2:  # astral alternatives are lists that `re` scans: try them only at astral characters
            parts[1] = f"(?=[\U00010000-\U0010ffff])(?:{parts[1]})"
        self._special = re.compile("|".join(parts)) if parts else None
        self._ascii_table, triggers = self.ascii_table()
        if any(len(out) > 1 for out in self._ascii_table.values()):
            triggers = "".join(map(chr, range(128)))  # no ASCII fast path
        self._ascii_triggers = triggers

    # -- serialisation ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready form (the user-defined symbols come from the vocabulary)."""
        return dict(charsmap=base64.b64encode(self.charsmap).decode("ascii"), add_dummy_prefix=self.add_dummy_prefix,
                    remove_extra_whitespaces=self.remove_extra_whitespaces, escape_whitespaces=self.escape_whitespaces)

    @classmethod
    def from_dict(cls, spec: dict, user_symbols: tuple[str, ...] = ()) -> SentencePieceNormalizer:
        flags = ("add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces")
        return cls(base64.b64decode(spec.get("charsmap", "")), **{name: bool(spec.get(name, True)) for name in flags},
                   user_symbols=tuple(user_symbols))

    # -- normalisation ---------------------------------------------------------------------------------------------
    def ascii_table(self) -> tuple[dict[int, str], str]:
        """``str.translate`` table of the single-character rules keyed by an ASCII character, and the first
        characters of the ASCII-only longer rules and user-defined symbols (ASCII text holding one must take
        :meth:`normalize`; the other rules and symbols cannot match in ASCII text)."""
        table = {ord(k): v for k, v in self.rules.items() if len(k) == 1 and k.isascii()}
        keys = [key for key in self.rules if len(key) > 1] + list(self._symbols)
        return table, "".join(sorted({key[0] for key in keys if key.isascii()}))

    def _normalize_ascii(self, text: str) -> str:
        """:meth:`normalize` for ASCII text in which only one-character rules can match, all of them giving at most
        one character: every step is one character, so the whitespace rules act on the translated text as a whole."""
        translated = text.translate(self._ascii_table)
        if self.remove_extra_whitespaces:
            translated = " ".join(filter(None, translated.split(" ")))
        if self.add_dummy_prefix and (translated if self.remove_extra_whitespaces else text):
            translated = " " + translated
        return translated.replace(" ", METASPACE) if self.escape_whitespaces else translated

    def _step(self, text: str, pos: int) -> tuple[str, int]:
        """SentencePiece's ``NormalizePrefix`` at ``pos``: (output, characters consumed)."""
        for n in self._lengths.get(text[pos], ()):
            key = text[pos : pos + n]
            if key in self._symbols:
                return key, n
        for n in self._lengths.get(text[pos], ()):
            out = self.rules.get(text[pos : pos + n])
            if out is not None:
                return out, n
        return text[pos], 1

    def _steps(self, text: str, pos: int, bulk: bool):
        """``(output, start, end, run)`` for every step from ``pos``; ``bulk=True`` merges consecutive plain copies
        into one step with ``run=True`` (its output is the input stretch)."""
        n = len(text)
        while pos < n:
            if bulk:
                found = self._special.search(text, pos) if self._special is not None else None
                stop = found.start() if found else n
                if stop > pos:
                    yield text[pos:stop], pos, stop, True
                    pos = stop
                    continue
            out, used = self._step(text, pos)
            yield out, pos, pos + used, False
            pos += used

    def normalize(self, text: str, with_spans: bool = False):
        """Normalised ``text``; with ``with_spans=True`` also the original ``(start, end)`` character span of every
        output character (the dummy-prefix ``▁`` gets an empty span)."""
        if not with_spans and text.isascii() and not any(c in text for c in self._ascii_triggers):
            return self._normalize_ascii(text)
        pos = 0
        if self.remove_extra_whitespaces:  # leading steps that give exactly one space are dropped
            while pos < len(text):
                out, used = self._step(text, pos)
                if out != " ":
                    break
                pos += used
        if pos == len(text):
            return ("", []) if with_spans else ""
        parts, spans = [], []
        if self.add_dummy_prefix:
            parts.append(self._space)
            spans.append((pos, pos))
        prev_space = self.remove_extra_whitespaces
        for out, start, end, run in self._steps(text, pos, bulk=not with_spans):
            if self.remove_extra_whitespaces:
                if run and "  " in out:
                    out = re.sub(" {2,}", " ", out)
                if prev_space:
                    out = out.lstrip(" ")
                if out:
                    prev_space = out.endswith(" ")
            if out:
                parts.append(out)
                spans.extend([(start, end)] * len(out) if with_spans else ())
        normalized = "".join(parts)
        if self.escape_whitespaces:
            normalized = normalized.replace(" ", METASPACE)
        if self.remove_extra_whitespaces:
            normalized = normalized.rstrip(self._space)
        return (normalized, spans[: len(normalized)]) if with_spans else normalized

    # -- decoding --------------------------------------------------------------------------------------------------
    def decode(self, pieces: list[str], kinds: list[int], unk_surface: str) -> str:
        """Text of a piece sequence as SentencePiece's ``DecodeIds`` spells it: control pieces vanish, unknown ones
        read ``unk_surface``, runs of byte pieces are decoded as UTF-8 (:func:`decode_utf8`) and ``▁`` reads as a
        space. At the start of the text one leading ``▁`` is dropped (if the model adds a dummy prefix or removes
        extra whitespace); with ``remove_extra_whitespaces``, every piece's leading ``▁`` while the text is empty."""
        strip = self.add_dummy_prefix or self.remove_extra_whitespaces
        out: list[str] = []
        at_start, stripped = True, False  # SentencePiece's is_bos_ws and bos_ws_seen
        run = bytearray()
        for piece, kind in zip(pieces, kinds):
            if kind == BYTE:
                run.append(int(piece[3:5], 16))
                continue
            if run:
                out.append(decode_utf8(bytes(run)))
                run.clear()
            at_start = at_start and not stripped and not out
            stripped = False
            if kind == CONTROL:
                continue
            if kind == UNKNOWN:
                out.extend([unk_surface] if unk_surface else [])
                continue
            if strip and at_start and piece.startswith(METASPACE):
                piece = piece[1:]
                stripped = not self.remove_extra_whitespaces
            if piece:
                out.append(piece.replace(METASPACE, " "))
        if run:
            out.append(decode_utf8(bytes(run)))
        return "".join(out)


def decode_utf8(data: bytes) -> str:
    """``data`` as UTF-8 with SentencePiece's error rule: every byte that does not start a valid character becomes
    one U+FFFD (Python's ``errors="replace"`` would merge a truncated sequence into one)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out, at = [], 0
    while at < len(data):
        lead = data[at]
        size = 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4
        try:
            out.append(data[at : at + size].decode("utf-8"))
            at += size
        except UnicodeDecodeError:
            out.append("\ufffd")
            at += 1
    return "".join(out)
