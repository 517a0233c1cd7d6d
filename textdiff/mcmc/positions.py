"""Logits at chosen positions only, computing a model's output head only there (docs/mcmc.md#gibbs-batching).

A Gibbs step or an MLM proposal needs the vocabulary distribution at one position per chain, the masking sampler at
the positions it draws (MDLM's SUBS trick), and an LM score at the real tokens of each row only, yet a plain forward
runs the output head (``hidden × V``, about half of MiniLM's compute at 32 tokens) on every position, padding
included. A Hugging Face model whose children are its ``base_model`` and one head module is split into the two: the
encoder runs on the whole sequence, the head on the requested positions only. The split is checked once per model
against the plain forward on the first row of real input; any other model (an exact oracle in a test, a model with
extra output layers) runs whole."""

from __future__ import annotations

import weakref

import torch

_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_whole(model: torch.nn.Module) -> None:
    """Make :func:`logits_at` run ``model`` whole (the output head on every position), as before this module's split:
    the reference path of benchmarks."""
    _SPLITS[model] = None


def _split(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    base = getattr(model, "base_model", None)
    if not isinstance(model, torch.nn.Module) or base is None or base is model:
        return None
    others = [child for child in model.children() if child is not base and any(True for _ in child.parameters())]
    return (base, others[0]) if len(others) == 1 else None


#: Fewer picked positions than this are padded with zero rows before the head: the CPU's matrix product gives a row
#: the same bits whatever the number of rows only from 16 rows up (smaller products take another kernel), and a
#: position's logits must not depend on what else is picked (batch independence, docs/mcmc.md#gibbs-batching).
MIN_HEAD_ROWS = 16


def zero_rows_to(x: torch.Tensor, rows: int, dim: int = 0) -> torch.Tensor:
    """``x`` with zero rows appended along ``dim`` up to ``rows`` (unchanged when it has that many)."""
    missing = rows - x.shape[dim]
    if missing <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim)


def at_least_rows(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``x`` with zero rows appended along ``dim`` up to :data:`MIN_HEAD_ROWS` (unchanged when it has that many), so
    that a matrix product gives each real row the same bits whatever the number of rows."""
    return zero_rows_to(x, MIN_HEAD_ROWS, dim)


def _split_logits(split, input_ids, attention_mask, rows, columns, inputs: dict) -> torch.Tensor:
    base, head = split
    hidden = base(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
    return head(at_least_rows(hidden[rows, columns])[:, None, :])[: len(rows), 0]  # [n, V]


def _checked_split(model, input_ids: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """``model``'s (encoder, head) split, checked once against its plain forward on the first row of ``input_ids``
    (all positions, no other input, so that a stateful input such as a KV cache is never run twice)."""
    if not isinstance(model, torch.nn.Module):
        return None
    if model not in _SPLITS:
        split = _split(model)
        if split is not None:
            ids = input_ids[:1]
            mask, every = torch.ones_like(ids), torch.ones_like(ids, dtype=torch.bool)
            try:
                full = model(input_ids=ids, attention_mask=mask).logits[every]
                same = torch.allclose(_split_logits(split, ids, mask, *every.nonzero(as_tuple=True), {}).float(),
                                      full.float(), atol=1e-4, rtol=1e-4)
            except Exception:  # a probe: any failure means the model does not split this way
                same = False
            split = split if same else None
        _SPLITS[model] = split
    return _SPLITS[model]


@torch.no_grad()
def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, **inputs
              ) -> torch.Tensor:
    """``model(input_ids, attention_mask, **inputs).logits`` at ``positions``: one position per row (``[B]`` ints →
    ``[B, V]``) or any set (``[B, L]`` bool → ``[n, V]`` in row-major order), with the output head run only there when
    the model splits into encoder + head (checked on first use). ``inputs``: more forward arguments (position ids, a
    KV cache), given to the encoder."""
    if positions.dtype == torch.bool:
        rows, columns = positions.nonzero(as_tuple=True)
    else:
        rows, columns = torch.arange(len(positions), device=input_ids.device), positions
    split = _checked_split(model, input_ids)
    if split is not None:
        return _split_logits(split, input_ids, attention_mask, rows, columns, inputs)
    return model(input_ids=input_ids, attention_mask=attention_mask, **inputs).logits[rows, columns]
