"""Enumerable toy models for exact MH / Gibbs tests: a context-dependent proposal and a tabulated target, each with
a tuple entry point (the reference) and a tensor one (the engine's device path)."""

from __future__ import annotations

import itertools
import math

import torch

from textdiff.mcmc.mh import State, transitions
from textdiff.mcmc.targets import keyword_placements


class ToyProposal:
    """``g(w | context)``: a fixed pseudo-random function of (left neighbour, right neighbour, length).

    ``top_k`` keeps only the ``top_k`` most likely tokens of each context (so reverse probabilities can be 0);
    ``device`` is where the engine keeps the chains.
    """

    def __init__(self, vocab_size: int = 3, top_k: int | None = None, seed: int = 0, device: str = "cpu"):
        self.vocab_size, self.top_k, self.placeholder = vocab_size, top_k, vocab_size
        self.device = torch.device(device)
        self.table = torch.randn(vocab_size + 1, vocab_size + 1, 16, vocab_size,
                                 generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.calls = 0

    def log_probs(self, contexts):
        self.calls += 1
        rows = []
        for tokens, slot in contexts:
            left = tokens[slot - 1] if slot > 0 else self.vocab_size
            right = tokens[slot + 1] if slot + 1 < len(tokens) else self.vocab_size
            logits = self.table[left, right, min(len(tokens), 15)].clone()
            if self.top_k is not None:
                logits[torch.argsort(logits, descending=True)[self.top_k:]] = -math.inf
            rows.append(torch.log_softmax(logits, -1))
        return torch.stack(rows)

    def log_probs_at(self, ids, lengths, slots):
        """:meth:`log_probs` of the contexts ``ids[n, :lengths[n]]`` ``[N, W]`` with the placeholder at ``slots[n]``."""
        self.calls += 1
        edge = torch.full_like(ids[:, :1], self.vocab_size)
        padded = torch.cat([edge, ids, edge], 1)  # [N, W + 2]: column c + 1 holds token c
        left = padded.gather(1, slots[:, None])[:, 0]
        right = torch.where(slots + 1 < lengths, padded.gather(1, slots[:, None] + 2)[:, 0], self.vocab_size)
        logits = self.table.to(ids.device)[left, right, lengths.clamp(max=15)]  # [N, V]
        if self.top_k is not None:
            dropped = torch.argsort(logits, -1, descending=True)[:, self.top_k:]
            logits = logits.scatter(1, dropped, -math.inf)
        return torch.log_softmax(logits, -1)


class ToyTarget:
    """A tabulated ``log π`` over all token sequences up to ``max_length`` (pseudo-random, fixed by ``seed``)."""

    def __init__(self, vocab_size: int = 3, max_length: int = 4, seed: int = 1, scale: float = 1.0):
        gen = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.table = {
            seq: scale * float(torch.randn((), generator=gen, dtype=torch.float64))
            for n in range(max_length + 1) for seq in itertools.product(range(vocab_size), repeat=n)
        }

    def log_prob(self, states):
        return torch.tensor([self.table[tuple(s.tokens)] for s in states], dtype=torch.float64)

    def log_prob_tensors(self, tokens, lengths, blocks, group):
        """:meth:`log_prob` of padded rows by table lookup: the table lists sequences by length, then in base-V
        order."""
        values = torch.tensor(list(self.table.values()), dtype=torch.float64, device=tokens.device)
        j, n = torch.arange(tokens.shape[1], device=tokens.device)[None], lengths[:, None]
        digits = torch.where(j < n, tokens * self.vocab_size ** (n - 1 - j).clamp(min=0), 0).sum(1)
        first = (self.vocab_size ** lengths - 1) // (self.vocab_size - 1)  # sequences shorter than each row
        return values[first + digits]


class ToyKeywordTarget(ToyTarget):
    """``KeywordMeasure(ToyTarget(...))`` for chains of fixed keyword ``spans``, tabulated (``log π − log N_K``) so
    that its tensor entry point is a lookup too."""

    def __init__(self, spans, **options):
        super().__init__(**options)
        counts = {seq: keyword_placements(seq, spans) for seq in self.table}
        self.table = {seq: v - math.log(counts[seq]) if counts[seq] else -math.inf for seq, v in self.table.items()}


def exact_kernel(start: State, proposal, target, probs, max_length, tau=1.0, faithful=None):
    """All states reachable from ``start`` and the transition matrix built by ``mh.transitions``."""

    def log_g(ctx):
        return proposal.log_probs([ctx])[0]

    def log_pi(state):
        return float(target.log_prob([state])[0])

    rows, frontier = {}, [start]
    while frontier:
        x = frontier.pop()
        if x in rows:
            continue
        rows[x] = transitions(x, log_g, log_pi, probs, max_length, proposal.placeholder, proposal.vocab_size,
                              tau, faithful)
        frontier.extend(y for y, p in rows[x].items() if p > 0 and y not in rows)
    states = sorted(rows, key=lambda s: (len(s.tokens), s.tokens, s.blocks))
    index = {s: i for i, s in enumerate(states)}
    kernel = torch.zeros(len(states), len(states), dtype=torch.float64)
    for x, row in rows.items():
        for y, p in row.items():
            if p > 0:  # moves into zero-probability states are always rejected
                kernel[index[x], index[y]] += p
    return states, kernel
