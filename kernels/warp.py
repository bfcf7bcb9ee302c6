"""A smooth displacement field from a few moved control points (normalized Gaussian RBF)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, fastmath=True)
def displacement_field(
    xs: np.ndarray,
    ys: np.ndarray,
    points: np.ndarray,
    moves: np.ndarray,
    sigmas: np.ndarray,
    floor: float,
) -> np.ndarray:
    """Displacement at every grid node, as a Gaussian-weighted mean of the control moves.

    xs (w,) and ys (h,) are the grid's pixel coordinates; points (m, 2) the control points,
    moves (m, 2) their displacements in px and sigmas (m,) each point's reach in px. ``floor``
    is the weight of an implicit "stay put" vote, so the field fades to zero away from every
    control point instead of copying the nearest one. Returns (h, w, 2) float32.
    """
    h, w, m = ys.shape[0], xs.shape[0], points.shape[0]
    out = np.zeros((h, w, 2), dtype=np.float32)
    inv = np.empty(m, dtype=np.float64)
    for k in range(m):
        inv[k] = 0.5 / (sigmas[k] * sigmas[k])

    for i in range(h):
        y = ys[i]
        for j in range(w):
            x = xs[j]
            total, dx, dy = floor, 0.0, 0.0
            for k in range(m):
                ex = x - points[k, 0]
                ey = y - points[k, 1]
                r2 = (ex * ex + ey * ey) * inv[k]
                if r2 < 12.0:  # exp(-12) is below anything that can move a pixel
                    wk = np.exp(-r2)
                    total += wk
                    dx += wk * moves[k, 0]
                    dy += wk * moves[k, 1]
            out[i, j, 0] = dx / total
            out[i, j, 1] = dy / total
    return out
