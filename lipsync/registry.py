"""Swappable parts by name: a class decorator fills a registry, a factory looks names up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes of one kind (generators, landmarkers) under the names jobs ask for."""

    def __init__(self) -> None:
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make a class available under ``name`` (set as its ``name``)."""

        def add(cls: T) -> T:
            cls.name = name
            self._classes[name] = cls
            return cls

        return add

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __getitem__(self, name: str) -> T:
        return self._classes[name]
