"""Unigram vocabulary: pieces, log-probability scores, piece kinds, and the piece trie flattened to tensors.

ALGORITHMS.md §8.1: a piece's score is its log-probability ``v(piece)``; a segmentation scores ``Σ v``. Piece kinds
follow SentencePiece (normal, unknown, control, user-defined, unused, byte). Only normal and user-defined pieces
enter the lattice; unknown characters become one ``unk`` edge scored ``min(normal scores) - 10`` (SentencePiece's
``kUnkPenalty``), which byte-fallback models later spell as ``<0xNN>`` byte pieces.

Design decision (D10, edge-table construction): the trie is a dense table ``code point -> alphabet id`` plus a
transition table ``(state, alphabet id) -> child state``: dense (one gather per step) while states x alphabet stays
below ``DENSE_LIMIT``, otherwise an open-addressing hash table with exact integer keys (no collisions to verify).
The same tensors serve CPU and CUDA lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from textdiff.tokenization.sentencepiece_model import BYTE, NORMAL, UNKNOWN, USER_DEFINED

UNK_PENALTY = 10.0
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
_HASH_MULTIPLIER = 0x9E3779B1
_EMPTY = -1
DENSE_LIMIT = 1 << 23  # transition-table entries (int32, 32 MiB) below which the trie is a dense table


@dataclass
class Vocab:
    """Pieces with scores and kinds; ids are list positions. ``float32_scores``: the scores are float32 numbers and
    lattice arithmetic for decoding happens in float32 (SentencePiece models)."""

    pieces: list[str]
    scores: list[float]
    kinds: list[int]
    unk_id: int | None = None
    byte_fallback: bool = False
    unk_surface: str = " \u2047 "
    float32_scores: bool = False
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.pieces) == len(self.scores) == len(self.kinds)):
            raise ValueError("pieces, scores and kinds must have the same length")
        if not self.pieces:
            raise ValueError("the vocabulary is empty")
        self.scores = [float(s) for s in self.scores]
        if not all(math.isfinite(s) for s in self.scores):
            raise ValueError("scores must be finite log-probabilities (no NaN/inf)")
        self.index = {}
        for i, piece in enumerate(self.pieces):
            if not isinstance(piece, str) or not piece:
                raise ValueError(f"piece {i} must be a non-empty str, got {piece!r}")
            if piece in self.index:
                raise ValueError(f"piece {piece!r} occurs twice (ids {self.index[piece]} and {i})")
            self.index[piece] = i
        if self.unk_id is None:
            self.unk_id = next((i for i, k in enumerate(self.kinds) if k == UNKNOWN), None)
        if self.byte_fallback:
            missing = [p for p in BYTE_PIECES if p not in self.index]
            if missing:
                raise ValueError(f"byte_fallback needs the 256 pieces <0x00>..<0xFF>; {len(missing)} are missing")
            if self.unk_id is None:
                raise ValueError("byte_fallback needs an unknown piece (kind UNKNOWN) for the lattice")
        lattice = [i for i, k in enumerate(self.kinds) if k in (NORMAL, USER_DEFINED)]
        if not any(len(self.pieces[i]) == 1 for i in lattice) and self.unk_id is None:
            raise ValueError(
                "the vocabulary has no single-character pieces, no unknown piece and no byte fallback, so most "
                "texts cannot be segmented; add single characters, an unk piece or byte_fallback=True"
            )

    @property
    def byte_ids(self) -> list[int]:
        return [self.index[p] for p in BYTE_PIECES] if self.byte_fallback else []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.float32_scores else torch.float64

    def lattice_scores(self) -> torch.Tensor:
        """Edge score of every id as SentencePiece's lattice uses it (NaN for ids outside the lattice), in
        :attr:`dtype`: user-defined pieces ``len(bytes) * max - 0.1``, unk ``min - 10`` over normal pieces."""
        scores = torch.tensor(self.scores, dtype=self.dtype)
        kinds = torch.tensor(self.kinds)
        normal = kinds == NORMAL
        lowest = scores[normal].min() if normal.any() else scores.new_zeros(())
        highest = scores[normal].max() if normal.any() else scores.new_zeros(())
        out = torch.where(normal, scores, scores.new_tensor(float("nan")))
        for i in torch.nonzero(kinds == USER_DEFINED).flatten().tolist():
            out[i] = len(self.pieces[i].encode("utf-8")) * highest - 0.1
        if self.unk_id is not None:
            out[self.unk_id] = lowest - UNK_PENALTY
        return out


def pieces_with_extras(
    pieces: list[str], scores: list[float], unk_piece: str | None, byte_fallback: bool
) -> tuple[list[str], list[float], list[int], int | None]:
    """Kinds for user-given pieces, appending ``unk_piece`` and the 256 byte pieces when asked and missing."""
    pieces, scores = list(pieces), [float(s) for s in scores]
    if len(pieces) != len(scores):
        raise ValueError(f"pieces and scores differ in length ({len(pieces)} vs {len(scores)})")
    kinds = [NORMAL] * len(pieces)
    if byte_fallback and unk_piece is None:
        unk_piece = "<unk>"
    unk_id = None
    if unk_piece is not None:
        if unk_piece in pieces:
            unk_id = pieces.index(unk_piece)
        else:
            unk_id = len(pieces)
            pieces.append(unk_piece)
            scores.append(0.0)
            kinds.append(NORMAL)
        kinds[unk_id] = UNKNOWN
    if byte_fallback:
        present = set(pieces)
        for piece in BYTE_PIECES:
            if piece in present:
                kinds[pieces.index(piece)] = BYTE
            else:
                pieces.append(piece)
                scores.append(0.0)
                kinds.append(BYTE)
    return pieces, scores, kinds, unk_id


class PieceTrie:
    """The lattice pieces of a :class:`Vocab` as a trie flattened to int tensors (ALGORITHMS.md §8.8 step 1)."""

    def __init__(self, vocab: Vocab, device: str | torch.device = "cpu") -> None:
        ids = [i for i, k in enumerate(vocab.kinds) if k in (NORMAL, USER_DEFINED)]
        alphabet = sorted({ord(ch) for i in ids for ch in vocab.pieces[i]})
        cid_of = {cp: j + 1 for j, cp in enumerate(alphabet)}  # 0 = character outside the alphabet
        self.alphabet_size = len(alphabet) + 1
        children: dict[tuple[int, int], int] = {}
        piece_of_state = [-1]
        for i in ids:
            state = 0
            for ch in vocab.pieces[i]:
                key = (state, cid_of[ord(ch)])
                if key not in children:
                    children[key] = len(piece_of_state)
                    piece_of_state.append(-1)
                state = children[key]
            piece_of_state[state] = i
        self.max_len = max((len(vocab.pieces[i]) for i in ids), default=1)

        max_cp = alphabet[-1] if alphabet else 0
        cid_table = torch.zeros(max_cp + 2, dtype=torch.int64)  # last entry: any code point above max_cp
        cid_table[torch.tensor(alphabet, dtype=torch.int64)] = torch.arange(1, len(alphabet) + 1)
        n_states, width = len(piece_of_state), self.alphabet_size
        if n_states * width >= 2**31:
            raise ValueError("vocabulary too large for the trie key space (states x alphabet >= 2**31)")
        keys = torch.tensor([state * width + cid for state, cid in children], dtype=torch.int64)
        values = torch.tensor(list(children.values()), dtype=torch.int64)
        tensors = dict(cid_table=cid_table, piece_of_state=torch.tensor(piece_of_state, dtype=torch.int64))
        self.dense = n_states * width <= DENSE_LIMIT
        if self.dense:  # one gather per step
            transitions = torch.full((n_states * width,), _EMPTY, dtype=torch.int32)
            transitions[keys] = values.to(torch.int32)
            tensors["transitions"] = transitions
        else:  # large alphabets (e.g. CJK): hash table
            tensors["table_keys"], tensors["table_values"], self.hash_bits, self.max_probe = _open_addressing(keys, values)
        self._tensors = {name: t.to(device) for name, t in tensors.items()}
        self.device = torch.device(device)

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["_tensors"][name]
        except KeyError:
            raise AttributeError(name) from None

    def code_ids(self, units: torch.Tensor) -> torch.Tensor:
        """Alphabet id of every code point (0 for characters in no piece and for negative separators)."""
        last = self.cid_table.numel() - 1
        return self.cid_table[torch.where(units < 0, last, units.clamp(max=last))]

    def child(self, state: torch.Tensor, cid: torch.Tensor, compact: bool = True) -> torch.Tensor:
        """Child state for ``(state, cid)`` pairs (state 0 = root), ``-1`` where the trie has no such edge.

        Hash tables probe until every key is resolved (``compact=True``, one host read per probe) or exactly
        ``max_probe + 1`` times (``compact=False``: no host reads, for CUDA)."""
        key = state * self.alphabet_size + cid
        if self.dense:
            return self.transitions.index_select(0, key).long()
        slot = _slot(key, self.hash_bits)
        out = torch.full_like(key, _EMPTY)
        mask = (1 << self.hash_bits) - 1
        if not compact:
            for _ in range(self.max_probe + 1):
                hit = self.table_keys.index_select(0, slot) == key  # keys are unique: at most one probe hits
                out = torch.where(hit, self.table_values.index_select(0, slot), out)
                slot = (slot + 1) & mask
            return out
        pending = torch.arange(key.numel(), device=key.device)
        for _ in range(self.max_probe + 1):
            stored = self.table_keys[slot]
            hit = stored == key
            out[pending[hit]] = self.table_values[slot[hit]]
            more = ~(hit | (stored == _EMPTY))
            if not bool(more.any()):
                break
            pending, key, slot = pending[more], key[more], (slot[more] + 1) & mask
        return out


def _slot(key: torch.Tensor, bits: int) -> torch.Tensor:
    """Fibonacci hashing of keys < 2**31: top ``bits`` of the low 32 bits of ``key * 0x9E3779B1``."""
    return ((key * _HASH_MULTIPLIER) & 0xFFFFFFFF) >> (32 - bits)


def _open_addressing(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Linear-probing table (load <= 1/4) of int keys -> int values; returns keys, values, bits, longest probe."""
    bits = max(4, math.ceil(math.log2(max(1, 4 * keys.numel()))))
    size = 1 << bits
    table_keys = [_EMPTY] * size
    table_values = [_EMPTY] * size
    longest = 0
    for key, value, slot in zip(keys.tolist(), values.tolist(), _slot(keys, bits).tolist()):
        probe = 0
        while table_keys[(slot + probe) & (size - 1)] != _EMPTY:
            probe += 1
        table_keys[(slot + probe) & (size - 1)] = key
        table_values[(slot + probe) & (size - 1)] = value
        longest = max(longest, probe)
    return torch.tensor(table_keys), torch.tensor(table_values), bits, longest
