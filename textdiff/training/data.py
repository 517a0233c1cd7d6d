"""Text files -> tokenized, packed fixed-length blocks (HF ``datasets`` pipeline) and a resumable batch iterator.

Blocks are packed to a fixed length, so training never pads; documents (lines) are joined with ``doc_sep_id``
(``[SEP]`` for BERT, EOS for causal tokenizers); the block specials (``[CLS]`` ... ``[SEP]``) wrap every block and are
``protected`` (never corrupted, never scored). See docs/training.md, "Data".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from textdiff.checks import positive_int
from textdiff.rng import SEED_LIMIT, make_generator


def encode_function(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """``list[str] -> list[list[int]]`` for an HF tokenizer (no special tokens) or any object with ``encode(list)``."""
    if hasattr(tokenizer, "backend_tokenizer") or hasattr(tokenizer, "convert_tokens_to_ids"):
        return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]
    if hasattr(tokenizer, "encode"):
        return lambda texts: [list(map(int, ids)) for ids in tokenizer.encode(list(texts))]
    raise TypeError(f"tokenizer must be an HF tokenizer or have encode(list[str]), got {type(tokenizer).__name__}")


@dataclass(frozen=True)
class PackingSpec:
    """How documents become blocks: ``prefix + body + suffix`` of total length ``seq_len``."""

    seq_len: int
    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    doc_sep_id: int | None = None

    def __post_init__(self):
        positive_int("seq_len", self.seq_len)
        if self.body_len < 1:
            raise ValueError(f"seq_len must exceed the {len(self.prefix) + len(self.suffix)} special tokens, "
                             f"got {self.seq_len}")

    @property
    def body_len(self) -> int:
        return self.seq_len - len(self.prefix) - len(self.suffix)

    @classmethod
    def for_tokenizer(cls, tokenizer, seq_len: int) -> PackingSpec:
        """BERT-style ``[CLS] ... [SEP]`` blocks when the tokenizer has CLS/SEP, else bare blocks split by EOS."""
        cls_id, sep_id = getattr(tokenizer, "cls_token_id", None), getattr(tokenizer, "sep_token_id", None)
        if cls_id is not None and sep_id is not None:
            return cls(seq_len, (cls_id,), (sep_id,), sep_id)
        return cls(seq_len, (), (), getattr(tokenizer, "eos_token_id", None))

    def pack(self, docs: Sequence[Sequence[int]]) -> list[list[int]]:
        """Concatenate ``docs`` (separated by ``doc_sep_id``) and cut into full blocks; the incomplete tail is
        dropped."""
        stream: list[int] = []
        for doc in docs:
            if not doc:
                continue
            stream.extend(doc)
            if self.doc_sep_id is not None:
                stream.append(self.doc_sep_id)
        n = self.body_len
        return [list(self.prefix) + stream[i : i + n] + list(self.suffix) for i in range(0, len(stream) - n + 1, n)]

    def protected_mask(self) -> torch.Tensor:
        """``[seq_len]`` bool: True at the block specials."""
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[: len(self.prefix)] = True
        if self.suffix:
            mask[-len(self.suffix) :] = True
        return mask


def check_text_file(path: str | Path) -> Path:
    """``path`` if it is a UTF-8 text file with at least one non-blank line; otherwise ``FileNotFoundError`` or
    ``ValueError`` naming the file (and the first line that is not UTF-8). Reads the file once, line by line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    has_text = False
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}, line {number}: not UTF-8 text (byte {line[err.start]:#04x} at column "
                                 f"{err.start + 1}); convert the file to UTF-8") from None
            has_text = has_text or bool(text.strip())
    if not has_text:
        raise ValueError(f"{path} holds no text (it is empty or blank)")
    return path


def load_packed_dataset(files: Sequence[str | Path], tokenizer, spec: PackingSpec, streaming: bool = False,
                        num_proc: int | None = None):
    """``datasets`` pipeline: ``load_dataset("text")`` -> tokenize -> pack; one column ``input_ids``. Every file is
    checked first with :func:`check_text_file`."""
    import datasets

    if not files:
        raise ValueError("files must name at least one text file")
    files = [str(check_text_file(f)) for f in files]
    ds = datasets.load_dataset("text", data_files={"train": files}, split="train", streaming=streaming)
    encode = encode_function(tokenizer)
    ds = ds.map(lambda b: {"ids": encode(b["text"])}, batched=True, remove_columns=["text"],
                **({} if streaming else {"num_proc": num_proc, "desc": "tokenize"}))
    ds = ds.map(lambda b: {"input_ids": spec.pack(b["ids"])}, batched=True, batch_size=1000, remove_columns=["ids"],
                **({} if streaming else {"desc": "pack"}))
    return ds if streaming else ds.with_format("torch")


@dataclass
class DataPosition:
    """Where a :class:`BatchStream` is: epoch and number of examples already consumed in it (for exact resume)."""

    epoch: int = 0
    offset: int = 0


class BatchStream:
    """Batches of ``input_ids [B, L]`` in a seeded per-epoch shuffled order, resumable from a :class:`DataPosition`.

    Under DDP each rank takes every ``world_size``-th example of the shared order. Streaming (iterable) datasets are
    read in file order, skipping ``offset`` examples on resume.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 position: DataPosition | None = None):
        self.dataset, self.batch_size, self.seed = dataset, positive_int("batch_size", batch_size), seed
        self.world_size = positive_int("world_size", world_size)
        self.rank = positive_int("rank", rank, minimum=0)
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size - 1] = [0, {world_size - 1}], got {rank}")
        self.position = position or DataPosition()
        if hasattr(dataset, "__len__") and len(dataset) < batch_size * world_size:
            raise ValueError(self._too_little_data(len(dataset)))

    def _too_little_data(self, blocks: int) -> str:
        return (f"the training data gives {blocks} packed block(s), fewer than one batch of {self.batch_size} x "
                f"{self.world_size} process(es); add text, or lower the batch size or the sequence length")

    def _order(self, epoch: int) -> torch.Tensor:
        gen = make_generator(seed=(self.seed + 1000003 * epoch) % SEED_LIMIT)
        return torch.randperm(len(self.dataset), generator=gen)

    def _epoch_batches(self) -> Iterator[torch.Tensor]:
        """Global batches ``[B · world_size, L]`` of the current epoch from the current offset on (the incomplete last
        global batch is dropped); map-style datasets are read one batch per call, not one row per call."""
        global_batch = self.batch_size * self.world_size
        if not hasattr(self.dataset, "__len__"):
            rows = (torch.as_tensor(r["input_ids"]) for r in self.dataset.skip(self.position.offset))
            while batch := list(itertools.islice(rows, global_batch)):
                if len(batch) == global_batch:
                    yield torch.stack(batch)
            return
        order = self._order(self.position.epoch)
        usable = len(order) - len(order) % global_batch
        for start in range(self.position.offset, usable, global_batch):
            yield torch.as_tensor(self.dataset[order[start : start + global_batch].tolist()]["input_ids"])

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Endless batches for this rank; ``ValueError`` (instead of looping forever) when a whole epoch of a
        streaming dataset holds less than one global batch."""
        global_batch = self.batch_size * self.world_size
        while True:
            from_start, yielded = self.position.offset == 0, False
            for batch in self._epoch_batches():
                yielded = True
                self.position = DataPosition(self.position.epoch, self.position.offset + global_batch)
                yield batch[self.rank :: self.world_size]
            if from_start and not yielded:
                raise ValueError(self._too_little_data(self._count_blocks()))
            self.position = DataPosition(self.position.epoch + 1, 0)

    def _count_blocks(self) -> int:
        return len(self.dataset) if hasattr(self.dataset, "__len__") else sum(1 for _ in self.dataset)
