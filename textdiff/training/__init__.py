"""Training x0 predictors: packed text datasets and the training loop (checkpoints, resume, DDP)."""

from textdiff.training.data import BatchStream, DataPosition, PackingSpec, encode_function, load_packed_dataset
from textdiff.training.trainer import TrainConfig, Trainer

__all__ = ["BatchStream", "DataPosition", "PackingSpec", "TrainConfig", "Trainer", "encode_function",
           "load_packed_dataset"]
