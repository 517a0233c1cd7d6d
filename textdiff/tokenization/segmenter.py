"""The word segmenter behind :class:`~textdiff.tokenization.tokenizer.UnigramTokenizer` (docs/tokenization.md,
"Word-lattice cache").

With whitespace splitting no piece crosses a word boundary, so a text's segmentation is its words' segmentations side
by side. :class:`WordSegmenter` keeps, per device and ``alpha``, a :class:`~textdiff.tokenization.wordcache.WordStore`
of every word's lattice tables within ``cache_size`` bytes (:meth:`WordSegmenter.word_tables` builds those of the
words it lacks: the lattice, the forward pass, the predecessor CDFs in float64 and tables of whole segmentations), and
turns word occurrences into pieces (:meth:`WordSegmenter.segment_words`): the word's Viterbi segmentation, a draw
from its table, or a walk back from its end, one float64 uniform per step.
"""

from __future__ import annotations

import numpy as np
import torch

from textdiff import checks, rng
from textdiff.tokenization import lattice, viterbi, wordcache, wordtables, wordwalks
from textdiff.tokenization.encoding import Tokens
from textdiff.tokenization.normalization import Chunks, word_of
from textdiff.tokenization.spelling import Spelling
from textdiff.tokenization.vocab import PieceTrie, Vocab


class WordSegmenter:
    """Word tables in a bounded cache and the pieces of word occurrences, for one vocabulary (module docs)."""

    def __init__(self, vocab: Vocab, cache_size: int, keeps_words: bool) -> None:
        """``cache_size``: bytes the stores may hold between calls; ``keeps_words``: whether chunks are words (cut at
        ``▁`` or by a pre-tokenizer), else whole lines, which no store keeps between calls."""
        self.vocab, self.keeps_words = vocab, keeps_words
        self.cache_size = cache_size
        self.scores = vocab.lattice_scores()
        self.spelling = Spelling(vocab)
        self._stores: dict[tuple[str, float | None], wordcache.WordStore] = {}
        self._tries: dict[str, PieceTrie] = {}

    @property
    def cache_size(self) -> int:
        """Bytes the word-lattice cache may hold between calls (an integer >= 0; 0 disables it)."""
        return self._cache_size

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        self._cache_size = checks.positive_int("cache_size", value, minimum=0)

    def trie(self, device: torch.device | str) -> PieceTrie:
        """The vocabulary's piece trie on ``device`` (built once per device)."""
        key = str(torch.device(device))
        if key not in self._tries:
            self._tries[key] = PieceTrie(self.vocab, device)
        return self._tries[key]

    def store(self, device: torch.device, alpha: float | None) -> wordcache.WordStore:
        """The word store for ``(device, alpha)``. Chunks are words (cut at ``▁`` or by a pre-tokenizer) for most
        models: their stores are kept within ``cache_size`` bytes shared by all stores, the store in use getting at
        least half (the others evict their least recently used words). Models whose chunks are whole lines get a
        store that keeps nothing between calls."""
        fields = wordcache.DECODING_FIELDS if alpha is None else wordcache.SAMPLING_FIELDS
        if not self.keeps_words:
            return wordcache.WordStore(fields, device, budget=0)
        key = (str(device), alpha)
        store = self._stores.pop(key, None) or wordcache.WordStore(fields, device, self.cache_size)
        others = sum(s.nbytes for s in self._stores.values())
        if others > self.cache_size // 2:  # the store in use gets at least half the bound; the others shrink
            for other in self._stores.values():
                other.budget = other.nbytes * (self.cache_size // 2) // others
                other.trim()
        store.budget = self.cache_size - sum(s.nbytes for s in self._stores.values())
        self._stores[key] = store
        return store

    def cache_info(self) -> dict[str, int]:
        """The word-lattice cache: ``hits`` / ``misses`` (distinct words looked up per call, summed over calls),
        ``words`` cached, ``bytes`` held and the ``cache_size`` bound (docs/tokenization.md)."""
        stores = self._stores.values()
        return {"hits": sum(s.hits for s in stores), "misses": sum(s.misses for s in stores),
                "words": sum(len(s.words) for s in stores), "bytes": sum(s.nbytes for s in stores),
                "cache_size": self.cache_size}

    def cache_clear(self) -> None:
        """Empty the word-lattice cache (statistics included)."""
        self._stores.clear()

    def word_tables(self, keys: list, alpha: float | None, device: torch.device) -> wordcache.WordTables:
        """The cache blocks of the words of ``keys`` (distinct): lattice, forward pass over length buckets of
        independent segments, then per unit of every word its edges with the predecessor CDF in float64 (sampling,
        longest piece first) or its best last edge (decoding; ties: the longest piece). Decoding keeps the Viterbi
        segmentation of every word; sampling keeps the edges, and for words with at most
        ``wordtables.TABLE_LIMIT`` segmentations a table of all of them (docs/tokenization.md)."""
        words = list(map(word_of, keys))
        order = torch.arange(len(words))
        stream = lattice.chunk_stream(Chunks(words, order, torch.zeros_like(order)), device)
        units = stream.units
        compact = self.compact(device)
        trie = self.trie(device)
        cands = lattice.find_candidates(units, trie, self.vocab.unk_id, compact)
        segs = lattice.find_segments(units, cands)
        scores = self.scores.to(device).index_select(0, cands.piece)
        n_cands = cands.piece.numel()
        single = segs.length.index_select(0, segs.of_candidate) == 1  # the only edge ending at its unit
        value = torch.cat([single.double(), single.new_zeros(1, dtype=torch.float64)])  # last entry: scratch
        checked = self.vocab.unk_id is not None  # with an unk piece every text is segmentable
        reached = torch.bincount(segs.of_candidate, minlength=segs.first.numel()) > 0
        for table in lattice.edge_tables(cands, segs, trie.max_len):
            if alpha is None:
                weights = table.gather(scores)
                prefix, choice = viterbi.forward_best(weights.double())
                best = table.candidate.gather(2, choice.unsqueeze(2)).reshape(-1)
                value.index_fill_(0, best, 1.0)
            else:
                weights = table.gather(alpha * scores.double())
                prefix, cdf = viterbi.forward(weights, with_cdf=True)
                value.index_copy_(0, table.candidate.reshape(-1), cdf.reshape(-1))  # entries without a piece: scratch
            if not checked:
                reached[table.rows] &= torch.isfinite(viterbi.log_partition(prefix, weights, table.length))
        if not checked:
            lattice.require_segmentable(units, segs, reached)
        value = value[:n_cands]
        is_unit = units >= 0
        word_of_unit = stream.chunk_of[is_unit]
        end = cands.start + cands.length - 1
        row = end - stream.chunk_of.index_select(0, end)  # unit index without the separators
        rows = {"unit": units[is_unit]}
        sizes = {wordcache.ROW: stream.chunk_len}
        n_words = len(words)
        if alpha is None:  # the Viterbi segmentation of every word, by one walk along the best edges
            best = torch.nonzero(value > 0).squeeze(1)
            row_of_best = row.index_select(0, best)
            rows["piece"] = torch.full_like(rows["unit"], -1).index_copy_(0, row_of_best,
                                                                            cands.piece.index_select(0, best))
            rows["length"] = torch.ones_like(rows["unit"]).index_copy_(0, row_of_best,
                                                                         cands.length.index_select(0, best))
            sizes[wordcache.EDGE] = torch.zeros_like(stream.chunk_len)
            best_edges = wordcache.WordStore(wordcache.WALK_DECODING_FIELDS, device, budget=0)
            entry = best_edges.lookup(keys, lambda _: wordcache.WordTables(sizes, {wordcache.ROW: rows,
                                                                                   wordcache.EDGE: {}}))
            _, path = self._walk(best_edges, entry, stream.chunk_len, None, device)
            return self._segmentation_tables(stream.chunk_len, torch.arange(n_words, device=device), path.count,
                                             path.piece)
        count = torch.bincount(row, minlength=rows["unit"].numel())
        ordered = _by_row_longest_first(row, cands.length, count, trie.max_len, compact)
        edges_of_word = torch.zeros_like(stream.chunk_len).index_add_(0, word_of_unit, count)
        word_first_edge = torch.cumsum(edges_of_word, 0) - edges_of_word
        row_first = torch.cumsum(count, 0) - count
        rows["first"] = row_first - word_first_edge.index_select(0, word_of_unit)
        rows["last"] = (count - 1).clamp(min=0)  # rows without edges are never visited
        sizes[wordcache.EDGE] = edges_of_word
        edges = {"cdf": value.index_select(0, ordered), "piece": cands.piece.index_select(0, ordered),
                 "length": cands.length.index_select(0, ordered)}
        # tables of all segmentations of short words and of the first units of longer ones, exact probabilities
        cdf = edges["cdf"]
        row_start = torch.zeros_like(cdf, dtype=torch.bool).index_fill_(0, row_first[count > 0], True)
        mass = cdf - torch.where(row_start, 0.0, torch.cat([cdf.new_zeros(1), cdf[:-1]]))  # predecessor law
        word_rows = torch.cumsum(stream.chunk_len, 0) - stream.chunk_len
        graph = (row_first, count, mass, edges["length"], word_rows)
        sampling_tables = self._sampling_tables_numpy if compact else self._sampling_tables
        prefix_word, prefix_length, path_prefix, tables = sampling_tables(stream, graph, edges["piece"], alpha)
        # the row where each prefix ends points at its table
        paths = torch.bincount(path_prefix, minlength=prefix_word.numel())
        word_paths = tables.sizes[wordcache.SEG]
        first_path = torch.cumsum(paths, 0) - paths - (torch.cumsum(word_paths, 0) - word_paths)[prefix_word]
        prefix_row = word_rows.index_select(0, prefix_word) + prefix_length - 1
        rows["seg"] = torch.zeros_like(rows["unit"]).index_copy_(0, prefix_row, first_path)
        rows["segs"] = torch.zeros_like(rows["unit"]).index_copy_(0, prefix_row, paths)
        tables.sizes.update(sizes)
        tables.data.update({wordcache.ROW: rows, wordcache.EDGE: edges})
        return tables

    def _sampling_tables(self, stream: lattice.ChunkStream, graph: tuple[torch.Tensor, ...], edge_piece: torch.Tensor,
                         alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, wordcache.WordTables]:
        """The segmentation tables of the words of ``stream`` (``graph``: rows and edges as
        :func:`~textdiff.tokenization.wordtables.table_prefixes` takes them; ``edge_piece``: piece of every edge):
        ``(prefix_word, prefix_length)`` of the prefixes that get one, the prefix of every path in table order, and
        the ``UNITS``, ``SEG`` and ``PIECE`` blocks."""
        device = edge_piece.device
        prefix_word, prefix_length = wordtables.table_prefixes(*graph, stream.chunk_len)
        node_edge, parent, node_start, leaves, path_prefix, path_count = wordtables.enumerate_paths(
            *graph, prefix_word, prefix_length)
        by_prefix = torch.argsort(path_prefix, stable=True)  # paths by prefix, then node order
        leaves, path_prefix, path_count = (t.index_select(0, by_prefix) for t in (leaves, path_prefix, path_count))
        node_weight = alpha * self.scores.to(device).double().index_select(
            0, edge_piece.index_select(0, node_edge))
        log_weight = torch.zeros(leaves.numel(), dtype=torch.float64, device=device)
        nodes = torch.empty(int(path_count.sum()), dtype=torch.int64, device=device)
        path, node, at = torch.arange(leaves.numel(), device=device), leaves, torch.cumsum(path_count, 0) - path_count
        while node.numel():  # every path's nodes, first piece first; alpha * scores summed in that order
            nodes.index_copy_(0, at, node)
            log_weight.index_add_(0, path, node_weight.index_select(0, node))
            node = parent.index_select(0, node)
            more = torch.nonzero(node >= 0).squeeze(1)
            path, node, at = path.index_select(0, more), node.index_select(0, more), at.index_select(0, more) + 1
        piece = edge_piece.index_select(0, node_edge.index_select(0, nodes))
        path_word = prefix_word.index_select(0, path_prefix)
        if self.vocab.byte_fallback:  # spell the characters of unk pieces as bytes
            unk = torch.nonzero(piece == self.vocab.unk_id).squeeze(1)
            path_of_unk = torch.searchsorted(torch.cumsum(path_count, 0), unk, right=True)
            at = stream.chunk_begin.index_select(0, path_word.index_select(0, path_of_unk)) \
                + node_start.index_select(0, nodes.index_select(0, unk))
            path_count, piece = self.spelling.spelled(path_count, piece, unk, stream.units.index_select(0, at))
        tables = self._segmentation_tables(stream.chunk_len, path_word, path_count, piece,
                                           _path_cdf(path_prefix, log_weight, prefix_word.numel()))
        return prefix_word, prefix_length, path_prefix, tables

    def _sampling_tables_numpy(self, stream: lattice.ChunkStream, graph: tuple[torch.Tensor, ...],
                               edge_piece: torch.Tensor, alpha: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, wordcache.WordTables]:
        """:meth:`_sampling_tables` on the CPU with numpy arrays (:func:`~textdiff.tokenization.wordcache.
        table_paths_numpy`): the same blocks, bit for bit."""
        _, count, mass, length, word_rows = (t.numpy() for t in graph)
        prefix_word, prefix_length = wordtables.table_prefixes_numpy(count, mass, length, word_rows,
                                                                    stream.chunk_len.numpy())
        piece_of_edge = edge_piece.numpy()
        paths = wordtables.table_paths_numpy(count, mass, length, piece_of_edge, alpha * self.scores.numpy(),
                                            word_rows, prefix_word, prefix_length)
        piece, path_count, path_word = paths.piece, paths.count, prefix_word[paths.prefix]
        if self.vocab.byte_fallback:  # spell the characters of unk pieces as bytes
            unk = np.flatnonzero(piece == self.vocab.unk_id)
            if len(unk):
                path_of_unk = np.searchsorted(np.cumsum(path_count), unk, side="right")
                at = stream.chunk_begin.numpy()[path_word[path_of_unk]] + paths.start[unk]
                path_count, piece = self.spelling.spelled_numpy(path_count, piece, unk, stream.units.numpy()[at])
        tables = self._segmentation_tables(*map(torch.from_numpy, (stream.chunk_len.numpy(), path_word, path_count,
                                                                     piece, paths.cdf)))
        return (*map(torch.from_numpy, (prefix_word, prefix_length, paths.prefix)), tables)

    @staticmethod
    def _segmentation_tables(word_length: torch.Tensor, path_word: torch.Tensor, count: torch.Tensor,
                             piece: torch.Tensor, cdf: torch.Tensor | None = None) -> wordcache.WordTables:
        """``UNITS``, ``SEG`` and ``PIECE`` blocks of words from their segmentations (``count`` pieces per path,
        byte fallback spelled out, ``piece`` ids end to end; ``path_word`` ascending); ``cdf``: cumulative
        probability of each path in its table (sampling)."""
        n_words = word_length.numel()
        pieces = torch.zeros_like(word_length).index_add_(0, path_word, count)
        word_first = (torch.cumsum(pieces, 0) - pieces).index_select(0, path_word)
        first = torch.cumsum(count, 0) - count - word_first  # from the word's first piece
        seg = {"first": first, "count": count}
        if cdf is not None:
            seg["cdf"] = cdf
        sizes = {wordcache.UNITS: word_length, wordcache.SEG: torch.bincount(path_word, minlength=n_words),
                 wordcache.PIECE: pieces}
        data = {wordcache.UNITS: {}, wordcache.SEG: seg, wordcache.PIECE: {"piece": piece}}
        return wordcache.WordTables(sizes, data)

    def segment_words(self, store: wordcache.WordStore, entry: torch.Tensor, text: torch.Tensor, n_texts: int,
                       alpha: float | None, gen, device: torch.device, spans: bool = True,
                       split_tables: bool = False) -> Tokens:
        """The pieces of every word occurrence (cache ``entry`` and ``text`` of each, in text order) laid out in
        text order: each word's Viterbi segmentation (decoding), else a draw from its table or a walk back
        (:meth:`_walk`; ``split_tables``: :meth:`_split_walk`). ``spans=False`` leaves ``start`` / ``end`` empty
        (padded ids need none). Tokens on the CPU, or on ``device`` without ``spans``."""
        if device.type == "cpu" and self.compact(device) and not split_tables:
            return self._segment_words_numpy(store, entry.numpy(), text.numpy(), n_texts, alpha, gen, spans)
        units = store.sizes(wordcache.UNITS).index_select(0, entry)
        if alpha is None:  # every word has its Viterbi segmentation
            table, suffix = store.base[wordcache.SEG].values.index_select(0, entry), None
        elif split_tables:
            table, suffix = self._split_walk(store, entry, units, gen, device)
        else:
            table, suffix = self._walk(store, entry, units, gen, device)
        seg_count = store.column(wordcache.SEG, "count")
        table_count, sources = torch.zeros_like(entry), []
        if seg_count.numel():  # the pieces of the drawn tables, then those walked
            seg = table.clamp(min=0)
            table_count = torch.where(table >= 0, seg_count.index_select(0, seg).long(), 0)
            sources.append((store.column(wordcache.SEG, "first").index_select(0, seg), table_count,
                            store.column(wordcache.PIECE, "piece")))
        if suffix is not None:
            sources.append((torch.cumsum(suffix.count, 0) - suffix.count, suffix.count, suffix.piece))
        count = table_count if suffix is None else table_count + suffix.count
        out_first = torch.cumsum(count, 0) - count
        piece = torch.empty(int(count.sum()), dtype=torch.int64, device=device)
        for source_first, source_count, pieces in sources:  # copy each occurrence's pieces out
            owner, within = spread(source_count)
            at = out_first.index_select(0, owner) + within
            piece.index_copy_(0, at, pieces.index_select(0, source_first.index_select(0, owner) + within).long())
            out_first = out_first + source_count
        text_count = torch.zeros(n_texts, dtype=torch.int64, device=device).index_add_(0, text, count)
        if spans:
            text_units = torch.zeros(n_texts, dtype=torch.int64, device=device).index_add_(0, text, units)
            start, end = self.spelling.spans(piece, text_units, text_count)
            tokens = Tokens(text_count.cpu(), piece.cpu(), start.cpu(), end.cpu())
        else:
            tokens = Tokens(text_count, piece, piece, piece)  # start / end: placeholders
        return self.spelling.finish(tokens)

    def _segment_words_numpy(self, store: wordcache.WordStore, entry: np.ndarray, text: np.ndarray, n_texts: int,
                             alpha: float | None, gen, spans: bool) -> Tokens:
        """:meth:`segment_words` on the CPU with numpy arrays (a fraction of torch's cost per operation, which
        dominates on a collator's batch), same pieces and same draws; the spans are computed when first asked for
        (:meth:`Tokens.spans`)."""
        n = len(entry)
        units = store.sizes(wordcache.UNITS).numpy()[entry]
        column = lambda group, name: store.column(group, name).numpy()
        walked = None
        if alpha is None:  # every word has its Viterbi segmentation
            table = store.base[wordcache.SEG].values.numpy()[entry]
        else:
            table, walked = self._walk_numpy(store, entry, units, gen)
        seg_count = column(wordcache.SEG, "count")
        table_count = np.zeros(n, dtype=np.int64)
        if len(seg_count):
            seg = np.maximum(table, 0)
            table_count = np.where(table >= 0, seg_count[seg], 0).astype(np.int64)
        count = table_count if walked is None else table_count + walked[0]  # at least 1 per occurrence
        ends = np.cumsum(count)
        total = int(ends[-1]) if n else 0
        if len(seg_count) and total:  # every place from its occurrence's table: first, first + 1, ...
            first = column(wordcache.SEG, "first")[seg]
            source = np.ones(total, dtype=np.int64)
            source[0] = first[0]
            source[ends[:-1]] = first[1:] - first[:-1] - count[:-1] + 1  # the next occurrence's first
            piece = column(wordcache.PIECE, "piece").take(np.cumsum(source, out=source), mode="clip").astype(np.int64)
        else:
            piece = np.empty(total, dtype=np.int64)
        if walked is not None:  # the walked pieces, over the places after the table's
            _, walked_piece, walked_occurrence, after = walked
            piece[ends[walked_occurrence] - 1 - after] = walked_piece
        text_count = np.bincount(text, weights=count, minlength=n_texts).astype(np.int64)
        piece_t, count_t = torch.from_numpy(piece), torch.from_numpy(text_count)

        def span_of() -> tuple[torch.Tensor, torch.Tensor]:
            text_units = np.bincount(text, weights=units, minlength=n_texts).astype(np.int64)
            return self.spelling.spans(piece_t, torch.from_numpy(text_units), count_t)

        if spans:
            tokens = Tokens(count_t, piece_t, None, None, span_of)
        else:
            tokens = Tokens(count_t, piece_t, piece_t, piece_t)  # start / end: placeholders
        return self.spelling.finish(tokens)

    def _walk(self, store: wordcache.WordStore, entry: torch.Tensor, length: torch.Tensor,
              gen: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, Tokens]:
        """One path per occurrence (``entry``, ``length`` units) by :func:`~textdiff.tokenization.wordwalks.walk`:
        the ``SEG`` index of the table that ends it (-1: none), and the pieces walked (unit spans in the word, byte
        fallback spelled out, ``count`` per occurrence)."""
        base = torch.cumsum(length, 0) - length
        picked = torch.full((int(length.sum()) + 1,), -1, dtype=torch.int64, device=device)  # last entry: scratch
        picked_length = torch.zeros_like(picked)
        table = wordwalks.walk(store, entry, length, base, picked, picked_length, gen, int(length.max()),
                               self.trie(device).max_len, self.compact(device))
        position = torch.nonzero(picked[:-1] >= 0).squeeze(1)  # pieces in order
        piece = picked.index_select(0, position)
        occurrence = torch.searchsorted(base, position, right=True) - 1
        start = position - base.index_select(0, occurrence)
        tokens = Tokens(torch.bincount(occurrence, minlength=entry.numel()), piece, start,
                        start + picked_length.index_select(0, position))
        if self.vocab.byte_fallback:
            unk = torch.nonzero(piece == self.vocab.unk_id).squeeze(1)
            row = store.row_base.index_select(0, entry.index_select(0, occurrence.index_select(0, unk)))
            code_points = store.column(wordcache.ROW, "unit").index_select(0, row + start.index_select(0, unk)).long()
            tokens = self.spelling.spell_bytes(tokens, unk, code_points)
        return table, tokens

    def _walk_numpy(self, store: wordcache.WordStore, entry: np.ndarray, length: np.ndarray, gen
                    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """:meth:`_walk` with numpy arrays (:func:`~textdiff.tokenization.wordwalks.walk_numpy`): the ``SEG``
        index of the table that ends each path (-1: none), and the pieces walked (byte fallback spelled out): their
        number per occurrence, and per piece, in no particular order, its id, occurrence and the number of pieces
        after it in its occurrence."""
        n = len(entry)
        table = np.full(n, -1, dtype=np.int64)
        walked = wordwalks.walk_numpy(store, entry, length, table, gen)
        count = np.bincount(walked.occurrence, minlength=n)
        piece, occurrence, after = walked.piece, walked.occurrence, walked.step
        unk = piece == self.vocab.unk_id
        if self.vocab.byte_fallback and unk.any():  # spell the pieces of the occurrences holding an unk, in order
            holder = np.unique(occurrence[unk])
            held = np.zeros(n, dtype=bool)
            held[holder] = True
            held = held[occurrence]
            mine = np.flatnonzero(held)
            mine = mine[np.lexsort((-after[mine], occurrence[mine]))]  # by occurrence, first piece first
            unk = np.flatnonzero(unk[mine])
            row = store.row_base.numpy()[entry[occurrence[mine[unk]]]] + walked.start[mine[unk]]
            code_points = store.column(wordcache.ROW, "unit").numpy()[row].astype(np.int64)
            held_count, spelled = self.spelling.spelled_numpy(count[holder], piece[mine], unk, code_points)
            count[holder] = held_count
            rest = np.flatnonzero(~held)
            piece = np.concatenate([piece[rest], spelled])
            occurrence = np.concatenate([occurrence[rest], np.repeat(holder, held_count)])
            after = np.concatenate([after[rest], np.repeat(np.cumsum(held_count) - 1, held_count)
                                    - np.arange(len(spelled))])
        return table, (count, piece, occurrence, after)

    def _split_walk(self, store: wordcache.WordStore, entry: torch.Tensor, length: torch.Tensor,
                    gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, Tokens]:
        """:meth:`_walk` for loops of fixed shape: the occurrences of words with a table of all their segmentations
        draw from it at once (one uniform each), and only the others walk, for as many steps as the longest of them
        needs. Which occurrences walk depends on their words only, and every draw has its own uniform, so the law
        is the walk's (docs/tokenization.md, "Device pipeline")."""
        end_row = store.row_base.index_select(0, entry) + length - 1
        segs = store.column(wordcache.ROW, "segs").index_select(0, end_row).long()
        whole = segs > 0
        table = torch.full_like(entry, -1)
        drawn = torch.nonzero(whole).squeeze(1)
        walked = torch.nonzero(~whole).squeeze(1)
        if drawn.numel():
            count = segs.index_select(0, drawn)
            first = store.column(wordcache.ROW, "seg").index_select(0, end_row.index_select(0, drawn)).long()
            u = rng.uniform((drawn.numel(),), gen, device)
            rounds = int(count.max() - 1).bit_length()
            table.index_copy_(0, drawn, wordwalks.bisect(torch, store.column(wordcache.SEG, "cdf"), first, count, u,
                                                         rounds))
        if walked.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return table, Tokens(torch.zeros_like(entry), empty, empty, empty)
        walked_table, suffix = self._walk(store, entry.index_select(0, walked), length.index_select(0, walked), gen,
                                          device)
        table.index_copy_(0, walked, walked_table)
        count = torch.zeros_like(entry).index_copy_(0, walked, suffix.count)
        return table, Tokens(count, suffix.piece, suffix.start, suffix.end)

    @staticmethod
    def compact(device: torch.device) -> bool:
        """Whether loops drop finished work as they go (CPU) or keep fixed shapes and never wait for the device
        (CUDA); see the :mod:`~textdiff.tokenization.viterbi` docstring."""
        return device.type == "cpu"


def _path_cdf(path_word: torch.Tensor, log_weight: torch.Tensor, n_words: int) -> torch.Tensor:
    """Cumulative probability of every path within its word (paths grouped by word, ``log_weight`` = alpha * score):
    ``exp(log_weight - max)`` summed row by row of a ``[word, path]`` grid, so each word's numbers do not depend on
    the other words; the last path of a word gets exactly 1."""
    if path_word.numel() == 0:
        return torch.zeros(0, dtype=torch.float64, device=path_word.device)
    paths = torch.bincount(path_word, minlength=n_words)
    rank = torch.arange(path_word.numel(), device=path_word.device) - (torch.cumsum(paths, 0) - paths)[path_word]
    top = torch.full((n_words,), float("-inf"), dtype=torch.float64, device=path_word.device)
    top = top.scatter_reduce(0, path_word, log_weight, "amax")
    width = int(paths.max())
    grid = torch.zeros((n_words, width), dtype=torch.float64, device=path_word.device)
    grid[path_word, rank] = torch.exp(log_weight - top.index_select(0, path_word))
    mass = torch.cumsum(grid, 1)
    return mass[path_word, rank] / mass[path_word, width - 1]


def _by_row_longest_first(row: torch.Tensor, length: torch.Tensor, count: torch.Tensor, max_len: int,
                          compact: bool) -> torch.Tensor:
    """The order of edges (end ``row``, ``length``; ``count`` per row) by row, then longest first. A row holds at
    most one edge of each length, so ``compact`` (CPU) places them by counting, one length at a time, longest
    first; otherwise one sort."""
    if not compact:
        return torch.argsort(row * (max_len + 1) + max_len - length)
    row, length = row.numpy(), length.numpy()
    by_length = np.argsort(length.astype(np.int16), kind="stable")
    bounds = np.cumsum(np.bincount(length, minlength=max_len + 1)).tolist()
    filled = np.cumsum(count.numpy()) - count.numpy()  # the next free place of every row
    ordered = np.empty(len(row), dtype=np.int64)
    for k in range(max_len, 0, -1):
        edge = by_length[bounds[k - 1] : bounds[k]]
        at = row[edge]
        ordered[filled[at]] = edge
        filled[at] += 1
    return torch.from_numpy(ordered)


def spread(count: torch.Tensor, total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``count[i]`` items of every group ``i`` laid end to end (``total`` of them, when known): each item's group
    and rank inside it."""
    total = int(count.sum()) if total is None else total
    group = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count, output_size=total)
    return group, torch.arange(total, device=count.device) - (torch.cumsum(count, 0) - count).index_select(0, group)
