"""Mouth targets that know their visemes: the audio's loudness, shaped by its phones.

Loudness alone opens the mouth for every sound. Phones say more: the lips meet for p, b
and m however loud the burst after them, touch the teeth for f and v, round for o, u and
w, and open for open vowels. The mouth also moves towards a sound before it is heard
(coarticulation), so closings and roundings start a frame early.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .audio import AudioFeatures

# How much of the loudness-driven opening each mouth shape keeps.
OPEN_SCALE = {
    "closed": 0.0,
    "lip_teeth": 0.3,
    "rounded": 0.75,
    "open": 1.0,
    "other": 0.9,
    "rest": 1.0,
}
# An open vowel opens the mouth at least this far (a share of full opening) when voiced.
OPEN_VOWEL_FLOOR = 0.35
# Light smoothing over neighbouring frames, so targets ease in and out.
_SMOOTH = np.array([0.2, 0.6, 0.2])
# A shape's narrowing (a closure, lips on teeth, rounding) eases in and out over about this
# many frames (Gaussian sigma): lips do not jump, and a target that jumps between two
# neighbouring frames makes the new mouth jitter where the voice itself is steady.
EASE_FRAMES = 1.0


def apply_visemes(features: AudioFeatures, shapes: np.ndarray) -> AudioFeatures:
    """Features whose openness and rounding follow the mouth shapes of the phones.

    ``shapes`` holds one shape name per output frame (see ``phones.shapes_at``). Silence
    stays exactly closed, and so does every frame whose phone is a lip closure.
    """
    shapes = np.asarray(shapes)
    openness = np.asarray(features.openness, dtype=np.float64)
    if len(shapes) != len(openness):
        raise ValueError(f"{len(shapes)} shapes for {len(openness)} frames")
    if len(shapes) == 0:
        return features

    now = np.array([OPEN_SCALE.get(str(s), 1.0) for s in shapes])
    upcoming = np.append(now[1:], now[-1])
    # Anticipate a closing by half a step; never open early for an opening.
    factor = np.minimum(now, 0.5 * (now + upcoming))
    # Only ever lowered: a closing frame stays exactly closed, its neighbours ease towards it.
    factor = np.minimum(factor, gaussian_filter1d(factor, EASE_FRAMES, mode="nearest"))
    target = openness * factor
    voiced_open = (shapes == "open") & features.active
    target[voiced_open] = np.maximum(target[voiced_open], OPEN_VOWEL_FLOOR)
    target = _smooth(target)

    closed = (shapes == "closed") | ~np.asarray(features.active, dtype=bool)
    target[closed] = 0.0

    rounded = (shapes == "rounded").astype(np.float64)
    rounding = _smooth(0.5 * (rounded + np.append(rounded[1:], rounded[-1])))
    rounding[~np.asarray(features.active, dtype=bool)] = 0.0

    return replace(
        features,
        openness=np.clip(target, 0.0, 1.0).astype(np.float32),
        rounding=np.clip(rounding, 0.0, 1.0).astype(np.float32),
    )


def _smooth(values: np.ndarray) -> np.ndarray:
    padded = np.pad(values, 1, mode="edge")
    return np.convolve(padded, _SMOOTH, mode="valid")
