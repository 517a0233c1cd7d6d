"""The generic UDM reverse loop (docs/udm.md#generic-reverse-loop): any process, any x0 predictor.

The loop owns the time grid, predictor calls (with caching), the per-step logits hooks (docs/guidance.md#logits-hooks,
:class:`StepHooks`), progress and the trajectory record; the process owns how ``x̂0`` is drawn from the predictor output
and how the state is corrected (:meth:`ForwardProcess.plan` before the predictor call, :meth:`ForwardProcess.apply`
after it).

A predictor is any callable ``predictor(x_t: Batch, t: Tensor[B]) -> output`` (logits ``[B, L, V]`` for
``mask``/``replace_*``; whatever the process's ``apply`` expects otherwise). Set ``predictor.time_conditioned = True``
on predictors that read ``t``; others are treated as time-agnostic. A predictor may also offer
``predictor.logits_at(x_t, t, where [B, L]) -> [n, V]``, its logits at the ``where`` positions only (row-major): when
the process names the positions it draws from (:meth:`ForwardProcess.drawn_positions`: masking) and every logits hook
takes :class:`PositionLogits` (:data:`LogitsHook`), the loop asks only the rows that draw for the logits at those
positions, and ``[B, L, V]`` is never built (docs/udm.md#logits-only-where-drawn).

Caching (MDLM's ``ddpm_cache``; docs/udm.md#caching-and-first-hitting-skips): with ``cache=True`` a step whose plan
changes no row makes no network call (first-hitting skip), and when the predictor ignores ``t`` only the rows whose
``x_t`` changed since their last call are recomputed. ``cache=False`` calls the predictor on the whole batch at every
step (the naive ancestral sampler, kept for benchmarks). ``cache="auto"`` (default) = ``True``.

Cost accounting: the result's ``stats.network_calls`` / ``stats.network_rows`` count the batched forward passes and the
rows sent through them. A predictor whose output makes more network calls after it returns (the deletion process's
insertion fill, docs/deletion.md#insertion-model) meters every call it makes in its own ``usage``
(:class:`NetworkUsage`); the loop then reports that meter's increase over the run instead of counting predictor calls.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from textdiff import checks
from textdiff.rng import make_generator
from textdiff.support import forbid
from textdiff.udm.process import Batch, ForwardProcess, PositionLogits, X0Draw, as_batch, time_grid

#: ``hook(logits, x, t, s) -> logits``: ``logits [B', L, V]`` are the token logits a reverse step draws from at the
#: positions of ``x`` (the batch the network saw), ``t``, ``s [B']`` the step's times of those rows; e.g.
#: classifier-free mixing or candidate reweighting (docs/guidance.md#classifier-free-guidance,
#: docs/guidance.md#exact-candidate-reweighting). Hooks must not modify in place. A hook with the attribute
#: ``positional = True`` is called as ``hook(logits, x, t, s, where)``, ``where [B', L]`` the positions whose draws
#: the step keeps (``None`` when the process cannot say before the draw), so it can limit per-position work to them.
#: A hook with ``position_logits = True`` also takes a :class:`PositionLogits` in place of ``logits`` (and returns one
#: at the same positions); the loop keeps its logits-only-where-drawn path only when every hook does
#: (docs/udm.md#logits-only-where-drawn).
LogitsHook = Callable[..., torch.Tensor]


def forbid_tokens(token_ids: Sequence[int]) -> LogitsHook:
    """A logits hook giving ``token_ids`` probability 0 wherever x̂0 is drawn (e.g. special tokens), the deletion
    process's inserted tokens included (its fill draws, docs/deletion.md#insertion-model). Visible, protected and
    surviving tokens are carried over by the process, not drawn, so they are unaffected."""
    banned = torch.as_tensor(sorted(set(token_ids)), dtype=torch.long)

    def hook(logits, x_t, t, s):
        if isinstance(logits, PositionLogits):
            return replace(logits, values=forbid(logits.values, banned))
        return forbid(logits, banned)

    hook.position_logits = True
    return hook


@dataclass(frozen=True)
class StepHooks:
    """The logits hooks of one reverse step ``t → s`` (``t``, ``s``: ``[B]``): the one place hooks are run
    (docs/guidance.md#logits-hooks).

    :meth:`bind` applies them to a predictor output: logits ``[B, L, V]`` directly; a structured output whose
    tokens are drawn from logits computed later (the deletion process's ``ModelPrediction``, the insertion model's
    fill) must define ``with_logits_hooks(step_hooks)``, returning a copy that calls ``step_hooks(logits, x, rows)``
    on every logits tensor it draws tokens from (``x``: the batch the network saw; ``rows``: the step-batch indices of
    its rows).
    """

    hooks: tuple[LogitsHook, ...]
    t: torch.Tensor
    s: torch.Tensor
    where: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, x: Batch, rows: torch.Tensor | None = None,
                 where: torch.Tensor | None = None) -> torch.Tensor:
        """Run the hooks on ``logits`` of ``x`` (step-batch ``rows``, default all); ``where``: the positions drawn
        (default: the step's ``where``)."""
        t, s = (self.t, self.s) if rows is None else (self.t[rows], self.s[rows])
        if where is None and self.where is not None:
            where = self.where if rows is None else self.where[rows]
        for hook in self.hooks:
            logits = hook(logits, x, t, s, where) if getattr(hook, "positional", False) else hook(logits, x, t, s)
        return logits

    def bind(self, output: Any, x: Batch) -> Any:
        """``output`` with the hooks applied (logits) or attached (structured output); ``ValueError`` otherwise."""
        if isinstance(output, (torch.Tensor, PositionLogits)):
            return self(output, x)
        if callable(getattr(output, "with_logits_hooks", None)):
            return output.with_logits_hooks(self)
        raise ValueError("logits_hooks need a predictor returning logits [B, L, V] or an output with "
                         f"with_logits_hooks(step_hooks); got {type(output).__name__}")


@dataclass
class NetworkUsage:
    """Network forward passes made (one per batched call) and rows sent through them."""

    calls: int = 0
    rows: int = 0

    def add(self, rows: int) -> None:
        self.calls += 1
        self.rows += rows

    def __sub__(self, other: NetworkUsage) -> NetworkUsage:
        return NetworkUsage(self.calls - other.calls, self.rows - other.rows)


class Predictor(Protocol):
    def __call__(self, x_t: Batch, t: torch.Tensor) -> Any: ...


class PredictorCache:
    """Calls ``predictor`` only where needed: rows whose ``(ids, attention_mask)`` changed since their last call
    (time-agnostic predictors), or every row at every step (``reuse=False``)."""

    def __init__(self, predictor: Predictor, reuse: bool):
        self.predictor, self.reuse = predictor, reuse
        self.usage = NetworkUsage()
        self._x: Batch | None = None
        self._out: torch.Tensor | None = None

    def __call__(self, x: Batch, t: torch.Tensor) -> Any:
        if self.reuse and self._x is not None and self._x.ids.shape == x.ids.shape:
            stale = ((self._x.ids != x.ids) | (self._x.attention_mask != x.attention_mask)).any(-1)
            if not bool(stale.any()):
                return self._out
            if bool((~stale).any()) and isinstance(self._out, torch.Tensor):
                sub = x.rows(stale)
                out = self._out.clone()
                out[stale] = self._call(sub, t[stale])
                return self._store(x, out)
        return self._store(x, self._call(x, t))

    def at(self, x: Batch, t: torch.Tensor, where: torch.Tensor) -> PositionLogits:
        """Logits at ``where [B, L]`` only, from ``predictor.logits_at`` on the rows that have such a position (no
        reuse: a row's drawn positions change whenever the row does)."""
        rows = where.any(-1)
        self.usage.add(int(rows.sum()))
        return PositionLogits(where, self.predictor.logits_at(x.rows(rows), t[rows], where[rows]))

    def _call(self, x: Batch, t: torch.Tensor) -> Any:
        self.usage.add(x.ids.shape[0])
        return self.predictor(x, t)

    def _store(self, x: Batch, out: Any) -> Any:
        if self.reuse:
            self._x, self._out = Batch(x.ids.clone(), x.attention_mask.clone(), x.protected), out
        return out


@dataclass
class Trajectory:
    """States of the reverse chain: ``states[k]`` is ``x`` at time ``times[k]`` (first entry: the prior draw)."""

    times: list[float] = field(default_factory=list)
    states: list[Batch] = field(default_factory=list)

    def record(self, t: float, x: Batch) -> None:
        self.times.append(float(t))
        self.states.append(Batch(x.ids.detach().cpu().clone(), x.attention_mask.cpu().clone(), x.protected.cpu()))

    def first_seen(self, row: int) -> list[tuple[int, float]]:
        """For each final position of ``row``: (token id, time since which it has held its final value)."""
        final = self.states[-1].ids[row]
        seen = torch.full(final.shape, len(self.states) - 1)
        same = torch.ones(final.shape, dtype=torch.bool)
        for k in range(len(self.states) - 1, -1, -1):
            ids = self.states[k].ids[row]
            if ids.shape != final.shape:
                break
            same &= ids == final
            seen = torch.where(same, torch.full_like(seen, k), seen)
        return [(int(w), self.times[int(k)]) for w, k in zip(final.tolist(), seen.tolist())]

    def to_html(self, decode_token: Callable[[int], str], title: str = "textdiff denoising trajectory") -> str:
        """An HTML page: each final token coloured by the time it appeared (dark = early, light = late), plus the
        step-by-step states of sample 0."""
        rows = []
        for b in range(self.states[-1].ids.shape[0]):
            mask = self.states[-1].attention_mask[b]
            spans = []
            for (w, t), real in zip(self.first_seen(b), mask.tolist()):
                if real:
                    shade = int(40 + 200 * (1 - t))
                    spans.append(f'<span title="t={t:.3f}" style="background:rgb(255,{shade},{shade})">'
                                 f"{html.escape(decode_token(w))}</span>")
            rows.append(f"<p>{' '.join(spans)}</p>")

        def first_row(x: Batch) -> str:
            return html.escape(" ".join(decode_token(int(w)) for w, m in zip(x.ids[0], x.attention_mask[0]) if m))

        steps = "".join(f"<li>t={t:.3f}: {first_row(x)}</li>"
                        for t, x in zip(self.times, self.states))
        return (f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"
                "<p>Background: reverse time t at which each token took its final value (dark red = early, t near 1; "
                "white = late, t near 0). Hover a token for t.</p>"
                f"{''.join(rows)}<h2>Sample 0, step by step</h2><ol>{steps}</ol>")


def make_template(batch_size: int | None = None, length: int | None = None, prefix: Sequence[int] | None = None,
                  device="cpu") -> Batch:
    """A ``[batch_size, length]`` batch to generate into; ``prefix`` ids are placed first and protected."""
    checks.positive_int("batch_size", batch_size)
    checks.positive_int("length", length)
    ids = torch.zeros(batch_size, length, dtype=torch.long, device=device)
    protected = torch.zeros_like(ids, dtype=torch.bool)
    if prefix:
        if len(prefix) >= length:
            raise ValueError(f"prefix has {len(prefix)} tokens; length must exceed it, got length={length}")
        ids[:, : len(prefix)] = torch.as_tensor(list(prefix), dtype=torch.long, device=device)
        protected[:, : len(prefix)] = True
    return Batch(ids, None, protected)


@dataclass(frozen=True)
class SampleStats:
    """Cost of one reverse run: grid steps, batched network calls and the rows they carried."""

    steps: int
    network_calls: int
    network_rows: int


@dataclass
class SampleResult(Batch):
    """``x_0`` of a reverse run (a :class:`Batch`) with its :class:`SampleStats`."""

    stats: SampleStats | None = None


def reverse_sample(
    process: ForwardProcess,
    predictor: Predictor,
    template: Batch | torch.Tensor,
    steps: int | None = None,
    *,
    grid: torch.Tensor | None = None,
    draw: X0Draw | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    cache: bool | str = "auto",
    logits_hooks: Sequence[LogitsHook] = (),
    trajectory: Trajectory | None = None,
    x_init: Batch | None = None,
    progress: bool = False,
) -> SampleResult:
    """Run the reverse chain ``x_1 → x_0`` and return ``x_0``.

    ``template`` fixes shape, padding and protected tokens (see :func:`make_template`); a process that grows its states
    (``process.variable_length``: deletion, docs/deletion.md#reverse-loop) also accepts a template of width 0 (every row
    empty). ``steps`` (default ``T``: the number of corruptible tokens of the longest row) defines the uniform grid; the
    count form needs ``1 <= steps <= T``. ``grid`` overrides it (decreasing, from ``t_start`` to 0). ``x_init`` starts
    the chain from a given state at ``grid[0]`` instead of the prior draw. ``logits_hooks`` (:data:`LogitsHook`) run, in
    order, on the token logits of every step (:class:`StepHooks`). The result is ``x_0`` with its :class:`SampleStats`
    (steps, network calls and rows; see the module docstring).
    """
    template = as_batch(template)
    if not isinstance(process, ForwardProcess):
        raise TypeError(f"process must be a ForwardProcess, got {type(process).__name__}")
    if template.ids.shape[1] == 0 and not process.variable_length:
        raise ValueError("length must be >= 1, got a template of length 0")
    n_max = int(template.corruptible.sum(-1).max())
    if grid is None:
        if steps is None and n_max == 0:
            raise ValueError("steps must be given (an integer >= 1) when the template has no corruptible token")
        steps = n_max if steps is None else steps
        if process.schedule.is_count and not (isinstance(steps, int) and 1 <= steps <= max(n_max, 1)):
            raise ValueError(f"steps must be in [1, T={n_max}] for the count form, got {steps!r}")
        grid = time_grid(steps, template.device)
    grid = torch.as_tensor(grid, dtype=torch.float64, device=template.device)
    if grid.dim() != 1 or len(grid) < 2 or bool((grid[1:] >= grid[:-1]).any()) or grid[-1] != 0 or grid[0] > 1:
        raise ValueError("grid must be strictly decreasing from t_start <= 1 down to 0")
    if cache not in ("auto", True, False):
        raise ValueError(f"cache must be 'auto', True or False, got {cache!r}")
    draw = draw or X0Draw()
    gen = make_generator(seed, generator, template.device)
    reuse = cache is not False and process.time_agnostic_posterior and not getattr(predictor, "time_conditioned", False)
    model = PredictorCache(predictor, reuse)
    positional = (cache is not False and callable(getattr(predictor, "logits_at", None))
                  and all(getattr(hook, "position_logits", False) for hook in logits_hooks))
    metered = getattr(predictor, "usage", None)
    usage_before = replace(metered) if isinstance(metered, NetworkUsage) else None
    x = process.prior_sample(template, gen) if x_init is None else as_batch(x_init)
    if trajectory is not None:
        trajectory.record(grid[0], x)
    B = x.ids.shape[0]
    pairs = list(zip(grid[:-1].tolist(), grid[1:].tolist()))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc=f"{process.name} reverse", unit="step")
    for t_val, s_val in pairs:
        t = torch.full((B,), t_val, dtype=torch.float64, device=x.device)
        s = torch.full((B,), s_val, dtype=torch.float64, device=x.device)
        plan = process.plan(x, t, s, gen)
        if cache is False or bool(plan.active.any()):
            where = process.drawn_positions(x, plan)
            output = model.at(x, t, where) if positional and where is not None else model(x, t)
            if logits_hooks:
                output = StepHooks(tuple(logits_hooks), t, s, where).bind(output, x)
            if bool(plan.active.any()):
                x = process.apply(x, output, plan, draw, gen)
        if trajectory is not None:
            trajectory.record(s_val, x)
    usage = model.usage if usage_before is None else metered - usage_before
    stats = SampleStats(steps=len(grid) - 1, network_calls=usage.calls, network_rows=usage.rows)
    return SampleResult(x.ids, x.attention_mask, x.protected, stats)
