"""Pictures for people: a contact sheet of the original and the dubbed mouth over time."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .landmarks import mouth_frame
from .media import PathLike, iter_frames, probe_video

TILE = 160


def contact_sheet(
    original: PathLike, dubbed: PathLike, out_png: PathLike, *, count: int = 8
) -> Path:
    """Write a PNG: ``count`` mouth crops of the original (top row) above the dubbed ones.

    Frames are spread evenly over the ones where a face is found; both rows use the crop
    box found on the original, so the rows differ only where the dub changed something.
    """
    import mediapipe as mp

    src, dub = probe_video(original), probe_video(dubbed)
    picks = np.linspace(0, min(src.frame_count, dub.frame_count) - 1, count * 2).astype(int)
    src_frames = _frames_at(src, picks)
    dub_frames = _frames_at(dub, picks)

    tops, bottoms, labels = [], [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True) as mesh:
        for index in picks:
            found = mesh.process(src_frames[index]).multi_face_landmarks
            if not found or len(tops) == count:
                continue
            h, w = src_frames[index].shape[:2]
            points = np.array([(p.x * w, p.y * h) for p in found[0].landmark[:468]])
            box = _mouth_box(points, w, h)
            tops.append(_crop(src_frames[index], box))
            bottoms.append(_crop(dub_frames[index], box))
            labels.append(f"{src.frame_times[index]:.2f}s")

    if not tops:
        blank = np.full((TILE, TILE, 3), 40, np.uint8)
        tops, bottoms, labels = [blank], [blank], ["no face"]
    for tile, label in zip(tops, labels, strict=True):
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)

    sheet = np.vstack([np.hstack(tops), np.hstack(bottoms)])
    out = Path(out_png)
    cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return out


def _frames_at(info, picks: np.ndarray) -> dict[int, np.ndarray]:
    wanted = set(int(i) for i in picks)
    frames: dict[int, np.ndarray] = {}
    for batch in iter_frames(info):
        for index, image in zip(batch.indices, batch.images, strict=True):
            if int(index) in wanted:
                frames[int(index)] = image
    return frames


def _mouth_box(points: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    frame = mouth_frame(points)
    half = int(frame.width * 0.9)
    cx, cy = frame.center
    x0, y0 = max(int(cx - half), 0), max(int(cy - half * 0.8), 0)
    return x0, y0, min(int(cx + half), w), min(int(cy + half * 1.0), h)


def _crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return cv2.resize(image[y0:y1, x0:x1], (TILE, TILE), interpolation=cv2.INTER_AREA)
