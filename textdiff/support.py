"""Which tokens a sampler may draw: the one home of the token-support rules (docs/design.md, "Token support").

Every sampler and loss asks a :class:`TokenSupport` instead of re-deriving the rules: special tokens and
``[unused*]`` placeholders are never drawn, ``[MASK]`` is never a prediction (SUBS), and word-continuing pieces
(WordPiece ``##…``; tokens without a leading ``Ġ``/``▁`` in BPE and SentencePiece vocabularies) never open a
sentence or follow a keyword. Forbidding sets a logit to ``−inf``; the softmax then renormalises over the remaining
tokens, which is exactly conditioning the categorical on the allowed set (a support restriction, not a bias).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from textdiff import checks


def forbid(logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``logits [..., V]`` with ``token_ids`` at ``−inf`` (a new tensor): the categorical conditioned on "not one of
    ``token_ids``"."""
    ids = torch.as_tensor(token_ids, dtype=torch.long)
    return logits.index_fill(-1, ids.to(logits.device), -math.inf)


def continuation_pieces(tokenizer) -> list[int]:
    """Ids of the tokens that continue the previous word: WordPiece ``##…`` pieces; in a vocabulary without them
    (byte-level BPE marking a leading space with ``Ġ``, SentencePiece with ``▁``) the tokens that start with a letter
    or digit."""
    vocab = tokenizer.get_vocab()
    if any(token.startswith("##") for token in vocab):
        return sorted(i for token, i in vocab.items() if token.startswith("##"))
    return sorted(i for token, i in vocab.items() if token[:1].isalnum())


def excluded_ids(tokenizer) -> list[int]:
    """Ids no sampler draws: the tokenizer's special tokens and its ``[unused*]`` placeholders."""
    vocab = tokenizer.get_vocab()
    return sorted(set(tokenizer.all_special_ids) | {i for t, i in vocab.items() if t.startswith("[unused")})


def _ids(values: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in values}))


@dataclass(frozen=True)
class TokenSupport:
    """The support rules of one vocabulary, built once (:meth:`from_tokenizer`, or directly for a toy vocabulary).

    ``special_ids``: tokens that frame a sequence (kept where they stand, never drawn); ``excluded_ids``: never drawn
    (a superset of ``special_ids``); ``continuation_ids``: never the first piece of a sentence, never right after a
    keyword; ``mask_id``: the ``[MASK]`` placeholder; ``pad_id``: padding.
    """

    vocab_size: int
    special_ids: tuple[int, ...] = ()
    excluded_ids: tuple[int, ...] = ()
    continuation_ids: tuple[int, ...] = ()
    mask_id: int | None = None
    pad_id: int | None = None
    _tensors: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        checks.positive_int("vocab_size", self.vocab_size)
        for name in ("special_ids", "excluded_ids", "continuation_ids"):
            ids = _ids(getattr(self, name))
            if ids and (ids[0] < 0 or ids[-1] >= self.vocab_size):
                raise ValueError(f"{name} must be token ids in [0, {self.vocab_size}), got {list(ids)}")
            object.__setattr__(self, name, ids)
        object.__setattr__(self, "excluded_ids", _ids(self.excluded_ids + self.special_ids))

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> TokenSupport:
        """The rules of an HF tokenizer; ``vocab_size`` (the model's, which may exceed the tokenizer's) bounds ids."""
        size = max(len(tokenizer.get_vocab()), vocab_size or 0)
        return cls(size, tuple(tokenizer.all_special_ids), tuple(excluded_ids(tokenizer)),
                   tuple(continuation_pieces(tokenizer)), tokenizer.mask_token_id, tokenizer.pad_token_id)

    @classmethod
    def of(cls, source, vocab_size: int | None = None) -> TokenSupport:
        """``source`` itself if it is a :class:`TokenSupport`, else the rules of the tokenizer ``source``."""
        return source if isinstance(source, cls) else cls.from_tokenizer(source, vocab_size)

    def tensor(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """``special_ids`` / ``excluded_ids`` / ``continuation_ids`` as a long tensor on ``device`` (cached)."""
        key = (name, str(device))
        if key not in self._tensors:
            self._tensors[key] = torch.tensor(getattr(self, name), dtype=torch.long, device=device)
        return self._tensors[key]

    def membership(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[V]`` bool: which tokens are in ``special_ids`` / ``excluded_ids`` / ``continuation_ids`` (cached)."""
        key = (f"{name}:mask", str(device))
        if key not in self._tensors:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=device)
            mask[self.tensor(name, device)] = True
            self._tensors[key] = mask
        return self._tensors[key]

    def allowed(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[V]`` bool: the tokens a sampler may draw (not excluded); a new tensor."""
        return ~self.membership("excluded_ids", device)

    def restrict(self, logits: torch.Tensor, opening: torch.Tensor | None = None) -> torch.Tensor:
        """``logits [B, V]`` (or ``[..., V]``) conditioned on the drawable tokens: excluded ids at ``−inf``; rows
        flagged in ``opening [B]`` (a sentence's first piece) also get the continuation pieces at ``−inf``."""
        logits = forbid(logits, self.tensor("excluded_ids", logits.device))
        if opening is not None:
            logits.masked_fill_(opening[:, None] & self.membership("continuation_ids", logits.device), -math.inf)
        return logits


def subs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS parameterisation of a masking predictor: the ``[MASK]`` logit at ``−inf`` (a new tensor)."""
    return forbid(logits, [mask_id])
