"""Networks: x0 predictors for the UDM processes and model loading."""

from textdiff.models.denoiser import (
    DenoiserConfig,
    DenoiserModel,
    DenoiserPredictor,
    MaskedLMPredictor,
    check_safetensors_dir,
    load_masked_lm,
)

__all__ = ["DenoiserConfig", "DenoiserModel", "DenoiserPredictor", "MaskedLMPredictor", "check_safetensors_dir",
           "load_masked_lm"]
