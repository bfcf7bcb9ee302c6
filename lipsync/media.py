"""Reading media: checking inputs, probing a video, decoding its frames, loading audio.

Everything here decodes with PyAV. Frame indices are positions in presentation order,
counted from 0, so a frame index means the same thing in every phase.

Inputs are checked in a fixed order, each failure with its own error class: the file must
exist (DataCorruptedError), have an allowed extension (InvalidFormatError), hold content of
the kind its extension promises (InvalidFormatError), open and decode, hold every byte its
index promises and the streams it needs (DataCorruptedError), and be no longer than the
allowed maximum (LimitExceededError).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from .errors import DataCorruptedError, InvalidFormatError, LimitExceededError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

VIDEO_EXTENSIONS = (".mp4", ".mov")
AUDIO_EXTENSIONS = (".mp3", ".wav", ".mp4", ".mov")

# What the first bytes of each allowed extension must look like.
_CONTENT_KINDS = {".mp4": "isobmff", ".mov": "isobmff", ".wav": "wav", ".mp3": "mp3"}
_KIND_NAMES = {
    "isobmff": "an MP4/QuickTime movie",
    "wav": "a WAV file",
    "mp3": "an MP3 file",
    "text": "text",
    None: "no known audio or video format",
}
# Top-level ISO-BMFF / QuickTime boxes a movie file may start with (type at byte offset 4).
_ISOBMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_SNIFF_BYTES = 16

_DAMAGED = "the file is damaged or was cut short; export or upload it again"
_BACKWARD_CHUNK = 32  # frames decoded per seek when a sequence runs backwards
_SKIP_AHEAD = 48  # decode through a gap this short instead of seeking over it


@dataclass(frozen=True)
class VideoColors:
    """The colour tags of a video stream, FFmpeg's enum values (2, 0, 2, 2 = unspecified)."""

    colorspace: int = 2  # AVColorSpace: the YUV<->RGB matrix (1 BT.709, 5/6 BT.601)
    color_range: int = 0  # AVColorRange: 0 unspecified, 1 limited (tv), 2 full (pc)
    color_primaries: int = 2  # AVColorPrimaries
    color_trc: int = 2  # AVColorTransferCharacteristic


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
    colors: VideoColors = VideoColors()  # colour tags, copied onto an encoded output
    has_audio: bool = False  # the container also holds an audio stream

    @property
    def frame_count(self) -> int:
        return len(self.frame_pts)


@dataclass(frozen=True)
class AudioInfo:
    """What a probe of an audio input (or a video's soundtrack) found."""

    path: Path
    rate: int  # samples per second
    channels: int  # 1 mono, 2 stereo, ...
    duration: float  # seconds of audio
    codec: str  # source codec name, e.g. "aac", "mp3float", "pcm_s16le"


# --- Checking inputs -------------------------------------------------------------------


def validate_video(path: PathLike, *, max_duration: float | None = None) -> VideoInfo:
    """Check a video input the way the hosted API does, then probe it.

    Args:
        path: an ``.mp4`` or ``.mov`` file.
        max_duration: the longest video accepted, in seconds; ``None`` for no limit.

    Returns:
        The video's :class:`VideoInfo`.

    Raises:
        DataCorruptedError: missing, empty, unreadable, truncated, or without a video stream.
        InvalidFormatError: another extension, or content that does not match it.
        LimitExceededError: longer than ``max_duration``.
    """
    path = _check_input(path, VIDEO_EXTENSIONS, "video")
    info = probe_video(path)
    _check_duration(path, info.duration, max_duration, "video")
    return info


def probe_audio(path: PathLike, *, max_duration: float | None = None) -> AudioInfo:
    """Check an audio input (``.mp3``, ``.wav``, or the soundtrack of an ``.mp4``/``.mov``).

    The packets are demuxed to measure the length and the first ones decoded to prove the
    stream is readable; the samples themselves are loaded by :func:`load_audio`.

    Raises:
        DataCorruptedError: missing, empty, unreadable, truncated, without an audio stream,
            or holding no samples.
        InvalidFormatError: another extension, or content that does not match it.
        LimitExceededError: longer than ``max_duration``.
    """
    path = _check_input(path, AUDIO_EXTENSIONS, "audio")

    with _open_input(path) as container:
        stream = _first_stream(container, "audio", path)
        _check_complete(container, path)
        duration = _demux_audio(container, stream, path)
        rate = int(stream.codec_context.sample_rate or 0)
        channels = int(stream.codec_context.channels or 0)
        codec = stream.codec_context.name

    if duration <= 0 or rate <= 0:
        raise DataCorruptedError(
            f"{path.name} holds no audio samples (zero length)",
            hint="record or export the voice track again",
        )
    _check_duration(path, duration, max_duration, "audio")
    logger.debug("audio %s: %d Hz, %d ch, %.3f s, %s", path.name, rate, channels, duration, codec)
    return AudioInfo(path=path, rate=rate, channels=channels, duration=duration, codec=codec)


def _check_input(path: PathLike, allowed: tuple[str, ...], kind: str) -> Path:
    """Existence, extension and content sniffing, in that order."""
    path = _existing_file(path)

    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise InvalidFormatError(
            f"{path.name}: the {kind} must be one of {', '.join(allowed)}, "
            f"got {suffix or 'a file without an extension'}",
            hint=f"convert it to {allowed[0]} first, for example with ffmpeg",
        )

    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if not head:
        raise DataCorruptedError(f"{path.name} is empty (0 bytes)", hint="upload the file again")

    found = sniff_format(head)
    expected = _CONTENT_KINDS[suffix]
    if found != expected:
        raise InvalidFormatError(
            f"{path.name} has the extension {suffix} but holds {_KIND_NAMES[found]}, "
            f"not {_KIND_NAMES[expected]}",
            hint="give the file the extension that matches its content, or convert it",
        )
    return path


def sniff_format(head: bytes) -> str | None:
    """The kind of media the first bytes of a file announce.

    Returns ``"isobmff"`` (MP4/MOV), ``"wav"``, ``"mp3"``, ``"text"`` or ``None``.
    """
    if len(head) >= 8 and head[4:8] in _ISOBMFF_BOXES:
        return "isobmff"
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or _is_mpeg_audio_sync(head):
        return "mp3"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return None


def _is_mpeg_audio_sync(head: bytes) -> bool:
    """An MPEG audio frame header: 11 sync bits, then a version and a layer that exist."""
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    version = (head[1] >> 3) & 0b11
    layer = (head[1] >> 1) & 0b11
    # version 01 is reserved; layer 00 is reserved (and is what ADTS AAC puts there).
    return version != 0b01 and layer != 0b00


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataCorruptedError(
            f"no such file: {path} {what}", hint="check the path and that the upload finished"
        )
    return path


def _check_duration(path: Path, duration: float, limit: float | None, kind: str) -> None:
    if limit is not None and duration > limit:
        raise LimitExceededError(
            f"{path.name}: the {kind} is {duration:.1f} s long, the limit is {limit:.1f} s",
            hint=f"trim the {kind} to at most {limit:.0f} s or raise max_duration",
        )


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise DataCorruptedError(
            f"cannot open {path.name} as audio or video: {exc}", hint=_DAMAGED
        ) from exc


def _first_stream(container: av.container.InputContainer, kind: str, path: Path):
    streams = container.streams.video if kind == "video" else container.streams.audio
    if not streams:
        raise DataCorruptedError(
            f"{path.name} has no {kind} stream, and the {kind} input needs one",
            hint=f"pass a file that carries the {kind}",
        )
    return streams[0]


def _check_complete(container: av.container.InputContainer, path: Path) -> None:
    """Every sample the index lists must lie inside the file (catches cut-off downloads).

    MP4/MOV hold an index of every sample's byte range; a file cut short either loses that
    index (and fails to open) or keeps it while the samples at its end are gone.
    """
    size = path.stat().st_size
    needed = 0
    for stream in container.streams:
        entries = stream.index_entries
        if entries:
            needed = max(needed, max(e.pos + e.size for e in entries))
    if needed > size:
        raise DataCorruptedError(
            f"{path.name} is truncated: its index needs {needed} bytes, the file has {size}",
            hint=_DAMAGED,
        )


def _demux_audio(container: av.container.InputContainer, stream, path: Path) -> float:
    """Seconds of audio in the stream's packets; the first packets are decoded on the way."""
    tb = stream.time_base
    start = end = None
    summed = 0
    packets = 0
    decoded = False

    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                raise DataCorruptedError(f"{path.name} holds a damaged audio packet", hint=_DAMAGED)
            packets += 1
            summed += packet.duration or 0
            if packet.pts is not None:
                stop = packet.pts + (packet.duration or 0)
                start = packet.pts if start is None else min(start, packet.pts)
                end = stop if end is None else max(end, stop)
            if not decoded:
                decoded = bool(packet.decode())
    except av.FFmpegError as exc:
        raise DataCorruptedError(
            f"cannot decode the audio of {path.name}: {exc}", hint=_DAMAGED
        ) from exc

    if packets and not decoded:
        raise DataCorruptedError(
            f"the audio of {path.name} does not decode to any samples", hint=_DAMAGED
        )
    if stream.frames and packets < stream.frames:
        raise DataCorruptedError(
            f"{path.name} is truncated: {stream.frames} audio packets expected, {packets} found",
            hint=_DAMAGED,
        )
    ticks = end - start if start is not None and end is not None else summed
    return float(ticks * tb) if tb else 0.0


# --- Probing and decoding video ----------------------------------------------------------


def probe_video(path: PathLike) -> VideoInfo:
    """Open a video and index its frames.

    One demux pass reads every packet's timestamp; only the first frame is decoded (for
    its display rotation and colour tags, and to prove the stream decodes). A file whose
    index promises more than it holds is refused.

    Raises:
        DataCorruptedError: missing, unreadable, truncated, or with no decodable video.
    """
    path = _existing_file(path)

    with _open_input(path) as container:
        stream = _first_stream(container, "video", path)
        _check_complete(container, path)
        pts, first = _demux_video(container, stream, path)
        width, height = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        time_base = Fraction(stream.time_base)
        codec = stream.codec_context.name
        has_audio = bool(container.streams.audio)

    if not pts or first is None or width <= 0 or height <= 0:
        raise DataCorruptedError(f"{path.name} holds no decodable video frames", hint=_DAMAGED)

    frame_pts = np.unique(np.asarray(pts, dtype=np.int64))
    times = (frame_pts - frame_pts[0]).astype(np.float64) * float(time_base)
    last = 1.0 / float(rate) if len(times) < 2 else float(np.median(np.diff(times[-8:])))
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        rotation=int(round(first.rotation or 0)) % 360,
        fps=Fraction(rate),
        time_base=time_base,
        frame_pts=frame_pts,
        frame_times=times,
        duration=float(times[-1] + last),
        codec=codec,
        colors=VideoColors(
            colorspace=int(first.colorspace),
            color_range=int(first.color_range),
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
        ),
        has_audio=has_audio,
    )


def _demux_video(container, stream, path: Path) -> tuple[list[int], av.VideoFrame | None]:
    """Every shown packet's pts, and the first decoded frame (decoding stops once it is out)."""
    pts: list[int] = []
    packets = 0
    first: av.VideoFrame | None = None

    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet demux yields at the end
            if packet.is_corrupt:
                raise DataCorruptedError(f"{path.name} holds a damaged video packet", hint=_DAMAGED)
            packets += 1
            # Packets an edit list cuts away are demuxed but never shown.
            if packet.pts is not None and not packet.is_discard:
                pts.append(packet.pts)
            if first is None:
                first = next(iter(packet.decode()), None)
        if first is None:
            first = next(iter(stream.decode(None)), None)
    except av.FFmpegError as exc:
        raise DataCorruptedError(
            f"cannot decode the video of {path.name}: {exc}", hint=_DAMAGED
        ) from exc

    if stream.frames and packets < stream.frames:
        raise DataCorruptedError(
            f"{path.name} is truncated: {stream.frames} video frames expected, {packets} found",
            hint=_DAMAGED,
        )
    return pts, first


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


def frame_to_rgb(
    frame: av.VideoFrame,
    size: tuple[int, int] | None = None,
    reformatter: VideoReformatter | None = None,
) -> np.ndarray:
    """(h, w, 3) uint8 RGB of a decoded frame, through the matrix its colour tags name.

    The export phase converts RGB back with the same matrix, so a frame that goes through
    RGB and back keeps its colours. ``size=(w, h)`` scales it in the same step. Pass one
    ``reformatter`` for a whole pass: building a scaler per frame costs more than using it.
    """
    width, height = size if size is not None else (None, None)
    if reformatter is None:
        return frame.to_ndarray(format="rgb24", width=width, height=height)
    # Area averaging when shrinking: as sharp as needed for analysis, and a third of the
    # cost of the default bicubic filter at 1080p.
    interpolation = Interpolation.AREA if size is not None else None
    return reformatter.reformat(
        frame, width=width, height=height, format="rgb24", interpolation=interpolation
    ).to_ndarray()


def iter_frames(
    info: VideoInfo,
    start: int = 0,
    stop: int | None = None,
    *,
    size: tuple[int, int] | None = None,
    batch_size: int = 16,
) -> Iterator[FrameBatch]:
    """RGB frames in batches; ``size=(w, h)`` scales them in the decoder's converter."""
    indices: list[int] = []
    images: list[np.ndarray] = []

    reformatter = VideoReformatter()
    for index, frame in iter_video_frames(info, start, stop):
        indices.append(index)
        images.append(frame_to_rgb(frame, size, reformatter))
        if len(indices) == batch_size:
            yield FrameBatch(np.asarray(indices, dtype=np.int64), np.stack(images))
            indices, images = [], []

    if indices:
        yield FrameBatch(np.asarray(indices, dtype=np.int64), np.stack(images))


def iter_frame_sequence(
    info: VideoInfo, indices: Iterable[int]
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Decoded frames for any sequence of source indices, in that order.

    The sequence is cut into runs that step by +1 or -1 (such as the "bounce" 0..N-1,
    N-2..0, 1..N-1). Forward runs stream from the decoder; backward runs are decoded in
    chunks of at most 32 frames, each reached by a seek and yielded reversed, so memory
    stays bounded whatever the video's length. A frame the decoder drops is replaced by
    the nearest earlier one so the sequence never loses its place.

    Yields:
        ``(source_index, frame)`` for every entry of ``indices``.

    Raises:
        ValueError: an index outside ``0 .. frame_count - 1``.
        DataCorruptedError: the video stops decoding.
    """
    indices = np.asarray(indices if isinstance(indices, np.ndarray) else list(indices), np.int64)
    if indices.size == 0:
        return
    if indices.min() < 0 or indices.max() >= info.frame_count:
        raise ValueError(
            f"frame indices must lie in 0..{info.frame_count - 1}, "
            f"got {int(indices.min())}..{int(indices.max())}"
        )

    source = _FrameSource(info)
    try:
        for first, last, step in _runs(indices):
            if step > 0:
                yield from source.forward(first, last + 1)
                continue
            # Backward: chunks from the top down, each decoded forwards then reversed.
            for top in range(first, last - 1, -_BACKWARD_CHUNK):
                bottom = max(last, top - _BACKWARD_CHUNK + 1)
                yield from reversed(list(source.forward(bottom, top + 1)))
    finally:
        source.close()


def _runs(indices: np.ndarray) -> list[tuple[int, int, int]]:
    """Split indices into maximal runs ``(first, last, step)`` with step +1 or -1."""
    runs: list[tuple[int, int, int]] = []
    steps = np.diff(indices)
    i = 0
    while i < len(indices):
        step = int(steps[i]) if i < len(steps) and abs(int(steps[i])) == 1 else 1
        j = i
        while j < len(steps) and steps[j] == step:
            j += 1
        runs.append((int(indices[i]), int(indices[j]), step))
        i = j + 1
    return runs


class _FrameSource:
    """One open decoder serving ranges of frames, seeking only when it has to."""

    def __init__(self, info: VideoInfo) -> None:
        self.info = info
        self.container = av.open(str(info.path))
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.frames: Iterator[tuple[int, av.VideoFrame]] | None = None
        self.position = 0  # index of the next frame self.frames will yield
        self.reorder_depth: int | None = None

    def close(self) -> None:
        self.container.close()

    def forward(self, start: int, stop: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Frames ``start <= index < stop`` in order, each index exactly once."""
        if self.frames is None or not self.position <= start <= self.position + _SKIP_AHEAD:
            self._seek(start)

        expected, previous, retried = start, None, False
        while expected < stop:
            item = next(self.frames, None) if self.frames is not None else None
            if item is None:
                self.frames = None
                break
            index, frame = item
            self.position = index + 1
            if index < expected:
                continue
            if index > expected and previous is None and not retried:
                # The seek landed after the frame we need: decode from the very first frame.
                retried = True
                self._seek(0)
                continue

            # Frames the decoder dropped are stood in for by their nearest neighbour.
            stand_in = frame if previous is None else previous
            while expected < min(index, stop):
                logger.debug("frame %d did not decode; showing a neighbour", expected)
                yield expected, stand_in
                expected += 1
            if index < stop:
                yield index, frame
                previous, expected = frame, index + 1

        if expected < stop:
            if previous is None:
                raise DataCorruptedError(f"{self.info.path.name} stops decoding at frame {start}")
            for missing in range(expected, stop):
                logger.debug("frame %d missing at the end; repeating the last one", missing)
                yield missing, previous

    def _seek(self, index: int) -> None:
        target = int(self.info.frame_pts[index])
        try:
            self.container.seek(target, stream=self.stream, backward=True)
        except av.FFmpegError as exc:
            raise DataCorruptedError(f"cannot seek in {self.info.path.name}: {exc}") from exc
        if self.reorder_depth is not None:
            # After a flush the decoder relearns B-frame reordering and may drop frames
            # while it does; tell it the depth it found before.
            self.stream.codec_context.reorder_depth = self.reorder_depth
        self.frames = self._decode()
        self.position = index

    def _decode(self) -> Iterator[tuple[int, av.VideoFrame]]:
        frame_pts = self.info.frame_pts
        try:
            for frame in self.container.decode(self.stream):
                depth = self.stream.codec_context.reorder_depth
                self.reorder_depth = max(depth, self.reorder_depth or 0)
                if frame.pts is None:
                    continue
                index = int(np.searchsorted(frame_pts, frame.pts))
                if index < len(frame_pts) and frame_pts[index] == frame.pts:
                    yield index, frame
        except av.FFmpegError as exc:
            raise DataCorruptedError(f"cannot decode {self.info.path.name}: {exc}") from exc


# --- Audio ---------------------------------------------------------------------------------


def load_audio(
    path: PathLike, *, rate: int | None = None, mono: bool = False
) -> tuple[np.ndarray, int]:
    """Decode a whole audio stream (an audio file, or a video's soundtrack).

    Args:
        path: any file FFmpeg reads with an audio stream; see :func:`probe_audio` for the
            checks an upload should pass first.
        rate: resample to this many samples per second (PyAV's resampler, frame by frame,
            so only the target rate is ever held); ``None`` keeps the source rate.
        mono: average the channels into one.

    Returns:
        ``(samples, rate)``: samples (channels, n) float32 in [-1, 1], and their rate.

    Raises:
        DataCorruptedError: missing, unreadable, without an audio stream, or no samples.
    """
    path = _existing_file(path)
    chunks: list[np.ndarray] = []

    with _open_input(path) as container:
        stream = _first_stream(container, "audio", path)
        out_rate = int(rate or stream.codec_context.sample_rate)
        resampler = av.AudioResampler(format="fltp", rate=out_rate)
        try:
            for frame in container.decode(stream):
                chunks.extend(_audio_chunks(resampler.resample(frame), mono))
            chunks.extend(_audio_chunks(resampler.resample(None), mono))
        except av.FFmpegError as exc:
            raise DataCorruptedError(f"cannot decode the audio of {path.name}: {exc}") from exc

    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise DataCorruptedError(
            f"{path.name} holds no audio samples (zero length)",
            hint="record or export the voice track again",
        )
    samples = np.concatenate(chunks, axis=1)
    np.clip(samples, -1.0, 1.0, out=samples)
    logger.debug("loaded %s: %s samples at %d Hz", path.name, samples.shape, out_rate)
    return samples, out_rate


def _audio_chunks(frames: list[av.AudioFrame], mono: bool) -> Iterator[np.ndarray]:
    for frame in frames:
        chunk = frame.to_ndarray().astype(np.float32, copy=False)  # (channels, n), planar
        yield chunk.mean(axis=0, keepdims=True, dtype=np.float32) if mono else chunk
