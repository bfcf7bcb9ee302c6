"""Face landmarkers behind one interface, chosen by name: the engines of phase 2.

``mediapipe`` (the default) runs MediaPipe's own API on the CPU, in worker processes.
``onnx`` runs the same face models converted to ONNX on onnxruntime (CUDA where present),
many runs of frames advanced together in batches; its landmarks match the default's to a
small fraction of a pixel (see ``tests/test_landmarks_onnx.py``). Both hand phase 2 the same
raw faces, which ``faces.detect_faces`` then links into tracks and smooths the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from ..errors import InvalidOptionError
from ..registry import Registry

if TYPE_CHECKING:
    from ..faces import Chunk, _Found
    from ..media import VideoInfo

_REGISTRY: Registry[type[Landmarker]] = Registry()


class Landmarker(ABC):
    """Finds every face, with its 468 landmarks, on each frame of some runs of frames."""

    name: ClassVar[str]

    @abstractmethod
    def analyse(
        self,
        info: VideoInfo,
        chunks: list[Chunk],
        analysis_size: int,
        workers: int,
        progress: Callable[[int, int], None] | None,
        tracked: int,
    ) -> list[_Found]:
        """The raw faces of every chunk, in chunk order, at full decoded resolution.

        Args:
            info: the probed video.
            chunks: runs of consecutive frames of one scene each; tracking restarts at
                each chunk's first frame.
            analysis_size: the longest side, px, of the frames the models see.
            workers: how many processes the CPU path may use.
            progress: ``progress(done, total)`` in frames.
            tracked: faces the mesh tracker follows at once (1 when only the largest face
                is wanted).
        """


register = _REGISTRY.register  # class decorator: @register("name")


def available() -> list[str]:
    """Names of the registered landmarkers."""
    return _REGISTRY.names()


def get_landmarker(name: str, **options) -> Landmarker:
    """A landmarker by name; ``options`` go to its constructor (e.g. ``batch_size``)."""
    if name not in _REGISTRY:
        raise InvalidOptionError(
            f"unknown landmarker {name!r}; available: {', '.join(available())}"
        )
    return _REGISTRY[name](**options)


from . import mediapipe, onnx  # noqa: E402,F401  (register the built-in landmarkers)

__all__ = ["Landmarker", "available", "get_landmarker", "register"]
