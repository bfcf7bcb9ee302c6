"""Tests for lipsync.audio: the Wav2Lip mel recipe, speech activity and mouth openness."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import scipy.io.wavfile
import scipy.signal

from lipsync import audio
from lipsync.demo import synth_speech

RATE = audio.SAMPLE_RATE


def _times(seconds: float, fps: float) -> np.ndarray:
    return np.arange(int(round(seconds * fps))) / fps


def _vowel(seconds: float, gain: float, formants=(730.0, 1090.0, 2440.0)) -> np.ndarray:
    """A steady vowel: 120 Hz harmonics shaped by formant peaks, with soft edges."""
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.zeros_like(t)
    for k in range(1, int(4000 / 120)):
        f = 120.0 * k
        amp = sum(1.0 / (1.0 + ((f - fc) / 80.0) ** 2) for fc in formants) / k**0.5
        wave += amp * np.sin(2 * np.pi * f * t + 0.3 * k)
    edge = int(0.02 * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge) / edge)
    wave[:edge] *= ramp
    wave[-edge:] *= ramp[::-1]
    return gain * wave / np.max(np.abs(wave))


def _sequence(parts: list[tuple[str, float, float]]) -> np.ndarray:
    """Concatenate ("v", seconds, gain) vowels and ("gap", seconds, 0) silences."""
    pieces = [
        _vowel(length, gain) if kind == "v" else np.zeros(int(length * RATE))
        for kind, length, gain in parts
    ]
    return np.concatenate(pieces).astype(np.float32)


def _frames_inside(times: np.ndarray, fps: float, start: float, end: float) -> np.ndarray:
    """Indices of frames lying wholly inside [start, end) seconds."""
    return np.flatnonzero((times >= start - 1e-9) & (times + 1.0 / fps <= end + 1e-9))


def _rms_envelope(wav: np.ndarray, times: np.ndarray, fps: float) -> np.ndarray:
    """RMS of the samples inside each frame."""
    out = []
    for t in times:
        chunk = wav[int(round(t * RATE)) : int(round((t + 1.0 / fps) * RATE))]
        out.append(np.sqrt(np.mean(chunk.astype(np.float64) ** 2)) if chunk.size else 0.0)
    return np.asarray(out)


def _best_lag(series: np.ndarray, reference: np.ndarray, max_lag: int = 6) -> int:
    """The shift of ``series`` (in frames) that correlates best with ``reference``."""
    a, b = series - series.mean(), reference - reference.mean()
    scores = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            scores[lag] = float(np.dot(a[lag:], b[: len(b) - lag]))
        else:
            scores[lag] = float(np.dot(a[:lag], b[-lag:]))
    return max(scores, key=scores.get)


def _load_16k(path) -> np.ndarray:
    rate, data = scipy.io.wavfile.read(path)
    data = data.astype(np.float64) / (32768.0 if data.dtype == np.int16 else 1.0)
    if data.ndim == 2:
        data = data.mean(axis=1)
    ratio = Fraction(RATE, rate)
    return scipy.signal.resample_poly(data, ratio.numerator, ratio.denominator).astype(np.float32)


# --- the mel recipe ---------------------------------------------------------------------------


def test_filterbank_is_non_negative_unit_area_and_covers_55_to_7600_hz():
    bank = audio.mel_filterbank()
    bin_hz = RATE / audio.N_FFT

    assert bank.shape == (80, 401) and bank.dtype == np.float32
    assert bank.min() >= 0.0
    assert np.all(bank.max(axis=1) > 0), "every band must see some FFT bin"

    # Slaney normalization: each triangle has unit area in Hz.
    np.testing.assert_allclose(bank.sum(axis=1) * bin_hz, 1.0, atol=0.1)

    used = np.flatnonzero(bank.sum(axis=0) > 0) * bin_hz
    assert 55.0 <= used[0] <= 55.0 + 2 * bin_hz
    assert 7600.0 - 2 * bin_hz <= used[-1] <= 7600.0

    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0), "band centres must rise with the band index"


@pytest.mark.parametrize("freq", [150.0, 440.0, 1000.0, 2500.0, 6000.0])
def test_pure_tone_peaks_in_the_band_that_contains_it(freq):
    t = np.arange(RATE) / RATE
    mel = audio.melspectrogram((0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32))

    band = int(mel[:, 10:-10].mean(axis=1).argmax())
    edges = audio._band_edges_hz()
    assert edges[band] <= freq <= edges[band + 2]


def test_tone_level_matches_the_recipe_computed_by_hand():
    # A 1 kHz tone sits exactly on FFT bin 50, so the Hann-windowed STFT has magnitude
    # A/2 * sum(window) there and half that on bins 49 and 51, scaled by pre-emphasis.
    amplitude, freq = 0.5, 1000.0
    t = np.arange(RATE) / RATE
    mel = audio.melspectrogram((amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32))

    omega = 2 * np.pi * freq / RATE
    emphasis = abs(1 - audio.PREEMPHASIS * np.exp(-1j * omega))
    peak = amplitude / 2 * (audio.WIN / 2) * emphasis
    spectrum = np.zeros(401)
    spectrum[49:52] = [peak / 2, peak, peak / 2]
    bands = audio.mel_filterbank().astype(np.float64) @ spectrum
    expected_db = 20 * np.log10(np.maximum(bands, 1e-5)) - 20
    expected = np.clip(8 * (expected_db + 100) / 100 - 4, -4, 4)

    band = int(expected.argmax())
    assert mel[band, 40] == pytest.approx(expected[band], abs=0.01)
    np.testing.assert_allclose(
        mel[band - 3 : band + 4, 40], expected[band - 3 : band + 4], atol=0.02
    )


@pytest.mark.parametrize("n", [0, 1, 199, 200, 16000, 16123])
def test_mel_shape_dtype_and_range(n):
    rng = np.random.default_rng(n)
    mel = audio.melspectrogram((0.5 * rng.standard_normal(n)).astype(np.float32))

    assert mel.shape == (80, 1 + n // audio.HOP)
    assert mel.dtype == np.float32
    assert mel.min() >= -4.0 and mel.max() <= 4.0


def test_mel_of_silence_is_the_floor_and_loud_noise_is_not():
    assert np.all(audio.melspectrogram(np.zeros(8000, dtype=np.float32)) == -4.0)

    noise = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.3
    assert audio.melspectrogram(noise)[:, 5:-5].mean() > 0.5


def test_mel_rejects_wrong_input():
    with pytest.raises(ValueError, match="1-D"):
        audio.melspectrogram(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        audio.melspectrogram(np.zeros(100, dtype=np.int16))


# --- mel windows --------------------------------------------------------------------------------


def test_mel_windows_use_wav2lip_indexing_and_pad_with_the_last_column():
    columns = 50
    mel = np.tile(np.arange(columns, dtype=np.float32), (80, 1))  # each column holds its index
    fps = 25
    times = np.arange(16) / fps  # frame 15 starts at 0.6 s = column 48

    windows = audio.mel_windows(mel, times)

    assert windows.shape == (16, 80, 16) and windows.dtype == np.float32
    for i in range(len(times)):
        start = int(i * 80 / fps)
        expected = np.minimum(np.arange(start, start + 16), columns - 1)
        np.testing.assert_array_equal(windows[i, 0], expected)
        np.testing.assert_array_equal(windows[i, 79], expected)


def test_mel_windows_do_not_start_early_on_rounding_noise():
    mel = np.tile(np.arange(1500, dtype=np.float32), (80, 1))
    # At 1350/61 fps (talk1's rate) frame 405 starts at exactly 18.3 s = column 1464, but
    # 405 * (61 / 1350) in floating point is 18.299999999999997.
    frame_time = 405 * float(Fraction(61, 1350))
    assert int(80 * frame_time) == 1463

    windows = audio.mel_windows(mel, np.array([frame_time, 0.0]))

    assert windows[0, 0, 0] == 1464 and windows[1, 0, 0] == 0


def test_mel_windows_past_the_end_repeat_the_edge():
    mel = np.random.default_rng(3).uniform(-4, 4, (80, 10)).astype(np.float32)

    windows = audio.mel_windows(mel, np.array([5.0, 100.0]))

    for window in windows:
        np.testing.assert_array_equal(window, np.repeat(mel[:, -1:], 16, axis=1))


# --- speech activity ----------------------------------------------------------------------------


def test_silence_is_inactive_with_zero_openness():
    times = _times(3.0, 25)
    for wav in (np.zeros(3 * RATE, dtype=np.float32), np.zeros(0, dtype=np.float32)):
        features = audio.analyze(wav, times)
        assert not features.active.any()
        assert np.all(features.openness == 0.0)


@pytest.mark.parametrize("level_db", [-60.0, -30.0])
def test_steady_noise_is_not_speech(level_db):
    noise = np.random.default_rng(1).standard_normal(3 * RATE) * 10 ** (level_db / 20)
    assert not audio.speech_activity(noise.astype(np.float32), _times(3.0, 25)).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_synthetic_speech_is_active_and_its_pause_is_not(seed):
    fps = 25
    wav = synth_speech(5.0, seed=seed, pauses=((1.5, 2.2),))
    times = _times(5.0, fps)

    active = audio.speech_activity(wav, times)

    in_pause = _frames_inside(times, fps, 1.5, 2.2)
    assert (~active[in_pause]).mean() >= 0.9

    envelope = _rms_envelope(wav, times, fps)
    loud = envelope > envelope.max() * 10 ** (-25 / 20)
    assert active[loud].all(), "every frame with clear voice energy must count as speech"
    assert active.mean() > 0.6


def test_short_gaps_are_bridged_and_real_pauses_are_not():
    fps = 25
    wav = _sequence(
        [("gap", 0.3, 0), ("v", 0.2, 1.0), ("gap", 0.08, 0), ("v", 0.2, 0.8)]
        + [("gap", 0.2, 0), ("v", 0.2, 1.0), ("gap", 0.4, 0), ("v", 0.2, 0.9), ("gap", 0.3, 0)]
    )
    times = _times(len(wav) / RATE, fps)

    active = audio.speech_activity(wav, times)

    # The analysis window reaches 25 ms past a sound and the release holds 25 ms more.
    assert active[_frames_inside(times, fps, 0.3, 0.78)].all(), "an 80 ms gap is bridged"
    assert not active[_frames_inside(times, fps, 0.83, 0.95)].any(), "a 200 ms pause is kept"
    assert not active[_frames_inside(times, fps, 1.23, 1.55)].any(), "a 400 ms pause is kept"
    assert not active[_frames_inside(times, fps, 0.0, 0.26)].any()


def test_activity_does_not_depend_on_level():
    times = _times(4.0, 25)
    wav = synth_speech(4.0, seed=4)
    wav = wav / np.abs(wav).max()

    at_6 = audio.analyze((wav * 10 ** (-6 / 20)).astype(np.float32), times)
    at_20 = audio.analyze((wav * 10 ** (-20 / 20)).astype(np.float32), times)

    assert (at_6.active == at_20.active).mean() >= 0.97
    both = at_6.active & at_20.active
    assert np.abs(at_6.openness[both] - at_20.openness[both]).max() < 0.05


def test_real_speech_level_invariance(shared_media):
    wav = _load_16k(shared_media / "speech_b.wav")
    wav = wav / np.abs(wav).max()
    times = _times(len(wav) / RATE, 25)

    at_6 = audio.speech_activity((wav * 10 ** (-6 / 20)).astype(np.float32), times)
    at_20 = audio.speech_activity((wav * 10 ** (-20 / 20)).astype(np.float32), times)

    assert (at_6 == at_20).mean() >= 0.97
    assert 0.5 < at_6.mean() < 1.0, "real speech has both words and pauses"


# --- mouth openness -----------------------------------------------------------------------------


def test_openness_is_higher_for_a_louder_vowel():
    fps = 25
    gains = [1.0, 0.5, 0.2, 0.5, 1.0, 0.2]
    parts = [("gap", 0.2, 0)]
    for gain in gains:
        parts += [("v", 0.24, gain), ("gap", 0.06, 0)]
    wav = _sequence(parts)
    times = _times(len(wav) / RATE, fps)

    openness = audio.mouth_openness(wav, times)

    means = {}
    for k, gain in enumerate(gains):
        start = 0.2 + k * 0.3
        frames = _frames_inside(times, fps, start + 0.06, start + 0.18)
        means.setdefault(gain, []).append(openness[frames].mean())
    loud, mid, quiet = (np.mean(means[g]) for g in (1.0, 0.5, 0.2))
    assert loud > mid + 0.1 and mid > quiet + 0.1
    assert quiet > 0.0


def test_openness_range_zero_where_silent_and_deterministic():
    fps = 25
    wav = synth_speech(4.0, seed=2)
    times = _times(4.0, fps)

    features = audio.analyze(wav, times)

    assert features.openness.dtype == np.float32 and features.openness.shape == (100,)
    assert features.openness.min() >= 0.0 and features.openness.max() <= 1.0
    assert np.all(features.openness[~features.active] == 0.0)
    assert features.openness.max() > 0.8
    again = audio.analyze(wav, times)
    np.testing.assert_array_equal(features.openness, again.openness)
    np.testing.assert_array_equal(features.mel, again.mel)


@pytest.mark.parametrize("fps", [25.0, 30.0, 1350 / 61])
@pytest.mark.parametrize("seed", [0, 1])
def test_openness_follows_the_envelope_without_lag(fps, seed):
    wav = synth_speech(5.0, seed=seed)
    times = _times(5.0, fps)

    openness = audio.mouth_openness(wav, times)
    envelope = _rms_envelope(wav, times, fps)

    assert abs(_best_lag(openness, envelope)) <= 1
    assert np.corrcoef(openness, envelope)[0, 1] > 0.6


@pytest.mark.parametrize("name", ["speech_a.wav", "speech_b.wav"])
def test_openness_follows_real_speech_without_lag(shared_media, name):
    wav = _load_16k(shared_media / name)
    fps = 25
    times = _times(len(wav) / RATE, fps)

    openness = audio.mouth_openness(wav, times)
    envelope = _rms_envelope(wav, times, fps)

    assert abs(_best_lag(openness, envelope)) <= 1
    assert np.corrcoef(openness, envelope)[0, 1] > 0.75


def test_openness_does_not_flicker():
    fps = 25
    wav = synth_speech(4.0, seed=0)
    openness = audio.mouth_openness(wav, _times(4.0, fps))

    # A mouth that flickers reverses direction on most frames; speech at ~4.5 syllables a
    # second reverses about 9 times a second, a bit over a third of 25 frames.
    slope = np.sign(np.diff(openness))
    reversals = np.sum(slope[1:] * slope[:-1] < 0)
    assert reversals / len(openness) < 0.45


# --- analyze ------------------------------------------------------------------------------------


def test_analyze_matches_the_single_purpose_functions():
    fps = 30
    wav = synth_speech(3.0, seed=5)
    times = _times(3.0, fps)

    features = audio.analyze(wav, times)

    assert features.mel.shape == (90, 80, 16) and features.mel.dtype == np.float32
    np.testing.assert_array_equal(features.mel, audio.mel_windows(audio.melspectrogram(wav), times))
    np.testing.assert_array_equal(features.active, audio.speech_activity(wav, times))
    np.testing.assert_array_equal(features.openness, audio.mouth_openness(wav, times))


def test_frames_after_the_audio_ends_are_silent():
    fps = 25
    wav = synth_speech(2.0, seed=1, pauses=())
    times = _times(3.0, fps)

    features = audio.analyze(wav, times)

    after = times >= 2.0
    assert not features.active[after].any()
    assert np.all(features.openness[after] == 0.0)
    assert features.active[~after].mean() > 0.7


def _soundtrack_16k(path) -> np.ndarray:
    """A video's own soundtrack as 16 kHz mono float32 (decoded with PyAV)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        chunks = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def test_openness_tracks_the_real_speakers_lips(shared_media):
    import mediapipe as mp

    from lipsync.media import iter_frames, probe_video

    path = shared_media / "talk1.mp4"
    info = probe_video(path)
    size = (info.width // 2, info.height // 2)

    # Inner-lip gap over face height, from the face mesh tracking the speaker.
    gaps = []
    with mp.solutions.face_mesh.FaceMesh(max_num_faces=1) as mesh:
        for batch in iter_frames(info, size=size):
            for image in batch.images:
                found = mesh.process(image).multi_face_landmarks
                if not found:
                    gaps.append(np.nan)
                    continue
                points = np.array([(p.x, p.y) for p in found[0].landmark])
                face = np.linalg.norm(points[10] - points[152])
                gaps.append(np.linalg.norm(points[13] - points[14]) / face)
    gaps = np.asarray(gaps)
    assert np.isfinite(gaps).mean() > 0.95

    openness = audio.mouth_openness(_soundtrack_16k(path), info.frame_times)

    def corr(lag: int) -> float:
        a = openness[: len(openness) - lag] if lag >= 0 else openness[-lag:]
        b = gaps[lag:] if lag >= 0 else gaps[:lag]
        keep = np.isfinite(b)
        return float(np.corrcoef(a[keep], b[keep])[0, 1])

    # Measured: 0.49 at lag 0 and 0.60 at lag +1 (the lips trail the sound by a frame
    # in this clip), 0.40 to 0.43 four frames either way.
    scores = {lag: corr(lag) for lag in range(-4, 5)}
    near = max(scores[-1], scores[0], scores[1])
    assert near > 0.45, scores
    assert near > max(scores[-4], scores[4]) + 0.1, scores
