"""Named groups of MediaPipe face-mesh landmarks and the mouth geometry built on them.

Indices refer to the 468-point canonical face mesh. Every function takes landmarks as an
(468, 2) float array of pixel (x, y) positions in the decoded frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Lip contours, each running from the left mouth corner to the right one.
LIPS_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
# Every lip point, inner and outer contours with the corners, in index order.
LIP_POINTS = tuple(
    sorted(set(LIPS_UPPER_OUTER + LIPS_LOWER_OUTER + LIPS_UPPER_INNER + LIPS_LOWER_INNER))
)

MOUTH_LEFT, MOUTH_RIGHT = 61, 291
INNER_UPPER_MID, INNER_LOWER_MID = 13, 14
NOSE_TIP, NOSE_BOTTOM, CHIN = 1, 2, 152

# The lower face oval from the left cheek round the chin to the right cheek.
JAW = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
# The midline from below the lower lip down to the chin.
CHIN_MIDLINE = (18, 200, 199, 175, 152)
# Points that stay put when the jaw opens: the nose base and the cheeks.
STILL = (2, 98, 327, 205, 425, 50, 280, 187, 411, 123, 352, 93, 323)
# The upper edge of the lower-face mask, left to right, under the cheekbones and the nose.
MASK_TOP = (132, 123, 50, 205, 98, 2, 327, 425, 280, 352, 361)


@dataclass(frozen=True)
class MouthFrame:
    """A coordinate frame at the mouth: origin between the corners, u across, v down the face."""

    center: np.ndarray  # (2,) px
    u: np.ndarray  # (2,) unit vector from the left corner to the right one
    v: np.ndarray  # (2,) unit vector perpendicular to u, pointing towards the chin
    width: float  # corner-to-corner distance in px

    def to_local(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) px -> (n, 2) (u, v) in px along the frame's axes."""
        rel = np.asarray(points, dtype=np.float64) - self.center
        return np.stack([rel @ self.u, rel @ self.v], axis=-1)


def mouth_frame(landmarks: np.ndarray) -> MouthFrame:
    """The mouth's own coordinate frame, oriented by the corners and the chin."""
    left = landmarks[MOUTH_LEFT].astype(np.float64)
    right = landmarks[MOUTH_RIGHT].astype(np.float64)
    across = right - left
    width = float(np.hypot(*across))
    u = across / max(width, 1e-6)
    v = np.array([-u[1], u[0]])
    center = (left + right) / 2.0
    if (landmarks[CHIN] - center) @ v < 0:
        v = -v
    return MouthFrame(center=center, u=u, v=v, width=max(width, 1e-6))


def inner_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap at the middle of the mouth, in px (0 when the lips touch)."""
    frame = mouth_frame(landmarks)
    gap = (landmarks[INNER_LOWER_MID] - landmarks[INNER_UPPER_MID]) @ frame.v
    return float(max(gap, 0.0))


def lower_face_polygon(landmarks: np.ndarray, margin: float = 0.35) -> np.ndarray:
    """The region the renderer may touch: under the nose, over the jaw, a margin past the chin.

    The margin (in mouth widths) leaves room for the chin to move down and for the feather,
    so the edit fades out before the boundary of the mask.
    """
    frame = mouth_frame(landmarks)
    top = landmarks[list(MASK_TOP)].astype(np.float64)
    jaw = landmarks[list(JAW)].astype(np.float64)

    # Push the jaw line outwards from the mouth centre so a dropping chin stays inside.
    outward = jaw - frame.center
    outward /= np.maximum(np.linalg.norm(outward, axis=1, keepdims=True), 1e-6)
    jaw = jaw + outward * (margin * frame.width)
    return np.concatenate([top, jaw[::-1][1:-1]], axis=0).astype(np.float32)
