"""Read a SentencePiece ``.model`` file (a serialised ``ModelProto``) without protobuf.

Only the fields textdiff needs are decoded (field numbers from ``sentencepiece_model.proto``); unknown fields are
skipped, so newer files still load. Anything that is not a well-formed unigram model raises ``ValueError`` naming the
problem, never a protobuf or struct error.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "UNIGRAM", 2: "BPE", 3: "WORD", 4: "CHAR"}


@dataclass
class SentencePieceModel:
    """The parts of a ``ModelProto`` that define unigram segmentation and normalisation."""

    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    model_type: int = 1
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_surface: str = " \u2047 "
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of one protobuf message (value: int or bytes)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end or number == 0:
            raise ValueError("truncated or malformed protobuf message")
        yield number, wire, value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def parse_model(data: bytes) -> SentencePieceModel:
    """Decode a serialised ``ModelProto``; raise ``ValueError`` if it is corrupt or not a unigram model."""
    model = SentencePieceModel()
    try:
        for number, wire, value in _fields(data):
            if number == 1 and wire == 2:
                _add_piece(model, value)
            elif number == 2 and wire == 2:
                _read_trainer_spec(model, value)
            elif number == 3 and wire == 2:
                _read_normalizer_spec(model, value)
    except (ValueError, UnicodeDecodeError, struct.error) as err:
        raise ValueError(f"corrupt SentencePiece model file: {err}") from None
    if not model.pieces:
        raise ValueError("corrupt SentencePiece model file: it holds no pieces")
    if model.model_type != 1:
        kind = MODEL_TYPES.get(model.model_type, str(model.model_type))
        raise ValueError(f"SentencePiece model is of type {kind}; only UNIGRAM models can be sampled")
    return model


def _add_piece(model: SentencePieceModel, buf: bytes) -> None:
    piece, score, kind = None, 0.0, NORMAL
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            piece = value.decode("utf-8")
        elif number == 2 and wire == 5:
            score = struct.unpack("<f", value)[0]
        elif number == 3 and wire == 0:
            kind = value
    if not piece:
        raise ValueError(f"piece {len(model.pieces)} is empty")
    if kind not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE):
        raise ValueError(f"piece {piece!r} has unknown type {kind}")
    model.pieces.append(piece)
    model.scores.append(score)
    model.kinds.append(kind)


def _read_trainer_spec(model: SentencePieceModel, buf: bytes) -> None:
    for number, wire, value in _fields(buf):
        if wire == 0 and number == 3:
            model.model_type = value
        elif wire == 0 and number == 35:
            model.byte_fallback = bool(value)
        elif wire == 0 and number == 24:
            model.treat_whitespace_as_suffix = bool(value)
        elif wire == 2 and number == 44:
            model.unk_surface = value.decode("utf-8")


def _read_normalizer_spec(model: SentencePieceModel, buf: bytes) -> None:
    for number, wire, value in _fields(buf):
        if wire == 2 and number == 2:
            model.precompiled_charsmap = bytes(value)
        elif wire == 0 and number == 3:
            model.add_dummy_prefix = bool(value)
        elif wire == 0 and number == 4:
            model.remove_extra_whitespaces = bool(value)
        elif wire == 0 and number == 5:
            model.escape_whitespaces = bool(value)
