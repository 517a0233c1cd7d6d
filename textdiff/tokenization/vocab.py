"""Unigram vocabulary: pieces, log-probability scores, piece kinds, and the piece trie flattened to tensors.

See docs/tokenization.md: a piece's score is its log-probability ``v(piece)``; a segmentation scores ``Σ v``.
Piece kinds follow SentencePiece (normal, unknown, control, user-defined, unused, byte). Only normal and
user-defined pieces enter the lattice; unknown characters become one ``unk`` edge scored
``min(normal scores) - 10`` (SentencePiece's ``kUnkPenalty``), which byte-fallback models later spell as
``<0xNN>`` byte pieces.

The trie is a table ``code point -> alphabet id`` plus transitions ``(state, alphabet id) -> child state``: a dense
table (one gather per step) while states x alphabet stays below ``DENSE_LIMIT``, otherwise sorted int64 keys searched
in bulk (bounded memory for any vocabulary size and alphabet). The same tensors serve CPU and CUDA lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from textdiff.tokenization.sentencepiece_model import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED

UNK_PENALTY = 10.0
KINDS = frozenset((NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE))
FLT_MIN = 1.1754943508222875e-38  # smallest normal float32
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
_EMPTY = -1
_NO_KEY = 2**62  # above every transition key
DENSE_LIMIT = 1 << 23  # transition-table entries (int32, 32 MiB) below which the trie is a dense table


@dataclass
class Vocab:
    """Pieces with scores and kinds; ids are list positions. ``float32_scores``: the scores are float32 numbers
    (SentencePiece models), so derived scores (unk, user-defined) are rounded to float32 where SentencePiece rounds."""

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
        unknown_kind = [k for k in set(self.kinds) if k not in KINDS]
        if unknown_kind:
            raise ValueError(f"kinds must be SentencePiece piece types {sorted(KINDS)}, got {unknown_kind[0]!r}")
        if self.unk_id is None:
            self.unk_id = next((i for i, k in enumerate(self.kinds) if k == UNKNOWN), None)
        elif type(self.unk_id) is not int or not 0 <= self.unk_id < len(self.pieces):
            raise ValueError(f"unk_id must be None or an id in [0, {len(self.pieces)}), got {self.unk_id!r}")
        elif self.kinds[self.unk_id] != UNKNOWN:
            raise ValueError(f"unk_id {self.unk_id} names the piece {self.pieces[self.unk_id]!r}, which is not of the "
                             "unknown kind")
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
    def user_symbols(self) -> tuple[str, ...]:
        """The user-defined pieces (SentencePiece matches them before normalising)."""
        return tuple(p for p, k in zip(self.pieces, self.kinds) if k == USER_DEFINED)

    @property
    def byte_ids(self) -> list[int]:
        return [self.index[p] for p in BYTE_PIECES] if self.byte_fallback else []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.float32_scores else torch.float64

    def lattice_scores(self) -> torch.Tensor:
        """Edge score of every id as SentencePiece's Viterbi search uses it (NaN for ids outside the lattice), as
        float64: normal pieces their score; unk ``min - 10`` over normal pieces (in :attr:`dtype`); user-defined
        pieces ``len(utf8) * max(FLT_MIN, max normal score) - 0.1``, unrounded (SentencePiece computes it in double
        and starts its maximum at ``FLT_MIN``, so with log-probability scores a user-defined piece scores ``-0.1``:
        it nearly always wins)."""
        scores = torch.tensor(self.scores, dtype=torch.float64)
        kinds = torch.tensor(self.kinds)
        normal = kinds == NORMAL
        lowest = float(scores[normal].min()) if normal.any() else 0.0
        highest = max(FLT_MIN, float(scores[normal].max())) if normal.any() else FLT_MIN
        out = torch.where(normal, scores, torch.tensor(float("nan"), dtype=torch.float64))
        for i in torch.nonzero(kinds == USER_DEFINED).flatten().tolist():
            product = torch.tensor(len(self.pieces[i].encode("utf-8")) * highest, dtype=self.dtype)  # float * int
            out[i] = product.double() - 0.1
        if self.unk_id is not None:
            out[self.unk_id] = torch.tensor(lowest - UNK_PENALTY, dtype=self.dtype).double()
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
    """The lattice pieces of a :class:`Vocab` as a trie flattened to int tensors (docs/tokenization.md, "Lattice").

    Characters get alphabet ids (``cid_table``, indexed by code point); a transition ``(state, cid)`` is the key
    ``state * alphabet_size + cid`` (int64: no overflow for any vocabulary). Small tries keep a dense transition table
    (one gather per step); larger ones a sorted key array searched with ``torch.searchsorted`` (memory proportional to
    the number of transitions, the same code on CPU and CUDA)."""

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
        cid_table = torch.zeros(max_cp + 2, dtype=torch.int32)  # last entry: any code point above max_cp
        cid_table[torch.tensor(alphabet, dtype=torch.int64)] = torch.arange(1, len(alphabet) + 1, dtype=torch.int32)
        n_states, width = len(piece_of_state), self.alphabet_size
        keys = torch.tensor([state * width + cid for state, cid in children], dtype=torch.int64)
        values = torch.tensor(list(children.values()), dtype=torch.int64)
        tensors = dict(cid_table=cid_table, piece_of_state=torch.tensor(piece_of_state, dtype=torch.int64))
        self.dense = n_states * width <= DENSE_LIMIT
        if self.dense:  # one gather per step
            transitions = torch.full((n_states * width,), _EMPTY, dtype=torch.int32)
            transitions[keys] = values.to(torch.int32)
            tensors["transitions"] = transitions
        else:  # large alphabets (e.g. CJK): binary search over the sorted keys
            order = torch.argsort(keys)
            tensors["sorted_keys"] = torch.cat([keys[order], keys.new_full((1,), _NO_KEY)])  # sentinel: never hit
            tensors["sorted_values"] = torch.cat([values[order], values.new_full((1,), _EMPTY)])
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
        return self.cid_table[torch.where(units < 0, last, units.clamp(max=last))].long()

    def child(self, state: torch.Tensor, cid: torch.Tensor) -> torch.Tensor:
        """Child state for ``(state, cid)`` pairs (state 0 = root), ``-1`` where the trie has no such edge."""
        key = state * self.alphabet_size + cid
        if self.dense:
            return self.transitions.index_select(0, key).long()
        slot = torch.searchsorted(self.sorted_keys, key)  # the sentinel keeps every slot in range
        found = self.sorted_keys.index_select(0, slot) == key
        return torch.where(found, self.sorted_values.index_select(0, slot), _EMPTY)
