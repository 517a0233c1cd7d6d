"""Networks and their loaders: x0 predictors for the UDM processes (a RoPE denoiser, any HF masked LM, the
insertion model of the deletion process) and one loader per model kind (:mod:`textdiff.models.hub`)."""

from textdiff.models.classifier import SequenceClassifier
from textdiff.models.denoiser import DenoiserConfig, DenoiserModel, DenoiserPredictor, MaskedLMPredictor
from textdiff.models.hub import (
                                 Conditions,
                                 default_asset,
                                 load_classifier,
                                 load_conditional,
                                 load_denoiser,
                                 load_insertion,
                                 load_lm,
                                 load_mlm,
                                 resolve,
)
from textdiff.models.insertion import InsertionConfig, InsertionModel
from textdiff.models.layout import for_few_rows
from textdiff.models.sentence_encoder import SentenceEncoder
from textdiff.models.weights import check_safetensors_dir

#: earlier names, kept so user scripts keep working
load_masked_lm = load_mlm
load_insertion_model = load_insertion

__all__ = ["Conditions", "DenoiserConfig", "DenoiserModel", "DenoiserPredictor", "InsertionConfig", "InsertionModel",
           "MaskedLMPredictor", "SentenceEncoder", "SequenceClassifier", "check_safetensors_dir", "default_asset",
           "for_few_rows", "load_classifier", "load_conditional", "load_denoiser", "load_insertion",
           "load_insertion_model", "load_lm", "load_masked_lm", "load_mlm", "resolve"]
