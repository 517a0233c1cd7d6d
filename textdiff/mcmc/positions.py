"""Logits at chosen positions only, computing a masked LM's output head only there (docs/mcmc.md#gibbs-batching).

A Gibbs step or an MLM proposal needs the vocabulary distribution at one position per chain, and the masking
sampler at its masked positions (MDLM's SUBS trick), yet a plain forward runs the output head (``hidden × V``, about
half of MiniLM's compute at 32 tokens) on every position. A Hugging Face
masked LM whose children are its ``base_model`` and one head module is split into the two: the encoder runs on the
whole sequence, the head on the requested positions only. The split is checked once per model against the plain
forward on real input; any other model (an exact oracle in a test, a model with extra output layers) runs whole.
"""

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


def _split_logits(split, input_ids, attention_mask, rows, columns) -> torch.Tensor:
    base, head = split
    hidden = base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return head(hidden[rows, columns][:, None, :])[:, 0]


@torch.no_grad()
def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
              ) -> torch.Tensor:
    """``model(input_ids, attention_mask).logits`` at ``positions``: one position per row (``[B]`` ints → ``[B, V]``)
    or any set (``[B, L]`` bool → ``[n, V]`` in row-major order), with the output head run only there when the model
    splits into encoder + head (checked on first use)."""
    if positions.dtype == torch.bool:
        rows, columns = positions.nonzero(as_tuple=True)
    else:
        rows, columns = torch.arange(len(positions), device=input_ids.device), positions
    if isinstance(model, torch.nn.Module) and model in _SPLITS:
        split = _SPLITS[model]
        if split is not None:
            return _split_logits(split, input_ids, attention_mask, rows, columns)
    full = model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, columns]
    if isinstance(model, torch.nn.Module) and model not in _SPLITS and len(rows):
        split = _split(model)
        if split is not None:
            try:
                same = torch.allclose(_split_logits(split, input_ids, attention_mask, rows, columns).float(),
                                      full.float(), atol=1e-4, rtol=1e-4)
            except Exception:  # a probe: any failure means the model does not split this way
                same = False
            split = split if same else None
        _SPLITS[model] = split
    return full
