"""The one result type of keyword generation, whatever the method."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class Sentence:
    """One generated sentence: its text, the keyword forms it holds (in sentence order), the method that wrote it
    and the method's ranking ``score`` (MH: ``log π``; diffusion: the rerank pseudo-log-likelihood).

    MH also reports ``log_pi``, ``lm_log_prob`` / ``lm_tokens`` (the scorer's log-probability and token count) and
    the chain's ``acceptance`` rate; fields a method does not compute are ``None`` and left out of :meth:`to_dict`.
    """

    text: str
    keywords: list[str]
    method: str
    score: float
    chain: int
    log_pi: float | None = None
    lm_log_prob: float | None = None
    lm_tokens: int | None = None
    acceptance: float | None = None

    def __post_init__(self):
        for name in ("score", "log_pi", "lm_log_prob", "acceptance"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} of {self.text!r} is {value}; only sentences inside the target's support "
                                 "are results")

    def to_dict(self) -> dict:
        """The fields that are set (finite numbers only, so ``json.dumps(..., allow_nan=False)`` always works)."""
        return {k: v for k, v in asdict(self).items() if v is not None}
