"""Mouth samples: the inside of the speaker's own mouth, gathered from the source video.

Teeth and tongue are the hardest part of a mouth to invent. Most talking-head videos show
them many times, so while phase 2 looks at every frame it keeps, per band of mouth
openings, the most frontal open mouth it sees, cut out at full resolution in a canonical
mouth-aligned frame. A generator later pastes the sample whose opening is closest to the
wanted one into the new mouth (see ``MouthAtlas``), stretched to fit and matched in colour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import av
import cv2
import numpy as np

from .landmarks import (
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    NOSE_TIP,
    inner_opening,
    mouth_frame,
)
from .patches import PATCHABLE, PatchConverter

logger = logging.getLogger(__name__)

# The canonical frame: mouth centre at (CENTER, CENTER), corners CANON_WIDTH apart on x.
CANON_WIDTH = 96.0
CENTER = 96.0
CANON_SIZE = 192
# Openings (inner gap / mouth width) worth keeping, in bands of this width; the last band
# takes every wider opening.
MIN_OPENING = 0.08
BAND_WIDTH = 0.05
BANDS = 8
CHEEK_LEFT, CHEEK_RIGHT = 234, 454


@dataclass
class MouthSample:
    """One open mouth in canonical coordinates."""

    opening: float  # inner-lip gap over mouth width
    image: np.ndarray  # (CANON_SIZE, CANON_SIZE, 3) uint8 RGB, mouth-aligned crop
    upper_mid_y: float  # canonical y of the upper inner lip's middle
    gap: float  # canonical px between the inner lips at the middle
    lip_rgb: np.ndarray  # (3,) mean lip colour, to match the colour of a new frame
    frontality: float = 1.0  # 1 for a face looking straight at the camera


@dataclass
class MouthAtlas:
    """The samples of one face track, sorted by opening."""

    samples: list[MouthSample]

    def nearest(self, opening: float) -> MouthSample | None:
        """The sample whose opening is closest to ``opening`` (mouth widths), if any."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s.opening - opening))


def cut_sample(image: np.ndarray, landmarks: np.ndarray) -> MouthSample:
    """A canonical crop of the mouth on ``image`` (RGB) with its measurements."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    frame = mouth_frame(landmarks)
    scale = frame.width / CANON_WIDTH
    # canonical (x, y) -> image: centre + (x - C) * scale * u + (y - C) * scale * v
    forward = np.column_stack([frame.u * scale, frame.v * scale])
    offset = frame.center - forward @ np.array([CENTER, CENTER])
    matrix = np.column_stack([forward, offset])
    crop = cv2.warpAffine(
        image,
        matrix,
        (CANON_SIZE, CANON_SIZE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )

    upper = frame.to_local(landmarks[[LIPS_UPPER_INNER[5]]])[0] / scale + CENTER
    gap = inner_opening(landmarks) / scale
    return MouthSample(
        opening=inner_opening(landmarks) / frame.width,
        image=crop,
        upper_mid_y=float(upper[1]),
        gap=float(gap),
        lip_rgb=lip_colour(image, landmarks),
        frontality=frontality(landmarks),
    )


def lip_colour(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Mean RGB halfway between the outer and inner lip contours."""
    outer = landmarks[list(LIPS_UPPER_OUTER[1:-1] + LIPS_LOWER_OUTER[1:-1])]
    inner = landmarks[list(LIPS_UPPER_INNER[1:-1] + LIPS_LOWER_INNER[1:-1])]
    mid = np.round((outer + inner) / 2.0).astype(int)
    h, w = image.shape[:2]
    mid[:, 0] = np.clip(mid[:, 0], 0, w - 1)
    mid[:, 1] = np.clip(mid[:, 1], 0, h - 1)
    return image[mid[:, 1], mid[:, 0]].astype(np.float32).mean(axis=0)


def relative_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap over mouth width."""
    return inner_opening(landmarks) / mouth_frame(landmarks).width


def frontality(landmarks: np.ndarray) -> float:
    """1 for a face looking straight at the camera, lower as it turns away."""
    nose = landmarks[NOSE_TIP]
    left = np.hypot(*(nose - landmarks[CHEEK_LEFT]))
    right = np.hypot(*(nose - landmarks[CHEEK_RIGHT]))
    return float(1.0 - abs(left - right) / max(left + right, 1e-6))


def band_of(opening: float) -> int | None:
    """Which band of openings a mouth falls in; None when it is too closed to sample."""
    if opening < MIN_OPENING:
        return None
    return min(int((opening - MIN_OPENING) / BAND_WIDTH), BANDS - 1)


class MouthCollector:
    """Keeps, per band of openings, the most frontal mouth offered so far.

    Phase 2 offers the main face of every frame it decodes; cutting a sample costs well
    under a millisecond and happens only when a frame beats the band's current best.
    """

    def __init__(self) -> None:
        self.best: dict[int, tuple[int, np.ndarray, MouthSample]] = {}
        self._patches = PatchConverter()

    def offer(self, index: int, frame: av.VideoFrame, landmarks: np.ndarray) -> None:
        """Consider decoded ``frame`` number ``index`` whose face has these px landmarks."""
        landmarks = np.asarray(landmarks, dtype=np.float64)
        band = band_of(relative_opening(landmarks))
        if band is None:
            return
        current = self.best.get(band)
        if current is not None and current[2].frontality >= frontality(landmarks):
            return
        self.best[band] = (index, landmarks.astype(np.float32), self._cut(frame, landmarks))

    def samples(self) -> list[tuple[int, np.ndarray, MouthSample]]:
        """(frame index, landmarks, sample) of each band's best, by band."""
        return [self.best[band] for band in sorted(self.best)]

    def _cut(self, frame: av.VideoFrame, landmarks: np.ndarray) -> MouthSample:
        # Only the pixels around the mouth are converted to RGB.
        reach = mouth_frame(landmarks).width / CANON_WIDTH * CENTER * 1.5 + 2
        cx, cy = mouth_frame(landmarks).center
        box = (int(cx - reach), int(cy - reach), int(cx + reach) + 1, int(cy + reach) + 1)
        if frame.format.name in PATCHABLE:
            patch = self._patches.cut(frame, box)
            origin = np.array(patch.box[:2], dtype=np.float64)
            return cut_sample(patch.rgb, landmarks - origin)
        return cut_sample(frame.to_ndarray(format="rgb24"), landmarks)


def best_per_band(samples: list[MouthSample]) -> list[MouthSample]:
    """The most frontal sample of each band of openings, sorted by opening."""
    best: dict[int, MouthSample] = {}
    for sample in samples:
        band = band_of(sample.opening)
        if band is not None and (band not in best or sample.frontality > best[band].frontality):
            best[band] = sample
    return sorted(best.values(), key=lambda s: s.opening)
