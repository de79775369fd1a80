"""Name -> object tables: the one pattern behind every string the user can name.

A `Registry` maps names to entries (path classes, solvers, densities, methods, models...).
Entries are given at construction or added with the `register` decorator beside their
definition; a lookup of an unknown name raises a `ValueError` that names the table's field
and every choice, so each table's error reads the same:

    ACTIVATIONS = Registry("activation", {"relu": nnx.relu, ...})
    ACTIVATIONS["relu"]          # -> nnx.relu
    ACTIVATIONS["bogus"]         # ValueError: Unknown activation 'bogus'; choose one of ['relu', ...]

    LAYERS = Registry("layer")          # or filled beside each definition:
    @LAYERS.register("dense")
    class Dense: ...

Names are case-sensitive unless `fold_case=True` (then stored and looked up lower-case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-mostly mapping from names to entries whose failed lookups list the choices.

    Args:
        what: how errors name a key, e.g. "solver" or "config.method".
        entries: initial name -> entry pairs (in the order the choices are listed).
        fold_case: match names case-insensitively.
    """

    def __init__(self, what: str, entries: Mapping[str, T] | None = None, *, fold_case: bool = False):
        self.what = what
        self.fold_case = fold_case
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.add(name, entry)

    def _key(self, name: str) -> str:
        return name.lower() if self.fold_case else name

    def add(self, name: str, entry: T) -> T:
        """Add one entry; a name already taken is a programming error."""
        key = self._key(name)
        if key in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice.")
        self._entries[key] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """A decorator that adds the decorated class or function under `name`."""
        return lambda entry: self.add(name, entry)

    def __getitem__(self, name: str) -> T:
        if not isinstance(name, str) or self._key(name) not in self._entries:
            raise ValueError(f"Unknown {self.what} {name!r}; choose one of {self.names}.")
        return self._entries[self._key(name)]

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        return self._entries.get(self._key(name), default) if isinstance(name, str) else default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names})"
