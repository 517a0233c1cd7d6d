"""``UnigramTokenizer``: Viterbi decoding and exact sampling of unigram segmentations, batched on CPU and CUDA.

``alpha=None`` (or < 0) gives the most probable segmentation; ``0 <= alpha <= ALPHA_MAX`` an exact draw from
``P(w) ∝ exp(alpha * score(w))`` over all segmentations, the law of SentencePiece's
``encode(enable_sampling=True, alpha=alpha, nbest_size=-1)``. Algorithms, exactness argument and what is guaranteed
against SentencePiece (identical normalised text, decoded text and Viterbi ids except exact float32 ties): see
docs/tokenization.md.

Pipeline per batch: normalise and cut into chunks (words), look every occurrence up in the word-lattice cache
(:mod:`~textdiff.tokenization.wordcache`, kept by :class:`~textdiff.tokenization.segmenter.WordSegmenter`), and
build the missing words: lay them into one code-point stream, find candidate edges with a vectorised trie walk, cut
the lattice into independent segments, bucket them by length and run the forward pass over positions vectorised
across rows (float64 log-space for sampling, which also yields every position's predecessor CDF; the scores' own
precision for decoding); decoding keeps each word's Viterbi segmentation, sampling its edges and tables of whole
segmentations. Then decoding copies every occurrence's pieces, and sampling walks every occurrence back from its end
at once, one float64 uniform per path and step drawing either a predecessor or, where the position has a table, the
rest of the path. The pieces are laid out in text order.
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

import torch
from tokenizers import Tokenizer

from textdiff import checks, rng
from textdiff.tokenization import bytes_input, formats, lattice, viterbi
from textdiff.tokenization.encoding import Encoding, Tokens
from textdiff.tokenization.normalization import METASPACE, TextPipeline
from textdiff.tokenization.segmenter import WordSegmenter
from textdiff.tokenization.sentencepiece_model import CONTROL, UNKNOWN
from textdiff.tokenization.vocab import BYTE_PIECES, Vocab, pieces_with_extras

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
        self.pipeline = pipeline or TextPipeline.identity()
        normalizer = self.pipeline.sentencepiece
        escapes = normalizer is not None and normalizer.escape_whitespaces
        splits = escapes and not any(METASPACE in p[1:] for p in vocab.pieces)
        self._split_at = METASPACE if splits else None  # boundaries before "▁" are lattice cuts: chunk there
        keeps_words = self._split_at is not None or self.pipeline.pre_tokenizer is not None
        self.segmenter = WordSegmenter(vocab, cache_size, keeps_words)
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
        return self.segmenter.cache_size

    @cache_size.setter
    def cache_size(self, value: int) -> None:
        self.segmenter.cache_size = value

    def cache_info(self) -> dict[str, int]:
        """The word-lattice cache: ``hits`` / ``misses`` (distinct words looked up per call, summed over calls),
        ``words`` cached, ``bytes`` held and the ``cache_size`` bound (docs/tokenization.md)."""
        return self.segmenter.cache_info()

    def cache_clear(self) -> None:
        """Empty the word-lattice cache (statistics included)."""
        self.segmenter.cache_clear()

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
        trie = self.segmenter.trie(device)
        for offset, group in self._groups(batch):
            stream = lattice.chunk_stream(self.pipeline.chunks(group, self._split_at), device)
            if stream.occ_chunk.numel() == 0:
                continue
            units = stream.units
            cands = lattice.find_candidates(units, trie, self.vocab.unk_id, self.segmenter.compact(device))
            segs = lattice.find_segments(units, cands)
            score = self.segmenter.scores.to(device)[cands.piece].double()
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
            tokens_of_cand = marginal * self.segmenter.spelling.output_length(cands, units).double()
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
        segmenter = self.segmenter
        store = segmenter.store(device, alpha)
        build = lambda keys: segmenter.word_tables(keys, alpha, device)
        entry = store.lookup(words.keys, build, words.code)
        tokens = segmenter.segment_words(store, entry, words.text.to(device), len(texts), alpha, gen, device)
        store.trim()
        return tokens


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
