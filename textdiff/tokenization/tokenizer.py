"""``UnigramTokenizer``: Viterbi decoding and exact sampling of unigram segmentations, batched on CPU and CUDA.

``alpha=None`` (or < 0) gives the most probable segmentation; ``0 <= alpha <= ALPHA_MAX`` an exact draw from
``P(w) ∝ exp(alpha * score(w))`` over all segmentations, the law of SentencePiece's
``encode(enable_sampling=True, alpha=alpha, nbest_size=-1)``. Algorithms, exactness argument and what is guaranteed
against SentencePiece (identical normalised text, decoded text and Viterbi ids except exact float32 ties): see
docs/tokenization.md.

Pipeline per batch: normalise and cut into chunks (words), look every occurrence up in the word-lattice cache
(:mod:`~textdiff.tokenization.wordcache`), and build the missing words: lay them into one code-point stream, find
candidate edges with a vectorised trie walk, cut the lattice into independent segments, bucket them by length and
run the forward pass over positions vectorised across rows (float64 log-space for sampling, which also yields every
position's predecessor CDF; the scores' own precision for decoding); decoding keeps each word's Viterbi
segmentation, sampling its edges and tables of whole segmentations. Then decoding copies every occurrence's pieces,
and sampling walks every occurrence back from its end at once, one float64 uniform per path and step drawing either
a predecessor or, where the position has a table, the rest of the path. The pieces are laid out in text order.
"""

from __future__ import annotations

import json
import math
import os
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from itertools import accumulate, filterfalse, repeat
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from textdiff import checks, rng
from textdiff.tokenization import bytes_input, formats, lattice, viterbi, wordcache
from textdiff.tokenization.encoding import Encoding, Tokens
from textdiff.tokenization.normalization import METASPACE, Chunks, TextPipeline, word_of
from textdiff.tokenization.sentencepiece_model import BYTE, CONTROL, UNKNOWN
from textdiff.tokenization.vocab import BYTE_PIECES, PieceTrie, Vocab, pieces_with_extras

_UNITS_PER_BATCH = 1 << 20
ALPHA_MAX = 1e6
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_VOCAB_SIZE = 1 << 20
DEFAULT_CACHE_SIZE = 1 << 28  # bytes: about half a million distinct English words


class _Occurrences:
    """Where each unique chunk occurs: occurrence ``o`` is chunk ``chunk[o]``; lists every occurrence of a segment."""

    def __init__(self, chunk: torch.Tensor, chunk_of_segment: torch.Tensor, n_chunks: int) -> None:
        self.chunk = chunk
        self.by_chunk = torch.argsort(chunk, stable=True)
        self.count = torch.bincount(chunk, minlength=n_chunks)
        self.begin = torch.cumsum(self.count, 0) - self.count
        self.chunk_of_segment = chunk_of_segment

    def expand(self, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For every occurrence of every listed segment: its index in ``segments`` and the occurrence id."""
        chunk = self.chunk_of_segment.index_select(0, segments)
        repeats = self.count.index_select(0, chunk)
        total = int(repeats.sum())
        spread = lambda values: torch.repeat_interleave(values, repeats, output_size=total)
        row = spread(torch.arange(segments.numel(), device=segments.device))
        shift = self.begin.index_select(0, chunk) - (torch.cumsum(repeats, 0) - repeats)  # first rank of each segment
        rank = torch.arange(total, device=row.device) + spread(shift)
        return row, self.by_chunk.index_select(0, rank)


class UnigramTokenizer:
    """A unigram-LM tokenizer with exact stochastic segmentation (see the module docstring)."""

    def __init__(self, vocab: Vocab, pipeline: TextPipeline | None = None, cache_size: int = DEFAULT_CACHE_SIZE
                 ) -> None:
        """``cache_size``: bytes the word-lattice cache may hold between calls (0: no cache; see
        :meth:`cache_info` and docs/tokenization.md)."""
        self.vocab = vocab
        self.cache_size = cache_size
        self._stores: dict[tuple[str, float | None], wordcache.WordStore] = {}
        self.pipeline = pipeline or TextPipeline.identity()
        self._tries: dict[str, PieceTrie] = {}
        self._scores = vocab.lattice_scores()
        self._byte_ids = torch.tensor(vocab.byte_ids, dtype=torch.int64)
        self._piece_units = _piece_units(vocab)
        normalizer = self.pipeline.sentencepiece
        escapes = normalizer is not None and normalizer.escape_whitespaces
        splits = escapes and not any(METASPACE in p[1:] for p in vocab.pieces)
        self._split_at = METASPACE if splits else None  # boundaries before "▁" are lattice cuts: chunk there
        self._byte_tables: dict[str, bytes_input.ByteRouteTables] = {}  # per device, for encode_bytes

    # ------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_sentencepiece(cls, path: str | os.PathLike) -> UnigramTokenizer:
        """Load a SentencePiece unigram ``.model`` file (no protobuf needed); same normaliser and pieces."""
        return cls(*formats.sentencepiece.read_sentencepiece(Path(path)))

    @classmethod
    def from_hf(cls, tokenizer_json: str | os.PathLike | Tokenizer) -> UnigramTokenizer:
        """Load a HF `tokenizers` Unigram ``tokenizer.json`` (path, JSON text or ``tokenizers.Tokenizer``)."""
        if isinstance(tokenizer_json, Tokenizer):
            return cls(*formats.hf.parse_tokenizer_json(tokenizer_json.to_str()))
        if isinstance(tokenizer_json, str) and tokenizer_json.lstrip().startswith("{"):
            return cls(*formats.hf.parse_tokenizer_json(tokenizer_json))
        return cls(*formats.hf.read_tokenizer_json(Path(tokenizer_json)))

    @classmethod
    def from_pieces(
        cls,
        pieces: Iterable[str],
        scores: Iterable[float],
        *,
        unk_piece: str | None = None,
        byte_fallback: bool = False,
    ) -> UnigramTokenizer:
        """Pieces with log-probability scores; no normalisation. Ids are list positions; an ``unk_piece`` and the
        256 ``<0xNN>`` byte pieces (``byte_fallback=True``: every text becomes segmentable and lossless) are appended
        when missing."""
        pieces, scores, kinds, unk_id = pieces_with_extras(list(pieces), list(scores), unk_piece, byte_fallback)
        return cls(Vocab(pieces, scores, kinds, unk_id, byte_fallback))

    @classmethod
    def from_counts(cls, counts: Mapping[str, float], **kwargs) -> UnigramTokenizer:
        """Pieces from ``{piece: count}`` with BytePiece scores ``log(count / Σ counts)``."""
        if not counts:
            raise ValueError("counts is empty")
        if any(not (c > 0) or not math.isfinite(c) for c in counts.values()):
            raise ValueError("counts must be finite and > 0")
        log_total = math.log(math.fsum(counts.values()))
        return cls.from_pieces(list(counts), [math.log(c) - log_total for c in counts.values()], **kwargs)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8000,
        *,
        max_piece_length: int = 16,
        byte_fallback: bool = True,
        show_progress: bool = False,
    ) -> UnigramTokenizer:
        """Train with HF `tokenizers`' ``UnigramTrainer`` (NFKC, Metaspace ``▁`` pre-tokenisation).

        ``byte_fallback=True`` appends the 256 byte pieces so characters unseen in training stay lossless.
        """
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        checks.positive_int("vocab_size", vocab_size, minimum=2)
        if vocab_size > MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an integer in [2, {MAX_VOCAB_SIZE}], got {vocab_size}")
        checks.positive_int("max_piece_length", max_piece_length)
        hf = Tokenizer(models.Unigram())
        hf.normalizer = normalizers.NFKC()
        hf.pre_tokenizer = pre_tokenizers.Metaspace()
        hf.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=["<unk>"],
            unk_token="<unk>",
            max_piece_length=max_piece_length,
            show_progress=show_progress,
        )
        hf.train_from_iterator(texts, trainer)
        spec = json.loads(hf.to_str())
        if byte_fallback:
            present = {p for p, _ in spec["model"]["vocab"]}
            spec["model"]["vocab"] += [[p, 0.0] for p in BYTE_PIECES if p not in present]
            spec["model"]["byte_fallback"] = True
            spec["decoder"] = {
                "type": "Sequence",
                "decoders": [{"type": "ByteFallback"}, spec["decoder"]],
            }
        return cls.from_hf(json.dumps(spec))

    @property
    def cache_size(self) -> int:
        """Bytes the word-lattice cache may hold between calls (an integer >= 0; 0 disables it)."""
        return self._cache_size

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        self._cache_size = checks.positive_int("cache_size", value, minimum=0)

    # ------------------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        return len(self.vocab.pieces)

    def __len__(self) -> int:
        return self.vocab_size

    def piece_to_id(self, piece: str) -> int:
        return self.vocab.index[piece]

    def id_to_piece(self, index: int) -> str:
        return self.vocab.pieces[index]

    def __repr__(self) -> str:
        return (
            f"UnigramTokenizer(vocab_size={self.vocab_size}, unk_id={self.vocab.unk_id}, "
            f"byte_fallback={self.vocab.byte_fallback})"
        )

    # ------------------------------------------------------------------------------------------- encoding
    def __call__(self, texts: list[str] | str, alpha: float | None = None, seed: int | None = None,
                 device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> Encoding:
        """Segment a batch of texts (a single ``str`` is a batch of one): Viterbi decoding (``alpha`` None or < 0)
        or an exact sample from ``P(w) ∝ exp(alpha * score(w))`` (``0 <= alpha <= ALPHA_MAX``).

        ``seed`` or ``generator`` make samples reproducible (identical output for identical calls on CPU); without
        them each DataLoader worker draws from its own stream. The :class:`~textdiff.tokenization.encoding.Encoding`
        gives ``ids``, ``pieces``, ``offsets`` and ``to_tensors()`` (which keeps GPU segmentations on the GPU)."""
        batch = _check_texts(texts)
        device = checks.device(device)
        tokens = self._segment(batch, alpha, seed, generator, device)
        return Encoding(tokens, batch, self.vocab.pieces, self.pipeline, device, self.vocab.index.get("<pad>", 0))

    def encode(
        self,
        texts: list[str] | str,
        alpha: float | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        return_offsets: bool = False,
        return_tensors: str | None = None,
        pad_id: int | None = None,
    ):
        """Piece ids of every text (a single ``str`` gives a single list): :meth:`__call__`'s ``ids``, in the call
        forms of earlier versions. ``return_offsets=True`` returns ``(ids, offsets)``; ``return_tensors="pt"``
        returns :meth:`Encoding.to_tensors` (padded with ``pad_id``)."""
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if return_tensors and return_offsets:
            raise ValueError("return_offsets is not available with return_tensors='pt'")
        encoding = self(texts, alpha, seed, device, generator)
        if return_tensors:
            return encoding.to_tensors(pad_id)
        single = isinstance(texts, str)
        ids = encoding.ids[0] if single else encoding.ids
        if return_offsets:
            return ids, encoding.offsets[0] if single else encoding.offsets
        return ids

    def encode_bytes(
        self,
        data: torch.Tensor,
        offsets: torch.Tensor,
        alpha: float | None = None,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        generator: torch.Generator | None = None,
        pad_id: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (``[lines, longest]`` long tensors on ``device``) of lines
        given as UTF-8 bytes: line ``i`` is ``data[offsets[i] : offsets[i + 1]]`` (``data`` a 1-D uint8 tensor,
        ``offsets`` a non-decreasing 1-D int64 tensor; :func:`~textdiff.tokenization.bytes_input.arrow_text` gives
        both for an Arrow / ``datasets`` string column). Same law as :meth:`encode` with ``return_tensors="pt"``:
        identical ids for decoding (``alpha`` None or < 0), an exact sample otherwise; ``alpha``, ``seed``,
        ``generator`` and ``pad_id`` as there.

        Word boundaries, word lookup in the cache, draws and padding run on ``device``: for SentencePiece models with
        the default whitespace rules, on the lines that are ASCII and hold no character that starts a
        multi-character normalisation rule or user-defined symbol. Other lines (and every line of other models)
        are decoded and segmented by the host pipeline, in the same call; bytes that are not UTF-8 there raise
        ``ValueError``. See docs/tokenization.md, "Device pipeline"."""
        return bytes_input.encode_bytes(self, data, offsets, alpha, seed, device, generator, pad_id)

    def tokenize(self, texts, alpha=None, seed=None, device="cpu", generator=None) -> list[list[str]] | list[str]:
        """Like :meth:`encode`, with pieces as strings (byte-fallback pieces read ``<0xNN>``)."""
        pieces = self(texts, alpha, seed, device, generator).pieces
        return pieces[0] if isinstance(texts, str) else pieces

    def decode(self, ids: list[int] | list[list[int]] | torch.Tensor) -> str | list[str]:
        """Text of ``ids`` (a list of ids, or a batch: a list of lists or a 2-D tensor): the inverse of
        :meth:`encode` up to normalisation (a byte-fallback model with no normaliser returns the very input).
        SentencePiece models decode every id sequence as ``SentencePieceProcessor.decode`` does (see
        docs/tokenization.md); unknown pieces read as the model's unk surface (`` ⁇ ``)."""
        if hasattr(ids, "tolist") and not isinstance(ids, (list, tuple)):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"ids must be a list of ints or a list of such lists, got {type(ids).__name__}")
        if ids and all(isinstance(row, (list, tuple)) for row in ids):
            return [self.decode(row) for row in ids]
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"ids must be ints (or lists of ints), got {type(i).__name__} {i!r}")
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i!r} is outside the vocabulary [0, {self.vocab_size})")
        pieces = [self.vocab.pieces[i] for i in ids]
        kinds = [self.vocab.kinds[i] for i in ids]
        if self.pipeline.sentencepiece is not None:
            return self.pipeline.sentencepiece.decode(pieces, kinds, self.vocab.unk_surface)
        surfaces = [self.vocab.unk_surface if k == UNKNOWN else p for p, k in zip(pieces, kinds) if k != CONTROL]
        return self.pipeline.decode(surfaces)

    def normalize(self, text: str) -> str:
        """The text this tokenizer segments (normalised; SentencePiece models: ``▁`` for spaces)."""
        return self.pipeline.normalize(text)

    # ------------------------------------------------------------------------------------------- statistics
    def segmentation_stats(
        self, texts: list[str] | str, alpha: float, device: str | torch.device = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Per text, under ``P(w) ∝ exp(alpha * score(w))``: ``log_z``, ``entropy`` (nats) and ``expected_tokens``
        (forward-backward), plus ``viterbi_tokens`` for comparison; float64 tensors on the CPU.

        ``expected_tokens`` counts output pieces (byte-fallback characters as their UTF-8 length, unknown characters
        one each, although :meth:`encode` fuses runs of them into one ``unk`` like SentencePiece)."""
        alpha = check_alpha(alpha)
        if alpha is None:
            raise ValueError("segmentation_stats needs alpha >= 0 (a sampling temperature), got a negative alpha")
        batch = _check_texts(texts)
        device = torch.device(device)
        log_z = torch.zeros(len(batch), dtype=torch.float64, device=device)
        tokens = torch.zeros_like(log_z)
        mean_score = torch.zeros_like(log_z)
        trie = self._trie(device)
        for offset, group in self._groups(batch):
            stream = lattice.chunk_stream(self.pipeline.chunks(group, self._split_at), device)
            if stream.occ_chunk.numel() == 0:
                continue
            units = stream.units
            cands = lattice.find_candidates(units, trie, self.vocab.unk_id, self._compact(device))
            segs = lattice.find_segments(units, cands)
            score = self._scores.to(device)[cands.piece].double()
            weight = (alpha * score).requires_grad_()
            row_log_z = torch.zeros(segs.first.numel(), dtype=torch.float64, device=device)
            reached = torch.bincount(segs.of_candidate, minlength=segs.first.numel()) > 0
            for table in lattice.edge_tables(cands, segs, trie.max_len):
                weights = table.gather(weight, reach_padding=True)
                z = viterbi.log_partition(viterbi.forward(weights), weights, table.length)
                reached[table.rows] &= torch.isfinite(z.detach())
                row_log_z = row_log_z.index_put((table.rows,), z)
            lattice.require_segmentable(units, segs, reached)
            alone = segs.length[segs.of_candidate] == 1
            row_log_z = row_log_z.index_add(0, segs.of_candidate[alone], weight[alone])
            (marginal,) = torch.autograd.grad(row_log_z.sum(), weight)  # forward-backward = gradient of log Z
            occurrences = _Occurrences(stream.occ_chunk, stream.chunk_of[segs.first], stream.chunk_len.numel())
            row, occ = occurrences.expand(torch.arange(segs.first.numel(), device=device))
            text_of_row = stream.occ_text[occ] + offset  # (segment, occurrence) pairs
            log_z.index_add_(0, text_of_row, row_log_z.detach()[row])
            per_segment = torch.zeros_like(row_log_z)
            tokens_of_cand = marginal * self._output_length(cands, units).double()
            tokens.index_add_(0, text_of_row, per_segment.index_add(0, segs.of_candidate, tokens_of_cand)[row])
            score_of_cand = marginal * score
            mean_score.index_add_(0, text_of_row, per_segment.index_add(0, segs.of_candidate, score_of_cand)[row])
        viterbi_counts = torch.tensor([len(row) for row in self.encode(batch, device=device)], dtype=torch.float64)
        return {
            "log_z": log_z.cpu(),
            "entropy": (log_z - alpha * mean_score).cpu(),
            "expected_tokens": tokens.cpu(),
            "viterbi_tokens": viterbi_counts,
        }

    # ------------------------------------------------------------------------------------------- pipelines
    def as_transform(self, alpha: float | None = None, text_column: str = "text", seed: int | None = None, **kwargs):
        """A function for ``datasets.Dataset.set_transform``: adds ``input_ids``, re-sampled at every access."""
        from textdiff.tokenization.collate import SegmentationTransform

        return SegmentationTransform(self, alpha, text_column, seed, **kwargs)

    def collator(self, alpha: float | None = None, **kwargs):
        """A DataLoader ``collate_fn`` that re-samples segmentations every time a batch is drawn (see
        :class:`~textdiff.tokenization.collate.UnigramCollator`)."""
        from textdiff.tokenization.collate import UnigramCollator

        return UnigramCollator(self, alpha, **kwargs)

    # ------------------------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write one safetensors file (pieces, scores, kinds, normaliser as JSON metadata); atomic, no pickle."""
        formats.native.write(path, self.vocab, self.pipeline)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnigramTokenizer:
        """Read a file written by :meth:`save` (``ValueError`` naming the file if it is not one or is damaged)."""
        return cls(*formats.native.read(Path(path)))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """HF-style: ``directory/tokenizer.safetensors``."""
        self.save(Path(directory) / formats.native.WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> UnigramTokenizer:
        """Load a tokenizer file of any registered format (:mod:`textdiff.tokenization.formats`: SentencePiece
        ``.model``, ``tokenizer.json``, textdiff ``.safetensors``), or the first such file in a directory."""
        path = Path(directory)
        return cls(*formats.read(path if path.is_file() else formats.find(path)))

    # ------------------------------------------------------------------------------------------- internals
    def _trie(self, device: torch.device | str) -> PieceTrie:
        key = str(torch.device(device))
        if key not in self._tries:
            self._tries[key] = PieceTrie(self.vocab, device)
        return self._tries[key]

    def _groups(self, texts: list[str]):
        """``(offset, slice)`` of consecutive texts with at most ``_UNITS_PER_BATCH`` characters each (or one text)."""
        ends = list(accumulate(map(len, texts)))
        begin = 0
        while begin < len(texts):
            before = ends[begin - 1] if begin else 0
            end = max(begin + 1, bisect_right(ends, before + _UNITS_PER_BATCH, lo=begin))
            yield begin, texts[begin:end]
            begin = end

    def _segment(self, texts: list[str], alpha, seed, generator, device: torch.device) -> Tokens:
        """Chosen pieces of all texts in text order (Viterbi decoding or exact sampling)."""
        alpha = check_alpha(alpha)
        gen = None if alpha is None else rng.make_generator(seed, generator, device)
        parts = [self._segment_group(group, alpha, gen, device) for _, group in self._groups(texts)]
        empty = torch.zeros(0, dtype=torch.int64)
        if not parts:
            return Tokens(empty, empty, empty, empty)
        if len(parts) == 1:
            return parts[0]
        def span_of() -> tuple[torch.Tensor, torch.Tensor]:
            start, end = zip(*(p.spans() for p in parts))
            return torch.cat(start), torch.cat(end)

        return Tokens(torch.cat([p.count for p in parts]), torch.cat([p.piece for p in parts]), None, None, span_of)

    def _segment_group(self, texts, alpha: float | None, gen, device: torch.device) -> Tokens:
        """Segment one group of texts: cut them into words, look every occurrence up in the word-lattice cache
        (building the missing words' tables), draw a segmentation from its word's table (decoding: the word's
        Viterbi segmentation) or walk one path back (sampling, words with many segmentations), and lay the pieces
        out in text order (docs/tokenization.md, "Word-lattice cache")."""
        words = self.pipeline.words(texts, self._split_at)
        if not len(words):
            empty = torch.zeros(0, dtype=torch.int64)
            return Tokens(torch.zeros(len(texts), dtype=torch.int64), empty, empty, empty)
        store = self._store(device, alpha)
        build = lambda keys: self._word_tables(keys, alpha, device)
        entry = store.lookup(words.keys, build, words.code)
        tokens = self._segment_words(store, entry, words.text.to(device), len(texts), alpha, gen, device)
        store.trim()
        return tokens

    def _segment_words(self, store: wordcache.WordStore, entry: torch.Tensor, text: torch.Tensor, n_texts: int,
                       alpha: float | None, gen, device: torch.device, spans: bool = True,
                       split_tables: bool = False) -> Tokens:
        """The pieces of every word occurrence (cache ``entry`` and ``text`` of each, in text order) laid out in
        text order: each word's Viterbi segmentation (decoding), else a draw from its table or a walk back
        (:meth:`_walk`; ``split_tables``: :meth:`_split_walk`). ``spans=False`` leaves ``start`` / ``end`` empty
        (padded ids need none). Tokens on the CPU, or on ``device`` without ``spans``."""
        if device.type == "cpu" and self._compact(device) and not split_tables:
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
            spread, within = _spread(source_count)
            at = out_first.index_select(0, spread) + within
            piece.index_copy_(0, at, pieces.index_select(0, source_first.index_select(0, spread) + within).long())
            out_first = out_first + source_count
        text_count = torch.zeros(n_texts, dtype=torch.int64, device=device).index_add_(0, text, count)
        if spans:
            text_units = torch.zeros(n_texts, dtype=torch.int64, device=device).index_add_(0, text, units)
            start, end = self._spans(piece, text_units, text_count)
            tokens = Tokens(text_count.cpu(), piece.cpu(), start.cpu(), end.cpu())
        else:
            tokens = Tokens(text_count, piece, piece, piece)  # start / end: placeholders
        if self.vocab.unk_id is not None and not self.vocab.byte_fallback:
            return self._fuse_unknown(tokens)
        return tokens

    def _segment_words_numpy(self, store: wordcache.WordStore, entry: np.ndarray, text: np.ndarray, n_texts: int,
                             alpha: float | None, gen, spans: bool) -> Tokens:
        """:meth:`_segment_words` on the CPU with numpy arrays (a fraction of torch's cost per operation, which
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
            return self._spans(piece_t, torch.from_numpy(text_units), count_t)

        if spans:
            tokens = Tokens(count_t, piece_t, None, None, span_of)
        else:
            tokens = Tokens(count_t, piece_t, piece_t, piece_t)  # start / end: placeholders
        if self.vocab.unk_id is not None and not self.vocab.byte_fallback:
            return self._fuse_unknown(tokens)
        return tokens

    def _walk_numpy(self, store: wordcache.WordStore, entry: np.ndarray, length: np.ndarray, gen
                    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """:meth:`_walk` with numpy arrays (:func:`~textdiff.tokenization.wordcache.walk_numpy`): the ``SEG``
        index of the table that ends each path (-1: none), and the pieces walked (byte fallback spelled out): their
        number per occurrence, and per piece, in no particular order, its id, occurrence and the number of pieces
        after it in its occurrence."""
        n = len(entry)
        table = np.full(n, -1, dtype=np.int64)
        walked = wordcache.walk_numpy(store, entry, length, table, gen)
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
            held_count, spelled = self._spelled_numpy(count[holder], piece[mine], unk, code_points)
            count[holder] = held_count
            rest = np.flatnonzero(~held)
            piece = np.concatenate([piece[rest], spelled])
            occurrence = np.concatenate([occurrence[rest], np.repeat(holder, held_count)])
            after = np.concatenate([after[rest], np.repeat(np.cumsum(held_count) - 1, held_count)
                                    - np.arange(len(spelled))])
        return table, (count, piece, occurrence, after)

    def _spans(self, piece: torch.Tensor, text_units: torch.Tensor, text_count: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit span in its text of every piece of a segmentation (texts of ``text_units`` units and ``text_count``
        pieces, end to end): a piece covers its own length, an unk piece one unit, and the byte-fallback pieces of one
        character share that character's unit."""
        advance, back, width = (table.index_select(0, piece) for table in self._piece_units.to(piece.device))
        before = torch.cumsum(advance, 0) - advance - back
        text_first = torch.cumsum(text_units, 0) - text_units
        text = torch.repeat_interleave(torch.arange(text_count.numel(), device=piece.device), text_count,
                                       output_size=piece.numel())
        start = before - text_first.index_select(0, text)
        return start, start + width

    def _walk(self, store: wordcache.WordStore, entry: torch.Tensor, length: torch.Tensor,
              gen: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, Tokens]:
        """One path per occurrence (``entry``, ``length`` units) by :func:`~textdiff.tokenization.wordcache.walk`:
        the ``SEG`` index of the table that ends it (-1: none), and the pieces walked (unit spans in the word, byte
        fallback spelled out, ``count`` per occurrence)."""
        base = torch.cumsum(length, 0) - length
        picked = torch.full((int(length.sum()) + 1,), -1, dtype=torch.int64, device=device)  # last entry: scratch
        picked_length = torch.zeros_like(picked)
        table = wordcache.walk(store, entry, length, base, picked, picked_length, gen, int(length.max()),
                               self._trie(device).max_len, self._compact(device))
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
            tokens = self._spell_bytes(tokens, unk, code_points)
        return table, tokens

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
            table.index_copy_(0, drawn, wordcache.bisect(torch, store.column(wordcache.SEG, "cdf"), first, count, u,
                                                         rounds))
        if walked.numel() == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=device)
            return table, Tokens(torch.zeros_like(entry), empty, empty, empty)
        walked_table, suffix = self._walk(store, entry.index_select(0, walked), length.index_select(0, walked), gen,
                                          device)
        table.index_copy_(0, walked, walked_table)
        count = torch.zeros_like(entry).index_copy_(0, walked, suffix.count)
        return table, Tokens(count, suffix.piece, suffix.start, suffix.end)

    def _store(self, device: torch.device, alpha: float | None) -> wordcache.WordStore:
        """The word store for ``(device, alpha)``. Chunks are words (cut at ``▁`` or by a pre-tokenizer) for most
        models: their stores are kept within ``cache_size`` bytes shared by all stores, the store in use getting at
        least half (the others evict their least recently used words). Models whose chunks are whole lines get a
        store that keeps nothing between calls."""
        fields = wordcache.DECODING_FIELDS if alpha is None else wordcache.SAMPLING_FIELDS
        if self._split_at is None and self.pipeline.pre_tokenizer is None:
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

    def _word_tables(self, keys: list, alpha: float | None, device: torch.device) -> wordcache.WordTables:
        """The cache blocks of the words of ``keys`` (distinct): lattice, forward pass over length buckets of
        independent segments, then per unit of every word its edges with the predecessor CDF in float64 (sampling,
        longest piece first) or its best last edge (decoding; ties: the longest piece). Decoding keeps the Viterbi
        segmentation of every word; sampling keeps the edges, and for words with at most
        ``wordcache.TABLE_LIMIT`` segmentations a table of all of them (docs/tokenization.md)."""
        words = list(map(word_of, keys))
        order = torch.arange(len(words))
        stream = lattice.chunk_stream(Chunks(words, order, torch.zeros_like(order)), device)
        units = stream.units
        compact = self._compact(device)
        trie = self._trie(device)
        cands = lattice.find_candidates(units, trie, self.vocab.unk_id, compact)
        segs = lattice.find_segments(units, cands)
        scores = self._scores.to(device).index_select(0, cands.piece)
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
        :func:`~textdiff.tokenization.wordcache.table_prefixes` takes them; ``edge_piece``: piece of every edge):
        ``(prefix_word, prefix_length)`` of the prefixes that get one, the prefix of every path in table order, and
        the ``UNITS``, ``SEG`` and ``PIECE`` blocks."""
        device = edge_piece.device
        prefix_word, prefix_length = wordcache.table_prefixes(*graph, stream.chunk_len)
        node_edge, parent, node_start, leaves, path_prefix, path_count = wordcache.enumerate_paths(
            *graph, prefix_word, prefix_length)
        by_prefix = torch.argsort(path_prefix, stable=True)  # paths by prefix, then node order
        leaves, path_prefix, path_count = (t.index_select(0, by_prefix) for t in (leaves, path_prefix, path_count))
        node_weight = alpha * self._scores.to(device).double().index_select(
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
            path_count, piece = self._spelled(path_count, piece, unk, stream.units.index_select(0, at))
        tables = self._segmentation_tables(stream.chunk_len, path_word, path_count, piece,
                                           _path_cdf(path_prefix, log_weight, prefix_word.numel()))
        return prefix_word, prefix_length, path_prefix, tables

    def _sampling_tables_numpy(self, stream: lattice.ChunkStream, graph: tuple[torch.Tensor, ...],
                               edge_piece: torch.Tensor, alpha: float
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, wordcache.WordTables]:
        """:meth:`_sampling_tables` on the CPU with numpy arrays (:func:`~textdiff.tokenization.wordcache.
        table_paths_numpy`): the same blocks, bit for bit."""
        _, count, mass, length, word_rows = (t.numpy() for t in graph)
        prefix_word, prefix_length = wordcache.table_prefixes_numpy(count, mass, length, word_rows,
                                                                    stream.chunk_len.numpy())
        piece_of_edge = edge_piece.numpy()
        paths = wordcache.table_paths_numpy(count, mass, length, piece_of_edge, alpha * self._scores.numpy(),
                                            word_rows, prefix_word, prefix_length)
        piece, path_count, path_word = paths.piece, paths.count, prefix_word[paths.prefix]
        if self.vocab.byte_fallback:  # spell the characters of unk pieces as bytes
            unk = np.flatnonzero(piece == self.vocab.unk_id)
            if len(unk):
                path_of_unk = np.searchsorted(np.cumsum(path_count), unk, side="right")
                at = stream.chunk_begin.numpy()[path_word[path_of_unk]] + paths.start[unk]
                path_count, piece = self._spelled_numpy(path_count, piece, unk, stream.units.numpy()[at])
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

    @staticmethod
    def _compact(device: torch.device) -> bool:
        """Whether loops drop finished work as they go (CPU) or keep fixed shapes and never wait for the device
        (CUDA); see the :mod:`~textdiff.tokenization.viterbi` docstring."""
        return device.type == "cpu"

    def _fuse_unknown(self, tokens: Tokens) -> Tokens:
        """Consecutive ``unk`` pieces of one text become one, as SentencePiece outputs them."""
        tokens.spans()
        unk = tokens.piece == self.vocab.unk_id
        repeat = torch.zeros_like(unk)
        repeat[1:] = unk[1:] & unk[:-1]
        begins = (torch.cumsum(tokens.count, 0) - tokens.count)[tokens.count > 0]
        repeat[begins] = False  # the first piece of a text repeats nothing
        dropped = torch.nonzero(repeat).squeeze(1)
        if dropped.numel() == 0:
            return tokens
        kept = torch.nonzero(~repeat).squeeze(1)
        count = tokens.count - torch.bincount(tokens.text(dropped), minlength=tokens.count.numel())
        last = torch.cat([kept[1:], kept.new_tensor([repeat.numel()])]) - 1  # last piece of each kept run
        return Tokens(count, tokens.piece[kept], tokens.start[kept], tokens.end[last])

    def _spell_bytes(self, tokens: Tokens, unk: torch.Tensor, code_points: torch.Tensor) -> Tokens:
        """Byte fallback: the ``unk`` pieces (indices into ``tokens``; their characters' ``code_points``) become the
        ``<0xNN>`` pieces of the characters' UTF-8 bytes (continuation bytes inherit the character's span)."""
        return Tokens(*self._spelled(tokens.count, tokens.piece, unk, code_points, tokens.start, tokens.end))

    def _spelled(self, count: torch.Tensor, piece: torch.Tensor, unk: torch.Tensor, code_points: torch.Tensor,
                 *carried: torch.Tensor) -> list[torch.Tensor]:
        """``count`` (per text), ``piece`` and each of ``carried`` (per piece) with the ``unk`` pieces (ascending
        indices; their characters' ``code_points``) spelled as the ``<0xNN>`` pieces of the UTF-8 bytes, a
        ``carried`` value repeated for each byte. Unk pieces are few: the runs between them are copied whole."""
        if unk.numel() == 0:
            return [count, piece, *carried]
        n_bytes = _utf8_length(code_points)
        extra = n_bytes - 1
        dest = unk + torch.cumsum(extra, 0) - extra  # where each character's first byte lands
        count = count.index_add(0, torch.searchsorted(torch.cumsum(count, 0), unk, right=True), extra)
        cuts, sizes = (unk + 1).tolist(), extra.tolist()

        def spread(values: torch.Tensor) -> torch.Tensor:
            runs = values.tensor_split(cuts)
            inserted = values.index_select(0, unk).repeat_interleave(extra).split(sizes)
            return torch.cat([part for pair in zip(runs, inserted) for part in pair] + [runs[-1]])

        piece, *carried = map(spread, (piece, *carried))
        lead = torch.tensor([0, 0, 0xC0, 0xE0, 0xF0], device=n_bytes.device)[n_bytes]
        for rank in range(4):
            has = n_bytes > rank
            shifted = code_points[has] >> (6 * (n_bytes[has] - 1 - rank))
            byte = lead[has] | shifted if rank == 0 else 0x80 | (shifted & 0x3F)
            piece[dest[has] + rank] = self._byte_ids.to(byte.device)[byte]
        return [count, piece, *carried]

    def _spelled_numpy(self, count: np.ndarray, piece: np.ndarray, unk: np.ndarray, code_points: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_spelled` with numpy arrays and nothing carried: ``count`` (per group) and ``piece`` with the
        ``unk`` pieces (ascending indices; their characters' ``code_points``) spelled as UTF-8 byte pieces."""
        n_bytes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
        extra = n_bytes - 1
        out = np.insert(piece.astype(np.int64), np.repeat(unk + 1, extra), 0)  # room for the bytes after the first
        group = np.searchsorted(np.cumsum(count), unk, side="right")
        count = count + np.bincount(group, weights=extra, minlength=len(count)).astype(np.int64)
        dest = unk + np.cumsum(extra) - extra  # where each character's first byte lands
        byte_ids = self._byte_ids.numpy()
        lead = np.array([0, 0, 0xC0, 0xE0, 0xF0])[n_bytes]
        for rank in range(4):
            has = n_bytes > rank
            shifted = code_points[has] >> (6 * (n_bytes[has] - 1 - rank))
            byte = lead[has] | shifted if rank == 0 else 0x80 | (shifted & 0x3F)
            out[dest[has] + rank] = byte_ids[byte]
        return count, out

    def _output_length(self, cands, units) -> torch.Tensor:
        """Output pieces per candidate edge: UTF-8 length of the character for byte-fallback ``unk`` edges, else 1."""
        if not self.vocab.byte_fallback:
            return torch.ones_like(cands.piece)
        return torch.where(cands.piece == self.vocab.unk_id, _utf8_length(units[cands.start]), 1)


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


def _piece_units(vocab: Vocab) -> torch.Tensor:
    """Per piece id, how an output piece covers units: ``(advance, back, width)`` rows, so that a piece after
    ``u`` units of output starts at unit ``u - back`` and ends at ``+ width``. Lattice pieces cover their length, unk
    pieces one unit; of the byte pieces that spell a character, the lead byte covers it and the continuation bytes
    cover it again (``back`` 1)."""
    units = torch.tensor([[len(p), 0, len(p)] for p in vocab.pieces], dtype=torch.int64).reshape(-1, 3)
    if vocab.unk_id is not None:
        units[vocab.unk_id] = torch.tensor([1, 0, 1])
    for i, (piece, kind) in enumerate(zip(vocab.pieces, vocab.kinds)):
        if kind == BYTE:
            units[i] = torch.tensor([0, 1, 1] if 0x80 <= int(piece[3:5], 16) < 0xC0 else [1, 0, 1])
    return units.T.contiguous()


def _spread(count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``count[i]`` items of every group ``i`` laid end to end: each item's group and rank inside it."""
    total = int(count.sum())
    group = torch.repeat_interleave(torch.arange(count.numel(), device=count.device), count, output_size=total)
    return group, torch.arange(total, device=count.device) - (torch.cumsum(count, 0) - count).index_select(0, group)


def _utf8_length(code_points: torch.Tensor) -> torch.Tensor:
    return 1 + (code_points >= 0x80).long() + (code_points >= 0x800).long() + (code_points >= 0x10000).long()


def check_alpha(alpha) -> float | None:
    """``None`` for decoding (alpha None or < 0), else the float alpha in ``[0, ALPHA_MAX]``; ``ValueError`` /
    ``TypeError`` naming ``alpha`` otherwise (far beyond ``ALPHA_MAX``, ``alpha * score`` overflows float64, while
    at ``ALPHA_MAX`` the draw is already Viterbi decoding except among near-ties; docs/tokenization.md)."""
    if alpha is None:
        return None
    try:
        alpha = checks.finite_float("alpha", alpha, high=ALPHA_MAX)
    except TypeError:  # not a number
        raise
    except ValueError:
        raise ValueError(f"alpha must be a finite number <= {ALPHA_MAX:g} (< 0: Viterbi decoding, >= 0: "
                         f"sampling), got {alpha!r}") from None
    return None if alpha < 0 else alpha


def _check_texts(texts: str | Iterable[str]) -> list[str]:
    """``texts`` as a list of strings (a ``str`` is one text); ``TypeError`` for other items, ``ValueError`` for
    lone surrogates (not Unicode text: they have no UTF-8 form to segment)."""
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, (str, Iterable)):
        raise TypeError(f"texts must be a string or a list of strings, got {type(texts).__name__}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not all(map(isinstance, texts, repeat(str))):  # C-level loop; find the culprit only on failure
        i, text = next((i, text) for i, text in enumerate(texts) if not isinstance(text, str))
        raise TypeError(f"texts must be strings; item {i} is a {type(text).__name__}")
    try:  # fails exactly on lone surrogates; faster than a search (ASCII strings, flagged as such, hold none)
        "".join(filterfalse(str.isascii, texts)).encode("utf-8")
    except UnicodeEncodeError:
        i, text = next((i, text) for i, text in enumerate(texts) if _SURROGATE.search(text))
        code = ord(_SURROGATE.search(text).group())
        raise ValueError(f"texts[{i}] holds a lone surrogate U+{code:04X} at index {text.index(chr(code))}, "
                         "which is not Unicode text") from None
    return texts
