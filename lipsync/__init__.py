"""lipsync: local, offline visual dubbing.

``lipsync.dub(video, audio)`` re-renders the speaker's mouth to follow a new voice track and
leaves the rest of every frame untouched. The four phases it composes are usable alone:
:mod:`lipsync.scenes`, :mod:`lipsync.faces`, :mod:`lipsync.generators`, :mod:`lipsync.export`.
The library logs to the ``lipsync`` logger (silent unless the application configures logging),
never prints, and raises :class:`LipsyncError` subclasses carrying the hosted API's codes.
"""

from __future__ import annotations

import logging

from .errors import (
    DataCorruptedError,
    InternalError,
    InvalidFormatError,
    InvalidOptionError,
    LimitExceededError,
    LipsyncError,
    MissingDependencyError,
    NoFaceFoundError,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_PIPELINE = ("DubOptions", "DubResult", "dub")
# The sync evaluator lives in ``lipsync.evaluation``: a submodule named ``evaluate`` would
# replace the function of that name on the package as soon as it was imported.
_EVALUATION = ("SyncReport", "evaluate")


def __getattr__(name: str):
    # The pipeline pulls in PyAV, MediaPipe and numba; load it on first use so that
    # ``import lipsync.kernels`` or ``lipsync.errors`` stays cheap.
    if name in _PIPELINE:
        from . import pipeline

        return getattr(pipeline, name)
    if name in _EVALUATION:
        from . import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'lipsync' has no attribute {name!r}")


__all__ = [
    "DataCorruptedError",
    "DubOptions",
    "DubResult",
    "InternalError",
    "InvalidFormatError",
    "InvalidOptionError",
    "LimitExceededError",
    "LipsyncError",
    "MissingDependencyError",
    "NoFaceFoundError",
    "SyncReport",
    "__version__",
    "dub",
    "evaluate",
]
