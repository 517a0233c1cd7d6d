"""The deletion process and its reverse insertion chain (docs/deletion.md).

Forward: each corruptible token is deleted independently with probability ``1 − α(t)``, so ``x_1 = []`` and
protected tokens (keywords) are never deleted. Reverse: an insertion predictor draws slot counts, then the inserted
tokens; the corrector keeps every survivor and each inserted token with probability ``β(s, t)``.

Modules, one concept each: ``ragged`` (EXPAND / COMPACT on padded batches), ``alignment`` (embeddings of ``x_t``
in ``x0``), ``process`` (the forward process, corrector and training targets), ``insertion`` (the predictor
protocol and the network-backed predictor), ``sampling`` (the reverse chain), ``likelihood`` (ELBO bound, PLL).
"""

from textdiff.compat import moved
from textdiff.udm.deletion.alignment import count_embeddings, sample_embedding
from textdiff.udm.deletion.insertion import (
    FILL_MODES,
    InsertionOutput,
    ModelInsertionPredictor,
    ModelPrediction,
    predictor_for,
    process_for,
    sample_slot_counts,
)
from textdiff.udm.deletion.likelihood import elbo_upper_bound, pseudo_log_likelihood
from textdiff.udm.deletion.process import DeletionProcess, TrainingTargets, training_targets
from textdiff.udm.deletion.ragged import Expansion, Reindex, compact, expand, slot_counts
from textdiff.udm.deletion.sampling import decode, sample_delete, sample_sentences

__all__ = [
    "FILL_MODES", "DeletionProcess", "Expansion", "InsertionOutput", "ModelInsertionPredictor", "ModelPrediction",
    "Reindex", "TrainingTargets", "compact", "count_embeddings", "decode", "elbo_upper_bound", "expand",
    "predictor_for", "process_for", "pseudo_log_likelihood", "sample_delete", "sample_embedding",
    "sample_sentences", "sample_slot_counts", "slot_counts", "training_targets",
]

__getattr__ = moved(__name__, {"generate_from_keywords": "textdiff.keywords.diffusion",
                                   "keyword_orders": "textdiff.keywords.diffusion",
                                   "keyword_start": "textdiff.keywords.diffusion"})
