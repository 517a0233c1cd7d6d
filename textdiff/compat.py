"""Names that moved keep working from their old module, with a ``DeprecationWarning`` (docs/design.md#layout)."""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import warnings
from collections.abc import Callable, Sequence

import torch


def moved(module: str, new_homes: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that resolves each name in ``new_homes`` from its new module, warning once per use.

    The new home is imported by name at first access, so an engine never imports the application it forwards to.
    """

    def __getattr__(name: str):
        if name not in new_homes:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(f"{module}.{name} moved to {new_homes[name]}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new_homes[name]), name)

    return __getattr__


def kv_cache_argument(model, cache) -> dict:
    """The keyword that passes a KV cache to ``model``'s forward: ``cache`` (transformers ≥ 5.2x), else
    ``past_key_values``."""
    return {_cache_keyword(type(model)): cache}


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """Read once per model class: the call sits in decoding and scoring loops."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def kv_cache_of(output):
    """The KV cache a forward returned (``output.cache``, or ``output.past_key_values`` before transformers 5.2x)."""
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def kv_cache_rows(caches: Sequence, width: int):
    """One KV cache whose row ``i`` is ``caches[i]`` (a cache of batch 1, at most ``width`` positions) left-padded with
    zeros to ``width`` positions; the attention mask must mask the padded slots out. Each distinct cache (rows of one
    prompt share one) is padded once and its rows are gathered per layer: a few copies per call, not one per row."""
    unique: dict[int, int] = {}
    inverse = [unique.setdefault(id(cache), len(unique)) for cache in caches]
    distinct = list({id(cache): cache for cache in caches}.values())
    out = copy.deepcopy(distinct[0])
    gather = torch.tensor(inverse, device=out.layers[0].keys.device) if len(distinct) > 1 else None
    for number, layer in enumerate(out.layers):
        for name in ("keys", "values"):
            tensors = [getattr(cache.layers[number], name) for cache in distinct]  # each [1, heads, length, dim]
            padded = [torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in tensors]
            if gather is None:
                rows = padded[0].expand(len(caches), *padded[0].shape[1:])  # the model's cache update copies it
            else:
                rows = torch.cat(padded).index_select(0, gather)
            setattr(layer, name, rows)
    return out
