"""Editing a small region of a decoded frame without converting the whole frame to RGB.

A face's mouth covers a few percent of a frame. Converting only that patch from YUV to RGB
and back, and writing back only the pixels the generator changed, saves two full-frame
colour conversions per frame and leaves every other pixel of the decoded picture exactly
as it was decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# 4:2:0 pictures whose planes this module knows how to cut and paste.
PATCHABLE = ("yuv420p", "yuvj420p")


@dataclass
class FramePatch:
    """An RGB copy of a box of a decoded frame, to edit and then paste back."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the frame, even-aligned
    rgb: np.ndarray  # (y1 - y0, x1 - x0, 3) uint8, edit this in place
    original: np.ndarray  # the same pixels as they were decoded, to find what changed


class PatchConverter:
    """Cuts RGB patches from 4:2:0 frames and pastes them back, reusing its scalers."""

    def __init__(self) -> None:
        self._to_rgb = VideoReformatter()
        self._to_yuv = VideoReformatter()

    def cut(self, frame: av.VideoFrame, box: tuple[int, int, int, int]) -> FramePatch:
        x0, y0, x1, y1 = even_box(box, frame.width, frame.height)
        y, u, v = _planes(frame)
        i420 = np.concatenate(
            [
                y[y0:y1, x0:x1].ravel(),
                u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].ravel(),
                v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].ravel(),
            ]
        ).reshape((y1 - y0) * 3 // 2, x1 - x0)
        small = av.VideoFrame.from_ndarray(i420, format=frame.format.name)
        small.colorspace, small.color_range = frame.colorspace, frame.color_range
        rgb = self._to_rgb.reformat(small, format="rgb24").to_ndarray()
        return FramePatch(box=(x0, y0, x1, y1), rgb=rgb, original=rgb.copy())

    def paste(self, frame: av.VideoFrame, patch: FramePatch) -> int:
        """Write the patch's changed pixels into ``frame``; returns how many luma pixels."""
        changed = np.any(patch.rgb != patch.original, axis=2)
        if not changed.any():
            return 0
        x0, y0, x1, y1 = patch.box
        h, w = y1 - y0, x1 - x0

        edited = av.VideoFrame.from_ndarray(np.ascontiguousarray(patch.rgb), format="rgb24")
        yuv = self._to_yuv.reformat(
            edited,
            format=frame.format.name,
            dst_colorspace=frame.colorspace,
            dst_color_range=frame.color_range or None,
        ).to_ndarray()
        flat, luma, chroma = yuv.ravel(), h * w, (h // 2) * (w // 2)
        new_y = flat[:luma].reshape(h, w)
        new_u = flat[luma : luma + chroma].reshape(h // 2, w // 2)
        new_v = flat[luma + chroma : luma + 2 * chroma].reshape(h // 2, w // 2)

        # A chroma sample covers a 2x2 block: it is rewritten if any pixel in it changed.
        block = changed.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
        frame.make_writable()  # the decoder may still hold this picture as a reference
        y, u, v = _planes(frame)
        y[y0:y1, x0:x1][changed] = new_y[changed]
        u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2][block] = new_u[block]
        v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2][block] = new_v[block]
        return int(changed.sum())


def even_box(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown to even edges (4:2:0 chroma covers 2x2 blocks) and clipped to the frame."""
    x0, y0, x1, y1 = box
    x0, y0 = max(x0 - x0 % 2, 0), max(y0 - y0 % 2, 0)
    x1, y1 = min(x1 + x1 % 2, width - width % 2), min(y1 + y1 % 2, height - height % 2)
    return x0, y0, x1, y1


def union_box(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The smallest box holding all the given boxes."""
    xs0, ys0, xs1, ys1 = zip(*boxes, strict=True)
    return min(xs0), min(ys0), max(xs1), max(ys1)


def _planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable (rows, columns) views of a 4:2:0 frame's Y, U and V planes."""
    views = []
    for index, plane in enumerate(frame.planes):
        rows = frame.height if index == 0 else (frame.height + 1) // 2
        cols = frame.width if index == 0 else (frame.width + 1) // 2
        flat = np.frombuffer(plane, dtype=np.uint8)
        views.append(flat.reshape(-1, plane.line_size)[:rows, :cols])
    return views[0], views[1], views[2]
