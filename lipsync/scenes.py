"""Phase 1: split a video into scenes at its hard cuts.

Cuts are found with PySceneDetect's ContentDetector (a jump in hue, saturation and lightness
between neighbouring frames). The frames come from our own decoder, downscaled in libswscale,
so a frame index here is the same frame index every other phase uses. The scene list is cached
per unique video content: a second run on the same bytes, under any path, decodes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter
from scenedetect.detectors import ContentDetector

from . import cache
from .errors import DataCorruptedError, InvalidOptionError
from .media import PathLike, VideoInfo, iter_video_frames, probe_video

logger = logging.getLogger(__name__)

# Bump when the detection or the stored layout changes, so old cache entries are ignored.
CACHE_VERSION = 1
CACHE_KIND = "scenes"

# Frames handed to the detector between two progress reports.
_PROGRESS_EVERY = 64


@dataclass(frozen=True)
class Scene:
    """A run of frames between two cuts."""

    index: int  # position in the scene list, from 0
    start: int  # first frame index
    end: int  # one past the last frame index
    start_time: float  # seconds from the first frame to this scene's first frame
    end_time: float  # seconds from the first frame to the end of this scene's last frame

    @property
    def frame_count(self) -> int:
        return self.end - self.start


@dataclass
class SceneList:
    """The scenes of one video, covering every frame in order with no gaps."""

    scenes: list[Scene]  # in order; scenes[0].start == 0 and scenes[-1].end == frame count
    digest: str  # sha256 of the video file (cache.file_digest)
    from_cache: bool  # True when the list was read from the cache and nothing was decoded


def detect_scenes(
    video: PathLike | VideoInfo,
    *,
    threshold: float = 27.0,
    min_scene_len: int = 15,
    analysis_width: int = 256,
    use_cache: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> SceneList:
    """Find the hard cuts of a video and return its scenes.

    Args:
        video: a path, or the VideoInfo of an already probed video.
        threshold: ContentDetector's score a frame must reach to start a new scene; lower
            finds softer cuts (and more false ones).
        min_scene_len: the shortest scene, in frames; closer cuts are merged.
        analysis_width: frames are scaled to this width (keeping the aspect) before scoring;
            smaller sources are used as they are.
        use_cache: read and write the scene list in the cache (kind ``"scenes"``).
        progress: called as ``progress(done, total)`` in frames while decoding.

    Returns:
        A SceneList whose scenes cover frames ``0 .. frame_count`` without gaps.

    Raises:
        InvalidOptionError: a parameter is out of range.
        DataCorruptedError: the video cannot be decoded.
    """
    _check_options(threshold, min_scene_len, analysis_width)
    path = video.path if isinstance(video, VideoInfo) else video
    digest = cache.file_digest(path)
    key = _cache_key(digest, threshold, min_scene_len, analysis_width)

    # A hit needs no probe either: the cached entry carries the scene times.
    if use_cache:
        scenes = _scenes_from_json(cache.load_json(CACHE_KIND, key))
        if scenes is not None:
            logger.info("scene list of %s taken from the cache (%d scenes)", path, len(scenes))
            _report_done(progress, scenes)
            return SceneList(scenes=scenes, digest=digest, from_cache=True)

    info = video if isinstance(video, VideoInfo) else probe_video(video)
    cuts = find_cuts(
        info,
        threshold=threshold,
        min_scene_len=min_scene_len,
        analysis_width=analysis_width,
        progress=progress,
    )
    scenes = scenes_from_cuts(info, cuts)
    logger.info("%s: %d scene(s), cuts at frames %s", info.path.name, len(scenes), cuts)

    if use_cache:
        cache.store_json(CACHE_KIND, key, _scenes_to_json(scenes))
    return SceneList(scenes=scenes, digest=digest, from_cache=False)


def find_cuts(
    info: VideoInfo,
    *,
    threshold: float = 27.0,
    min_scene_len: int = 15,
    analysis_width: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Frame indices where a new scene starts (never 0), in order; no caching."""
    width, height = analysis_size(info, analysis_width)
    detector = ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
    total = info.frame_count
    cuts: list[int] = []

    # One reformatter for the whole pass: a fresh one per frame re-initialises the scaler,
    # which costs more than the detector itself.
    reformatter = VideoReformatter()
    done = 0
    try:
        for index, frame in iter_video_frames(info):
            frame_bgr = reformatter.reformat(
                frame, width=width, height=height, format="bgr24", interpolation=Interpolation.AREA
            )
            cuts += detector.process_frame(index, frame_bgr.to_ndarray())
            done += 1
            if progress is not None and done % _PROGRESS_EVERY == 0:
                progress(done, total)
        cuts += detector.post_process(info.frame_count - 1)
    except av.FFmpegError as exc:
        raise DataCorruptedError(f"cannot decode {info.path.name}: {exc}") from exc

    if progress is not None:
        progress(total, total)
    return sorted({int(cut) for cut in cuts if 0 < cut < total})


def scenes_from_cuts(info: VideoInfo, cuts: list[int]) -> list[Scene]:
    """Turn cut frame indices into scenes that cover every frame of the video."""
    total = info.frame_count
    bounds = [0, *sorted({c for c in cuts if 0 < c < total}), total]
    times = np.append(info.frame_times, info.duration)
    return [
        Scene(
            index=i,
            start=start,
            end=end,
            start_time=float(times[start]),
            end_time=float(times[end]),
        )
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
    ]


def analysis_size(info: VideoInfo, analysis_width: int) -> tuple[int, int]:
    """(width, height) to score frames at: the source scaled down to analysis_width, even."""
    if info.width <= analysis_width:
        return info.width, info.height
    height = info.height * analysis_width / info.width
    return analysis_width, max(2, 2 * round(height / 2))


def _check_options(threshold: float, min_scene_len: int, analysis_width: int) -> None:
    if not (math.isfinite(threshold) and threshold > 0):
        raise InvalidOptionError(f"scene threshold must be a positive number, got {threshold}")
    if min_scene_len < 1:
        raise InvalidOptionError(f"min_scene_len must be at least 1 frame, got {min_scene_len}")
    if analysis_width < 16:
        raise InvalidOptionError(f"analysis_width must be at least 16 px, got {analysis_width}")


def _cache_key(digest: str, threshold: float, min_scene_len: int, analysis_width: int) -> str:
    """The cache key: the content digest plus everything that changes the answer."""
    params = f"v{CACHE_VERSION}:{digest}:{threshold!r}:{min_scene_len}:{analysis_width}"
    return hashlib.sha256(params.encode()).hexdigest()


def _scenes_to_json(scenes: list[Scene]) -> dict:
    rows = [[s.start, s.end, s.start_time, s.end_time] for s in scenes]
    return {"version": CACHE_VERSION, "scenes": rows}


def _scenes_from_json(value: object) -> list[Scene] | None:
    """Scenes from a cache entry, or None when it is absent, stale or not well formed."""
    if not isinstance(value, dict) or value.get("version") != CACHE_VERSION:
        return None
    rows = value.get("scenes")
    if not isinstance(rows, list) or not rows:
        return None

    scenes: list[Scene] = []
    try:
        for i, (start, end, start_time, end_time) in enumerate(rows):
            scene = Scene(i, int(start), int(end), float(start_time), float(end_time))
            expected_start = scenes[-1].end if scenes else 0
            if scene.start != expected_start or scene.end <= scene.start:
                return None
            scenes.append(scene)
    except (TypeError, ValueError):
        return None
    return scenes


def _report_done(progress: Callable[[int, int], None] | None, scenes: list[Scene]) -> None:
    if progress is not None:
        total = scenes[-1].end
        progress(total, total)
