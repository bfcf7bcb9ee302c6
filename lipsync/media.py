"""Reading media: probing a video, and decoding its frames in order, in batches.

Everything here decodes with PyAV. Frame indices are positions in presentation order,
counted from 0, so a frame index means the same thing in every phase.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import DataCorruptedError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class VideoInfo:
    """What the phases need to know about a source video."""

    path: Path
    width: int  # decoded frame width in pixels, before any display rotation
    height: int  # decoded frame height in pixels
    rotation: int  # display rotation from the container, degrees (0, 90, 180 or 270)
    fps: Fraction  # average frame rate; the true timing is in frame_times
    time_base: Fraction  # of the video stream's timestamps
    frame_pts: np.ndarray  # (n,) int64 presentation timestamps, sorted, in time_base
    frame_times: np.ndarray  # (n,) float64 seconds from the first frame
    duration: float  # seconds, first frame start to last frame end
    codec: str  # source codec name, e.g. "h264"

    @property
    def frame_count(self) -> int:
        return len(self.frame_pts)


def probe_video(path: PathLike) -> VideoInfo:
    """Open a video and index its frames (a demux pass: packets are read, not decoded)."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataCorruptedError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size]
            width, height = stream.codec_context.width, stream.codec_context.height
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            time_base = stream.time_base
            codec = stream.codec_context.name
            rotation = _stream_rotation(container, stream)
    except av.FFmpegError as exc:
        raise DataCorruptedError(f"cannot read {path.name}: {exc}") from exc

    if not pts or width <= 0 or height <= 0:
        raise DataCorruptedError(f"{path.name} holds no decodable video frames")

    frame_pts = np.unique(np.asarray(pts, dtype=np.int64))
    times = (frame_pts - frame_pts[0]).astype(np.float64) * float(time_base)
    last = 1.0 / float(rate) if len(times) < 2 else float(np.median(np.diff(times[-8:])))
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        rotation=rotation,
        fps=Fraction(rate),
        time_base=Fraction(time_base),
        frame_pts=frame_pts,
        frame_times=times,
        duration=float(times[-1] + last),
        codec=codec,
    )


def _stream_rotation(container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """The display rotation, read from the first decoded frame's display matrix."""
    try:
        frame = next(container.decode(stream))
    except (StopIteration, av.FFmpegError):
        return 0
    return int(round(getattr(frame, "rotation", 0) or 0)) % 360


@dataclass
class FrameBatch:
    """Consecutive decoded frames."""

    indices: np.ndarray  # (n,) int64 frame indices
    images: np.ndarray  # (n, h, w, 3) uint8 RGB


def iter_video_frames(
    info: VideoInfo, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded frames ``start <= index < stop`` in order, seeking to the nearest keyframe."""
    stop = info.frame_count if stop is None else min(stop, info.frame_count)
    if start >= stop:
        return

    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(info.frame_pts[start]), stream=stream, backward=True)

        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            index = int(np.searchsorted(info.frame_pts, frame.pts))
            if index >= stop:
                return
            if index < start or info.frame_pts[index] != frame.pts:
                continue
            yield index, frame


def iter_frames(
    info: VideoInfo,
    start: int = 0,
    stop: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 16,
) -> Iterator[FrameBatch]:
    """RGB frames in batches; ``size=(w, h)`` scales them in the decoder's converter."""
    width, height = size if size else (info.width, info.height)
    indices: list[int] = []
    images: list[np.ndarray] = []

    for index, frame in iter_video_frames(info, start, stop):
        indices.append(index)
        images.append(frame.to_ndarray(format="rgb24", width=width, height=height))
        if len(indices) == batch_size:
            yield FrameBatch(np.asarray(indices, dtype=np.int64), np.stack(images))
            indices, images = [], []

    if indices:
        yield FrameBatch(np.asarray(indices, dtype=np.int64), np.stack(images))
