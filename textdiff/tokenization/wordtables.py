"""Tables of whole segmentations for the word-lattice blocks of :mod:`~textdiff.tokenization.wordcache`
(docs/tokenization.md, "Word-lattice cache").

Short words and word beginnings with few segmentations get a table of all of them, so that a sampling walk
(:mod:`~textdiff.tokenization.wordwalks`) ends with one inverse-CDF draw where it reaches one. :func:`table_prefixes`
picks the words and word beginnings that get a table, and :func:`enumerate_paths` / :func:`table_paths_numpy` list
those segmentations with their exact probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TABLE_LIMIT = 64  # sampling: words with at most this many segmentations get a table of all of them
TABLE_UNITS = 16  # ... and at most this many units (bounds the counting pass)


def table_prefixes(row_first: torch.Tensor, row_count: torch.Tensor, edge_mass: torch.Tensor,
                   edge_length: torch.Tensor, word_rows: torch.Tensor, word_length: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(word, units)`` of the prefixes that get a table of all their segmentations, by word then length: the whole
    word when it has at most ``TABLE_LIMIT`` of them, else its first 1, 2, ... units while the tables hold at most
    ``TABLE_LIMIT`` segmentations in all (within ``TABLE_UNITS`` units). Segmentations are counted over the edges of
    positive predecessor mass (the paths a walk can take). Rows: the units of all words end to end (word ``w``'s
    first at ``word_rows[w]``); row ``r``'s edges ``row_first[r] ..`` (``row_count[r]`` of them)."""
    device = row_first.device
    n_words = word_length.numel()
    base = word_rows + torch.arange(n_words, device=device)  # position (w, e) at base[w] + e
    paths = torch.zeros(int(word_length.sum()) + n_words, dtype=torch.int64, device=device)
    paths.index_fill_(0, base, 1)  # one way to reach each word's start
    row_word = torch.repeat_interleave(torch.arange(n_words, device=device), word_length)
    edge_row = torch.repeat_interleave(torch.arange(row_count.numel(), device=device), row_count)
    edge_word = row_word.index_select(0, edge_row)
    end = edge_row - word_rows.index_select(0, edge_word) + 1  # end unit in the word
    edge_end = base.index_select(0, edge_word) + end
    usable = torch.nonzero((edge_mass > 0) & (end <= TABLE_UNITS)).squeeze(1)
    usable = usable.index_select(0, torch.argsort(end.index_select(0, usable), stable=True))  # by end position
    target = edge_end.index_select(0, usable)
    source = target - edge_length.index_select(0, usable)
    bounds = torch.cumsum(torch.bincount(end.index_select(0, usable), minlength=TABLE_UNITS + 1), 0).tolist()
    for e in range(1, TABLE_UNITS + 1):  # number of paths to every position, by end position
        step = slice(bounds[e - 1], bounds[e])
        paths.index_add_(0, target[step], paths.index_select(0, source[step]))
    units = torch.arange(1, TABLE_UNITS + 1, device=device)
    inside = units[None, :] <= word_length[:, None]
    counts = torch.where(inside, paths[(base[:, None] + units[None, :]).clamp(max=paths.numel() - 1)], 0)
    whole = (word_length <= TABLE_UNITS) & (counts.gather(1, (word_length - 1).clamp(max=TABLE_UNITS - 1)[:, None])
                                            .squeeze(1) <= TABLE_LIMIT)
    prefix = inside & (units[None, :] < word_length[:, None]) & (torch.cumsum(counts, 1) <= TABLE_LIMIT)
    chosen = torch.where(whole[:, None], units[None, :] == word_length[:, None], prefix & ~whole[:, None])
    word, length = torch.nonzero(chosen).unbind(1)
    return word, length + 1


def enumerate_paths(row_first: torch.Tensor, row_count: torch.Tensor, edge_mass: torch.Tensor,
                    edge_length: torch.Tensor, word_rows: torch.Tensor, prefix_word: torch.Tensor,
                    prefix_length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor, torch.Tensor]:
    """Every segmentation of each prefix (its word's first ``prefix_length`` units), walking back from its end over
    the edges of positive predecessor mass (rows and edges as in :func:`table_prefixes`). Returns ``(edge, parent,
    start)`` per path node: its edge, the node of the next piece (-1 at the prefix's end) and the edge's first unit;
    and ``(leaf, prefix, depth)`` per path: its node starting at 0 (first piece; ascending), its prefix and its
    number of pieces."""
    device = row_first.device
    edges, parents, starts, leaves, leaf_prefixes, depths = [], [], [], [], [], []
    prefix, at = torch.arange(prefix_word.numel(), device=device), prefix_length
    node = torch.full_like(prefix, -1)
    depth = 1
    count = 0
    while prefix.numel():  # expand every open path by the usable edges into its current start
        row = word_rows.index_select(0, prefix_word.index_select(0, prefix)) + at - 1
        n_edges = row_count.index_select(0, row)
        spread = torch.repeat_interleave(torch.arange(row.numel(), device=device), n_edges)
        edge = row_first.index_select(0, row).index_select(0, spread) + torch.arange(spread.numel(), device=device) \
            - (torch.cumsum(n_edges, 0) - n_edges).index_select(0, spread)
        keep = torch.nonzero(edge_mass.index_select(0, edge) > 0).squeeze(1)
        spread, edge = spread.index_select(0, keep), edge.index_select(0, keep)
        owner = prefix.index_select(0, spread)
        start = at.index_select(0, spread) - edge_length.index_select(0, edge)
        edges.append(edge)
        parents.append(node.index_select(0, spread))
        starts.append(start)
        ids = count + torch.arange(edge.numel(), device=device)
        count += edge.numel()
        done = start == 0
        ended, open_ = torch.nonzero(done).squeeze(1), torch.nonzero(~done).squeeze(1)
        leaves.append(ids.index_select(0, ended))
        leaf_prefixes.append(owner.index_select(0, ended))
        depths.append(torch.full_like(ended, depth))
        depth += 1
        prefix, at, node = owner.index_select(0, open_), start.index_select(0, open_), ids.index_select(0, open_)
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    cat = lambda parts: torch.cat(parts) if parts else empty
    return cat(edges), cat(parents), cat(starts), cat(leaves), cat(leaf_prefixes), cat(depths)


def table_prefixes_numpy(row_count: np.ndarray, edge_mass: np.ndarray, edge_length: np.ndarray,
                         word_rows: np.ndarray, word_length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`table_prefixes` with numpy arrays (same prefixes, same order; rows are given by their edge count
    only, edges in row order): the paths to every position are
    counted on a ``[word, position]`` grid, one end position at a time."""
    n_words = len(word_length)
    row_word = np.repeat(np.arange(n_words), word_length)
    edge_row = np.repeat(np.arange(len(row_count)), row_count)
    end = edge_row - word_rows[row_word[edge_row]] + 1  # end unit in the word
    usable = np.flatnonzero((edge_mass > 0) & (end <= TABLE_UNITS))
    usable = usable[np.argsort(end[usable].astype(np.int16), kind="stable")]  # by end position
    word, end = row_word[edge_row[usable]], end[usable]
    start = end - edge_length[usable]
    bounds = np.cumsum(np.bincount(end, minlength=TABLE_UNITS + 1)).tolist()
    paths = np.zeros((n_words, TABLE_UNITS + 1), dtype=np.int64)
    paths[:, 0] = 1  # one way to reach each word's start
    for e in range(1, TABLE_UNITS + 1):  # number of paths to every position, by end position
        step = slice(bounds[e - 1], bounds[e])
        paths[:, e] = np.bincount(word[step], weights=paths[word[step], start[step]], minlength=n_words)
    units = np.arange(1, TABLE_UNITS + 1)
    inside = units[None, :] <= word_length[:, None]
    counts = np.where(inside, paths[:, 1:], 0)
    whole = (word_length <= TABLE_UNITS) & (
        counts[np.arange(n_words), np.minimum(word_length - 1, TABLE_UNITS - 1)] <= TABLE_LIMIT)
    prefix = inside & (units[None, :] < word_length[:, None]) & (np.cumsum(counts, 1) <= TABLE_LIMIT)
    chosen = np.where(whole[:, None], units[None, :] == word_length[:, None], prefix & ~whole[:, None])
    word, length = np.nonzero(chosen)
    return word, length + 1


@dataclass
class TablePaths:
    """Every segmentation of the prefixes that get a table (:func:`table_paths_numpy`), in table order: by prefix,
    then number of pieces, then as :func:`enumerate_paths` finds them. Per path: its ``prefix``, ``count`` of
    pieces and ``cdf`` (cumulative probability in its prefix's table, as ``segmenter._path_cdf`` computes it); per
    piece, paths end to end: its ``piece`` id and first unit ``start`` in the word."""

    prefix: np.ndarray
    count: np.ndarray
    cdf: np.ndarray
    piece: np.ndarray
    start: np.ndarray


_START_BITS = 5  # a node's code: piece id << _START_BITS | first unit (< TABLE_UNITS)
_CODE_BITS = 32  # a node's link: (parent + 1) << _CODE_BITS | code
_CHUNK_PREFIXES = 4096  # prefixes enumerated at a time, so that their arrays stay in the CPU caches


def table_paths_numpy(row_count: np.ndarray, edge_mass: np.ndarray, edge_length: np.ndarray, edge_piece: np.ndarray,
                      piece_weight: np.ndarray, word_rows: np.ndarray, prefix_word: np.ndarray,
                      prefix_length: np.ndarray) -> TablePaths:
    """The paths of :func:`enumerate_paths` (same segmentations, same order within each prefix) with numpy arrays,
    their pieces laid out and their table's cdf (rows and edges as in :func:`table_prefixes`; ``piece_weight``:
    ``alpha * score`` of every piece id), a few thousand prefixes at a time (:func:`_chunk_paths`)."""
    usable = np.flatnonzero(edge_mass > 0)  # rows keep their edge order (longest piece first)
    usable_count = np.bincount(np.repeat(np.arange(len(row_count)), row_count)[usable], minlength=len(row_count))
    edges = (np.cumsum(usable_count) - usable_count, usable_count, edge_length[usable],
             edge_piece[usable].astype(np.int64) << _START_BITS)
    end_row = word_rows[prefix_word] + prefix_length - 1
    parts = [_chunk_paths(edges, piece_weight, end_row[lo : lo + _CHUNK_PREFIXES],
                          prefix_length[lo : lo + _CHUNK_PREFIXES].astype(np.int64), lo)
             for lo in range(0, len(prefix_word), _CHUNK_PREFIXES)]
    prefix, count, cdf, code = (np.concatenate(p) for p in zip(*parts)) if parts else (
        np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))
    return TablePaths(prefix, count, cdf, code >> _START_BITS, code & ((1 << _START_BITS) - 1))


def _chunk_paths(edges: tuple[np.ndarray, ...], piece_weight: np.ndarray, row: np.ndarray, at: np.ndarray,
                 offset: int) -> tuple[np.ndarray, ...]:
    """``(prefix, count, cdf, code)`` of the paths of the prefixes ending at rows ``row`` (``at`` units long; ids
    from ``offset``), ``code``: piece id << ``_START_BITS`` | first unit of each piece. A backward breadth-first
    search from the prefixes' ends over the usable ``edges`` (first and number per row, length and code per edge)
    links each node to the next piece (its parent); its levels list the paths by number of pieces. Then one step
    per piece rank, over the paths still that long, writes every path's pieces first piece first and sums their
    weights in that order."""
    usable_first, usable_count, usable_length, usable_code = edges
    n_prefixes = len(row)
    prefix, link = np.arange(n_prefixes), np.zeros(n_prefixes, dtype=np.int64)
    links, leaves, leaf_prefixes = [], [], []
    count = 0
    while len(prefix):  # level d: the nodes d pieces from a prefix's end
        n_edges = usable_count[row]
        total = int(n_edges.sum())
        spread = np.repeat(np.arange(len(row)), n_edges)
        edge = np.arange(total) + (usable_first[row] - (np.cumsum(n_edges) - n_edges))[spread]
        start = at[spread] - usable_length[edge]
        links.append(link[spread] | usable_code[edge] | start)
        done, open_ = np.flatnonzero(start == 0), np.flatnonzero(start)
        leaves.append(done + count)  # node ids, from 0 in the order made
        leaf_prefixes.append(prefix[spread[done]])
        spread, at, link = spread[open_], start[open_], (open_ + (count + 1)) << _CODE_BITS  # link 0: no parent
        prefix, row = prefix[spread], row[spread] - usable_length[edge[open_]]
        count += total
    links = np.concatenate(links)
    depth = np.repeat(np.arange(1, len(leaves) + 1), [len(level) for level in leaves])  # ascending
    leaf, path_prefix = np.concatenate(leaves), np.concatenate(leaf_prefixes)
    order = np.argsort(path_prefix, kind="stable")  # table order: by prefix, then level (a merge of sorted runs)
    piece_at = np.empty_like(order)
    piece_at[order] = np.cumsum(depth[order]) - depth[order]  # where every leaf's path begins, by level
    codes = np.empty(int(depth.sum()), dtype=np.int64)
    log_weight = np.zeros(len(leaf), dtype=np.float64)
    code_mask = (1 << _CODE_BITS) - 1
    for first in np.searchsorted(depth, np.arange(len(leaves)), side="right").tolist():  # paths longer than k
        link = links[leaf[first:]]
        code = link & code_mask
        codes[piece_at[first:]] = code
        log_weight[first:] += piece_weight[code >> _START_BITS]
        piece_at[first:] += 1
        leaf[first:] = (link >> _CODE_BITS) - 1
    path_prefix = path_prefix[order]
    return path_prefix + offset, depth[order], _path_cdf_numpy(path_prefix, log_weight[order], n_prefixes), codes


def _path_cdf_numpy(path_prefix: np.ndarray, log_weight: np.ndarray, n_prefixes: int) -> np.ndarray:
    """``segmenter._path_cdf`` (same numbers, bit for bit) of paths grouped by prefix (ascending), with numpy
    arrays: ``exp(log_weight - max)`` (torch's exp) summed in order row by row of a ``[prefix, path]`` grid."""
    if len(path_prefix) == 0:
        return np.zeros(0)
    paths = np.bincount(path_prefix, minlength=n_prefixes)
    first = np.cumsum(paths) - paths
    rank = np.arange(len(path_prefix)) - first[path_prefix]
    top = np.zeros(n_prefixes)
    top[paths > 0] = np.maximum.reduceat(log_weight, first[paths > 0])
    grid = np.zeros((n_prefixes, int(paths.max())))
    grid[path_prefix, rank] = torch.exp(torch.from_numpy(log_weight - top[path_prefix])).numpy()
    np.cumsum(grid, axis=1, out=grid)
    return grid[path_prefix, rank] / grid[path_prefix, -1]
