"""Forward processes by name (``mask``, ``replace_any``, ``replace_diff``, ``delete``) for the CLI and recipes."""

from __future__ import annotations

from textdiff.udm.process import ForwardProcess

PROCESS_NAMES = ("mask", "replace_any", "replace_diff", "delete")


def make_process(name: str, *, mask_id: int | None = None, vocab_size: int | None = None, schedule="linear",
                 corrector: str | None = None, **options) -> ForwardProcess:
    """Build a process; ``mask`` needs ``mask_id``, ``replace_*`` need ``vocab_size``; ``options`` go to the class."""
    if name not in PROCESS_NAMES:
        raise ValueError(f"process must be one of {PROCESS_NAMES}, got {name!r}")
    if corrector is not None:
        options["corrector"] = corrector
    if name == "mask":
        from textdiff.udm.masking import MaskingProcess

        if mask_id is None:
            raise ValueError("process 'mask' needs mask_id (the tokenizer's [MASK] id)")
        return MaskingProcess(mask_id, schedule, **options)
    if name == "delete":
        from textdiff.udm.deletion import DeletionProcess

        if mask_id is None:
            raise ValueError("process 'delete' needs mask_id (the placeholder id EXPAND writes)")
        return DeletionProcess(mask_id, schedule=schedule, **options)
    from textdiff.udm.replacement import PROCESSES

    if vocab_size is None:
        raise ValueError(f"process {name!r} needs vocab_size")
    return PROCESSES[name](vocab_size, schedule, **options)
