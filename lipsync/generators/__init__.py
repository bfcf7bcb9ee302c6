"""Phase 3: lip generators behind one interface, chosen by name from a registry."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidOptionError, MissingDependencyError
from .base import INTENSITIES, FaceFrame, Generator, SourceVideo

_REGISTRY: dict[str, type[Generator]] = {}

# Names the hosted API accepts whose neural models are not part of this build yet.
_RESERVED = {
    "e2": "a Wav2Lip-compatible ONNX model (issue #4)",
    "e3": "a high-resolution Wav2Lip-compatible ONNX model (issue #4)",
}


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
        from ..models import require_model

        # Missing weights are the user's to import: say so before anything else.
        require_model(name)
        # TODO(#4): load the ONNX generators e2/e3 here.
        raise MissingDependencyError(
            f"model {name!r} is installed, but running {_RESERVED[name]} is not available yet",
            hint="use model 'e1', the built-in renderer",
        )
    raise InvalidOptionError(f"unknown model {name!r}; available: {', '.join(available())}")


from . import e1  # noqa: E402,F401  (registers the built-in generator)

__all__ = ["FaceFrame", "Generator", "SourceVideo", "available", "get_generator", "register"]
