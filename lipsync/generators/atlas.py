"""A mouth atlas: the inside of the speaker's own mouth, gathered from the source video.

Teeth and tongue are the hardest part of a mouth to invent. Most talking-head videos show
them many times, so e1 collects a handful of open-mouth frames per face track, each cut
out in a canonical mouth-aligned frame, and later pastes the one whose opening is closest
to the wanted opening into the new mouth, stretched to fit and matched in colour.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from ..landmarks import (
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    NOSE_TIP,
    inner_opening,
    mouth_frame,
)

logger = logging.getLogger(__name__)

# The canonical frame: mouth centre at (CENTER, CENTER), corners CANON_WIDTH apart on x.
CANON_WIDTH = 96.0
CENTER = 96.0
CANON_SIZE = 192
# Openings (inner gap / mouth width) worth keeping, and how many samples per track.
MIN_OPENING = 0.08
BINS = 6
CHEEK_LEFT, CHEEK_RIGHT = 234, 454


@dataclass
class MouthSample:
    """One open mouth in canonical coordinates."""

    opening: float  # inner-lip gap over mouth width
    image: np.ndarray  # (CANON_SIZE, CANON_SIZE, 3) uint8 RGB, mouth-aligned crop
    upper_mid_y: float  # canonical y of the upper inner lip's middle
    gap: float  # canonical px between the inner lips at the middle
    lip_rgb: np.ndarray  # (3,) mean lip colour, to match the colour of a new frame


@dataclass
class MouthAtlas:
    """The samples of one face track, sorted by opening."""

    samples: list[MouthSample]

    def nearest(self, opening: float) -> MouthSample | None:
        """The sample whose opening is closest to ``opening`` (mouth widths), if any."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda s: abs(s.opening - opening))


def pick_frames(landmarks: np.ndarray, bins: int = BINS) -> list[int]:
    """Rows of a track worth sampling: the most frontal face in each band of openings.

    landmarks is (n, 468, 2). Bands span MIN_OPENING to the widest opening seen; a track
    that never opens its mouth that far gives nothing (the renderer then paints one).
    """
    openings = np.array([_relative_opening(lm) for lm in landmarks])
    if len(openings) == 0 or openings.max() < MIN_OPENING:
        return []
    edges = np.linspace(MIN_OPENING, openings.max() + 1e-6, bins + 1)
    frontal = np.array([_frontality(lm) for lm in landmarks])

    rows = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        members = np.flatnonzero((openings >= low) & (openings < high))
        if len(members):
            rows.append(int(members[np.argmax(frontal[members])]))
    return rows


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


def _relative_opening(landmarks: np.ndarray) -> float:
    return inner_opening(landmarks) / mouth_frame(landmarks).width


def _frontality(landmarks: np.ndarray) -> float:
    """1 for a face looking straight at the camera, lower as it turns away."""
    nose = landmarks[NOSE_TIP]
    left = np.hypot(*(nose - landmarks[CHEEK_LEFT]))
    right = np.hypot(*(nose - landmarks[CHEEK_RIGHT]))
    return float(1.0 - abs(left - right) / max(left + right, 1e-6))


def build_atlases(info, faces) -> dict[int, MouthAtlas]:
    """One atlas per face track (keyed by track position), from a few decoded frames."""
    from ..media import frame_to_rgb, iter_frame_sequence

    wanted: dict[int, list[tuple[int, int]]] = {}
    for position, track in enumerate(faces.tracks):
        for row in pick_frames(track.landmarks):
            wanted.setdefault(int(track.frames[row]), []).append((position, row))

    atlases = {position: MouthAtlas([]) for position in range(len(faces.tracks))}
    if not wanted:
        return atlases

    for index, frame in iter_frame_sequence(info, np.array(sorted(wanted), dtype=np.int64)):
        image = frame_to_rgb(frame)
        for position, row in wanted.get(index, []):
            landmarks = faces.tracks[position].landmarks[row]
            atlases[position].samples.append(cut_sample(image, landmarks))

    for atlas in atlases.values():
        atlas.samples.sort(key=lambda s: s.opening)
    logger.debug("mouth atlas: %s samples per track", [len(a.samples) for a in atlases.values()])
    return atlases
