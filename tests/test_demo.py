"""Tests for lipsync.demo: the synthetic voice and the sample portrait video."""

from __future__ import annotations

import wave

import av
import numpy as np
import pytest

from lipsync import audio
from lipsync.demo import DemoInputs, make_demo_inputs, synth_speech
from lipsync.media import iter_frames, probe_video

# --- synth_speech -------------------------------------------------------------------------------


def test_synth_speech_is_deterministic_for_a_seed():
    first = synth_speech(3.0, seed=7)

    np.testing.assert_array_equal(first, synth_speech(3.0, seed=7))
    assert not np.array_equal(first, synth_speech(3.0, seed=8))


@pytest.mark.parametrize(("seconds", "rate"), [(4.0, 16000), (2.5, 22050), (1.01, 16000)])
def test_synth_speech_length_dtype_and_level(seconds, rate):
    wav = synth_speech(seconds, rate)

    assert wav.shape == (int(round(seconds * rate)),) and wav.dtype == np.float32
    assert np.abs(wav).max() == pytest.approx(0.5, abs=1e-6)

    voiced = wav[np.abs(wav) > 1e-4]
    rms_db = 20 * np.log10(np.sqrt(np.mean(voiced.astype(np.float64) ** 2)))
    assert -26.0 < rms_db < -12.0


def test_synth_speech_pauses_are_exact_silence():
    rate = 16000
    wav = synth_speech(4.0, rate, pauses=((0.5, 0.9), (2.0, 2.6)))

    for start, end in ((0.5, 0.9), (2.0, 2.6)):
        assert np.all(wav[int(start * rate) : int(end * rate)] == 0.0)
    assert np.abs(wav[int(1.0 * rate) : int(1.9 * rate)]).max() > 0.1
    assert np.abs(wav[int(2.7 * rate) :]).max() > 0.1


def test_synth_speech_has_syllables_at_about_four_to_five_hertz():
    rate = 16000
    wav = synth_speech(6.0, rate, seed=3, pauses=())
    envelope = np.sqrt(np.convolve(wav.astype(np.float64) ** 2, np.ones(160) / 160, "same"))[::160]

    # Syllables are the rises of the 100 Hz envelope through a tenth of its peak.
    above = envelope > 0.1 * envelope.max()
    onsets = np.count_nonzero(above[1:] & ~above[:-1])
    assert 3.5 <= onsets / 6.0 <= 6.0


def test_synth_speech_reads_as_speech_with_a_pause():
    fps = 25
    times = np.arange(100) / fps
    wav = synth_speech(4.0, 16000, seed=1)

    active = audio.speech_activity(wav, times)

    in_pause = (times >= 1.5) & (times + 1 / fps <= 2.0)
    assert not active[in_pause].any()
    assert active[(times >= 0.2) & (times < 1.35)].mean() > 0.9
    assert active[(times >= 2.15) & (times < 3.8)].mean() > 0.9


def test_synth_speech_vowels_have_formant_peaks():
    # The long-term spectrum of voiced speech rises to the first formants (300-800 Hz)
    # and falls off towards 7 kHz; a flat or noise-like signal would not.
    wav = synth_speech(4.0, 16000, seed=2, pauses=())
    mel = audio.melspectrogram(wav)
    centres = audio._band_centers_hz()
    profile = mel[:, mel.max(axis=0) > -2].mean(axis=1)

    low = profile[(centres > 300) & (centres < 900)].mean()
    assert low > profile[centres < 120].mean() + 0.5
    assert low > profile[centres > 6000].mean() + 0.5


def test_synth_speech_rejects_nonsense():
    with pytest.raises(ValueError):
        synth_speech(0.0)
    with pytest.raises(ValueError):
        synth_speech(1.0, 4000)


# --- make_demo_inputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoInputs:
    return make_demo_inputs(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def demo_frames(demo) -> np.ndarray:
    info = probe_video(demo.video)
    return np.concatenate([batch.images for batch in iter_frames(info)])


def test_demo_writes_both_files(demo):
    assert demo.video.name == "demo_video.mp4" and demo.video.stat().st_size > 10_000
    assert demo.audio.name == "demo_voice.wav" and demo.audio.stat().st_size > 10_000


def test_demo_video_format(demo):
    info = probe_video(demo.video)

    assert (info.width, info.height) == (512, 512)
    assert info.fps == 25 and info.frame_count == 100
    assert info.duration == pytest.approx(4.0, abs=1e-6)
    assert info.codec == "h264"
    with av.open(str(demo.video)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert not container.streams.audio


def test_demo_voice_format_and_content(demo):
    with wave.open(str(demo.audio)) as handle:
        assert handle.getnchannels() == 1 and handle.getsampwidth() == 2
        assert handle.getframerate() == 16000
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2")

    assert len(pcm) == 4 * 16000
    expected = synth_speech(4.0, 16000)
    np.testing.assert_allclose(pcm / 32767.0, expected, atol=1.0 / 32767.0)


def test_demo_cut_is_where_it_says(demo, demo_frames):
    assert demo.cut_frame == 75
    assert demo.face_seconds == pytest.approx(3.0)

    change = np.abs(np.diff(demo_frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert int(change.argmax()) + 1 == demo.cut_frame
    within = np.delete(change, demo.cut_frame - 1)
    assert change[demo.cut_frame - 1] > 10 * within.max()


def test_demo_moves_gently(demo_frames):
    change = np.abs(np.diff(demo_frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    within = np.delete(change, 74)

    # Moving, so a lip renderer sees a live shot, but smoothly: no frame jumps.
    assert within.min() > 0.2
    assert within.max() < 5.0
    assert np.abs(np.diff(within)).max() < 1.0


def test_mediapipe_finds_the_face_before_the_cut_and_none_after(demo, demo_frames):
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        found = [mesh.process(frame).multi_face_landmarks is not None for frame in demo_frames]

    found = np.asarray(found)
    assert found[: demo.cut_frame].all()
    assert not found[demo.cut_frame :].any()


def test_demo_face_fills_a_good_part_of_the_frame(demo_frames):
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        face = mesh.process(demo_frames[0]).multi_face_landmarks[0]
    xs = np.array([p.x for p in face.landmark])
    ys = np.array([p.y for p in face.landmark])

    assert 0.3 < xs.max() - xs.min() < 0.8
    assert 0.25 < xs.mean() < 0.75 and 0.2 < ys.mean() < 0.75


def test_demo_other_sizes(tmp_path):
    inputs = make_demo_inputs(tmp_path, seconds=2.0, fps=30, size=256)
    info = probe_video(inputs.video)

    assert (info.width, info.height, info.frame_count) == (256, 256, 60)
    assert info.fps == 30
    assert inputs.cut_frame == 45 and inputs.face_seconds == pytest.approx(1.5)
    with wave.open(str(inputs.audio)) as handle:
        assert handle.getnframes() == 2 * 16000


@pytest.mark.parametrize("kwargs", [{"size": 255}, {"size": 32}, {"fps": 0}, {"seconds": 0.2}])
def test_demo_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_demo_inputs(tmp_path, **kwargs)
