"""Training-pipeline integration: a ``datasets`` transform and a DataLoader collator that re-sample segmentations.

Both draw from one generator per process: seeded with ``seed`` in the main process and with
``textdiff.rng.worker_seed(seed, worker_id)`` inside DataLoader worker ``worker_id`` (or from the worker's own
torch seed when ``seed`` is None), so two workers never produce the same segmentation stream (docs/tokenization.md).
The stream advances with every batch, so the same text is segmented afresh each time it is drawn.
"""

from __future__ import annotations

import os

import torch

from textdiff import rng


class _WorkerStream:
    """One ``torch.Generator`` per (process, DataLoader worker), created lazily where it is used."""

    def __init__(self, seed: int | None, device: str | torch.device) -> None:
        self.seed, self.device = seed, torch.device(device)
        self._owner: tuple[int, int] | None = None
        self._generator: torch.Generator | None = None

    def get(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), -1 if info is None else info.id)
        if owner != self._owner:
            seed = self.seed
            if seed is not None and info is not None:
                seed = rng.worker_seed(seed, info.id)
            self._generator = rng.make_generator(seed, None, self.device)
            self._owner = owner
        return self._generator


class SegmentationTransform:
    """``dataset.set_transform(tok.as_transform(alpha=0.1))``: adds ``input_ids`` sampled at every access."""

    def __init__(self, tokenizer, alpha, text_column="text", seed=None, output_column="input_ids", device="cpu"):
        self.tokenizer, self.alpha, self.device = tokenizer, alpha, device
        self.text_column, self.output_column = text_column, output_column
        self._stream = _WorkerStream(seed, device)

    def __call__(self, batch: dict) -> dict:
        if self.text_column not in batch:
            raise ValueError(f"text_column {self.text_column!r} is not in the batch (columns: {sorted(batch)})")
        texts = batch[self.text_column]
        single = isinstance(texts, str)
        ids = self.tokenizer.encode(
            [texts] if single else list(texts), self.alpha, device=self.device, generator=self._stream.get()
        )
        out = dict(batch)
        out[self.output_column] = ids[0] if single else ids
        return out


class UnigramCollator:
    """DataLoader ``collate_fn``: texts (or dicts with ``text_column``) -> padded ``input_ids`` + ``attention_mask``.

    Every call samples new segmentations (``alpha >= 0``; ``alpha=None`` decodes). ``max_length`` truncates,
    ``pad_id`` defaults to the ``<pad>`` piece when the vocabulary has one, else 0; ``add_bos``/``add_eos`` add the
    ``<s>``/``</s>`` pieces.
    """

    def __init__(
        self,
        tokenizer,
        alpha: float | None = None,
        text_column: str = "text",
        seed: int | None = None,
        max_length: int | None = None,
        pad_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        self.tokenizer, self.alpha, self.text_column, self.max_length = tokenizer, alpha, text_column, max_length
        index = tokenizer.vocab.index
        for flag, piece in ((add_bos, "<s>"), (add_eos, "</s>")):
            if flag and piece not in index:
                raise ValueError(f"add_bos/add_eos need the piece {piece!r}, which this vocabulary lacks")
        self.pad_id = pad_id if pad_id is not None else index.get("<pad>", 0)
        self.prefix = [index["<s>"]] if add_bos else []
        self.suffix = [index["</s>"]] if add_eos else []
        self.device = device
        self._stream = _WorkerStream(seed, device)

    def __call__(self, examples: list) -> dict[str, torch.Tensor]:
        texts = [ex if isinstance(ex, str) else ex[self.text_column] for ex in examples]
        encoded = self.tokenizer.encode(texts, self.alpha, device=self.device, generator=self._stream.get(),
                                        return_tensors="pt", pad_id=self.pad_id)
        ids, lengths = encoded["input_ids"], encoded["attention_mask"].sum(1)
        rows = torch.arange(len(ids), device=ids.device)[:, None]
        if self.prefix:
            prefix = torch.tensor(self.prefix, dtype=torch.long, device=ids.device).expand(len(ids), -1)
            ids, lengths = torch.cat([prefix, ids], 1), lengths + len(self.prefix)
        if self.suffix:
            ids = torch.cat([ids, ids.new_full((len(ids), len(self.suffix)), self.pad_id)], 1)
            at = lengths[:, None] + torch.arange(len(self.suffix), device=ids.device)
            ids[rows, at] = torch.tensor(self.suffix, dtype=torch.long, device=ids.device)
            lengths = lengths + len(self.suffix)
        if self.max_length is not None:
            ids, lengths = ids[:, : self.max_length], lengths.clamp(max=self.max_length)
        width = int(lengths.max()) if len(lengths) else 0
        attention_mask = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
        ids = ids[:, :width].masked_fill(~attention_mask, self.pad_id)
        return {"input_ids": ids.cpu(), "attention_mask": attention_mask.long().cpu()}
