"""Where the default assets live: the masked LM, the insertion model and the unigram tokenizer ship inside the package
(``textdiff/assets``), each overridable by an environment variable (docs/design.md#assets-and-loading). No heavy
imports, so the CLI can name defaults without loading torch models."""

from __future__ import annotations

import os
from pathlib import Path

from textdiff import checks

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULTS = {
    "mlm": ("TEXTDIFF_MLM", ASSETS / "models" / "minilm-mlm"),
    "insertion": ("TEXTDIFF_INSERTION", ASSETS / "models" / "insertion"),
    "tokenizer": ("TEXTDIFF_TOKENIZER", ASSETS / "tokenizers" / "en-unigram-8k.model"),
    "mlm-cond": ("TEXTDIFF_MLM_COND", ASSETS / "models" / "minilm-mlm-cond"),
    "classifier-sentiment": ("TEXTDIFF_CLASSIFIER_SENTIMENT", ASSETS / "models" / "classifier-sentiment"),
    "classifier-subjectivity": ("TEXTDIFF_CLASSIFIER_SUBJECTIVITY", ASSETS / "models" / "classifier-subjectivity"),
}
#: guidance tasks with a shipped classifier (``classifier-<task>``) and their labels in class-index order
GUIDANCE_TASKS: dict[str, tuple[str, ...]] = {
    "sentiment": ("negative", "positive"),
    "subjectivity": ("objective", "subjective"),
}
#: every shipped guidance label -> its task
LABEL_TASK: dict[str, str] = {label: task for task, labels in GUIDANCE_TASKS.items() for label in labels}


def default_asset(kind: str) -> Path:
    """The default asset of ``kind`` (a key of ``DEFAULTS``): its override variable, else the copy
    shipped in the package; ``FileNotFoundError`` saying which it was if it is missing."""
    checks.one_of("kind", kind, DEFAULTS)
    variable, shipped = DEFAULTS[kind]
    path = Path(os.environ[variable]) if os.environ.get(variable) else shipped
    if not path.exists():
        origin = f"${variable}" if os.environ.get(variable) else "the installed package"
        raise FileNotFoundError(f"the default {kind} is missing at {path} (from {origin})")
    return path
