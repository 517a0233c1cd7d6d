"""Randomness shared by every sampler (docs/numerics.md).

One place for the three rules every textdiff sampler follows:

* explicit ``torch.Generator`` objects, never the global RNG and never time-based seeds;
* categorical draws in float64 (Gumbel-max with float64 uniforms clamped to ``[tiny, 1 - 2**-53]``), because
  float32 Gumbel noise truncates the tail and lowers the effective temperature (arXiv 2409.02908);
* per-worker streams derived from ``(base_seed, worker_id)`` so that DataLoader workers never repeat each other.
"""

from __future__ import annotations

import math

import torch

from textdiff import checks
from textdiff.checks import SEED_LIMIT

_TINY = torch.finfo(torch.float64).tiny
_ONE_MINUS_ULP = 1.0 - 2.0**-53


def make_generator(
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> torch.Generator:
    """Return the generator to draw from.

    ``generator`` wins when given (it must live on ``device``). Otherwise a new generator on ``device`` seeded with
    ``seed``; with ``seed=None`` it is seeded from the global torch RNG (so ``torch.manual_seed`` makes a whole
    program reproducible) and, inside a DataLoader worker, additionally from the worker's own seed, so two workers
    never share a stream.
    """
    device = checks.device(device)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if torch.device(generator.device).type != device.type:
            raise ValueError(f"generator lives on {generator.device}, but device={device}")
        return generator
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        if not 0 <= seed < SEED_LIMIT:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    else:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        info = torch.utils.data.get_worker_info()
        if info is not None:
            seed = worker_seed(info.seed, info.id)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def worker_seed(base_seed: int, worker_id: int) -> int:
    """A seed for worker ``worker_id`` derived from ``base_seed`` (splitmix64 mixing; distinct per worker)."""
    z = (base_seed * 0x9E3779B97F4A7C15 + worker_id + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


def uniform(shape, generator: torch.Generator, device=None) -> torch.Tensor:
    """Float64 uniforms in ``[tiny, 1 - 2**-53]`` (safe to take ``log`` of ``u`` and of ``1 - u``)."""
    device = generator.device if device is None else device
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return u.clamp_(_TINY, _ONE_MINUS_ULP)


def gumbel(shape, generator: torch.Generator, device=None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log u)`` in float64."""
    return -torch.log(-torch.log(uniform(shape, generator, device)))


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Restrict logits to the top-k entries and/or the smallest set with mass >= top_p (others set to -inf)."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        logits = _nucleus(logits, top_p)
    return logits


def _nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every entry outside its row's nucleus set to ``-inf``."""
    top, order, _, kept = _ranked_nucleus(logits, top_p)
    return torch.full_like(logits, -math.inf).scatter(-1, order, top.masked_fill(~kept, -math.inf))


def _ranked_nucleus(logits: torch.Tensor, top_p: float, first: int = 64
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, ``(top, order, probs, kept)`` over its ``k`` largest entries in descending order: their logits,
    indices, probabilities under ``softmax(logits)``, and whether each is in the nucleus (the mass before it is below
    ``top_p``). Only the top ``k`` entries are ranked (``torch.topk``, ``k = first, 4·first, …``) until they hold
    ``top_p`` in every row: every entry beyond them has at least that much mass before it, so a full sort of ``V``
    entries would drop them too."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    width = logits.shape[-1]
    log_total = torch.logsumexp(logits, dim=-1, keepdim=True)
    k = min(first, width)
    while True:
        top, order = torch.topk(logits, k, dim=-1)  # descending
        probs = torch.exp(top - log_total)
        cumulative = torch.cumsum(probs, dim=-1)
        if k == width or bool((cumulative[..., -1] >= top_p).all()):
            return top, order, probs, cumulative - probs < top_p
        k = min(4 * k, width)


def sample_nucleus(logits: torch.Tensor, u: torch.Tensor, top_p: float) -> torch.Tensor:
    """One index per row of ``logits [N, V]``, drawn from ``softmax(logits)`` restricted to the row's nucleus (as
    :func:`filter_logits` with ``top_p``), by inverse CDF at the row's float64 uniform ``u [N]`` (:func:`uniform`):
    the law of ``sample_categorical(logits, top_p=top_p)`` from one uniform per row instead of ``V`` Gumbels. Every
    row must have an entry of positive probability."""
    _, order, probs, kept = _ranked_nucleus(logits.double(), top_p)
    cumulative = torch.cumsum(probs.masked_fill(~kept, 0.0), dim=-1)  # [N, k], non-decreasing
    below = (u.double() * cumulative[:, -1])[:, None]  # in (0, the row's nucleus mass)
    pick = torch.searchsorted(cumulative, below).clamp_(max=order.shape[-1] - 1)  # first entry reaching it
    return order.gather(-1, pick)[:, 0]


def sample_categorical(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Draw one index per row of ``logits[..., V]`` exactly, in float64 (Gumbel-max).

    ``temperature``, ``top_k`` and ``top_p`` are engineering knobs that change the law being sampled; the default
    (1, None, None) samples ``softmax(logits)`` exactly. Rows that are entirely ``-inf`` raise ``ValueError``;
    ``check=False`` skips that test (a host sync on an accelerator) where the caller knows every row has support.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.to(torch.float64)
    if temperature != 1.0:
        logits = logits / temperature
    logits = filter_logits(logits, top_k, top_p)
    if check and logits.numel() and not torch.isfinite(logits.max(dim=-1).values).all():
        raise ValueError("cannot sample from a categorical whose logits are all -inf (or contain NaN/+inf)")
    noise = gumbel(logits.shape, generator, logits.device)
    return torch.argmax(logits + noise, dim=-1)


def log_uniform(shape, generator: torch.Generator, device=None) -> torch.Tensor:
    """``log u`` for float64 uniforms, for Metropolis-Hastings tests ``log u < log A``."""
    return torch.log(uniform(shape, generator, device))
