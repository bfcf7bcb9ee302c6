"""The generator interface: what phase 3 asks of a lip renderer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..audio import AudioFeatures
from ..faces import FaceResult
from ..media import VideoInfo

INTENSITIES = (1, 2, 3)
# How an ONNX model runs. "auto": float16 on a GPU (TensorRT's own fp16 kernels, or a
# float16 copy of the model on CUDA), float32 on the CPU, where float16 is no faster.
PRECISIONS = ("auto", "fp32", "fp16")


@dataclass
class FaceFrame:
    """One face on one output frame, handed to a generator to re-render in place."""

    image: np.ndarray  # (h, w, 3) uint8 RGB holding the face's footprint; edited in place
    landmarks: np.ndarray  # (468, 2) float32 px in ``image``, smoothed face-mesh landmarks
    out_index: int  # position on the output timeline: which audio features apply
    track: int  # which face track this is, so a generator can keep per-face state
    source_index: int = -1  # the source frame the face is on (-1: not from a source video)


@dataclass
class SourceVideo:
    """What a generator may learn from the source video before it renders anything."""

    info: VideoInfo  # the source's frame index and format
    faces: FaceResult  # every face track with its smoothed landmarks


class Generator(ABC):
    """A lip renderer. One instance serves one job (one video, one audio)."""

    name: ClassVar[str]
    needs_weights: ClassVar[bool] = False

    def __init__(self, intensity: int = 2) -> None:
        self.intensity = intensity

    def describe(self) -> str:
        """What runs, in a few words, for the result and the logs (``e2 on CUDA, fp16``)."""
        return self.name

    @abstractmethod
    def prepare(self, audio: AudioFeatures, source: SourceVideo | None = None) -> None:
        """Take the new audio's features (one row per output frame) and, when given, the
        source video and its faces, before any render call."""

    @abstractmethod
    def footprint(self, landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The box (x0, y0, x1, y1) of a frame of ``shape`` that rendering this face may change.

        The pipeline hands ``render`` an image covering at least this box, so the rest of
        the frame never has to leave the decoder's pixel format.
        """

    @abstractmethod
    def render(self, faces: list[FaceFrame]) -> list[tuple[int, int, int, int]]:
        """Re-render each face's mouth in place; return the box (x0, y0, x1, y1) each changed."""
