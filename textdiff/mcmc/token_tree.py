"""Tokens after prompts, each computed once (docs/mcmc.md#a-tree-of-scored-tokens).

What a causal LM makes of a token, its keys and values in every layer, its final hidden state and the log-sum-exp of
the logits after it, depends only on its prompt and the tokens before it. The keyword chains score thousands of rows
that share those: a proposal keeps the chain's sentence up to the edited position, the start states share their first
keywords, a draft's insertions share the draft up to the slot. :class:`TokenTree` keeps each such token as a node of a
trie rooted at its prompt, its numbers in pooled tensors indexed by the node (slot 0 stays all zeros: the padding of
every gather). Beyond ``capacity`` nodes, the least recently used go first; a row uses all the nodes of its path, so a
node is never used later than its ancestors and a kept node keeps its path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TokenTree:
    """A trie of tokens after prompts with, per node, ``keys[layer]``/``values[layer]`` ``[kv heads, head dim]``,
    ``hidden [H]`` and ``log_norm`` (float64, the log-sum-exp of the next-token logits), filled by its engine."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, hidden: int, capacity: int,
                 device: torch.device, dtype: torch.dtype):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 node, got {capacity}")
        self.capacity = capacity
        self.children: dict[tuple[int, int], int] = {}  # (parent, token) -> node; a prompt's root is negative
        self.roots: dict[tuple[int, ...], int] = {}
        self.edge: dict[int, tuple[int, int]] = {}  # node -> its key in ``children``
        self.used: list[int] = [0]  # per slot: the call that last used it
        self.free: list[int] = []
        self.clock = 0
        size = 1 + min(capacity, 1023)
        self.keys = [torch.zeros(size, kv_heads, head_dim, device=device, dtype=dtype) for _ in range(layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.hidden = torch.zeros(size, hidden, device=device, dtype=dtype)
        self.log_norm = torch.zeros(size, device=device, dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.edge)

    def root(self, prompt: Sequence[int]) -> int:
        """The (negative) root of the tokens after ``prompt``."""
        return self.roots.setdefault(tuple(prompt), -1 - len(self.roots))

    def insert(self, rows: Sequence[Sequence[int]], roots: Sequence[int]
               ) -> tuple[list[list[int]], list[tuple[int, int, int]]]:
        """``(paths, made)``: the node of every token of every row (row ``i`` after root ``roots[i]``), and the nodes
        made now as ``(node, row, depth)`` in the order made (their numbers are the caller's to fill, or to
        :meth:`discard`); every node on a path counts as used by this call."""
        self.clock += 1
        paths, made = [], []
        for i, (row, parent) in enumerate(zip(rows, roots)):
            path = []
            for depth, token in enumerate(row):
                node = self.children.get((parent, token))
                if node is None:
                    node = self._slot()
                    self.children[parent, token] = node
                    self.edge[node] = (parent, token)
                    made.append((node, i, depth))
                self.used[node] = self.clock
                path.append(node)
                parent = node
            paths.append(path)
        return paths, made

    def clear(self) -> None:
        """Forget every node (the pools keep their size)."""
        self.discard(list(self.edge))

    def discard(self, nodes: Sequence[int]) -> None:
        """Forget ``nodes``, which must hold every descendant of each of theirs (a slot is reused, and a child left
        behind would hang under its parent's next tenant)."""
        for node in nodes:
            del self.children[self.edge.pop(node)]
            self.free.append(node)

    def trim(self) -> None:
        """Drop the nodes of the oldest calls, whole calls at a time, until at most ``capacity`` are left (the last
        call's are always kept)."""
        if len(self) <= self.capacity:
            return
        by_call: dict[int, list[int]] = {}
        for node in self.edge:
            by_call.setdefault(self.used[node], []).append(node)
        for call in sorted(by_call):
            if len(self) <= self.capacity or call == self.clock:
                break
            self.discard(by_call[call])

    def _slot(self) -> int:
        if self.free:
            return self.free.pop()
        slot = len(self.used)
        self.used.append(0)
        if slot == len(self.hidden):  # double up to the capacity, then a quarter at a time (a call beyond it)
            size = len(self.hidden)
            grow = min(size, self.capacity + 1 - size) if size <= self.capacity else max(1024, size // 4)
            self.keys = [torch.cat([k, k.new_zeros(grow, *k.shape[1:])]) for k in self.keys]
            self.values = [torch.cat([v, v.new_zeros(grow, *v.shape[1:])]) for v in self.values]
            self.hidden = torch.cat([self.hidden, self.hidden.new_zeros(grow, self.hidden.shape[1])])
            self.log_norm = torch.cat([self.log_norm, self.log_norm.new_zeros(grow)])
        return slot
