"""Named registries filled by decorators: the one mechanism behind every extension point (docs/extending.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textdiff import checks

T = TypeVar("T")


class Registry(dict):
    """``name -> object`` for one kind of extension (``process``, ``proposal``, ``method`` …), in registration order."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (a class also gets ``name`` as its attribute);
        a second, different object under the same name is an error."""

        def decorate(obj: T) -> T:
            if name in self and self[name] is not obj:
                raise ValueError(f"a {self.kind} named {name!r} is already registered ({self[name].__name__})")
            if isinstance(obj, type):
                obj.name = name
            self[name] = obj
            return obj

        return decorate

    def get_checked(self, name: str):
        """The object registered under ``name``; ``ValueError`` listing the names otherwise."""
        return self[checks.one_of(self.kind, name, self)]
