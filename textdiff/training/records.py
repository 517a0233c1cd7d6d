"""Typed records of a training run and the JSON-lines log that stores them (docs/training.md, "Logs").

Every number in a record is finite: the trainer stops before recording a non-finite loss, and :class:`JsonLog`
refuses ``NaN``/``Infinity``, which are not JSON.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


class TrainingDiverged(FloatingPointError):
    """The loss, the gradient norm, the weights or an evaluation became non-finite; nothing non-finite was saved."""


@dataclass(frozen=True)
class Evaluation:
    """Held-out bound per token: ``nll`` nats (masking ELBO or AR NLL) over ``tokens`` scored tokens."""

    nll: float
    tokens: int

    @property
    def ppl(self) -> float:
        """Perplexity ``exp(nll)`` (an upper bound for the masking ELBO)."""
        return math.exp(self.nll)

    def as_dict(self) -> dict[str, float | int]:
        """``{"eval_nll", "eval_ppl", "eval_tokens"}``, the keys of ``log.jsonl``."""
        return {"eval_nll": self.nll, "eval_ppl": self.ppl, "eval_tokens": self.tokens}


@dataclass(frozen=True)
class Loss:
    """One optimizer step: its mean training ``loss``, the gradient norm before clipping, the learning rate it used,
    the training ``tokens`` consumed up to and including it (all processes), and the evaluation run after it."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    tokens: int
    evaluation: Evaluation | None = None

    def as_dict(self) -> dict[str, float | int]:
        """Flat dict of the fields (evaluation keys prefixed ``eval_``), one line of ``log.jsonl``."""
        row = {k: v for k, v in asdict(self).items() if k != "evaluation"}
        return row | (self.evaluation.as_dict() if self.evaluation else {})


def json_line(payload: dict[str, Any]) -> str:
    """``payload`` as one line of strict JSON; ``ValueError`` naming the key of any NaN or infinite number."""
    bad = [k for k, v in payload.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"refusing to write non-finite values to JSON: {', '.join(f'{k}={payload[k]}' for k in bad)}")
    return json.dumps(payload, allow_nan=False)


class JsonLog:
    """Appends records (a :class:`Loss` or a dict) as JSON lines to ``path``; with ``echo`` also prints them."""

    def __init__(self, path: str | Path, echo: bool = True):
        self.path, self.echo = Path(path), echo

    def __call__(self, record: Loss | dict[str, Any]) -> None:
        line = json_line(record.as_dict() if isinstance(record, Loss) else record)
        if self.echo:
            print(line, file=sys.stdout, flush=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
