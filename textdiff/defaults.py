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
}


def default_asset(kind: str) -> Path:
    """The default asset of ``kind`` (``mlm``, ``insertion``, ``tokenizer``): its override variable, else the copy
    shipped in the package; ``FileNotFoundError`` saying which it was if it is missing."""
    checks.one_of("kind", kind, DEFAULTS)
    variable, shipped = DEFAULTS[kind]
    path = Path(os.environ[variable]) if os.environ.get(variable) else shipped
    if not path.exists():
        origin = f"${variable}" if os.environ.get(variable) else "the installed package"
        raise FileNotFoundError(f"the default {kind} is missing at {path} (from {origin})")
    return path
