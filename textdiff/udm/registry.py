"""Forward processes by name, registered by decorator (docs/extending.md#a-new-forward-process).

``@register_process("name")`` on a :class:`~textdiff.udm.process.ForwardProcess` subclass makes it buildable by
:func:`make_process` and a choice of ``textdiff sample --process``; nothing else needs editing.
"""

from __future__ import annotations

from collections.abc import Callable

from textdiff import checks
from textdiff.udm.process import ForwardProcess

PROCESSES: dict[str, type[ForwardProcess]] = {}


def register_process(name: str) -> Callable[[type[ForwardProcess]], type[ForwardProcess]]:
    """Class decorator registering a forward process under ``name`` (also set as its ``name`` attribute)."""

    def decorate(cls: type[ForwardProcess]) -> type[ForwardProcess]:
        if name in PROCESSES and PROCESSES[name] is not cls:
            raise ValueError(f"a process named {name!r} is already registered ({PROCESSES[name].__name__})")
        cls.name = name
        PROCESSES[name] = cls
        return cls

    return decorate


def process_names() -> tuple[str, ...]:
    """Names of the registered processes, in registration order."""
    return tuple(PROCESSES)


def make_process(name: str, *, mask_id: int | None = None, vocab_size: int | None = None, schedule="linear",
                 corrector: str | None = None, **options) -> ForwardProcess:
    """Build the process ``name`` for a vocabulary (``mask_id``, ``vocab_size``); ``options`` go to the class."""
    checks.one_of("process", name, PROCESSES)
    if corrector is not None:
        options["corrector"] = corrector
    return PROCESSES[name].for_vocabulary(mask_id=mask_id, vocab_size=vocab_size, schedule=schedule, **options)
