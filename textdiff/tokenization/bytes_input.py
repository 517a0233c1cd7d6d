"""Bytes in, padded ids out: the device pipeline (docs/tokenization.md, "Device pipeline").

:func:`encode_bytes` takes a batch of lines as one UTF-8 byte tensor and line ``offsets`` (as Arrow stores a string
column; :func:`arrow_text` gives them without a Python string per line) and returns padded ``input_ids`` and
``attention_mask``. On the device: the model's byte-level normalisation (a 256-entry lookup table), whitespace
collapsing and the ``▁`` prefix rule (a word is a maximal run of non-space bytes in a line, its chunk ``▁`` + the
word), word boundaries, a polynomial hash of every word (two moduli below 2**31, int64 arithmetic without overflow,
segment sums), the lookup of every occurrence in a sorted table of the cached words' hashes (``searchsorted``) with
every hit checked byte by byte against the cached key, the table draws and backward walks of all occurrences at
once, and the padded output. On the host: the tables of words seen for the first time (built once per distinct word,
as :meth:`UnigramTokenizer.encode` builds them: one batch per call, shared with its cache), and lines the byte-level
route cannot take (see :func:`encode_bytes`), which go through :meth:`UnigramTokenizer.encode`'s own pipeline.

Exactness does not depend on the hash: a hit counts only when the occurrence's bytes equal the cached key's, and an
occurrence whose bytes differ from the first occurrence of its hash in the batch gets its own key, so a collision
costs a host lookup, never a wrong word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from textdiff import checks, rng
from textdiff.padding import pad_flat
from textdiff.tokenization import wordcache
from textdiff.tokenization.normalization import METASPACE
from textdiff.tokenization.segmenter import spread

MODULI = (2147483647, 2147483629)  # primes below 2**31: products of two residues stay below 2**62
BASES = (911382323, 972663749)
DEVICE_BYTES_PER_BATCH = 1 << 26  # bytes of text per batch on accelerators (CPU: the host path's batch size)
_SPACE = 0x20
_POWERS: dict[str, torch.Tensor] = {}  # per device: [2, n] powers of BASES modulo MODULI


def arrow_text(array, column: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(data, offsets)`` for :meth:`UnigramTokenizer.encode_bytes` from Arrow strings, copying the buffers once
    (no Python string per line): a ``pyarrow`` string / large_string (or string_view) ``Array`` or ``ChunkedArray``,
    or with ``column`` a ``pyarrow.Table`` or a ``datasets.Dataset`` (its row order, ``select`` / ``shuffle``
    included). ``data``: uint8, the UTF-8 bytes of all rows end to end; ``offsets``: int64, row ``i`` is
    ``data[offsets[i] : offsets[i + 1]]``. Null rows raise ``ValueError``."""
    import pyarrow as pa

    if column is not None:
        table = getattr(array, "data", array)  # datasets.Dataset -> its Arrow table
        if not hasattr(table, "column") or column not in table.column_names:
            raise ValueError(f"column {column!r} is not a column of {type(array).__name__}")
        values = table.column(column)
        indices = getattr(array, "_indices", None)  # datasets' select / shuffle: a mapping to table rows
        if indices is not None:
            values = values.take(indices.column(0))
        array = values
    if isinstance(array, pa.ChunkedArray):
        chunks = array.chunks
    elif isinstance(array, pa.Array):
        chunks = [array]
    else:
        raise TypeError(f"array must be a pyarrow Array or ChunkedArray (or a table with column=), got "
                        f"{type(array).__name__}")
    datas, offsets, total = [], [np.zeros(1, dtype=np.int64)], 0
    for chunk in chunks:
        if pa.types.is_string_view(chunk.type):
            chunk = chunk.cast(pa.large_string())
        if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            raise ValueError(f"array must hold strings (string or large_string), got type {chunk.type}")
        if chunk.null_count:
            raise ValueError(f"array holds {chunk.null_count} null rows; fill or drop them first")
        if len(chunk) == 0:
            continue
        _, offset_buffer, data_buffer = chunk.buffers()
        kind = np.int32 if pa.types.is_string(chunk.type) else np.int64
        bounds = np.frombuffer(offset_buffer, dtype=kind)[chunk.offset : chunk.offset + len(chunk) + 1]
        bounds = bounds.astype(np.int64)
        data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
        datas.append(data[bounds[0] : bounds[-1]])
        offsets.append(bounds[1:] - bounds[0] + total)
        total += int(bounds[-1] - bounds[0])
    data = np.concatenate(datas) if datas else np.zeros(0, dtype=np.uint8)
    return torch.from_numpy(data), torch.from_numpy(np.concatenate(offsets))


def check_bytes(data, offsets) -> tuple[torch.Tensor, torch.Tensor]:
    """``data`` (1-D uint8) and ``offsets`` (1-D int64, on the CPU) after checking them: ``TypeError`` /
    ``ValueError`` naming the parameter otherwise. Offsets: at least one, non-decreasing, within ``[0, len(data)]``."""
    for name, value in (("data", data), ("offsets", offsets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor, got shape {tuple(value.shape)}")
    if data.dtype != torch.uint8:
        raise ValueError(f"data must be a uint8 tensor (UTF-8 bytes), got dtype {data.dtype}")
    if offsets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"offsets must be an int64 (or int32) tensor, got dtype {offsets.dtype}")
    if offsets.numel() == 0:
        raise ValueError("offsets must hold at least one entry (lines + 1 boundaries), got none")
    host = offsets.to("cpu", torch.int64)
    if int(host[0]) < 0 or int(host[-1]) > data.numel():
        raise ValueError(f"offsets must lie in [0, len(data)] = [0, {data.numel()}], got {int(host[0])} .. "
                         f"{int(host[-1])}")
    steps = host[1:] - host[:-1]
    if steps.numel() and bool((steps < 0).any()):
        line = int(torch.nonzero(steps < 0)[0])
        raise ValueError(f"offsets must be non-decreasing; offsets[{line + 1}] < offsets[{line}]")
    return data, host


@dataclass
class ByteRouteTables:
    """The byte-level normalisation of a model whose ASCII lines take the batch route of
    :class:`~textdiff.tokenization.normalization.TextPipeline`: ``translate[b]`` the output byte, ``drop[b]``
    deleted bytes, ``slow[b]`` bytes that send their line to the host (non-ASCII, first characters of the
    normaliser's multi-character rules and user-defined symbols); 256 entries each, on one device."""

    translate: torch.Tensor
    drop: torch.Tensor
    slow: torch.Tensor
    deletes: bool

    @classmethod
    def of(cls, route, device: torch.device) -> ByteRouteTables:
        slow = torch.zeros(256, dtype=torch.bool)
        slow[128:] = True
        for c in route.triggers:
            slow[ord(c)] = True
        drop = torch.zeros(256, dtype=torch.bool)
        drop[list(route.delete)] = True
        translate = torch.frombuffer(bytearray(route.table), dtype=torch.uint8)
        return cls(translate.to(device), drop.to(device), slow.to(device), bool(route.delete))


def _powers(n: int, device: torch.device) -> torch.Tensor:
    """``[2, >= n]`` int64: ``BASES[k] ** j mod MODULI[k]`` (kept per device, grown by doubling)."""
    key = str(device)
    table = _POWERS.get(key)
    if table is None:
        table = torch.ones((2, 1), dtype=torch.int64, device=device)
    while table.shape[1] < n:
        size = table.shape[1]
        step = torch.tensor([[pow(b, size, p)] for b, p in zip(BASES, MODULI)], dtype=torch.int64, device=device)
        modulus = torch.tensor([[p] for p in MODULI], dtype=torch.int64, device=device)
        table = torch.cat([table, table * step % modulus], 1)
    _POWERS[key] = table
    return table


def word_hash(data: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Hash of every word ``data[start[i] : start[i] + length[i]]`` (uint8 ``data``): ``Σ_j (b_j + 1) B^j mod p``
    for two ``(B, p)``, packed into one non-negative int64 (``h_0 * 2**31 + h_1``). Equal bytes give equal hashes on
    every device; unequal bytes may collide (callers compare bytes)."""
    if start.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=data.device)
    word, rank = spread(length)
    byte = data.index_select(0, start.index_select(0, word) + rank).long() + 1
    powers = _powers(int(length.max()), data.device)
    out = torch.zeros(start.numel(), dtype=torch.int64, device=data.device)
    for k, p in enumerate(MODULI):
        term = byte * powers[k].index_select(0, rank) % p  # < 2**31 each: sums of < 2**32 terms fit in int64
        out = out * (1 << 31) + torch.zeros_like(out).index_add_(0, word, term) % p
    return out


def same_bytes(data_a: torch.Tensor, start_a: torch.Tensor, data_b: torch.Tensor, start_b: torch.Tensor,
               length: torch.Tensor) -> torch.Tensor:
    """Per word: whether ``data_a[start_a[i] :][: length[i]]`` equals ``data_b[start_b[i] :][: length[i]]``."""
    word, rank = spread(length)
    differ = data_a.index_select(0, start_a.index_select(0, word) + rank) != \
        data_b.index_select(0, start_b.index_select(0, word) + rank)
    return torch.zeros(length.numel(), dtype=torch.int64, device=length.device).index_add_(0, word, differ.long()) == 0


class KeyIndex:
    """The ``bytes`` keys of a :class:`~textdiff.tokenization.wordcache.WordStore` on its device: every entry's
    key bytes end to end (``start``, ``length``; -1 for keys that are not ``bytes``, which never match), and the
    keys' hashes sorted with their entry ids. Kept in step with the store by :meth:`sync` (appends hash the new keys
    only; a store laid out anew is indexed anew)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._words: list | None = None
        self.count = 0
        self.bytes = wordcache._Buffer(torch.uint8, device)
        self.start = wordcache._Buffer(torch.int64, device)
        self.length = wordcache._Buffer(torch.int64, device)
        self.hash = torch.zeros(0, dtype=torch.int64, device=device)
        self.entry = torch.zeros(0, dtype=torch.int64, device=device)

    @classmethod
    def of(cls, store: wordcache.WordStore) -> KeyIndex:
        index = store.device_index
        if index is None or store.words is not index._words:
            index = store.device_index = cls(store.device)
            index._words = store.words
        index.sync(store)
        return index

    def sync(self, store: wordcache.WordStore) -> None:
        keys = store.words[self.count :]
        if not keys:
            return
        first, self.count = self.count, len(store.words)
        lengths = torch.tensor([len(k) if isinstance(k, bytes) else -1 for k in keys], dtype=torch.int64)
        blob = bytearray(b"".join(k for k in keys if isinstance(k, bytes)))
        data = torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
        start = torch.cumsum(lengths.clamp(min=0), 0) - lengths.clamp(min=0)
        valid = torch.nonzero(lengths >= 0).squeeze(1)
        data, start, lengths = data.to(self.device), start.to(self.device), lengths.to(self.device)
        valid = valid.to(self.device)
        hashes = word_hash(data, start.index_select(0, valid), lengths.index_select(0, valid))
        self.start.append(start + self.bytes.size)
        self.bytes.append(data)
        self.length.append(lengths)
        hashes = torch.cat([self.hash, hashes])
        entries = torch.cat([self.entry, valid + first])
        order = torch.argsort(hashes, stable=True)
        self.hash, self.entry = hashes.index_select(0, order), entries.index_select(0, order)

    def find(self, data: torch.Tensor, start: torch.Tensor, length: torch.Tensor, hashes: torch.Tensor
             ) -> torch.Tensor:
        """Entry id of every word ``data[start : start + length]`` (hash ``hashes``), -1 where the key with the
        first equal hash is not the same bytes (a new word, or a collision that the host lookup resolves)."""
        if self.hash.numel() == 0:
            return torch.full_like(start, -1)
        at = torch.searchsorted(self.hash, hashes).clamp(max=self.hash.numel() - 1)
        entry = torch.where(self.hash.index_select(0, at) == hashes, self.entry.index_select(0, at), -1)
        safe = entry.clamp(min=0)
        entry = torch.where((entry >= 0) & (self.length.values.index_select(0, safe) == length), entry, -1)
        check = torch.nonzero(entry >= 0).squeeze(1)
        if check.numel():
            same = same_bytes(data, start.index_select(0, check), self.bytes.values,
                              self.start.values.index_select(0, entry.index_select(0, check)),
                              length.index_select(0, check))
            entry.index_fill_(0, check.index_select(0, torch.nonzero(~same).squeeze(1)), -1)
        return entry


def _group_bounds(offsets: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Consecutive line ranges of at most ``limit`` bytes each (or one line), like the host path's batches."""
    ends = offsets[1:].numpy()
    lines, begin, out = len(ends), 0, []
    while begin < lines:
        before = int(offsets[begin])
        end = max(begin + 1, int(np.searchsorted(ends, before + limit, side="right")))
        out.append((begin, end))
        begin = end
    return out


def encode_bytes(tok, data: torch.Tensor, offsets: torch.Tensor, alpha, seed, device, generator, pad_id
                 ) -> dict[str, torch.Tensor]:
    """:meth:`UnigramTokenizer.encode_bytes` (see there and docs/tokenization.md, "Device pipeline")."""
    from textdiff.tokenization import tokenizer
    from textdiff.tokenization.tokenizer import check_alpha

    data, offsets = check_bytes(data, offsets)
    alpha = check_alpha(alpha)
    device = checks.device(device)
    gen = None if alpha is None else rng.make_generator(seed, generator, device)
    pad_id = tok.vocab.index.get("<pad>", 0) if pad_id is None else pad_id
    n_lines = offsets.numel() - 1
    route = tok.pipeline._bytes if tok._split_at == METASPACE and tok.pipeline.pre_tokenizer is None else None
    counts, pieces, slow = [], [], []
    if route is None:  # no byte-level route for this model: every line takes the host path
        slow = list(range(n_lines))
        counts.append(torch.zeros(n_lines, dtype=torch.int64, device=device))
    else:
        tables = tok._byte_tables.get(str(device))
        if tables is None:
            tables = tok._byte_tables[str(device)] = ByteRouteTables.of(route, device)
        limit = tokenizer._UNITS_PER_BATCH if tok.segmenter.compact(device) else DEVICE_BYTES_PER_BATCH
        on_device = data.to(device)
        for begin, end in _group_bounds(offsets, limit):
            count, piece, group_slow = _encode_group(tok, tables, on_device, offsets[begin : end + 1], alpha, gen,
                                                     device)
            counts.append(count)
            pieces.append(piece)
            slow += [begin + i for i in group_slow]
    count = torch.cat(counts) if counts else torch.zeros(0, dtype=torch.int64, device=device)
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64, device=device)
    if slow:
        flat, count = _merge_host_lines(tok, data, offsets, slow, flat, count, alpha, gen, device)
    input_ids, mask = pad_flat(flat, count, pad_id)
    return {"input_ids": input_ids, "attention_mask": mask.long()}


def _encode_group(tok, tables: ByteRouteTables, data: torch.Tensor, offsets: torch.Tensor, alpha, gen,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One batch of lines (``offsets`` into ``data``, on the CPU): pieces per line and in text order, on
    ``device``, and the lines left to the host (their count is 0 here)."""
    n_lines = offsets.numel() - 1
    lo, hi = int(offsets[0]), int(offsets[-1])
    raw = data[lo:hi]
    line_length = (offsets[1:] - offsets[:-1]).to(device)
    line = torch.repeat_interleave(torch.arange(n_lines, device=device), line_length, output_size=hi - lo)
    slow_line = torch.zeros(n_lines, dtype=torch.int64, device=device).index_add_(
        0, line, tables.slow.index_select(0, raw.long()).long()) > 0
    if tables.deletes:  # deleted bytes go before the word boundaries are found (they join their neighbours)
        kept = torch.nonzero(~tables.drop.index_select(0, raw.long())).squeeze(1)
        raw, line = raw.index_select(0, kept), line.index_select(0, kept)
    text = tables.translate.index_select(0, raw.long())
    in_word = (text != _SPACE) & ~slow_line.index_select(0, line)
    same_line = line[1:] == line[:-1]
    after = torch.zeros_like(in_word)
    after[1:] = in_word[:-1] & same_line  # the byte before is in the same word
    before = torch.zeros_like(in_word)
    before[:-1] = in_word[1:] & same_line  # the byte after is in the same word
    start = torch.nonzero(in_word & ~after).squeeze(1)
    length = torch.nonzero(in_word & ~before).squeeze(1) + 1 - start
    slow = torch.nonzero(slow_line).squeeze(1).tolist()
    empty = torch.zeros(0, dtype=torch.int64, device=device)
    if start.numel() == 0:
        return torch.zeros(n_lines, dtype=torch.int64, device=device), empty, slow
    word_line = line.index_select(0, start)
    hashes = word_hash(text, start, length)
    segmenter = tok.segmenter
    store = segmenter.store(device, alpha)
    entry = _lookup(segmenter, store, text, start, length, hashes, alpha, device)
    tokens = segmenter.segment_words(store, entry, word_line, n_lines, alpha, gen, device, spans=False,
                                     split_tables=not segmenter.compact(device))
    store.trim()
    return tokens.count.to(device), tokens.piece.to(device), slow


def _lookup(segmenter, store: wordcache.WordStore, text: torch.Tensor, start: torch.Tensor, length: torch.Tensor,
            hashes: torch.Tensor, alpha, device: torch.device) -> torch.Tensor:
    """Cache entry of every word occurrence: hits found on the device (bytes checked), the distinct missing words'
    bytes copied to the host once each and built there (:meth:`WordStore.resolve`)."""
    index = KeyIndex.of(store)
    entry = index.find(text, start, length, hashes)
    found = torch.nonzero(entry >= 0).squeeze(1)
    missing = torch.nonzero(entry < 0).squeeze(1)
    hit_entries = torch.unique(entry.index_select(0, found))
    keys: list[bytes] = []
    if missing.numel():
        # one key per distinct hash among the missing words: the first occurrence's bytes; occurrences whose bytes
        # differ from it (a hash collision) get keys of their own
        distinct, inverse = torch.unique(hashes.index_select(0, missing), return_inverse=True)
        first = torch.full((distinct.numel(),), missing.numel(), dtype=torch.int64, device=device).scatter_reduce_(
            0, inverse, torch.arange(missing.numel(), device=device), "amin")
        first = missing.index_select(0, first)
        rep = first.index_select(0, inverse)
        same = (length.index_select(0, missing) == length.index_select(0, rep))
        same &= same_bytes(text, start.index_select(0, missing), text, start.index_select(0, rep),
                           torch.where(same, length.index_select(0, missing), 0))
        odd = missing.index_select(0, torch.nonzero(~same).squeeze(1))
        keys = _host_keys(text, start, length, torch.cat([first, odd]))
    ids = np.concatenate([hit_entries.cpu().numpy(), np.full(len(keys), -1, dtype=np.int64)])
    build = lambda new_keys: segmenter.word_tables(new_keys, alpha, device)
    ids, remap = store.resolve(ids, lambda at: keys, build)
    if remap is not None and found.numel():  # appending moved the store: entries found before move too
        entry.index_copy_(0, found, remap.to(device).index_select(0, entry.index_select(0, found)))
    if missing.numel():
        new = torch.from_numpy(ids[hit_entries.numel() :]).to(device)
        entry.index_copy_(0, missing, new[: first.numel()].index_select(0, inverse))
        entry.index_copy_(0, odd, new[first.numel() :])
    return entry


def _host_keys(text: torch.Tensor, start: torch.Tensor, length: torch.Tensor, words: torch.Tensor) -> list[bytes]:
    """The bytes of the listed words (cache keys: a word without its ``▁``), copied to the host in one piece."""
    word_start, word_length = start.index_select(0, words), length.index_select(0, words)
    group, rank = spread(word_length)
    blob = text.index_select(0, word_start.index_select(0, group) + rank).cpu().numpy().tobytes()
    ends = torch.cumsum(word_length, 0).tolist()
    return [blob[b:e] for b, e in zip([0] + ends[:-1], ends)]


def _merge_host_lines(tok, data: torch.Tensor, offsets: torch.Tensor, slow: list[int], flat: torch.Tensor,
                      count: torch.Tensor, alpha, gen, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment the ``slow`` lines with the host pipeline and merge their pieces into the device lines' output."""
    bounds = offsets.tolist()
    raw = data.cpu().numpy()
    texts = []
    for i in slow:
        try:
            texts.append(raw[bounds[i] : bounds[i + 1]].tobytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(f"data: line {i} (bytes {bounds[i]}..{bounds[i + 1]}) is not valid UTF-8: "
                             f"{error.reason} at byte {bounds[i] + error.start}") from None
    host = tok._segment(texts, alpha, None, gen, device)
    at = torch.tensor(slow, dtype=torch.int64, device=device)
    host_count = host.count.to(device)
    total = count.index_copy(0, at, host_count)
    first = torch.cumsum(total, 0) - total
    out = torch.empty(int(total.sum()), dtype=torch.int64, device=device)
    line, rank = spread(count, flat.numel())
    out.index_copy_(0, first.index_select(0, line) + rank, flat.long())
    line, rank = spread(host_count)
    out.index_copy_(0, first.index_select(0, at.index_select(0, line)) + rank, host.piece.to(device).long())
    return out, total
