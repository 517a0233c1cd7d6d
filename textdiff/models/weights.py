"""Safetensors-only weight files: the one check every loader runs before a model is built (docs/design.md,
"Assets and loading"). Pickle files are never opened, truncated or corrupt files give a ``ValueError`` naming them."""

from __future__ import annotations

from pathlib import Path

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack",
                  "optimizer.bin")
CONVERT_HINT = ("convert it once, in a process you trust, with `model.save_pretrained(dir, safe_serialization=True)` "
                "or `safetensors.torch.save_file(state_dict, 'model.safetensors')`")


def check_safetensors_file(path: str | Path) -> Path:
    """``path`` if it is a complete safetensors file; ``ValueError`` naming it otherwise (header read only)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} is not a safetensors file; pickle weights are refused (never unpickled): "
                         f"{CONVERT_HINT}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    return path


def check_safetensors_dir(path: str | Path) -> Path:
    """A local weights file or model directory whose every weight file is an intact safetensors file.

    A directory with pickle weights only (``pytorch_model.bin`` …) is refused with a message on how to convert.
    """
    path = Path(path)
    if path.is_file():
        return check_safetensors_file(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        found = [name for name in PICKLE_WEIGHTS if (path / name).exists()]
        if found:
            raise ValueError(f"{path}: found {found} but no model.safetensors; pickle weights are refused (never "
                             f"unpickled): {CONVERT_HINT}")
        raise ValueError(f"{path}: no model.safetensors in this directory")
    for file in files:
        check_safetensors_file(file)
    return path
