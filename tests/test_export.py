"""The export phase: encoder settings, timelines, the atomic writer and the pass-through."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path

import av
import clips
import numpy as np
import pytest

from lipsync.cache import file_digest
from lipsync.errors import InternalError, InvalidFormatError, InvalidOptionError
from lipsync.export import (
    LENGTH_POLICIES,
    EncodeSettings,
    VideoWriter,
    bounce_indices,
    muxer_options,
    plan_timeline,
    transcode_passthrough,
    video_codec_options,
)
from lipsync.media import (
    VideoInfo,
    iter_frame_sequence,
    iter_frames,
    load_audio,
    probe_video,
)

# --- Helpers ----------------------------------------------------------------------------------


def make_clip(path: Path, **options) -> Path:
    """A small H.264 clip of moving stripes unless another ``picture`` is given."""
    options.setdefault("picture", stripes)
    return clips.make_clip(path, **options)


def stripes(index: int, size: tuple[int, int]) -> np.ndarray:
    """Coloured stripes that move one pixel per frame: detail that an encoder must keep."""
    width, height = size
    x = (np.arange(width) + index) % 16
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.where(x < 8, 200, 40)[None, :]
    image[..., 1] = np.linspace(30, 220, height, dtype=np.uint8)[:, None]
    image[..., 2] = 90
    return image


def two_patches(index: int, size: tuple[int, int]) -> np.ndarray:
    """Two flat colours side by side: any matrix mix-up shifts them visibly."""
    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2] = (200, 60, 50)
    image[:, width // 2 :] = (40, 170, 210)
    return image


def voice(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """(1, n) float32: noise-like tones under a syllable envelope, so correlation is unique."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freqs = rng.uniform(150, 3000, size=12)
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs) / 12
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.3 * t) ** 2
    return (0.6 * tones * envelope)[None].astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray, max_lag: int = 160) -> tuple[float, int]:
    """Best normalised cross-correlation of two 1-D signals and its lag in samples."""
    n = min(len(a), len(b)) - 2 * max_lag
    reference = a[max_lag : max_lag + n]
    best, best_lag = -1.0, 0
    for lag in range(-max_lag, max_lag + 1):
        other = b[max_lag + lag : max_lag + lag + n]
        score = float(
            np.dot(reference, other) / (np.linalg.norm(reference) * np.linalg.norm(other))
        )
        if score > best:
            best, best_lag = score, lag
    return best, best_lag


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def fake_info(times: list[float], time_base: Fraction = Fraction(1, 15360)) -> VideoInfo:
    """A VideoInfo with given frame times and no file behind it, for planning tests."""
    pts = np.round(np.asarray(times) / float(time_base)).astype(np.int64)
    step = times[-1] - times[-2]
    return VideoInfo(
        path=Path("nowhere.mp4"),
        width=64,
        height=64,
        rotation=0,
        fps=Fraction(round((len(times) - 1) / times[-1] * 1000), 1000),
        time_base=time_base,
        frame_pts=pts,
        frame_times=pts * float(time_base),
        duration=float(pts[-1] * time_base + step),
        codec="h264",
    )


def write_all(writer: VideoWriter, info: VideoInfo, *, as_rgb: bool = True) -> None:
    for _, frame in iter_frame_sequence(info, writer.timeline.source_index):
        writer.write(frame.to_ndarray(format="rgb24") if as_rgb else frame)


# --- Settings -----------------------------------------------------------------------------------


def test_video_codec_options() -> None:
    assert video_codec_options(EncodeSettings()) == {"crf": "18", "preset": "veryfast"}
    slow = EncodeSettings(crf=23, preset="slow", codec="libx265")
    assert video_codec_options(slow) == {"crf": "23", "preset": "slow"}
    assert video_codec_options(EncodeSettings(codec="mpeg4")) == {}
    assert muxer_options("mp4") == {"movflags": "+faststart"}


def test_encode_settings_reject_bad_values() -> None:
    with pytest.raises(InvalidOptionError, match="crf"):
        EncodeSettings(crf=60)
    with pytest.raises(ValueError, match="threads"):
        EncodeSettings(threads=-1)


# --- Timelines ----------------------------------------------------------------------------------


def test_bounce_indices() -> None:
    assert bounce_indices(4, 12).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    assert bounce_indices(1, 3).tolist() == [0, 0, 0]


def test_video_policy_keeps_source_timing() -> None:
    info = fake_info([0.0, 1 / 30, 2 / 30, 4 / 30, 5 / 30])  # one frame held twice as long
    info = dataclasses.replace(info, frame_pts=info.frame_pts + 700)  # starts late
    timeline = plan_timeline(info, audio_duration=9.0, policy="video")
    assert timeline.source_index.tolist() == [0, 1, 2, 3, 4]
    assert timeline.pts.tolist() == [0, 512, 1024, 2048, 2560]
    assert timeline.time_base == Fraction(1, 15360)
    assert timeline.duration == pytest.approx(info.duration)


def test_audio_policy_bounces_past_the_end() -> None:
    info = fake_info([i / 25 for i in range(10)], Fraction(1, 12800))  # 0.4 s
    timeline = plan_timeline(info, audio_duration=1.0, policy="audio")
    assert len(timeline) == 25
    assert timeline.source_index.tolist() == bounce_indices(10, 25).tolist()
    assert np.allclose(np.diff(timeline.times), 0.04)
    assert np.diff(timeline.pts).tolist() == [512] * 24
    assert 1.0 - 1e-9 <= timeline.duration < 1.0 + 0.04


def test_audio_policy_cuts_a_longer_video() -> None:
    info = fake_info([i / 25 for i in range(50)])  # 2.0 s
    timeline = plan_timeline(info, audio_duration=0.5, policy="audio")
    assert timeline.source_index.tolist() == list(range(13))  # frames starting before 0.5 s
    assert timeline.duration == pytest.approx(0.52, abs=1e-4)


def test_unknown_policy_names_the_allowed_ones() -> None:
    info = fake_info([0.0, 0.04])
    with pytest.raises(ValueError, match="video, audio"):
        plan_timeline(info, 1.0, "longest")
    assert LENGTH_POLICIES == ("video", "audio")


# --- Writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "audio_seconds"), [("video", 1.5), ("video", 0.6), ("audio", 1.9), ("audio", 0.5)]
)
def test_length_policy_sets_frames_and_duration(tmp_path, policy, audio_seconds) -> None:
    source = make_clip(tmp_path / "src.mp4", frames=30)  # 1.2 s at 25 fps
    info = probe_video(source)
    timeline = plan_timeline(info, audio_seconds, policy)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, timeline, audio=(voice(audio_seconds, 44100), 44100)) as writer:
        write_all(writer, info)

    result = probe_video(out)
    expected = 1.2 if policy == "video" else audio_seconds
    assert abs(result.duration - expected) <= 1 / 25 + 1e-6
    assert result.frame_count == len(timeline) == round(result.duration * 25)
    assert result.fps == 25
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert abs(float(audio.duration * audio.time_base) - result.duration) < 1 / 25


def test_output_audio_follows_the_new_voice(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "src.mp4", frames=50)
    info = probe_video(source)
    speech = voice(2.0, 22050, seed=3)  # 22.05 kHz: an AAC rate, kept
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, plan_timeline(info, 2.0), audio=(speech, 22050)) as writer:
        write_all(writer, info)

    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels, stream.codec_context.name) == (22050, 1, "aac")
    decoded, _ = load_audio(out, rate=16000, mono=True)
    original, _ = load_audio_array(speech, 22050)
    score, lag = similarity(original, decoded[0])
    assert score > 0.9
    assert abs(lag) <= 16  # within 1 ms


def load_audio_array(samples: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """Resample an in-memory signal to 16 kHz mono with the same resampler load_audio uses."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=16000)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    chunks = [f.to_ndarray() for f in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(chunks, axis=1)[0], 16000


def test_silent_voice_gives_silent_audio(tmp_path: Path) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=25))
    out = tmp_path / "out.mp4"
    silence = np.zeros((1, 48000), np.float32)
    with VideoWriter(out, info, plan_timeline(info, 1.0), audio=(silence, 48000)) as writer:
        write_all(writer, info)
    decoded, _ = load_audio(out)
    assert decoded.shape[1] == pytest.approx(48000, abs=1024)
    assert np.abs(decoded).max() < 1e-4


@pytest.mark.parametrize(
    ("rate", "channels", "expected"), [(37800, 1, (48000, 1)), (44100, 2, (44100, 2))]
)
def test_audio_rate_and_channels(tmp_path, rate, channels, expected) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=25))
    samples = np.repeat(voice(1.0, rate), channels, axis=0)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, plan_timeline(info, 1.0), audio=(samples, rate)) as writer:
        write_all(writer, info)
    with av.open(str(out)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == expected


def test_non_integer_rate_keeps_exact_timing(tmp_path: Path) -> None:
    rate = Fraction(1350, 61)
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=40, rate=rate, time_base=1 / rate))
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, plan_timeline(info, 0.0)) as writer:
        write_all(writer, info)

    result = probe_video(out)
    assert result.frame_count == 40
    assert result.fps == rate
    # The muxer may pick a finer time base, but every timestamp must stay exact.
    assert [Fraction(int(p)) * result.time_base for p in result.frame_pts] == [
        Fraction(int(p)) * info.time_base for p in info.frame_pts
    ]


@pytest.mark.parametrize("as_rgb", [True, False], ids=["rgb", "decoded-frame"])
def test_variable_frame_rate_keeps_timestamps(tmp_path: Path, as_rgb: bool) -> None:
    pts = [0, 512, 1024, 2048, 2560, 3584, 4096, 4608, 6144, 6656, 7168]
    source = make_clip(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 15360), rate=30)
    info = probe_video(source)
    out = tmp_path / "out.mov"
    with VideoWriter(out, info, plan_timeline(info, 0.0)) as writer:
        write_all(writer, info, as_rgb=as_rgb)

    result = probe_video(out)
    assert result.frame_pts.tolist() == pts
    assert out.read_bytes()[8:12] == b"qt  "  # a QuickTime file, from the extension


@pytest.mark.parametrize("as_rgb", [True, False], ids=["rgb", "decoded-frame"])
def test_rotation_is_kept(tmp_path: Path, as_rgb: bool) -> None:
    info = probe_video(make_clip(tmp_path / "turned.mp4", rotation=90))
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, plan_timeline(info, 0.0)) as writer:
        write_all(writer, info, as_rgb=as_rgb)
    result = probe_video(out)
    assert result.rotation == 90
    assert (result.width, result.height) == (96, 64)


@pytest.mark.parametrize("colors", [(1, 2), (1, 1), None], ids=["709-full", "709-tv", "untagged"])
def test_colour_tags_and_colours_are_kept(tmp_path: Path, colors) -> None:
    source = make_clip(tmp_path / "src.mp4", colors=colors, picture=two_patches)
    info = probe_video(source)
    out = tmp_path / "out.mp4"
    transcode_passthrough(source, out)

    result = probe_video(out)
    assert result.colors == info.colors
    # Inside the patches: 8-bit YUV rounding moves a level or two; a wrong matrix moves ~11.
    before = next(iter_frames(info)).images[:, 16:48, 8:40].astype(np.float64)
    after = next(iter_frames(result)).images[:, 16:48, 8:40].astype(np.float64)
    assert np.abs(before - after).mean(axis=(0, 1, 2)).max() < 3.0


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=5))
    odd = dataclasses.replace(info, width=95, height=63)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, odd, plan_timeline(odd, 0.0)) as writer:
        for i in range(5):
            writer.write(stripes(i, (95, 63)))
    result = probe_video(out)
    assert (result.width, result.height) == (96, 64)
    last = next(iter_frames(result)).images[0]
    assert psnr(last[:63, :95], stripes(0, (95, 63))) > 30


def test_audio_is_muxed_as_it_goes(tmp_path: Path, monkeypatch) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=75))  # 3 s
    out = tmp_path / "out.mp4"
    muxed: list[tuple[str, int]] = []  # (stream type, video frames written by then)
    original = VideoWriter._mux

    def recording_mux(self, packets):
        muxed.extend((p.stream.type, self.frames_written) for p in packets)
        original(self, packets)

    monkeypatch.setattr(VideoWriter, "_mux", recording_mux)
    with VideoWriter(out, info, plan_timeline(info, 3.0), audio=(voice(3.0, 44100), 44100)) as w:
        write_all(w, info)

    # Audio held back to the end would pile up in memory on a long video.
    audio_at = [written for kind, written in muxed if kind == "audio"]
    assert len(audio_at) >= 3 * 44100 // 1024
    assert audio_at[0] <= 2  # the first AAC frame goes out with the first video frames
    assert sum(written < 75 for written in audio_at) > 0.9 * len(audio_at)

    with av.open(str(out)) as container:
        kinds = [p.stream.type for p in container.demux() if p.size]
    assert kinds.index("audio") < kinds.count("video") // 2  # interleaved in the file too


# --- Atomic output and failures ----------------------------------------------------------------


def test_failure_mid_write_leaves_no_file(tmp_path: Path) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=25))
    before = file_digest(info.path)
    out = tmp_path / "out.mp4"
    writer = VideoWriter(out, info, plan_timeline(info, 0.0))
    with pytest.raises(RuntimeError, match="generator broke"), writer:
        for index, frame in iter_frame_sequence(info, range(10)):
            writer.write(frame)
            if index == 6:
                raise RuntimeError("generator broke")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.mp4"]
    assert file_digest(info.path) == before


def test_failure_keeps_a_previous_output(tmp_path: Path) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=25))
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous result")
    writer = VideoWriter(out, info, plan_timeline(info, 0.0))
    with pytest.raises(InternalError, match="25 frames, 3 written"), writer:
        for _, frame in iter_frame_sequence(info, range(3)):
            writer.write(frame)
    assert out.read_bytes() == b"the previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "src.mp4"]


def test_bad_outputs_and_frames_are_refused(tmp_path: Path) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=5))
    timeline = plan_timeline(info, 0.0)
    with pytest.raises(InvalidFormatError, match=r"\.mp4, \.mov"):
        VideoWriter(tmp_path / "out.avi", info, timeline)
    with pytest.raises(InvalidOptionError, match="overwrite the source"):
        VideoWriter(info.path, info, timeline)
    with pytest.raises(InvalidOptionError, match="does not exist"):
        VideoWriter(tmp_path / "missing" / "out.mp4", info, timeline)
    writer = VideoWriter(tmp_path / "out.mp4", info, timeline)
    with pytest.raises(InvalidOptionError, match=r"\(64, 96, 3\) uint8"), writer:
        writer.write(np.zeros((10, 10, 3), np.uint8))
    assert not (tmp_path / "out.mp4").exists()


# --- The pass-through baseline ----------------------------------------------------------------


def test_passthrough_bounces_for_a_long_voice(tmp_path: Path) -> None:
    info = probe_video(make_clip(tmp_path / "src.mp4", frames=20))  # 0.8 s
    out = tmp_path / "out.mp4"
    written = transcode_passthrough(
        info.path, out, audio=(voice(2.0, 44100), 44100), policy="audio"
    )
    result = probe_video(out)
    assert written == result.frame_count == 50
    # Output frame 25 shows source frame 13 (after frame 19 the run goes back down to 0).
    source = np.concatenate([batch.images for batch in iter_frames(info)])
    shown = np.concatenate([batch.images for batch in iter_frames(result)])
    assert psnr(shown[25], source[13]) > 35
    assert psnr(shown[25], source[12]) < 25


def test_passthrough_of_a_real_clip(shared_media: Path, tmp_path: Path) -> None:
    source = shared_media / "talk1.mp4"
    before = file_digest(source)
    out = tmp_path / "talk1.mp4"
    written = transcode_passthrough(source, out)

    info, result = probe_video(source), probe_video(out)
    assert written == result.frame_count == info.frame_count
    assert np.array_equal(result.frame_times, info.frame_times)
    scores = [
        psnr(a.images, b.images)
        for a, b in zip(iter_frames(info), iter_frames(result), strict=True)
    ]
    assert min(scores) >= 40.0

    original, _ = load_audio(source, rate=16000, mono=True)
    copied, _ = load_audio(out, rate=16000, mono=True)
    score, lag = similarity(original[0], copied[0])
    assert score > 0.9 and abs(lag) <= 16
    assert file_digest(source) == before


def test_unknown_preset_is_refused_before_encoding():
    from lipsync.errors import InvalidOptionError
    from lipsync.export import EncodeSettings

    with pytest.raises(InvalidOptionError, match="preset"):
        EncodeSettings(preset="warp-speed")
    assert EncodeSettings(preset="medium").preset == "medium"
