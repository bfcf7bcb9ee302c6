"""Input checks, probing, audio loading and frame sequences, on clips made here with PyAV."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from clips import encode_audio, make_clip, read_index

from lipsync import media
from lipsync.cache import file_digest
from lipsync.errors import DataCorruptedError, InvalidFormatError, LimitExceededError
from lipsync.media import (
    iter_frame_sequence,
    load_audio,
    probe_audio,
    probe_video,
    sniff_format,
    validate_video,
)

SHARED_MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"


# --- Clip makers ----------------------------------------------------------------------------


def make_mp3(path: Path, samples: np.ndarray, rate: int, *, id3: bool = True) -> Path:
    options = {} if id3 else {"id3v2_version": "0"}
    with av.open(str(path), "w", format="mp3", options=options) as container:
        stream = container.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono" if samples.shape[0] == 1 else "stereo"
        encode_audio(container, stream, samples, rate)
    return path


def make_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """16-bit PCM WAV of (channels, n) float samples."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(samples.shape[0])
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.T.tobytes())
    return path


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave_ = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.repeat(wave_[None].astype(np.float32), channels, axis=0)


# --- Sniffing and the order of checks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "isobmff"),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "isobmff"),
        (b"\x00\x00\x01\x00moov\x00\x00\x00\x6cmvhd", "isobmff"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "wav"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00\x00\x00\x00", "mp3"),  # MPEG-1 layer III frame sync
        (b"\xff\xf1\x50\x80\x00\x1f\xfc", None),  # ADTS AAC: layer bits 00, not MP3
        (b"RIFF\x24\x00\x00\x00AVI LIST", None),
        (b"hello, this is text\n", "text"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", None),  # Matroska
    ],
)
def test_sniff_format(head: bytes, kind: str | None) -> None:
    assert sniff_format(head[:16]) == kind


def test_missing_file_is_data_corrupted(tmp_path: Path) -> None:
    with pytest.raises(DataCorruptedError, match="no such file") as caught:
        validate_video(tmp_path / "absent.mp4")
    assert caught.value.code == "ERR_007"
    with pytest.raises(DataCorruptedError, match="no such file"):
        probe_audio(tmp_path / "absent.wav")


def test_wrong_extension_names_the_allowed_types(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4")
    renamed = clip.rename(tmp_path / "clip.avi")
    with pytest.raises(InvalidFormatError, match=r"\.mp4, \.mov") as caught:
        validate_video(renamed)
    assert caught.value.code == "ERR_008"
    with pytest.raises(InvalidFormatError, match=r"\.mp3, \.wav, \.mp4, \.mov"):
        probe_audio(renamed)


@pytest.mark.parametrize(("name", "check"), [("notes.mp4", "video"), ("notes.mp3", "audio")])
def test_text_renamed_as_media_is_invalid_format(tmp_path: Path, name: str, check: str) -> None:
    path = tmp_path / name
    path.write_text("this is a shopping list, not a recording\n")
    probe = validate_video if check == "video" else probe_audio
    with pytest.raises(InvalidFormatError, match="holds text"):
        probe(path)


def test_content_of_another_kind_is_invalid_format(tmp_path: Path) -> None:
    wav = make_wav(tmp_path / "voice.wav", tone(0.5, 16000), 16000)
    disguised = tmp_path / "voice.mp4"
    disguised.write_bytes(wav.read_bytes())
    with pytest.raises(InvalidFormatError, match="holds a WAV file"):
        validate_video(disguised)
    with pytest.raises(InvalidFormatError, match="not an MP4"):
        probe_audio(disguised)


def test_empty_file_is_data_corrupted(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataCorruptedError, match="empty"):
        validate_video(tmp_path / "empty.mp4")


@pytest.mark.parametrize("faststart", [False, True], ids=["index-at-end", "index-first"])
@pytest.mark.parametrize("fraction", [0.6, 0.97])
def test_truncated_mp4_is_data_corrupted(tmp_path: Path, faststart: bool, fraction: float):
    sound = tone(2.0, 44100)
    clip = make_clip(tmp_path / "clip.mp4", frames=50, audio=sound, faststart=faststart)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * fraction)])

    with pytest.raises(DataCorruptedError) as caught:
        validate_video(cut)
    assert caught.value.code == "ERR_007"
    with pytest.raises(DataCorruptedError):
        probe_audio(cut)
    with pytest.raises(DataCorruptedError):
        probe_video(cut)


def test_garbage_after_a_valid_header_is_data_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    rng = np.random.default_rng(1)
    path.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + rng.bytes(4000))
    with pytest.raises(DataCorruptedError, match="cannot open"):
        validate_video(path)


def test_missing_streams_are_data_corrupted(tmp_path: Path) -> None:
    audio_only = make_clip(tmp_path / "voice.mp4", video=False, audio=tone(1.0, 44100))
    with pytest.raises(DataCorruptedError, match="no video stream"):
        validate_video(audio_only)
    assert probe_audio(audio_only).duration == pytest.approx(1.0, abs=0.05)

    silent_video = make_clip(tmp_path / "mute.mp4")
    with pytest.raises(DataCorruptedError, match="no audio stream"):
        probe_audio(silent_video)


def test_zero_length_wav_is_data_corrupted(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "nothing.wav", np.zeros((1, 0), np.float32), 16000)
    with pytest.raises(DataCorruptedError, match="zero length"):
        probe_audio(path)
    with pytest.raises(DataCorruptedError, match="zero length"):
        load_audio(path)


def test_silence_is_valid_audio(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "quiet.wav", np.zeros((1, 24000), np.float32), 16000)
    assert probe_audio(path).duration == pytest.approx(1.5)
    samples, rate = load_audio(path, rate=8000)
    assert rate == 8000 and samples.shape == (1, 12000)
    assert not samples.any()


def test_max_duration_is_limit_exceeded(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=50)  # 2.0 s
    assert validate_video(clip, max_duration=2.5).frame_count == 50
    with pytest.raises(LimitExceededError, match=r"2\.0 s long, the limit is 1\.5 s") as caught:
        validate_video(clip, max_duration=1.5)
    assert caught.value.code == "ERR_009"

    voice = make_wav(tmp_path / "voice.wav", tone(3.0, 16000), 16000)
    with pytest.raises(LimitExceededError, match=r"3\.0 s long"):
        probe_audio(voice, max_duration=2.0)


# --- Probing video ------------------------------------------------------------------------------


def test_probe_counts_frames_and_rate(tmp_path: Path) -> None:
    info = validate_video(make_clip(tmp_path / "clip.mp4", frames=30, size=(128, 96)))
    assert (info.frame_count, info.width, info.height, info.rotation) == (30, 128, 96, 0)
    assert info.fps == 25
    assert info.duration == pytest.approx(1.2)
    assert np.allclose(np.diff(info.frame_times), 0.04)
    assert not info.has_audio


def test_probe_keeps_non_integer_rate(tmp_path: Path) -> None:
    rate = Fraction(1350, 61)  # talk1.mp4's 22.13 fps
    clip = make_clip(tmp_path / "ntsc.mp4", frames=40, rate=rate, time_base=1 / rate)
    info = validate_video(clip)
    assert info.fps == rate
    assert np.allclose(info.frame_times, np.arange(40) * 61 / 1350, atol=1e-9)
    assert info.duration == pytest.approx(40 * 61 / 1350)


def test_probe_keeps_variable_frame_timing(tmp_path: Path) -> None:
    pts = [0, 512, 1024, 2048, 2560, 3584, 4096, 4608, 6144, 6656]  # 1/30 s and 1/15 s steps
    info = validate_video(make_clip(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 15360)))
    assert info.frame_pts.tolist() == pts
    assert np.allclose(info.frame_times, np.asarray(pts) / 15360)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_probe_reads_display_rotation(tmp_path: Path, rotation: int) -> None:
    info = validate_video(make_clip(tmp_path / "turned.mp4", rotation=rotation))
    assert info.rotation == rotation
    assert (info.width, info.height) == (96, 64)  # coded size, before rotation


def test_mov_is_accepted(tmp_path: Path) -> None:
    info = validate_video(make_clip(tmp_path / "clip.mov", frames=10, audio=tone(0.4, 44100)))
    assert info.frame_count == 10
    assert info.has_audio


def test_probe_real_clip(shared_media: Path) -> None:
    info = validate_video(shared_media / "talk1.mp4")
    assert (info.frame_count, info.width, info.height) == (135, 700, 700)
    assert info.fps == Fraction(1350, 61)
    assert info.duration == pytest.approx(6.1, abs=0.05)


# --- Audio ------------------------------------------------------------------------------------


def test_probe_audio_wav_and_mp3(tmp_path: Path) -> None:
    wav = probe_audio(make_wav(tmp_path / "a.wav", tone(1.5, 22050, channels=2), 22050))
    assert (wav.rate, wav.channels, wav.codec) == (22050, 2, "pcm_s16le")
    assert wav.duration == pytest.approx(1.5, abs=1e-3)

    for id3 in (True, False):  # an ID3 tag, or straight into an MPEG frame
        mp3 = probe_audio(make_mp3(tmp_path / f"a{id3}.mp3", tone(1.5, 44100), 44100, id3=id3))
        assert (mp3.rate, mp3.channels) == (44100, 1)
        assert mp3.duration == pytest.approx(1.5, abs=0.1)  # plus encoder padding


def test_load_audio_keeps_samples(tmp_path: Path) -> None:
    sound = tone(1.0, 16000, freq=300.0, channels=2)
    sound[1] *= 0.5
    samples, rate = load_audio(make_wav(tmp_path / "a.wav", sound, 16000))
    assert rate == 16000 and samples.dtype == np.float32
    assert samples.shape == (2, 16000)
    assert np.abs(samples - sound).max() < 1e-4  # 16-bit quantisation only

    mono, _ = load_audio(tmp_path / "a.wav", mono=True)
    assert mono.shape == (1, 16000)
    assert np.allclose(mono[0], sound.mean(axis=0), atol=1e-4)


def test_load_audio_resamples(tmp_path: Path) -> None:
    path = make_wav(tmp_path / "a.wav", tone(2.0, 44100, freq=1000.0), 44100)
    samples, rate = load_audio(path, rate=16000)
    assert rate == 16000
    assert abs(samples.shape[1] - 32000) <= 32

    spectrum = np.abs(np.fft.rfft(samples[0]))
    peak_hz = np.argmax(spectrum) * rate / samples.shape[1]
    assert peak_hz == pytest.approx(1000.0, abs=2.0)
    assert np.abs(samples).max() <= 1.0


def test_load_audio_from_mp3_and_video_soundtrack(tmp_path: Path) -> None:
    sound = tone(1.0, 44100, freq=440.0)
    mp3, rate = load_audio(make_mp3(tmp_path / "a.mp3", sound, 44100), rate=16000, mono=True)
    clip = make_clip(tmp_path / "v.mp4", audio=sound)
    track, _ = load_audio(clip, rate=16000, mono=True)

    assert rate == 16000
    for decoded in (mp3[0], track[0]):
        middle = decoded[4000:12000]  # away from the codecs' fade-in and padding
        assert float(np.sqrt(np.mean(middle**2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
        peak_hz = np.argmax(np.abs(np.fft.rfft(middle))) * 16000 / len(middle)
        assert peak_hz == pytest.approx(440.0, abs=2.0)


def test_loading_leaves_inputs_unchanged(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "v.mp4", audio=tone(1.0, 44100))
    before = file_digest(clip)
    validate_video(clip)
    probe_audio(clip)
    load_audio(clip, rate=16000, mono=True)
    list(iter_frame_sequence(probe_video(clip), [3, 2, 1]))
    assert file_digest(clip) == before


# --- Frame sequences --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def counted_clip(tmp_path_factory) -> media.VideoInfo:
    """40 frames showing their index; keyframes every 12 frames and B-frames between."""
    path = tmp_path_factory.mktemp("seq") / "count.mp4"
    return probe_video(make_clip(path, frames=40, keyint=12))


def _shown(info: media.VideoInfo, indices) -> list[tuple[int, int]]:
    return [
        (index, read_index(frame.to_ndarray(format="rgb24")))
        for index, frame in iter_frame_sequence(info, indices)
    ]


def test_frame_sequence_bounces(counted_clip: media.VideoInfo) -> None:
    n = counted_clip.frame_count
    bounce = [*range(n), *range(n - 2, -1, -1), *range(1, n)]
    shown = _shown(counted_clip, bounce)
    assert [index for index, _ in shown] == bounce
    assert [content for _, content in shown] == bounce


def test_frame_sequence_jumps_and_repeats(counted_clip: media.VideoInfo) -> None:
    wanted = [5, 3, 3, 30, 31, 32, 0, 39, 38, 12, 11, 10, 9, 20]
    shown = _shown(counted_clip, wanted)
    assert [index for index, _ in shown] == wanted
    assert [content for _, content in shown] == wanted


def test_backward_runs_decode_in_bounded_chunks(counted_clip, monkeypatch) -> None:
    seeks: list[int] = []
    original = media._FrameSource._seek

    def counting_seek(self, index: int) -> None:
        seeks.append(index)
        original(self, index)

    monkeypatch.setattr(media, "_BACKWARD_CHUNK", 8)
    monkeypatch.setattr(media._FrameSource, "_seek", counting_seek)
    held: list[int] = []
    source_forward = media._FrameSource.forward

    def recording_forward(self, start: int, stop: int):
        held.append(stop - start)
        return source_forward(self, start, stop)

    monkeypatch.setattr(media._FrameSource, "forward", recording_forward)
    shown = [index for index, _ in iter_frame_sequence(counted_clip, range(39, -1, -1))]

    assert shown == list(range(39, -1, -1))
    assert max(held) == 8  # never more than a chunk of frames at once
    assert len(seeks) == 5  # one seek per chunk of 8


def test_frame_sequence_on_a_real_clip(shared_media: Path) -> None:
    info = probe_video(shared_media / "talk2.mp4")  # B-frames, a long GOP
    forward = {i: f.to_ndarray(format="gray") for i, f in media.iter_video_frames(info, 60)}
    wanted = [*range(124, 59, -1), *range(61, 90)]
    shown = list(iter_frame_sequence(info, wanted))
    assert [index for index, _ in shown] == wanted
    assert all(np.array_equal(f.to_ndarray(format="gray"), forward[i]) for i, f in shown)


def test_frame_sequence_rejects_indices_out_of_range(counted_clip: media.VideoInfo) -> None:
    with pytest.raises(ValueError, match="0..39"):
        list(iter_frame_sequence(counted_clip, [0, 40]))
    assert list(iter_frame_sequence(counted_clip, [])) == []
