"""Phase 3: lip generators behind one interface, chosen by name from a registry."""

from __future__ import annotations

from ..errors import InvalidOptionError
from ..registry import Registry
from .base import INTENSITIES, PRECISIONS, FaceFrame, Generator, SourceVideo

_REGISTRY: Registry[type[Generator]] = Registry()


register = _REGISTRY.register  # class decorator: @register("name")


def available() -> list[str]:
    """Names of the built-in generators (they need no weights)."""
    return _REGISTRY.names()


def known() -> list[str]:
    """Every name a job may ask for: the built-in generators, then the ONNX models of the
    manifest (``e2``, ``e3``: their weights are the user's to import) and the user's own."""
    from ..models import model_names

    return [*available(), *(name for name in model_names() if name not in _REGISTRY)]


def check_options(intensity: int = 2, batch_size: int = 16, precision: str = "auto") -> None:
    """Refuse generator options no generator takes (raises InvalidOptionError)."""
    if intensity not in INTENSITIES:
        raise InvalidOptionError(f"intensity must be 1, 2 or 3, got {intensity!r}")
    if batch_size < 1:
        raise InvalidOptionError(f"batch_size must be at least 1, got {batch_size!r}")
    if precision not in PRECISIONS:
        allowed = ", ".join(PRECISIONS)
        raise InvalidOptionError(f"precision must be one of {allowed}, got {precision!r}")


def get_generator(
    name: str, *, intensity: int = 2, batch_size: int = 16, precision: str = "auto"
) -> Generator:
    """A fresh generator instance for one job.

    ``batch_size`` (crops per model run) and ``precision`` (``auto``, ``fp32``, ``fp16``)
    concern the ONNX models; the built-in generators have no model to run.
    """
    check_options(intensity, batch_size, precision)
    if name in _REGISTRY:
        return _REGISTRY[name](intensity=intensity)
    if name in known():
        from ..models import model_contract, require_model
        from .onnx import OnnxGenerator

        # Missing weights are the user's to import: say so before anything else.
        status = require_model(name)
        return OnnxGenerator(
            name,
            status,
            model_contract(name),
            intensity=intensity,
            batch_size=batch_size,
            precision=precision,
        )
    raise InvalidOptionError(f"unknown model {name!r}; known: {', '.join(known())}")


from . import e1  # noqa: E402,F401  (registers the built-in generator)

__all__ = [
    "INTENSITIES",
    "PRECISIONS",
    "FaceFrame",
    "Generator",
    "SourceVideo",
    "available",
    "check_options",
    "get_generator",
    "known",
    "register",
]
