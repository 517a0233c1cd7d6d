"""Sampling the reverse insertion chain through the generic reverse loop (docs/deletion.md#reverse-loop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textdiff import checks
from textdiff.udm.deletion.insertion import predictor_for, process_for
from textdiff.udm.deletion.process import DeletionProcess
from textdiff.udm.process import Batch, X0Draw
from textdiff.udm.sampler import LogitsHook, SampleResult, Trajectory, reverse_sample


def sample_delete(
    predictor,
    process: DeletionProcess,
    n: int | None = None,
    *,
    start: Batch | None = None,
    steps: int = 16,
    t_start: float = 1.0,
    draw: X0Draw | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    trajectory: Trajectory | None = None,
    progress: bool = False,
    logits_hooks: Sequence[LogitsHook] = (),
    device: str | torch.device = "cpu",
) -> SampleResult:
    """Variable-length samples from the reverse insertion chain via the generic loop.

    From ``x_1 = []`` (``n`` rows), or from ``start`` at ``t_start`` (protected tokens of ``start`` are kept, in order,
    by construction: docs/deletion.md#conditioning-on-keywords). ``predictor(x_t, t)`` returns an
    :class:`InsertionOutput`. The result's ``stats`` count network calls (fill calls included for a
    :class:`ModelInsertionPredictor`);
    ``logits_hooks`` act on the fill's token logits (:class:`ModelPrediction`).
    """
    if (n is None) == (start is None):
        raise ValueError("give exactly one of n (start from the empty sequence) or start (a Batch at t_start)")
    checks.positive_int("steps", steps)
    if not 0.0 < t_start <= 1.0:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if start is None:
        checks.positive_int("n", n)
        start = Batch(torch.zeros(n, 0, dtype=torch.long, device=device))
    if int(start.lengths.max()) > process.max_length:
        raise ValueError(f"the start state has {int(start.lengths.max())} tokens, more than "
                         f"max_length={process.max_length}")
    grid = torch.linspace(t_start, 0.0, steps + 1, dtype=torch.float64, device=start.device)
    return reverse_sample(process, predictor, start, grid=grid, draw=draw, seed=seed, generator=generator,
                          trajectory=trajectory, x_init=start, progress=progress,
                          logits_hooks=logits_hooks)


def decode(tokenizer, x: Batch) -> list[str]:
    """The texts of a padded batch."""
    rows = zip(x.ids.tolist(), x.lengths.tolist())
    return [tokenizer.decode(row[: int(n)], skip_special_tokens=True) for row, n in rows]


def sample_sentences(model, tokenizer, n: int, *, steps: int = 16, fill_mode: str = "iterative",
                     tokens_per_step: int = 1, draw: X0Draw | None = None, seed: int | None = None,
                     generator: torch.Generator | None = None, progress: bool = False) -> list[str]:
    """``n`` variable-length sentences grown from the empty sequence by an insertion model (``textdiff sample
    --process delete``)."""
    device = next(model.parameters()).device
    out = sample_delete(predictor_for(model, tokenizer, fill_mode, tokens_per_step), process_for(model, tokenizer), n,
                        steps=steps, draw=draw, seed=seed, generator=generator, progress=progress, device=device)
    return decode(tokenizer, out)
