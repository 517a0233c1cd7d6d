"""Label-conditional masked-diffusion training for classifier-free guidance (docs/guidance.md#classifier-free-guidance).

A sentence becomes one right-padded row ``[CLS] <cond> body [SEP] [PAD] …`` with the condition token at
:data:`CONDITION_POSITION`; ``[CLS]``, ``<cond>`` and ``[SEP]`` are protected (never masked, never scored) and padding
is neither corrupted nor attended to. :class:`ConditionalTrainer` is the masking :class:`Trainer` (same loss, time
draws, evaluation and checkpoints, docs/training.md#loss) on such rows; its batches replace the condition by the null
token with probability ``p_uncond`` (:class:`ConditionDropStream`), which is what lets one network give both
``q_θ(· | x_t, y)`` and ``q_θ(· | x_t, φ)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from textdiff import checks
from textdiff.rng import make_generator, uniform, worker_seed
from textdiff.training.data import BatchStream, PackingSpec, encode_function
from textdiff.training.labeled import DATA, TASKS, load_labeled
from textdiff.training.trainer import TrainConfig, Trainer
from textdiff.udm.process import Batch

#: condition name -> token; ``null`` is the unconditional token φ
CONDITION_TOKENS: dict[str, str] = {"null": "[unused0]", "positive": "[unused1]", "negative": "[unused2]",
                                    "subjective": "[unused3]", "objective": "[unused4]"}
CONDITION_POSITION = 1
BODY_LEN = 64
P_UNCOND = 0.1
#: how the condition of an evaluation row is chosen from its true label
CONDITION_MODES = ("true", "null", "wrong")


def condition_ids(tokenizer) -> dict[str, int]:
    """Condition name -> token id in ``tokenizer``; ``ValueError`` if a condition token is not a single vocab entry."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in CONDITION_TOKENS.values() if token not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the condition token(s) {missing}; use a bert-base-uncased vocabulary")
    return {name: vocab[token] for name, token in CONDITION_TOKENS.items()}


def encode_rows(tokenizer, texts: Sequence[str], conditions: Sequence[int] | None,
                body_len: int = BODY_LEN) -> torch.Tensor:
    """``[N, L]`` long rows ``[CLS] <cond> body [SEP]`` right-padded with ``[PAD]`` to the longest row; the body is
    truncated to ``body_len`` word pieces. ``conditions=None`` gives unconditional rows ``[CLS] body [SEP]``."""
    checks.positive_int("body_len", body_len)
    if conditions is not None and len(conditions) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(conditions)} conditions")
    prefixes = [[tokenizer.cls_token_id] + ([] if conditions is None else [int(conditions[i])])
                for i in range(len(texts))]
    rows = [p + ids[:body_len] + [tokenizer.sep_token_id]
            for p, ids in zip(prefixes, encode_function(tokenizer)(list(texts)))]
    out = torch.full((len(rows), max(map(len, rows), default=0)), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def labeled_rows(tokenizer, split: str, mode: str = "true", tasks: Sequence[str] = tuple(TASKS),
                 body_len: int = BODY_LEN, folder: str | Path = DATA) -> torch.Tensor:
    """Rows (:func:`encode_rows`) of ``split`` of every task in ``tasks``, conditioned on the true label, the null
    condition or the wrong label of the same task (``mode``); ``mode="none"`` gives unconditional rows."""
    checks.one_of("mode", mode, (*CONDITION_MODES, "none"))
    ids = condition_ids(tokenizer)
    texts, conditions = [], []
    for task in tasks:
        data = load_labeled(task, split, folder)
        for text, target in zip(data.texts, data.targets):
            label = data.labels[target] if mode == "true" else data.labels[1 - target] if mode == "wrong" else "null"
            texts.append(text)
            conditions.append(ids[label])
    return encode_rows(tokenizer, texts, None if mode == "none" else conditions, body_len)


def as_dataset(rows: torch.Tensor):
    """A map-style ``datasets`` table with one ``input_ids`` column, as :class:`Trainer` and :class:`BatchStream`
    read it."""
    import datasets

    return datasets.Dataset.from_dict({"input_ids": rows.tolist()}).with_format("torch")


def padded_batch(ids: torch.Tensor, pad_id: int, prefix_len: int) -> Batch:
    """The :class:`Batch` of right-padded rows, trimmed to the longest row: padding is not attended to, the first
    ``prefix_len`` tokens (``[CLS]``, condition) and the last real token (``[SEP]``) are protected."""
    real = ids != pad_id
    lengths = real.sum(-1)
    ids, real = ids[:, : int(lengths.max())], real[:, : int(lengths.max())]
    position = torch.arange(ids.shape[1], device=ids.device)
    protected = (position < prefix_len) | (position == lengths[:, None] - 1)
    return Batch(ids, real, protected & real)


class ConditionDropStream(BatchStream):
    """A :class:`BatchStream` whose batches have their condition (column :data:`CONDITION_POSITION`) replaced by
    ``null_id`` independently with probability ``p_uncond``; the draws are a function of the seed and the data
    position only, so resume stays exact."""

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world_size: int, null_id: int,
                 p_uncond: float = P_UNCOND):
        super().__init__(dataset, batch_size, seed, rank, world_size)
        self.null_id = null_id
        self.p_uncond = checks.finite_float("p_uncond", p_uncond, low=0.0, high=1.0)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for batch in super().__iter__():
            pos = self.position  # already advanced past this batch: unique per batch
            gen = make_generator(worker_seed(self.seed * 1_000_003 + pos.epoch, pos.offset * self.world_size
                                             + self.rank))
            drop = uniform((len(batch),), gen) < self.p_uncond
            batch = batch.clone()
            batch[drop, CONDITION_POSITION] = self.null_id
            yield batch


class ConditionalTrainer(Trainer):
    """:class:`Trainer` (objective ``mask``) on right-padded rows (:func:`encode_rows`, as :func:`as_dataset` tables)
    of a BERT-style ``tokenizer``. ``conditional=True``: rows carry a condition, ``[CLS] <cond>`` is protected and
    training batches drop the condition with probability ``p_uncond``; ``conditional=False``: unconditional rows
    ``[CLS] body [SEP]`` (a plain MLM, e.g. to evaluate the unconditional reference)."""

    def __init__(self, model: nn.Module, config: TrainConfig, tokenizer, train_rows, out_dir: str | Path,
                 eval_rows=None, *, conditional: bool = True, p_uncond: float = P_UNCOND,
                 device: str | torch.device = "cpu", log=print, record=None):
        if config.objective != "mask":
            raise ValueError(f"ConditionalTrainer trains the masking objective, got objective={config.objective!r}")
        null_id = condition_ids(tokenizer)["null"]
        prefix = (tokenizer.cls_token_id, null_id) if conditional else (tokenizer.cls_token_id,)
        spec = PackingSpec(len(train_rows[0]["input_ids"]), prefix, (tokenizer.sep_token_id,))
        super().__init__(model, config, train_rows, spec, tokenizer.mask_token_id, out_dir, eval_rows, device,
                         tokenizer, log, record)
        self.pad_id = tokenizer.pad_token_id
        if conditional:
            self.stream = ConditionDropStream(train_rows, config.batch_size, config.seed, self.rank,
                                              self.world_size, null_id, p_uncond)

    def _batch(self, ids: torch.Tensor) -> Batch:
        return padded_batch(ids.to(self.device), self.pad_id, len(self.packing.prefix))


def save_condition_table(config) -> None:
    """Record the condition tokens and their position on an HF ``config`` (saved with ``save_pretrained``)."""
    config.condition_tokens = dict(CONDITION_TOKENS)
    config.condition_position = CONDITION_POSITION


__all__ = ["BODY_LEN", "CONDITION_MODES", "CONDITION_POSITION", "CONDITION_TOKENS", "ConditionDropStream",
           "ConditionalTrainer", "P_UNCOND", "as_dataset", "condition_ids", "encode_rows",
           "labeled_rows", "padded_batch", "save_condition_table"]
