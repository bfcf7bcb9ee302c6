"""Phase 3: lip generators behind one interface, chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidOptionError
from .base import INTENSITIES, FaceFrame, Generator, SourceVideo

_REGISTRY: dict[str, type[Generator]] = {}

# Names the hosted API accepts for neural models: ONNX files the user imports (the weights
# are their authors', not ours), run by generators/onnx.py.
_RESERVED = ("e2", "e3")


def register(name: str) -> Callable[[type[Generator]], type[Generator]]:
    """Class decorator: make a generator available under ``name``."""

    def add(cls: type[Generator]) -> type[Generator]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return add


def available() -> list[str]:
    """Names of the generators that can run in this installation."""
    return sorted(_REGISTRY)


def get_generator(name: str, *, intensity: int = 2) -> Generator:
    """A fresh generator instance for one job."""
    if intensity not in INTENSITIES:
        raise InvalidOptionError(f"intensity must be 1, 2 or 3, got {intensity!r}")
    if name in _REGISTRY:
        return _REGISTRY[name](intensity=intensity)
    if name in _RESERVED:
        from ..models import load_manifest, require_model
        from .onnx import OnnxGenerator

        # Missing weights are the user's to import: say so before anything else.
        status = require_model(name)
        # TODO(#4): user-registered ONNX models by their own names, with their contracts.
        return OnnxGenerator(name, status, load_manifest()[name].contract, intensity=intensity)
    raise InvalidOptionError(f"unknown model {name!r}; available: {', '.join(available())}")


from . import e1  # noqa: E402,F401  (registers the built-in generator)

__all__ = [
    "INTENSITIES",
    "FaceFrame",
    "Generator",
    "SourceVideo",
    "available",
    "get_generator",
    "register",
]
