"""Alpha compositing that leaves every pixel with zero weight exactly as it was."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def blend_masked(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> int:
    """dst = dst + alpha * (src - dst), in place, rounded; pixels with alpha 0 are not written.

    dst and src are (h, w, 3) uint8, alpha (h, w) float32 in [0, 1]. Skipping zero weights
    (rather than computing an identity) is what guarantees that nothing outside the mask
    changes, bit for bit. Returns the number of pixels written.
    """
    h, w = alpha.shape
    written = 0
    for i in range(h):
        for j in range(w):
            a = alpha[i, j]
            if a <= 0.0:
                continue
            written += 1
            for c in range(3):
                d = np.float32(dst[i, j, c])
                v = d + a * (np.float32(src[i, j, c]) - d) + np.float32(0.5)
                dst[i, j, c] = np.uint8(min(max(v, 0.0), 255.0))
    return written
