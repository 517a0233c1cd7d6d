"""Enumerable toy models for exact MH / Gibbs tests: a context-dependent proposal and a tabulated target."""

from __future__ import annotations

import itertools
import math

import torch

from textdiff.mcmc.mh import State, transitions


class ToyProposal:
    """``g(w | context)``: a fixed pseudo-random function of (left neighbour, right neighbour, length).

    ``top_k`` keeps only the ``top_k`` most likely tokens of each context (so reverse probabilities can be 0).
    """

    def __init__(self, vocab_size: int = 3, top_k: int | None = None, seed: int = 0):
        self.vocab_size, self.top_k, self.placeholder = vocab_size, top_k, vocab_size
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


class ToyTarget:
    """A tabulated ``log π`` over all token sequences up to ``max_length`` (pseudo-random, fixed by ``seed``)."""

    def __init__(self, vocab_size: int = 3, max_length: int = 4, seed: int = 1, scale: float = 1.0):
        gen = torch.Generator().manual_seed(seed)
        self.table = {
            seq: scale * float(torch.randn((), generator=gen, dtype=torch.float64))
            for n in range(max_length + 1) for seq in itertools.product(range(vocab_size), repeat=n)
        }

    def log_prob(self, states):
        return torch.tensor([self.table[tuple(s.tokens)] for s in states], dtype=torch.float64)


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
