"""Small clips made with PyAV for the tests: what each frame shows is known exactly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def index_image(index: int, size: tuple[int, int]) -> np.ndarray:
    """An (h, w, 3) picture whose two halves spell out ``index`` in grey levels (0..63)."""
    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2] = 16 + 28 * (index // 8)
    image[:, width // 2 :] = 16 + 28 * (index % 8)
    return image


def read_index(image: np.ndarray) -> int:
    """The index an :func:`index_image` shows, read back after lossy coding."""
    width = image.shape[1]
    high = round((float(image[:, : width // 4].mean()) - 16) / 28)
    low = round((float(image[:, 3 * width // 4 :].mean()) - 16) / 28)
    return 8 * high + low


def make_clip(
    path: Path,
    *,
    frames: int = 25,
    size: tuple[int, int] = (96, 64),
    rate: Fraction | int = 25,
    time_base: Fraction = Fraction(1, 12800),
    pts: list[int] | None = None,
    rotation: int = 0,
    audio: np.ndarray | None = None,
    audio_rate: int = 44100,
    video: bool = True,
    keyint: int = 12,
    faststart: bool = False,
    colors: tuple[int, int] | None = None,
    picture=None,
) -> Path:
    """Encode a small H.264 clip (and optional AAC audio).

    Frames show their index (see :func:`read_index`) unless ``picture(i, size)`` draws them.
    ``colors`` = (colorspace, range) converts and tags them, e.g. (1, 2) for BT.709 full range.
    """
    picture = picture or index_image
    fmt = "mov" if path.suffix == ".mov" else "mp4"
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = size
            vstream.pix_fmt = "yuv420p"
            vstream.time_base = time_base
            vstream.codec_context.time_base = time_base
            vstream.codec_context.options = {"g": str(keyint), "crf": "12"}
            if rotation:
                vstream.set_display_rotation(rotation)
            if colors:
                vstream.codec_context.colorspace, vstream.codec_context.color_range = colors
        if audio is not None:
            astream = container.add_stream("aac", rate=audio_rate)
            astream.layout = "mono" if audio.shape[0] == 1 else "stereo"

        if vstream is not None:
            stamps = pts or [round(i / Fraction(rate) / time_base) for i in range(frames)]
            for i, stamp in enumerate(stamps):
                frame = av.VideoFrame.from_ndarray(picture(i, size), format="rgb24")
                if colors:
                    frame = frame.reformat(
                        format="yuv420p", dst_colorspace="ITU709", dst_color_range=colors[1]
                    )
                frame.pts, frame.time_base = int(stamp), time_base
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            encode_audio(container, astream, audio, audio_rate)
    return path


def encode_audio(container, stream, samples: np.ndarray, rate: int) -> None:
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    for start in range(0, samples.shape[1], 1024):
        chunk = np.ascontiguousarray(samples[:, start : start + 1024], dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def gray_video(path: Path, seconds: float = 1.0, fps: int = 25) -> Path:
    """A plain grey clip: valid H.264 in MP4, with no face anywhere."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        image = np.full((128, 128, 3), 128, dtype=np.uint8)
        for _ in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
