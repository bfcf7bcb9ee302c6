"""The export phase: plan the output's timeline, then encode frames and the new voice into it.

The output keeps the source's size, frame timing, display rotation and colour tags. Frames
arrive one at a time (RGB arrays for the ones the generator re-rendered, decoded frames for
the rest) and are encoded as they come, with the audio muxed alongside, so memory does not
grow with the video's length. The file appears at its path only once it is complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from .errors import InternalError, InvalidFormatError, InvalidOptionError
from .media import (
    PathLike,
    VideoInfo,
    frame_to_rgb,
    iter_frame_sequence,
    load_audio,
    probe_video,
)

logger = logging.getLogger(__name__)

LENGTH_POLICIES = ("video", "audio")
OUTPUT_CONTAINERS = {".mp4": "mp4", ".mov": "mov"}
# Sample rates the AAC encoder accepts; any other rate is resampled to 48 kHz.
AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
_AUDIO_FRAME = 1024  # samples per AAC frame
_RESAMPLE_CHUNK = 1 << 16  # input samples handed to the resampler at once
# FFmpeg's default channel layout for each channel count (how load_audio's rows are ordered).
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# AVColorSpace tag -> the swscale matrix that converts RGB back to that YUV.
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "SMPTE170M", 7: "SMPTE240M", 9: "BT2020"}
_CRF_ENCODERS = ("libx264", "libx265")


X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip


@dataclass(frozen=True)
class EncodeSettings:
    """How the output video and audio are encoded."""

    crf: int = 18  # x264 constant rate factor: 0 lossless, 18 visually lossless, 51 worst
    preset: str = "veryfast"  # x264 speed/size trade-off, "ultrafast" .. "veryslow"
    codec: str = "libx264"  # video encoder
    pix_fmt: str = "yuv420p"  # pixel format of the encoded video; 4:2:0 plays everywhere
    audio_codec: str = "aac"  # audio encoder
    audio_bitrate: int = 192_000  # audio bits per second
    threads: int = 0  # video encoder threads; 0 lets the encoder choose

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise InvalidOptionError(f"crf must be between 0 and 51, got {self.crf!r}")
        if self.codec in _CRF_ENCODERS and self.preset not in X264_PRESETS:
            raise InvalidOptionError(
                f"preset must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}"
            )
        if self.audio_bitrate <= 0 or self.threads < 0:
            raise InvalidOptionError(
                f"audio_bitrate must be positive and threads at least 0, "
                f"got {self.audio_bitrate!r} and {self.threads!r}"
            )


def video_codec_options(settings: EncodeSettings) -> dict[str, str]:
    """The private options handed to the video encoder (quality and speed)."""
    if settings.codec in _CRF_ENCODERS:
        return {"crf": str(settings.crf), "preset": settings.preset}
    # Other encoders do not know crf/preset; they run on their own defaults.
    return {}


def muxer_options(container_format: str) -> dict[str, str]:
    """Options for the output container: the index goes first, so playback starts at once."""
    if container_format in ("mp4", "mov"):
        return {"movflags": "+faststart"}
    return {}


# --- Timeline -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """Which source frame each output frame shows, and when."""

    source_index: np.ndarray  # (n,) int64 source frame shown by each output frame
    times: np.ndarray  # (n,) float64 seconds at which each output frame starts
    pts: np.ndarray  # (n,) int64 timestamps of the output frames, in time_base
    time_base: Fraction  # of pts; the muxer may refine it to an exact multiple
    duration: float  # seconds, first frame start to last frame end (the audio is cut to it)

    def __len__(self) -> int:
        return len(self.source_index)


def plan_timeline(info: VideoInfo, audio_duration: float, policy: str = "video") -> Timeline:
    """Plan the output frames for a length policy.

    ``"video"``: the source frames with their own timestamps (re-based to start at 0), so
    non-integer and variable frame rates keep their exact timing; the audio is then cut or
    padded with silence to the video's length. ``"audio"``: as long as the audio; a shorter
    audio cuts the video, a longer one continues it by bouncing (N-2 down to 0, then 1 up
    to N-1, ...) at the average frame duration.

    Raises:
        InvalidOptionError: an unknown policy, or a non-positive audio length for "audio".
    """
    if policy not in LENGTH_POLICIES:
        raise InvalidOptionError(
            f"length policy must be one of {', '.join(LENGTH_POLICIES)}, got {policy!r}"
        )
    n = info.frame_count
    pts = info.frame_pts - info.frame_pts[0]
    timeline = Timeline(
        np.arange(n, dtype=np.int64), info.frame_times, pts, info.time_base, info.duration
    )
    if policy == "video":
        return timeline

    if not math.isfinite(audio_duration) or audio_duration <= 0:
        raise InvalidOptionError(f"the audio must be longer than 0 s, got {audio_duration!r}")
    if audio_duration <= info.duration:
        return _cut(timeline, audio_duration)
    return _extend(timeline, audio_duration, info.duration / n)


def _cut(timeline: Timeline, duration: float) -> Timeline:
    """The frames that start before ``duration`` (at least one); it ends where the next starts."""
    keep = max(1, int(np.searchsorted(timeline.times, duration - 1e-6)))
    end = timeline.times[keep] if keep < len(timeline) else timeline.duration
    return Timeline(
        timeline.source_index[:keep],
        timeline.times[:keep],
        timeline.pts[:keep],
        timeline.time_base,
        float(end),
    )


def _extend(timeline: Timeline, duration: float, step: float) -> Timeline:
    """Bounce the source frames on past its end until the audio is covered."""
    n = len(timeline)
    extra = max(1, math.ceil((duration - timeline.duration) / step - 1e-6))
    ideal = timeline.duration + step * np.arange(extra, dtype=np.float64)
    pts = np.round(ideal / float(timeline.time_base)).astype(np.int64)
    times = pts * float(timeline.time_base)  # when the frames really show, after rounding

    all_pts = np.concatenate([timeline.pts, pts])
    if np.any(np.diff(all_pts) <= 0):
        raise InternalError(f"time base {timeline.time_base} is too coarse for {1 / step:.3f} fps")
    return Timeline(
        bounce_indices(n, n + extra),
        np.concatenate([timeline.times, times]),
        all_pts,
        timeline.time_base,
        float(times[-1] + step),
    )


def bounce_indices(frame_count: int, length: int) -> np.ndarray:
    """(length,) int64: 0..N-1, then N-2 down to 0, then 1 up to N-1, and so on."""
    if frame_count <= 1:
        return np.zeros(length, dtype=np.int64)
    period = 2 * (frame_count - 1)
    phase = np.arange(length, dtype=np.int64) % period
    return np.where(phase < frame_count, phase, period - phase)


# --- Writing --------------------------------------------------------------------------------


class VideoWriter:
    """Encode a timeline's frames (and a new audio track) into a video file, atomically.

    Use it as a context manager and call :meth:`write` once per timeline frame, in order::

        with VideoWriter("out.mp4", info, timeline, audio=(samples, rate)) as writer:
            for image in images:
                writer.write(image)

    The file is written under a temporary name in the output's folder and renamed into
    place on a clean exit; after an exception nothing exists at the output path (and a file
    that was there before is left untouched).

    Args:
        output: ``.mp4`` (or no extension) for MP4, ``.mov`` for QuickTime.
        info: the source video; the output keeps its size, rotation and colour tags.
        timeline: from :func:`plan_timeline`; it sets the pts of each written frame.
        settings: encoder settings.
        audio: ``(samples, rate)``, samples (channels, n) or (n,) float in [-1, 1], or None
            for a video without sound. Encoded as AAC at its own rate when AAC supports it
            (else 48 kHz), mono or stereo as given, cut or padded to the timeline.
    """

    def __init__(
        self,
        output: PathLike,
        info: VideoInfo,
        timeline: Timeline,
        settings: EncodeSettings = EncodeSettings(),  # noqa: B008 (frozen, so safe to share)
        audio: tuple[np.ndarray, int] | None = None,
    ) -> None:
        self.output = Path(output)
        self.info = info
        self.timeline = timeline
        self.settings = settings
        self.container_format = _container_format(self.output)
        self.frames_written = 0
        self._audio = None if audio is None else _AudioTrack(*audio, duration=timeline.duration)
        self._container: av.container.OutputContainer | None = None
        self._video: av.VideoStream | None = None
        self._temp: Path | None = None
        self._frame_ticks: dict[int, int] = {}  # pts -> this frame's duration, until muxed
        self._to_yuv = VideoReformatter()
        self._to_rgb = VideoReformatter()
        self._check_output()

    def __enter__(self) -> VideoWriter:
        self.open()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temporary file and set up its streams."""
        # A hidden name beside the output, so the final rename stays on one file system; av
        # creates it, so it gets the usual permissions (mkstemp would make it private).
        temp = self.output.with_name(f".{self.output.stem}.{secrets.token_hex(4)}.part")
        self._temp = temp
        try:
            self._container = av.open(
                str(temp),
                "w",
                format=self.container_format,
                options=muxer_options(self.container_format),
            )
            self._video = _add_video_stream(
                self._container, self.info, self.timeline, self.settings
            )
            if self._audio is not None:
                self._audio.add_stream(self._container, self.settings)
        except BaseException:
            self.abort()
            raise
        logger.debug("writing %s via %s (%d frames)", self.output, temp, len(self.timeline))

    def write(self, frame: np.ndarray | av.VideoFrame) -> None:
        """Encode the next timeline frame: an (h, w, 3) uint8 RGB array or a decoded frame."""
        if self._container is None:
            raise InternalError("VideoWriter.write called outside its with-block")
        index = self.frames_written
        if index >= len(self.timeline):
            raise InternalError(f"the timeline has {len(self.timeline)} frames; got one more")

        video_frame = self._to_video_frame(frame)
        video_frame.pts = int(self.timeline.pts[index])
        self._frame_ticks[video_frame.pts] = self._ticks(index)
        video_frame.time_base = self.timeline.time_base
        try:
            self._mux(self._video.encode(video_frame))
            # Audio follows the video to the end of this frame, so the muxer interleaves
            # as it goes and neither stream piles up in memory.
            if self._audio is not None:
                last = index + 1 == len(self.timeline)
                end = self.timeline.duration if last else self.timeline.times[index + 1]
                self._mux(self._audio.encode_until(end))
        except (av.FFmpegError, OSError) as exc:
            raise InternalError(
                f"cannot encode frame {index} of {self.output.name}: {exc}"
            ) from exc
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoders, finish the file and move it into place."""
        if self._container is None:
            return
        try:
            if self.frames_written != len(self.timeline):
                raise InternalError(
                    f"the timeline has {len(self.timeline)} frames, {self.frames_written} written"
                )
            self._mux(self._video.encode(None))
            if self._audio is not None:
                self._mux(self._audio.encode_until(self.timeline.duration))
                self._mux(self._audio.flush())
            self._container.close()
            self._container = None
            os.replace(self._temp, self.output)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, av.FFmpegError | OSError):
                raise InternalError(f"cannot finish {self.output.name}: {exc}") from exc
            raise
        logger.debug(
            "wrote %s: %d frames, %.3f s", self.output, self.frames_written, self.timeline.duration
        )

    def abort(self) -> None:
        """Drop the partial output: close the container and delete the temporary file."""
        if self._container is not None:
            # The file is being thrown away; a trailer that fails to write does not matter.
            with contextlib.suppress(av.FFmpegError, OSError):
                self._container.close()
            self._container = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None

    def _check_output(self) -> None:
        folder = self.output.parent
        if not folder.is_dir():
            raise InvalidOptionError(f"the output folder {folder} does not exist")
        source = self.info.path
        if source.exists() and self.output.exists() and os.path.samefile(source, self.output):
            raise InvalidOptionError(f"the output {self.output} would overwrite the source video")

    def _to_video_frame(self, frame: np.ndarray | av.VideoFrame) -> av.VideoFrame:
        """The frame in the encoder's size and pixel format, converted with the source matrix."""
        width, height = self._video.width, self._video.height
        if isinstance(frame, av.VideoFrame):
            if (frame.width, frame.height) != (self.info.width, self.info.height):
                raise InvalidOptionError(
                    f"frame is {frame.width}x{frame.height}, the video {self.info.width}x"
                    f"{self.info.height}"
                )
            if frame.format.name == self.settings.pix_fmt and (frame.width, frame.height) == (
                width,
                height,
            ):
                # Re-encode the decoded picture as it is: no round trip through RGB.
                frame.pict_type = PictureType.NONE
                return frame
            frame = frame_to_rgb(frame, reformatter=self._to_rgb)

        image = np.asarray(frame)
        if image.shape != (self.info.height, self.info.width, 3) or image.dtype != np.uint8:
            raise InvalidOptionError(
                f"frame must be ({self.info.height}, {self.info.width}, 3) uint8 RGB, "
                f"got {image.shape} {image.dtype}"
            )
        if image.shape[:2] != (height, width):
            # 4:2:0 needs even sides: repeat the last row/column rather than lose one.
            pad = ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0))
            image = np.pad(image, pad, mode="edge")

        colors = self.info.colors
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        # One scaler for the whole file: building one per frame costs a few ms at 1080p.
        return self._to_yuv.reformat(
            rgb,
            format=self.settings.pix_fmt,
            dst_colorspace=_SWS_MATRIX.get(colors.colorspace),
            dst_color_range=colors.color_range if colors.color_range in (1, 2) else None,
        )

    def _ticks(self, index: int) -> int:
        """Duration of timeline frame ``index`` in the time base: up to the next frame's pts."""
        pts = self.timeline.pts
        if index + 1 < len(pts):
            return int(pts[index + 1] - pts[index])
        end = round(self.timeline.duration / float(self.timeline.time_base))
        return max(int(end - pts[index]), 1)

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            # The encoder gives every frame the average duration; the timeline knows each
            # frame's own, and the last one sets the stream's length (and so its frame rate).
            if packet.stream is self._video and packet.pts is not None:
                packet.duration = self._frame_ticks.pop(int(packet.pts), packet.duration)
        if packets:
            self._container.mux(packets)


def _container_format(output: Path) -> str:
    suffix = output.suffix.lower()
    if suffix == "":
        return "mp4"
    if suffix not in OUTPUT_CONTAINERS:
        raise InvalidFormatError(
            f"cannot write {output.name}: the output must be one of "
            f"{', '.join(OUTPUT_CONTAINERS)}, got {suffix}",
            hint="name the output .mp4 (or .mov)",
        )
    return OUTPUT_CONTAINERS[suffix]


def _add_video_stream(
    container: av.container.OutputContainer,
    info: VideoInfo,
    timeline: Timeline,
    settings: EncodeSettings,
) -> av.VideoStream:
    stream = container.add_stream(settings.codec, rate=info.fps)
    stream.width = info.width + info.width % 2
    stream.height = info.height + info.height % 2
    stream.pix_fmt = settings.pix_fmt
    stream.time_base = timeline.time_base

    context = stream.codec_context
    context.time_base = timeline.time_base
    context.thread_count = settings.threads
    context.options = video_codec_options(settings)
    context.colorspace = info.colors.colorspace
    context.color_range = info.colors.color_range
    context.color_primaries = info.colors.color_primaries
    context.color_trc = info.colors.color_trc

    if info.rotation:
        stream.set_display_rotation(info.rotation)
    return stream


class _AudioTrack:
    """The new voice, resampled once to an AAC rate and encoded in 1024-sample frames."""

    def __init__(self, samples: np.ndarray, rate: int, *, duration: float) -> None:
        self.samples, self.rate, self.layout = _prepare_audio(samples, int(rate))
        self.total = int(round(duration * self.rate))  # samples in the output, after cut/pad
        self.position = 0  # samples encoded so far
        self.stream: av.AudioStream | None = None

    def add_stream(self, container: av.container.OutputContainer, settings: EncodeSettings):
        self.stream = container.add_stream(settings.audio_codec, rate=self.rate)
        self.stream.layout = self.layout
        self.stream.time_base = Fraction(1, self.rate)
        self.stream.codec_context.bit_rate = settings.audio_bitrate

    def encode_until(self, seconds: float) -> list[av.Packet]:
        """Packets for whole frames up to ``seconds`` (all the rest when it is the end)."""
        target = min(self.total, int(round(seconds * self.rate)))
        packets: list[av.Packet] = []
        while self.position < target:
            size = min(_AUDIO_FRAME, self.total - self.position)
            if self.position + size > target and target < self.total:
                break  # wait for the rest of this frame
            packets.extend(self.stream.encode(self._frame(self.position, size)))
            self.position += size
        return packets

    def flush(self) -> list[av.Packet]:
        return self.stream.encode(None)

    def _frame(self, start: int, size: int) -> av.AudioFrame:
        chunk = self.samples[:, start : start + size]
        if chunk.shape[1] < size:  # past the end of the voice: silence
            chunk = np.pad(chunk, ((0, 0), (0, size - chunk.shape[1])))
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout=self.layout
        )
        frame.sample_rate = self.rate
        frame.pts = start
        frame.time_base = Fraction(1, self.rate)
        return frame


def _prepare_audio(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int, str]:
    """(channels, n) float32 at an AAC rate, mono or stereo, and its layout name."""
    samples = np.asarray(samples)
    if samples.ndim == 1:
        samples = samples[None]
    if samples.ndim != 2 or not 1 <= samples.shape[0] <= len(_LAYOUTS) or rate <= 0:
        raise InvalidOptionError(
            f"audio must be (channels, samples) with 1-8 channels and a positive rate, "
            f"got shape {samples.shape} at {rate} Hz"
        )
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
    samples = samples.astype(np.float32, copy=False)

    channels = samples.shape[0]
    out_rate = rate if rate in AAC_RATES else 48000
    layout = "mono" if channels == 1 else "stereo"
    if out_rate == rate and channels <= 2:
        return samples, rate, layout

    # Resample (and mix down more than two channels) with FFmpeg's resampler.
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=out_rate)
    chunks: list[np.ndarray] = []
    for start in range(0, samples.shape[1], _RESAMPLE_CHUNK):
        chunk = np.ascontiguousarray(samples[:, start : start + _RESAMPLE_CHUNK])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=_LAYOUTS[channels])
        frame.sample_rate = rate
        frame.pts = start
        chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
    chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    logger.debug("audio resampled from %d Hz x%d to %d Hz %s", rate, channels, out_rate, layout)
    out = np.concatenate(chunks, axis=1) if chunks else np.zeros((1 if channels == 1 else 2, 0))
    return out.astype(np.float32, copy=False), out_rate, layout


# --- Baseline -------------------------------------------------------------------------------


def transcode_passthrough(
    video: PathLike,
    output: PathLike,
    *,
    settings: EncodeSettings = EncodeSettings(),  # noqa: B008 (frozen, so safe to share)
    audio: PathLike | tuple[np.ndarray, int] | None = None,
    policy: str = "video",
) -> int:
    """Re-encode a video through the export path with nothing dubbed; returns frames written.

    Every frame is decoded, converted to RGB and encoded through :class:`VideoWriter`, the
    way the dubbing pipeline treats the frames it changes; this is the baseline that
    quality and speed measurements compare a dub against.

    Args:
        video: the source video.
        output: where to write (``.mp4`` or ``.mov``).
        settings: encoder settings.
        audio: a file to take the voice from, ``(samples, rate)``, or None for the video's
            own soundtrack (no audio when it has none).
        policy: length policy, see :func:`plan_timeline`.
    """
    info = probe_video(video)
    if isinstance(audio, str | os.PathLike):
        audio = load_audio(audio)
    elif audio is None and info.has_audio:
        audio = load_audio(info.path)

    audio_duration = info.duration if audio is None else audio[0].shape[-1] / audio[1]
    timeline = plan_timeline(info, audio_duration, policy)
    to_rgb = VideoReformatter()
    with VideoWriter(output, info, timeline, settings, audio=audio) as writer:
        for _, frame in iter_frame_sequence(info, timeline.source_index):
            writer.write(frame_to_rgb(frame, reformatter=to_rgb))
    return writer.frames_written
