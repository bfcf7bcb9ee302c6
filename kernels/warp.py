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


@numba.njit(cache=True, fastmath=True)
def seam_split_maps(
    upper: np.ndarray,
    lower: np.ndarray,
    step: int,
    x0: int,
    y0: int,
    width: int,
    height: int,
    frame: np.ndarray,
    seam_u: np.ndarray,
    seam_v: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Backward sampling maps for a box, from two coarse displacement fields and a seam.

    upper and lower are (gh, gw, 2) fields sampled every ``step`` px from (x0, y0). Each
    pixel takes the field of its side of the seam: below when its v coordinate (along the
    mouth frame ``frame`` = [cx, cy, ux, uy, vx, vy]) exceeds the seam's v at its u, the seam
    being the polyline (seam_u, seam_v) sorted by u and held flat past its ends. Returns
    (map_x, map_y), each (height, width) float32 absolute source coordinates for cv2.remap.
    """
    map_x = np.empty((height, width), dtype=np.float32)
    map_y = np.empty((height, width), dtype=np.float32)
    cx, cy, ux, uy, vx, vy = frame[0], frame[1], frame[2], frame[3], frame[4], frame[5]
    inv = 1.0 / step
    gh, gw = upper.shape[0], upper.shape[1]
    last = seam_u.shape[0] - 1

    for i in range(height):
        fy = i * inv
        iy = min(int(fy), gh - 2)
        ty = fy - iy
        py = y0 + i - cy
        for j in range(width):
            fx = j * inv
            ix = min(int(fx), gw - 2)
            tx = fx - ix

            px = x0 + j - cx
            u = px * ux + py * uy
            v = px * vx + py * vy
            if u <= seam_u[0]:
                limit = seam_v[0]
            elif u >= seam_u[last]:
                limit = seam_v[last]
            else:
                k = np.searchsorted(seam_u, u) - 1
                t = (u - seam_u[k]) / max(seam_u[k + 1] - seam_u[k], 1e-9)
                limit = seam_v[k] + t * (seam_v[k + 1] - seam_v[k])
            field = lower if v > limit else upper

            w00 = (1.0 - tx) * (1.0 - ty)
            w01 = tx * (1.0 - ty)
            w10 = (1.0 - tx) * ty
            w11 = tx * ty
            dx = (
                w00 * field[iy, ix, 0]
                + w01 * field[iy, ix + 1, 0]
                + w10 * field[iy + 1, ix, 0]
                + w11 * field[iy + 1, ix + 1, 0]
            )
            dy = (
                w00 * field[iy, ix, 1]
                + w01 * field[iy, ix + 1, 1]
                + w10 * field[iy + 1, ix, 1]
                + w11 * field[iy + 1, ix + 1, 1]
            )
            map_x[i, j] = x0 + j - dx
            map_y[i, j] = y0 + i - dy
    return map_x, map_y
