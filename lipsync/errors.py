"""The exception hierarchy.

Every error the library raises on purpose is a :class:`LipsyncError`. Each subclass carries
the code and name that the hosted visual-dubbing API uses for the same failure, so the CLI,
the REST shim and a caller's own code can all report it the same way.
"""

from __future__ import annotations


class LipsyncError(Exception):
    """Base class: a failure with a stable error code and a message meant for a person."""

    code = "ERR_003"
    name = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def to_dict(self) -> dict[str, str]:
        """The error as the hosted API reports it in a response's ``data`` field."""
        return {"error_code": self.code, "error_name": self.name, "message": str(self)}


class InternalError(LipsyncError):
    """Something unexpected broke inside lipsync (a bug, or the machine ran out of room)."""


class MissingDependencyError(InternalError):
    """An optional package is needed for this feature; the message names the install command."""


class ModelNotInstalledError(MissingDependencyError):
    """A named model's weights are not installed; the hint says how to import them."""


class NoFaceFoundError(LipsyncError):
    """No face was found in any scene of the video, so there is nothing to dub."""

    code = "ERR_004"
    name = "NO_FACE_FOUND"


class InsufficientCreditsError(LipsyncError):
    """A job needs more seconds than the API key has left of its quota (the REST shim)."""

    code = "ERR_006"
    name = "INSUFFICIENT_CREDITS"


class DataCorruptedError(LipsyncError):
    """The file has the right type but cannot be read: truncated, empty, or missing a stream."""

    code = "ERR_007"
    name = "DATA_CORRUPTED"


class InvalidFormatError(LipsyncError):
    """Unsupported file type, or content that does not match the file's extension."""

    code = "ERR_008"
    name = "INVALID_FORMAT"


class InvalidOptionError(LipsyncError, ValueError):
    """An argument is out of range or unknown (an intensity of 7, a model that does not exist).

    Not one of the hosted API's upload errors: it answers a bad request, so it carries the
    generic code, and it is also a ValueError for callers who expect one.
    """

    name = "INVALID_REQUEST"


class LimitExceededError(LipsyncError):
    """The input is longer than the configured maximum duration."""

    code = "ERR_009"
    name = "LIMIT_EXCEEDS"


__all__ = [
    "DataCorruptedError",
    "InsufficientCreditsError",
    "InternalError",
    "InvalidFormatError",
    "InvalidOptionError",
    "LimitExceededError",
    "LipsyncError",
    "MissingDependencyError",
    "ModelNotInstalledError",
    "NoFaceFoundError",
]
