"""Named registries for the pluggable parts (explainers, simulators, scorers)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from autointerp.errors import UserError

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """Factories by name; `register` is a decorator, an unknown name a UserError listing the known ones."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(factory: F) -> F:
            self._items[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> F:
        self.check([name])
        return self._items[name]

    def check(self, names: Iterable[str]) -> None:
        """UserError naming the first unknown name and the registered ones."""
        bad = [n for n in names if n not in self._items]
        if bad:
            raise UserError(f"Unknown {self.kind} {bad[0]!r}; use {', '.join(self._items)}.")
