"""Argument checks shared by every layer: each raises ``ValueError``/``TypeError`` naming the parameter and the
allowed range, so bad input never surfaces as a traceback from deep inside torch (docs/design.md, "Errors")."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

#: seeds are integers in [0, SEED_LIMIT)
SEED_LIMIT = 2**64
#: ``dtype`` names of model forwards; ``auto`` is bfloat16 on CUDA and float32 elsewhere (docs/design.md, "Precision")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError`` that is also a ``ValueError``, so ``except ValueError``
    catches every bad argument."""


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def finite_float(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within ``[low, high]`` (``(low, …`` / ``…, high)`` when open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        bounds = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must be a finite number in {bounds}, got {value!r}")
    return value


def positive_float(name: str, value) -> float:
    """``value`` as a finite float ``> 0``."""
    return finite_float(name, value, low=0.0, low_open=True)


def one_of(name: str, value, allowed: Iterable):
    """``value`` if it is one of ``allowed``; otherwise a ``ValueError`` listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def device(value, *, name: str = "device") -> torch.device:
    """A usable ``torch.device`` from a string, a ``torch.device`` or an int (a CUDA index).

    Unknown device names, CUDA without a GPU and out-of-range CUDA indices give one clear ``ValueError``.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, torch.device)):
        raise TypeError(f"{name} must be a string such as 'cpu' or 'cuda', got {value!r}")
    try:
        dev = torch.device(f"cuda:{value}" if isinstance(value, int) else value)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={str(value)!r}: no CUDA GPU is available on this machine (use 'cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={str(value)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}={str(value)!r}: MPS is not available on this machine (use 'cpu')")
    elif dev.type != "cpu":
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return dev


def dtype(value, device=None, *, name: str = "dtype") -> torch.dtype:
    """The ``torch.dtype`` of model forwards on ``device`` from one of :data:`DTYPES` or a floating ``torch.dtype``:
    ``auto`` (and ``None``) is bfloat16 on CUDA, float32 elsewhere (docs/design.md, "Precision")."""
    if value is None or value == "auto":
        on_cuda = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda else torch.float32
    if isinstance(value, str) and value in DTYPES:
        return getattr(torch, value)
    if isinstance(value, torch.dtype) and value in (torch.float32, torch.bfloat16, torch.float16):
        return value
    raise ValueError(f"{name} must be one of {', '.join(DTYPES)}; got {value!r}")
