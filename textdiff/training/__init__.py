"""Training x0 predictors: packed text datasets, the training loop, typed records and checkpoints with exact resume
(docs/training.md)."""

from textdiff.training.checkpoint import CorruptCheckpoint
from textdiff.training.data import (
    BatchStream,
    DataPosition,
    PackingSpec,
    check_text_file,
    encode_function,
    load_packed_dataset,
)
from textdiff.training.records import Evaluation, JsonLog, Loss, TrainingDiverged
from textdiff.training.trainer import TrainConfig, Trainer

__all__ = ["BatchStream", "CorruptCheckpoint", "DataPosition", "Evaluation", "JsonLog", "Loss", "PackingSpec",
           "TrainConfig", "Trainer", "TrainingDiverged", "check_text_file", "encode_function", "load_packed_dataset"]
