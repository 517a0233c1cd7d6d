"""Forward processes by name, registered by decorator (docs/extending.md#a-new-forward-process).

``@register_process("name")`` on a :class:`~textdiff.udm.process.ForwardProcess` subclass makes it buildable by
:func:`make_process` and a choice of ``textdiff sample --process``; nothing else needs editing.
"""

from __future__ import annotations

from textdiff.registry import Registry
from textdiff.udm.process import ForwardProcess

PROCESSES = Registry("process")
#: class decorator registering a forward process under a name (also set as its ``name`` attribute)
register_process = PROCESSES.register


def process_names() -> tuple[str, ...]:
    """Names of the registered processes, in registration order."""
    return tuple(PROCESSES)


def make_process(name: str, *, mask_id: int | None = None, vocab_size: int | None = None, schedule="linear",
                 corrector: str | None = None, **options) -> ForwardProcess:
    """Build the process ``name`` for a vocabulary (``mask_id``, ``vocab_size``); ``options`` go to the class."""
    process = PROCESSES.get_checked(name)
    if corrector is not None:
        options["corrector"] = corrector
    return process.for_vocabulary(mask_id=mask_id, vocab_size=vocab_size, schedule=schedule, **options)
