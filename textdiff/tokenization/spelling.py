"""From a segmentation to output pieces (docs/tokenization.md): byte fallback spells an unknown character as the
``<0xNN>`` pieces of its UTF-8 bytes, runs of ``unk`` pieces fuse into one as SentencePiece outputs them, and every
piece gets its unit span in its text."""

from __future__ import annotations

import numpy as np
import torch

from textdiff.tokenization.encoding import Tokens
from textdiff.tokenization.sentencepiece_model import BYTE
from textdiff.tokenization.vocab import Vocab


class Spelling:
    """The output rules of one vocabulary: its ``unk`` piece, byte pieces and how each piece covers text units."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._byte_ids = torch.tensor(vocab.byte_ids, dtype=torch.int64)
        self._piece_units = piece_units(vocab)

    def finish(self, tokens: Tokens) -> Tokens:
        """``tokens`` as output: runs of ``unk`` fused where the model has an ``unk`` piece and no byte fallback."""
        if self.vocab.unk_id is not None and not self.vocab.byte_fallback:
            return self.fuse_unknown(tokens)
        return tokens

    def fuse_unknown(self, tokens: Tokens) -> Tokens:
        """Consecutive ``unk`` pieces of one text become one, as SentencePiece outputs them."""
        tokens.spans()
        unk = tokens.piece == self.vocab.unk_id
        repeat = torch.zeros_like(unk)
        repeat[1:] = unk[1:] & unk[:-1]
        begins = (torch.cumsum(tokens.count, 0) - tokens.count)[tokens.count > 0]
        repeat[begins] = False  # the first piece of a text repeats nothing
        dropped = torch.nonzero(repeat).squeeze(1)
        if dropped.numel() == 0:
            return tokens
        kept = torch.nonzero(~repeat).squeeze(1)
        count = tokens.count - torch.bincount(tokens.text(dropped), minlength=tokens.count.numel())
        last = torch.cat([kept[1:], kept.new_tensor([repeat.numel()])]) - 1  # last piece of each kept run
        return Tokens(count, tokens.piece[kept], tokens.start[kept], tokens.end[last])

    def spell_bytes(self, tokens: Tokens, unk: torch.Tensor, code_points: torch.Tensor) -> Tokens:
        """Byte fallback: the ``unk`` pieces (indices into ``tokens``; their characters' ``code_points``) become the
        ``<0xNN>`` pieces of the characters' UTF-8 bytes (continuation bytes inherit the character's span)."""
        return Tokens(*self.spelled(tokens.count, tokens.piece, unk, code_points, tokens.start, tokens.end))

    def spelled(self, count: torch.Tensor, piece: torch.Tensor, unk: torch.Tensor, code_points: torch.Tensor,
                 *carried: torch.Tensor) -> list[torch.Tensor]:
        """``count`` (per text), ``piece`` and each of ``carried`` (per piece) with the ``unk`` pieces (ascending
        indices; their characters' ``code_points``) spelled as the ``<0xNN>`` pieces of the UTF-8 bytes, a
        ``carried`` value repeated for each byte. Unk pieces are few: the runs between them are copied whole."""
        if unk.numel() == 0:
            return [count, piece, *carried]
        n_bytes = utf8_length(code_points)
        extra = n_bytes - 1
        dest = unk + torch.cumsum(extra, 0) - extra  # where each character's first byte lands
        count = count.index_add(0, torch.searchsorted(torch.cumsum(count, 0), unk, right=True), extra)
        cuts, sizes = (unk + 1).tolist(), extra.tolist()

        def spread(values: torch.Tensor) -> torch.Tensor:
            runs = values.tensor_split(cuts)
            inserted = values.index_select(0, unk).repeat_interleave(extra).split(sizes)
            return torch.cat([part for pair in zip(runs, inserted) for part in pair] + [runs[-1]])

        piece, *carried = map(spread, (piece, *carried))
        lead = torch.tensor([0, 0, 0xC0, 0xE0, 0xF0], device=n_bytes.device)[n_bytes]
        for rank in range(4):
            has = n_bytes > rank
            shifted = code_points[has] >> (6 * (n_bytes[has] - 1 - rank))
            byte = lead[has] | shifted if rank == 0 else 0x80 | (shifted & 0x3F)
            piece[dest[has] + rank] = self._byte_ids.to(byte.device)[byte]
        return [count, piece, *carried]

    def spelled_numpy(self, count: np.ndarray, piece: np.ndarray, unk: np.ndarray, code_points: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`spelled` with numpy arrays and nothing carried: ``count`` (per group) and ``piece`` with the
        ``unk`` pieces (ascending indices; their characters' ``code_points``) spelled as UTF-8 byte pieces."""
        n_bytes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
        extra = n_bytes - 1
        out = np.insert(piece.astype(np.int64), np.repeat(unk + 1, extra), 0)  # room for the bytes after the first
        group = np.searchsorted(np.cumsum(count), unk, side="right")
        count = count + np.bincount(group, weights=extra, minlength=len(count)).astype(np.int64)
        dest = unk + np.cumsum(extra) - extra  # where each character's first byte lands
        byte_ids = self._byte_ids.numpy()
        lead = np.array([0, 0, 0xC0, 0xE0, 0xF0])[n_bytes]
        for rank in range(4):
            has = n_bytes > rank
            shifted = code_points[has] >> (6 * (n_bytes[has] - 1 - rank))
            byte = lead[has] | shifted if rank == 0 else 0x80 | (shifted & 0x3F)
            out[dest[has] + rank] = byte_ids[byte]
        return count, out

    def spans(self, piece: torch.Tensor, text_units: torch.Tensor, text_count: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit span in its text of every piece of a segmentation (texts of ``text_units`` units and ``text_count``
        pieces, end to end): a piece covers its own length, an unk piece one unit, and the byte-fallback pieces of one
        character share that character's unit."""
        advance, back, width = (table.index_select(0, piece) for table in self._piece_units.to(piece.device))
        before = torch.cumsum(advance, 0) - advance - back
        text_first = torch.cumsum(text_units, 0) - text_units
        text = torch.repeat_interleave(torch.arange(text_count.numel(), device=piece.device), text_count,
                                       output_size=piece.numel())
        start = before - text_first.index_select(0, text)
        return start, start + width

    def output_length(self, cands, units) -> torch.Tensor:
        """Output pieces per candidate edge: UTF-8 length of the character for byte-fallback ``unk`` edges, else 1."""
        if not self.vocab.byte_fallback:
            return torch.ones_like(cands.piece)
        return torch.where(cands.piece == self.vocab.unk_id, utf8_length(units[cands.start]), 1)


def piece_units(vocab: Vocab) -> torch.Tensor:
    """Per piece id, how an output piece covers units: ``(advance, back, width)`` rows, so that a piece after
    ``u`` units of output starts at unit ``u - back`` and ends at ``+ width``. Lattice pieces cover their length, unk
    pieces one unit; of the byte pieces that spell a character, the lead byte covers it and the continuation bytes
    cover it again (``back`` 1)."""
    units = torch.tensor([[len(p), 0, len(p)] for p in vocab.pieces], dtype=torch.int64).reshape(-1, 3)
    if vocab.unk_id is not None:
        units[vocab.unk_id] = torch.tensor([1, 0, 1])
    for i, (piece, kind) in enumerate(zip(vocab.pieces, vocab.kinds)):
        if kind == BYTE:
            units[i] = torch.tensor([0, 1, 1] if 0x80 <= int(piece[3:5], 16) < 0xC0 else [1, 0, 1])
    return units.T.contiguous()


def utf8_length(code_points: torch.Tensor) -> torch.Tensor:
    return 1 + (code_points >= 0x80).long() + (code_points >= 0x800).long() + (code_points >= 0x10000).long()

