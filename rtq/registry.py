"""Named registries filled by decorators: graph passes, metrics, pipeline stages.

One small class so that every "register under a name, look up with a one-line error listing the
known names" in rtq behaves the same way, as modelopt's mode registry does for its modes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from rtq.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind (`kind` names it in errors), registered once each."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T:
        """The entry `name`, or a `UserError` listing the known names."""
        if name not in self._entries:
            raise UserError(f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self._entries[name]
