"""Phase 2's results kept between runs: one video dubbed with ten voices is analysed once.

A FaceResult is stored as an ``.npz`` under ``cache_dir()/faces``, keyed by the video's
bytes, its scenes and every option that changes the answer. A damaged or stale entry is
ignored (and rewritten by the next analysis), never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import cache
from .faces import N_LANDMARKS, FaceResult, FaceTrack
from .media import VideoInfo
from .mouths import MouthSample
from .scenes import Scene

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_KIND = "faces"


def store_cached_faces(key: str, result: FaceResult) -> Path:
    """Write a FaceResult to cache_dir()/faces/<key>.npz atomically; returns the file."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"version": CACHE_VERSION, "frame_count": result.frame_count, "tracks": []}
    for t, track in enumerate(result.tracks):
        arrays[f"t{t}_frames"] = track.frames
        arrays[f"t{t}_landmarks"] = track.landmarks
        arrays[f"t{t}_boxes"] = track.boxes
        meta["tracks"].append({"scene": track.scene, "face": track.face, "mouths": []})

    for t, samples in result.mouths.items():
        for m, sample in enumerate(samples):
            arrays[f"m{t}_{m}_image"] = sample.image
            arrays[f"m{t}_{m}_lip_rgb"] = sample.lip_rgb
            meta["tracks"][t]["mouths"].append(
                [sample.opening, sample.upper_mid_y, sample.gap, sample.frontality]
            )
    arrays["meta"] = np.array(json.dumps(meta))

    folder = cache.cache_dir() / CACHE_KIND
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.npz"
    with cache.atomic_target(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return target


def load_cached_faces(key: str, frame_count: int) -> FaceResult | None:
    """The cached FaceResult under ``key``, or None when absent, stale or damaged."""
    path = cache.cache_dir() / CACHE_KIND / f"{key}.npz"
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            result = _faces_from_npz(stored, frame_count)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring a damaged face cache entry %s: %s", path.name, exc)
        return None
    if result is None:
        logger.warning("ignoring a face cache entry that does not fit: %s", path.name)
    return result


def _faces_from_npz(stored, frame_count: int) -> FaceResult | None:
    """Rebuild a FaceResult from an open npz; None when its contents do not add up."""
    meta = json.loads(str(stored["meta"]))
    if meta.get("version") != CACHE_VERSION or meta.get("frame_count") != frame_count:
        return None

    tracks: list[FaceTrack] = []
    mouths: dict[int, list[MouthSample]] = {}
    for t, entry in enumerate(meta["tracks"]):
        frames = stored[f"t{t}_frames"].astype(np.int64)
        landmarks = stored[f"t{t}_landmarks"].astype(np.float32)
        boxes = stored[f"t{t}_boxes"].astype(np.float32)
        n = len(frames)
        if landmarks.shape != (n, N_LANDMARKS, 2) or boxes.shape != (n, 4):
            return None
        if n and (frames.min() < 0 or frames.max() >= frame_count):
            return None
        tracks.append(FaceTrack(int(entry["scene"]), int(entry["face"]), frames, landmarks, boxes))

        samples = []
        for m, (opening, upper_mid_y, gap, front) in enumerate(entry["mouths"]):
            samples.append(
                MouthSample(
                    opening=float(opening),
                    image=stored[f"m{t}_{m}_image"],
                    upper_mid_y=float(upper_mid_y),
                    gap=float(gap),
                    lip_rgb=stored[f"m{t}_{m}_lip_rgb"],
                    frontality=float(front),
                )
            )
        if samples:
            mouths[t] = samples
    return FaceResult(tracks=tracks, frame_count=frame_count, mouths=mouths, from_cache=True)


def cache_key(
    info: VideoInfo,
    scenes: Sequence[Scene],
    select: str | int,
    analysis_size: int,
    smoothing: float,
    landmarker: str = "mediapipe",
) -> str:
    """The cache key: the content digest plus everything that changes the answer."""
    bounds = ",".join(f"{scene.index}:{scene.start}-{scene.end}" for scene in scenes)
    params = (
        f"v{CACHE_VERSION}:{cache.file_digest(info.path)}:{bounds}:{select!r}:"
        f"{analysis_size}:{smoothing!r}"
    )
    if landmarker != "mediapipe":  # the default's keys stay as they were: its cache stays valid
        params += f":{landmarker}"
    return hashlib.sha256(params.encode()).hexdigest()
