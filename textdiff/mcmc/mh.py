"""Metropolis-Hastings over token sequences with protected keyword blocks
(docs/mcmc.md#metropolis-hastings-constrained-generation).

State ``(tokens, blocks)``: ``blocks[i]`` is the keyword index of position ``i`` (-1 for a free token); keyword
blocks are never replaced, deleted or split (docs/mcmc.md#keyword-and-protected-token-rules). Moves replace / insert /
delete with constant probabilities; a drawn move that is unavailable is a self-loop
(docs/mcmc.md#state-moves-and-position-sets). Acceptance uses the exact ratios of
docs/mcmc.md#exact-acceptance-ratios: position-set sizes ``|D(x)|``, ``|S(x)|`` and the multiplicities of runs of
equal free tokens; ``faithful="su"`` uses Su's simplified ratios instead (not reversible; a negative control,
docs/mcmc.md#faithful-reference-modes). Rejection is a self-loop; ``log u < min(0, log ratio)``.

The sampler keeps the chains as padded tensors on the proposal's device (:class:`~textdiff.mcmc.chains.Chains`).
One step for ``B`` chains: draw moves and positions on the device, one batched proposal call for all contexts, token
draws in float64, a second proposal call only for the rare extra run contexts, one batched target call for the
proposed states, the acceptance test on the device. The tuple functions below (``apply_move``,
``log_proposal_pair``, ``transitions``) are the reference kernel: ``transitions`` enumerates the same moves with the
same ratios and builds the exact kernels the tests compare the tensor step with.

Design decisions: move probabilities 1/3 each, ``max_length`` bounds insertions (docs/numerics.md#d8); the annealing
schedule ``temperature_schedule`` (geometric ``τ0 = 1 → 0.05`` at 80 % of the steps) scales only the target term
(docs/numerics.md#d9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from textdiff import checks, rng
from textdiff.mcmc.chains import INSERT, REPLACE, Chains, nth_true
from textdiff.mcmc.proposals import Context, context_log_probs

MOVES = ("replace", "insert", "delete")
FAITHFUL_MODES = (None, "su")


@dataclass(frozen=True)
class State:
    """A token sequence, the keyword index of each position (-1 = free token) and the chain's ``group``: the index
    of its keyword set, which a target may read to score it under that set's prompt
    (docs/mcmc.md#keyword-conditioned-target); moves never change it."""

    tokens: tuple[int, ...]
    blocks: tuple[int, ...]
    group: int = 0

    @classmethod
    def from_keywords(cls, spans: Sequence[Sequence[int]], group: int = 0) -> State:
        """Keyword blocks concatenated in the given order (the initial state of the keyword rules)."""
        tokens = tuple(t for span in spans for t in span)
        blocks = tuple(k for k, span in enumerate(spans) for _ in span)
        return cls(tokens, blocks, group)

    def free_positions(self) -> list[int]:
        """``D(x)``: deletable = replaceable positions (the free tokens)."""
        return [i for i, b in enumerate(self.blocks) if b < 0]

    def insertion_slots(self) -> list[int]:
        """``S(x)``: slots ``0..l`` except those strictly inside a keyword block."""
        b, n = self.blocks, len(self.blocks)
        return [j for j in range(n + 1) if not (0 < j < n and b[j - 1] >= 0 and b[j - 1] == b[j])]


@dataclass(frozen=True)
class Move:
    """``kind`` at ``position`` (index for replace/delete, slot for insert) with ``token`` (replace/insert)."""

    kind: str
    position: int
    token: int | None = None


def apply_move(x: State, move: Move) -> State:
    """The state a move leads to; inserted and replacing tokens are free."""
    t, b, i = x.tokens, x.blocks, move.position
    if move.kind == "replace":
        return State(t[:i] + (move.token,) + t[i + 1:], b, x.group)
    if move.kind == "insert":
        return State(t[:i] + (move.token,) + t[i:], b[:i] + (-1,) + b[i:], x.group)
    return State(t[:i] + t[i + 1:], b[:i] + b[i + 1:], x.group)


def masked_context(x: State, position: int, placeholder: int) -> Context:
    """``x`` with ``position`` replaced by the placeholder: the context of a replace at, or an insert giving, it."""
    return x.tokens[:position] + (placeholder,) + x.tokens[position + 1:], position


def proposal_context(x: State, kind: str, position: int, placeholder: int) -> Context:
    """The context the token of a move is drawn from (replace/insert), or scored in for the reverse (delete)."""
    if kind == "insert":
        return x.tokens[:position] + (placeholder,) + x.tokens[position:], position
    return masked_context(x, position, placeholder)


def free_run(x: State, position: int) -> range:
    """Positions of the maximal run of equal free tokens containing ``position``
    (docs/mcmc.md#multiplicities-and-zero-reverse-probabilities)."""
    token, lo, hi = x.tokens[position], position, position
    while lo > 0 and x.blocks[lo - 1] < 0 and x.tokens[lo - 1] == token:
        lo -= 1
    while hi + 1 < len(x.tokens) and x.blocks[hi + 1] < 0 and x.tokens[hi + 1] == token:
        hi += 1
    return range(lo, hi + 1)


def insertion_contexts(long: State, short: State, position: int, placeholder: int) -> list[Context]:
    """Contexts of every slot of ``short`` whose insertion of ``long.tokens[position]`` yields ``long`` (the
    multiplicity of an insertion).

    Inserting into slot ``k`` of ``short`` gives ``long`` exactly when ``k`` lies in the free run around
    ``position`` of ``long``; the context of that slot is ``long`` with position ``k`` masked.
    """
    slots = set(short.insertion_slots())
    return [masked_context(long, k, placeholder) for k in free_run(long, position) if k in slots]


@dataclass(frozen=True)
class MoveProbs:
    """Constant move probabilities ``p_rep, p_ins, p_del``; they must sum to 1."""

    replace: float = 1 / 3
    insert: float = 1 / 3
    delete: float = 1 / 3

    def __post_init__(self):
        values = (self.replace, self.insert, self.delete)
        if min(values) < 0 or abs(sum(values) - 1) > 1e-9:
            raise ValueError(f"move_probs must be >= 0 and sum to 1, got {values}")

    def log(self, kind: str) -> float:
        p = getattr(self, kind)
        return math.log(p) if p > 0 else -math.inf


def log_proposal_pair(x: State, move: Move, log_g: Callable[[Context], torch.Tensor], probs: MoveProbs,
                      placeholder: int, faithful: str | None = None) -> tuple[float, float]:
    """``(log q(y←x), log q(x←y))`` of the aggregated kernels (docs/mcmc.md#exact-acceptance-ratios) for
    ``y = apply_move(x, move)``.

    ``faithful="su"`` returns Su's token-proposal-only terms (docs/mcmc.md#faithful-reference-modes): no position-set
    sizes, no multiplicities.
    """
    y = apply_move(x, move)
    i = move.position
    if move.kind == "replace":
        row = log_g(proposal_context(x, "replace", i, placeholder))
        return float(row[move.token]), float(row[x.tokens[i]])  # |D(x)| = |D(y)| and p_rep cancel
    if move.kind == "insert":
        long, short, token, sign = y, x, move.token, 1
    else:
        long, short, token, sign = x, y, x.tokens[i], -1
    if faithful == "su":
        log_ins = float(log_g(proposal_context(x, move.kind, i, placeholder))[token])
        log_del = 0.0
    else:
        contexts = insertion_contexts(long, short, i, placeholder)
        log_ins = float(torch.logsumexp(torch.stack([log_g(c)[token] for c in contexts]), 0)) if contexts else -math.inf
        log_ins += probs.log("insert") - math.log(len(short.insertion_slots()))
        log_del = probs.log("delete") - math.log(len(long.free_positions())) + math.log(len(free_run(long, i)))
    # insert: forward = insertion into `short` (= x), backward = deletion from `long` (= y); delete: the reverse.
    return (log_ins, log_del) if sign > 0 else (log_del, log_ins)


def log_acceptance(log_pi_x: float, log_pi_y: float, log_q_fwd: float, log_q_bwd: float, tau: float = 1.0) -> float:
    """``min(0, (log π(y) − log π(x))/τ + log q(x←y) − log q(y←x))`` with explicit ``-inf`` guards
    (docs/numerics.md#log-space-arithmetic)."""
    if log_pi_y == -math.inf or log_q_bwd == -math.inf:
        return -math.inf
    if log_pi_x == -math.inf:
        return 0.0
    return min(0.0, (log_pi_y - log_pi_x) / tau + log_q_bwd - log_q_fwd)


def available_positions(x: State, kind: str, max_length: int) -> list[int]:
    """Positions a move of ``kind`` may use; empty means the move is a self-loop."""
    if kind == "insert":
        return x.insertion_slots() if len(x.tokens) < max_length else []
    return x.free_positions()


def transitions(x: State, log_g: Callable[[Context], torch.Tensor], log_pi: Callable[[State], float],
                probs: MoveProbs, max_length: int, placeholder: int, vocab_size: int, tau: float = 1.0,
                faithful: str | None = None) -> dict[State, float]:
    """The full row ``P(·←x)`` of the kernel the sampler implements, self-loop included (for exact tests)."""
    row: dict[State, float] = {}
    for kind in MOVES:
        p_kind = getattr(probs, kind)
        positions = available_positions(x, kind, max_length)
        if p_kind == 0 or not positions:
            row[x] = row.get(x, 0.0) + p_kind
            continue
        for position in positions:
            p_pos = p_kind / len(positions)
            if kind == "delete":
                candidates = [(Move(kind, position), 1.0)]
            else:
                g = log_g(proposal_context(x, kind, position, placeholder)).exp()
                candidates = [(Move(kind, position, w), float(g[w])) for w in range(vocab_size) if g[w] > 0]
            for move, p_token in candidates:
                y = apply_move(x, move)
                fwd, bwd = log_proposal_pair(x, move, log_g, probs, placeholder, faithful)
                accept = math.exp(log_acceptance(log_pi(x), log_pi(y), fwd, bwd, tau))
                row[y] = row.get(y, 0.0) + p_pos * p_token * accept
                row[x] = row.get(x, 0.0) + p_pos * p_token * (1.0 - accept)
    return row


def temperature_schedule(steps: int, kind: str = "geometric", tau0: float = 1.0, tau_min: float = 0.05,
                         reach: float = 0.8) -> list[float]:
    """Annealing temperatures ``τ_n`` (docs/mcmc.md#simulated-annealing, docs/numerics.md#d9): constant, linear or
    geometric to ``tau_min``."""
    if not (tau0 > 0 and tau_min > 0):
        raise ValueError(f"temperatures must be > 0, got tau0={tau0}, tau_min={tau_min}")
    if not 0 < reach <= 1:
        raise ValueError(f"reach must be in (0, 1], got {reach}")
    horizon = max(1.0, reach * steps)
    if kind == "constant":
        return [tau0] * steps
    if kind == "linear":
        return [tau0 + (tau_min - tau0) * min(1.0, n / horizon) for n in range(steps)]
    if kind == "geometric":
        ratio = (tau_min / tau0) ** (1.0 / horizon)
        return [max(tau_min, tau0 * ratio**n) if tau_min < tau0 else tau0 for n in range(steps)]
    raise ValueError(f"schedule must be one of constant, linear, geometric; got {kind!r}")


def categorical(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One float64 Gumbel-max index per row of ``logits [N, K]``, without the all-``-inf`` check (a host sync; every
    row drawn here has support)."""
    return rng.sample_categorical(logits, generator, check=False)


class ChainStreams:
    """Consecutive groups of chains with a generator each: ``[(chains, generator), ...]`` in chain order.

    Every draw of a step is made group by group, each group drawing all its chains' values in one call on its own
    generator, so a group's draws never depend on the other groups; with one group this is a single-generator run.
    """

    def __init__(self, groups: Sequence[tuple[int, torch.Generator]]):
        self.groups = [(checks.positive_int("chains", k), g) for k, g in groups]
        bounds = [0]
        for k, _ in self.groups:
            bounds.append(bounds[-1] + k)
        self.bounds = bounds

    @property
    def total(self) -> int:
        return self.bounds[-1]

    def on(self, device: torch.device) -> ChainStreams:
        """The same groups with generators on ``device``: a generator elsewhere seeds a new one there with one draw
        of its own, so each group still draws from its own generator only."""
        def moved(g: torch.Generator) -> torch.Generator:
            if torch.device(g.device).type == device.type:
                return g
            return rng.make_generator(int(torch.randint(0, 2**62, (1,), generator=g)), device=device)

        return ChainStreams([(k, moved(g)) for k, g in self.groups])

    def draw(self, make: Callable[..., torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """``make(k, generator)`` for each group of ``k`` chains, or with ``rows`` (one per chain)
        ``make(rows of the group, generator)``; concatenated in chain order."""
        parts = []
        for (k, g), low, high in zip(self.groups, self.bounds[:-1], self.bounds[1:]):
            parts.append(make(k, g) if rows is None else make(rows[low:high], g))
        return torch.cat(parts)


def log_acceptances(log_pi_x: torch.Tensor, log_pi_y: torch.Tensor, log_q_fwd: torch.Tensor,
                    log_q_bwd: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """:func:`log_acceptance` of every row, with the same ``-inf`` guards."""
    ratio = ((log_pi_y - log_pi_x) / tau + log_q_bwd - log_q_fwd).clamp(max=0.0)
    ratio = torch.where(log_pi_x == -math.inf, 0.0, ratio)
    return torch.where((log_pi_y == -math.inf) | (log_q_bwd == -math.inf), -math.inf, ratio)


@dataclass
class MHResult:
    """Final and best-π states per chain, their log π, and acceptance counts."""

    final: list[State]
    final_log_pi: list[float]
    best: list[State]
    best_log_pi: list[float]
    proposed: list[int]
    accepted: list[int]
    trace: list[list[float]] = field(default_factory=list)

    def split(self, sizes: Sequence[int]) -> list[MHResult]:
        """The results of consecutive groups of ``sizes`` chains (e.g. one per keyword set)."""
        out, start = [], 0
        for k in sizes:
            part = slice(start, start + k)
            out.append(MHResult(self.final[part], self.final_log_pi[part], self.best[part], self.best_log_pi[part],
                                self.proposed[part], self.accepted[part], [row[part] for row in self.trace]))
            start += k
        return out


class MetropolisHastings:
    """Batched MH chains with exact acceptance (docs/mcmc.md#exact-acceptance-ratios) over a proposal model and a
    target, the chains held as :class:`~textdiff.mcmc.chains.Chains` tensors on the proposal's device.

    ``proposal.placeholder`` and either ``proposal.log_probs_at(ids, lengths, slots) -> [N, V]`` float64 log ``g``
    on the device, or ``proposal.log_probs(contexts)`` (tuples; a host round trip per call). ``target.log_prob(states)
    -> [B]`` float64 log π, or ``target.log_prob_tensors(tokens, lengths, blocks, group) -> [B]`` on the device.
    """

    def __init__(self, proposal, target, move_probs: MoveProbs | Sequence[float] = MoveProbs(),
                 max_length: int = 32, faithful: str | None = None):
        if faithful not in FAITHFUL_MODES:
            raise ValueError(f"faithful must be one of {FAITHFUL_MODES}, got {faithful!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.proposal, self.target, self.faithful, self.max_length = proposal, target, faithful, max_length
        self.probs = move_probs if isinstance(move_probs, MoveProbs) else MoveProbs(*move_probs)
        self.device = torch.device(getattr(proposal, "device", "cpu"))
        self.log_move_probs = torch.tensor([self.probs.log(k) for k in MOVES], dtype=torch.float64,
                                           device=self.device)

    def log_pi(self, chains: Chains, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[B]`` log π of the chains (with ``rows``: of those rows, ``-inf`` elsewhere). A target with
        ``log_prob_tensors`` scores every row on the device; one with ``log_prob(states)`` only gets the rows as
        ``State`` tuples (a host sync: a text-based target needs the host anyway)."""
        tensors = getattr(self.target, "log_prob_tensors", None)
        if tensors is not None:
            out = tensors(chains.tokens, chains.lengths, chains.blocks, chains.group)
            return out if rows is None else out.masked_fill(~rows, -math.inf)
        if rows is None:
            return self.target.log_prob(chains.to_states()).to(self.device, torch.float64)
        out = torch.full(rows.shape, -math.inf, dtype=torch.float64, device=self.device)
        index = rows.nonzero()[:, 0]
        if len(index):
            out[index] = self.target.log_prob(chains.index(index).to_states()).to(out)
        return out

    def log_insertions(self, long: Chains, short: Chains, position: torch.Tensor, token: torch.Tensor,
                       lo: torch.Tensor, hi: torch.Tensor, rows: torch.Tensor, needed: torch.Tensor
                       ) -> torch.Tensor:
        """``[B]`` ``log Σ_k g(token | long with k masked)`` over the slots ``k`` of the run ``lo..hi`` in ``S(short)``
        (``insertion_contexts``). The slot ``position`` is the drawn context (``rows``); the others, needed only
        for runs longer than 1 (rare), go to a second proposal call: sizing it is a host sync each step."""
        j, at = long.columns()[None], position[:, None]
        run = (j >= lo[:, None]) & (j <= hi[:, None]) & short.slot_mask()[:, :-1]  # [B, L]
        terms = torch.where(run & (j == at), rows.gather(1, token[:, None]), -math.inf)
        chain, slot = (run & (j != at) & needed[:, None]).nonzero(as_tuple=True)
        if len(chain):
            extra = long.index(chain)
            g = context_log_probs(self.proposal, extra.masked(slot, self.proposal.placeholder), extra.lengths, slot)
            terms = terms.index_put((chain, slot), g.gather(1, token[chain][:, None])[:, 0])
        return terms.logsumexp(1)

    def log_proposal_pairs(self, x: Chains, y: Chains, kind: torch.Tensor, position: torch.Tensor,
                           token: torch.Tensor, rows: torch.Tensor, needed: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B]`` ``(log q(y←x), log q(x←y))``: :func:`log_proposal_pair` of every row, ``rows [B, V]`` being
        ``log g`` of each row's drawn context."""
        current = x.tokens.gather(1, position[:, None])[:, 0]
        insert = kind == INSERT
        moved = torch.where(insert, token, current)  # the inserted or deleted token
        log_g_moved = rows.gather(1, moved[:, None])[:, 0]
        if self.faithful == "su":
            log_ins, log_del = log_g_moved, torch.zeros_like(log_g_moved)
        else:
            long, short = y.select(insert, x), x.select(insert, y)
            lo, hi = long.run_bounds(position)
            log_ins = self.log_insertions(long, short, position, moved, lo, hi, rows, needed)
            log_ins = log_ins + self.probs.log("insert") - short.slot_mask().sum(1).double().log()
            log_del = (self.probs.log("delete") - long.free_mask().sum(1).double().log()
                       + (hi - lo + 1).double().log())
        replace = kind == REPLACE
        fwd = torch.where(replace, rows.gather(1, token[:, None])[:, 0], torch.where(insert, log_ins, log_del))
        bwd = torch.where(replace, rows.gather(1, current[:, None])[:, 0], torch.where(insert, log_del, log_ins))
        return fwd, bwd

    def step(self, x: Chains, log_pi: torch.Tensor, tau: float, streams: ChainStreams
             ) -> tuple[Chains, torch.Tensor, torch.Tensor]:
        """One MH step of every chain; returns (new chains, their log π, which chains accepted a move).

        Moves, positions (``floor(u · |set|)``-th available one, docs/mcmc.md#state-moves-and-position-sets),
        tokens and acceptance are drawn and decided on the device, each group of ``streams`` on its own generator.
        Host syncs: sizing the extra run contexts (:meth:`log_insertions`), and whatever the proposal and target
        need (``log_probs`` / ``log_prob`` on tuples, MLM width groups on CPU)."""
        kind = streams.draw(lambda k, g: categorical(self.log_move_probs.expand(k, 3), g))  # [B]
        u = streams.draw(lambda k, g: rng.uniform((k,), g))  # [B]
        room = (x.lengths < self.max_length)[:, None]
        available = torch.where((kind == INSERT)[:, None], x.slot_mask() & room,
                                torch.nn.functional.pad(x.free_mask(), (0, 1)))  # [B, L + 1]
        position, active = nth_true(available, u)
        kind = torch.where(active, kind, REPLACE)  # an unavailable move is a self-loop: REPLACE at 0 stands in
        context_kind = torch.where((kind == INSERT) | (x.lengths == 0), INSERT, REPLACE)  # delete: masked like replace
        context = x.edit(context_kind, position, torch.full_like(position, self.proposal.placeholder))
        rows = context_log_probs(self.proposal, context.tokens, context.lengths, position)  # [B, V]
        token = streams.draw(categorical, rows=rows)  # [B]
        current = x.tokens.gather(1, position[:, None])[:, 0]
        changed = active & ((kind != REPLACE) | (token != current))
        y = x.edit(kind, position, token).select(changed, x)
        fwd, bwd = self.log_proposal_pairs(x, y, kind, position, token, rows, changed & (kind != REPLACE))
        log_pi_y = self.log_pi(y, changed)
        log_u = streams.draw(lambda k, g: rng.log_uniform((k,), g))  # [B]
        accept = changed & (log_u < log_acceptances(log_pi, log_pi_y, fwd, bwd, tau))
        return y.select(accept, x), torch.where(accept, log_pi_y, log_pi), accept

    def run(self, states: Sequence[State], steps: int, *, temperatures: Sequence[float] | None = None,
            seed: int | None = None, generator: torch.Generator | ChainStreams | None = None,
            progress: bool = False, callback: Callable[[int, list[State]], None] | None = None,
            trace: bool = False) -> MHResult:
        """Run ``steps`` MH steps from ``states`` (τ = 1 unless ``temperatures`` gives one per step).

        ``generator`` is one generator for every chain, or :class:`ChainStreams` giving consecutive groups of chains
        (e.g. the chains of one keyword set) a generator each; generators not on the chains' device seed one there
        (:meth:`ChainStreams.on`). The chains stay tensors; ``callback(step, states)`` gets them as states."""
        checks.positive_int("steps", steps)
        if temperatures is not None and (len(temperatures) != steps or min(temperatures) <= 0):
            raise ValueError("temperatures must hold one value > 0 per step")
        states = list(states)
        for x in states:
            if len(x.tokens) > self.max_length:
                raise ValueError(f"initial state has {len(x.tokens)} tokens > max_length={self.max_length}")
        if isinstance(generator, ChainStreams):
            streams = generator
            if streams.total != len(states):
                raise ValueError(f"the chain streams cover {streams.total} chains, but {len(states)} states are given")
        else:
            g = generator if isinstance(generator, torch.Generator) else rng.make_generator(seed, generator)
            streams = ChainStreams([(len(states), g)])
        streams = streams.on(self.device)
        chains = Chains.from_states(states, self.max_length, self.device)
        log_pi = self.log_pi(chains)
        best, best_log_pi = chains, log_pi
        accepted = torch.zeros(len(states), dtype=torch.long, device=self.device)
        history = []
        for n in tqdm(range(steps), disable=not progress, desc="MH steps", leave=False):
            tau = 1.0 if temperatures is None else float(temperatures[n])
            chains, log_pi, acc = self.step(chains, log_pi, tau, streams)
            accepted += acc
            better = log_pi > best_log_pi
            best, best_log_pi = chains.select(better, best), torch.where(better, log_pi, best_log_pi)
            if trace:
                history.append(log_pi)
            if callback is not None:
                callback(n, chains.to_states())
        return MHResult(chains.to_states(), log_pi.tolist(), best.to_states(), best_log_pi.tolist(),
                        [steps] * len(states), accepted.tolist(), [row.tolist() for row in history])
