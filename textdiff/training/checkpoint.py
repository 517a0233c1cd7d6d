"""Checkpoint directories of a training run: atomic writes, complete reads, and the order resume tries them in
(docs/training.md, "Checkpoints and resume").

A checkpoint ``checkpoint-NNNNNNNN/`` holds the model (safetensors via ``save_pretrained``), the tokenizer files,
``optimizer.pt`` (optimizer and scheduler state, tensors and plain containers only, read back with
``weights_only=True``: nothing is ever unpickled) and ``trainer_state.json`` (step, data position, RNG state,
config). It is written into ``checkpoint-NNNNNNNN.tmp/`` and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdiff.models.weights import check_safetensors_dir

STATE_KEYS = ("step", "data_epoch", "data_offset", "rng")


class CorruptCheckpoint(ValueError):
    """A checkpoint directory that is incomplete or unreadable (as opposed to one that does not fit the model)."""


@dataclass
class CheckpointState:
    """Everything a checkpoint holds, read completely before any of it is applied."""

    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    meta: dict[str, Any]
    rng: torch.Tensor


def atomic_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def write_checkpoint(final: Path, model, tokenizer, optimizer: torch.optim.Optimizer, scheduler, meta: dict) -> Path:
    """Write a checkpoint into ``final.tmp`` and rename it to ``final`` (replacing an older one of that name)."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    atomic_json(tmp / "trainer_state.json", meta)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def read_checkpoint(path: str | Path, device: torch.device) -> CheckpointState:
    """All of checkpoint ``path``; :class:`CorruptCheckpoint` naming the file when any part is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise CorruptCheckpoint(f"checkpoint {path} does not exist")
    try:
        check_safetensors_dir(path)
        model: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            model.update(load_file(f, device=str(device)))
    except (ValueError, OSError, SafetensorError) as err:
        raise CorruptCheckpoint(f"checkpoint {path}: {err}") from None
    try:
        opt = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        optimizer, scheduler = opt["optimizer"], opt["scheduler"]
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
        raise CorruptCheckpoint(f"checkpoint {path}: optimizer.pt is unreadable ({type(err).__name__}: {err})") \
            from None
    try:
        meta = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        missing = [k for k in STATE_KEYS if k not in meta]
        if missing:
            raise KeyError(", ".join(missing))
        if not all(isinstance(meta[k], int) and meta[k] >= 0 for k in ("step", "data_epoch", "data_offset")):
            raise TypeError("step, data_epoch and data_offset must be integers >= 0")
        rng = torch.tensor(meta["rng"]["torch"], dtype=torch.uint8)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CorruptCheckpoint(f"checkpoint {path}: trainer_state.json is unreadable ({type(err).__name__}: {err})") \
            from None
    return CheckpointState(path, model, optimizer, scheduler, meta, rng)


def checkpoint_step(path: Path) -> int:
    """The step in a ``checkpoint-NNNNNNNN`` name, -1 for any other name."""
    digits = path.name.removeprefix("checkpoint-")
    return int(digits) if digits != path.name and digits.isdigit() else -1


def checkpoints(out_dir: Path) -> list[Path]:
    """The ``checkpoint-NNNNNNNN`` directories of ``out_dir`` (not the ``.tmp`` ones being written), oldest first."""
    return sorted((p for p in out_dir.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) >= 0),
                  key=checkpoint_step)


def resume_candidates(out_dir: Path) -> list[Path]:
    """Checkpoints of ``out_dir`` in the order resume tries them: the one ``latest.json`` names, then the others,
    newest first (a missing or unreadable ``latest.json`` is skipped)."""
    found = checkpoints(out_dir)[::-1]
    try:
        named = out_dir / json.loads((out_dir / "latest.json").read_text(encoding="utf-8"))["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return found
    return [named] + [p for p in found if p != named] if named in found else found
