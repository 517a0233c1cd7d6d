"""The token tree (docs/mcmc.md#a-tree-of-scored-tokens): rows share the nodes of their common start after the same
prompt, a node is made once, and trimming drops whole calls, oldest first, never a node whose descendants stay."""

from __future__ import annotations

import pytest
import torch

from textdiff.mcmc.token_tree import TokenTree


def tree(capacity: int = 100) -> TokenTree:
    return TokenTree(layers=2, kv_heads=1, head_dim=4, hidden=3, capacity=capacity, device=torch.device("cpu"),
                     dtype=torch.float32)


def closed(t: TokenTree) -> bool:
    """Every node's parent is a root or a node still held."""
    return all(parent < 0 or parent in t.edge for parent, _ in t.children)


def test_rows_share_the_nodes_of_their_common_start_after_the_same_prompt_only():
    t = tree()
    a, b = t.root([1, 2]), t.root([3])
    paths, made = t.insert([[5, 6, 7], [5, 6, 8], [5, 6, 7], [5, 6]], [a, a, b, a])
    assert paths[0][:2] == paths[1][:2] == paths[3] and paths[0][2] != paths[1][2]
    assert not set(paths[2]) & set(paths[0] + paths[1])
    assert [(row, depth) for _, row, depth in made] == [(0, 0), (0, 1), (0, 2), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert 0 not in {node for path in paths for node in path}  # slot 0 is the zero padding
    again, made = t.insert([[5, 6, 8, 9]], [a])
    assert again[0][:3] == paths[1] and [(row, depth) for _, row, depth in made] == [(0, 3)]


def test_trim_drops_whole_calls_oldest_first_and_keeps_paths_closed():
    t = tree(capacity=4)
    root = t.root([1])
    first, _ = t.insert([[5, 6, 7]], [root])
    second, _ = t.insert([[8, 9, 10]], [root])
    t.insert([[5, 6, 11]], [root])  # uses the first call's 5, 6 again: now only the second call is old
    assert len(t) == 7
    t.trim()
    assert len(t) == 3 and closed(t)
    assert set(t.edge) == {*first[0][:2], t.children[first[0][1], 11]}
    assert not set(second[0]) & set(t.edge)
    third, made = t.insert([[8, 9]], [root])  # dropped tokens are made again, in reused slots
    assert len(made) == 2 and set(third[0]) <= set(second[0])
    t.insert([[20 + i for i in range(9)]], [root])
    t.trim()  # the last call alone exceeds the capacity: it is kept whole, everything older goes
    assert len(t) == 9 and closed(t)


def test_a_tree_grows_its_pools_clears_and_refuses_a_capacity_below_one():
    t = tree(capacity=5000)
    root = t.root([1])
    paths, _ = t.insert([list(range(3000))], [root])
    assert len(t.hidden) > max(paths[0]) and all(len(k) == len(t.hidden) for k in (*t.keys, *t.values))
    t.clear()
    assert len(t) == 0 and not t.children
    with pytest.raises(ValueError, match="capacity"):
        tree(capacity=0)
