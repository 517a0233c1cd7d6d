"""Tokenizer file formats: one module per format in this package, each registering a reader with :func:`register`.

A reader turns a file into the :class:`~textdiff.tokenization.vocab.Vocab` and
:class:`~textdiff.tokenization.normalization.TextPipeline` of a ``UnigramTokenizer``. Modules are discovered at
import, so adding a format means adding one module here::

    @register(".ext", names=("tokenizer.ext",), priority=3)
    def read_ext(path: Path) -> tuple[Vocab, TextPipeline]: ...

``names`` are the file names :func:`find` looks for in a model directory (globs allowed); formats with a lower
``priority`` are looked for first.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textdiff.tokenization.normalization import TextPipeline
from textdiff.tokenization.vocab import Vocab

Reader = Callable[[Path], tuple[Vocab, TextPipeline]]


@dataclass(frozen=True)
class Format:
    suffix: str
    names: tuple[str, ...]
    priority: int
    read: Reader


FORMATS: list[Format] = []


def register(suffix: str, names: tuple[str, ...] = (), priority: int = 10) -> Callable[[Reader], Reader]:
    """Decorator: ``read(path)`` reads files ending in ``suffix``; ``names`` are looked for in directories."""

    def add(read: Reader) -> Reader:
        FORMATS.append(Format(suffix, names, priority, read))
        FORMATS.sort(key=lambda fmt: fmt.priority)
        return read

    return add


def read(path: str | os.PathLike) -> tuple[Vocab, TextPipeline]:
    """Read a tokenizer file with the reader registered for its suffix (``ValueError`` for an unknown suffix)."""
    path = Path(path)
    for fmt in FORMATS:
        if path.name.endswith(fmt.suffix):
            return fmt.read(path)
    known = ", ".join(fmt.suffix for fmt in FORMATS)
    raise ValueError(f"{path}: unknown tokenizer format (known file endings: {known})")


def find(directory: str | os.PathLike) -> Path:
    """The tokenizer file of a model directory: the first registered name present (``FileNotFoundError`` if none)."""
    directory = Path(directory)
    for fmt in FORMATS:
        for name in fmt.names:
            found = sorted(directory.glob(name))
            if found:
                return found[0]
    names = ", ".join(name for fmt in FORMATS for name in fmt.names)
    raise FileNotFoundError(f"no tokenizer file ({names}) in {directory}")


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
