"""The sync evaluator: phone shapes, lag search, scores on tracks with known answers, and
real clips (true pairs must outscore mismatched ones)."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from lipsync.errors import DataCorruptedError, InvalidOptionError, NoFaceFoundError
from lipsync.evaluation import (
    LIP_POINTS,
    SyncReport,
    VoiceTrack,
    evaluate,
    lag_search,
    measure_mouth,
    measure_voice,
    mouth_jitter,
    mouth_track,
    own_sound_offset,
    score_tracks,
    silent_rest_share,
    viseme_auc,
)
from lipsync.media import load_audio, probe_video
from lipsync.phones import SAMPLE_RATE, Phone, phone_shape, segment_phones, shapes_at
from lipsync.report import plot_report

CLIPS = ("talk1", "talk2", "talk3", "talk4", "talk5")
FPS = 25.0


def smooth_track(seed: int, n: int = 150) -> np.ndarray:
    """A speech-like envelope: smoothed noise scaled to [0, 1]."""
    x = gaussian_filter1d(np.random.default_rng(seed).standard_normal(n), 2.0)
    return (x - x.min()) / (x.max() - x.min())


def delayed(values: np.ndarray, lag: int) -> np.ndarray:
    """values[t - lag], the first frames repeating the first value."""
    return np.concatenate([np.full(lag, values[0]), values[:-lag]]) if lag else values.copy()


def voice_for(envelope: np.ndarray) -> VoiceTrack:
    """Shapes that follow the envelope: open when loud, closed when quiet but speaking."""
    active = envelope > 0.1
    shapes = np.full(len(envelope), "other", dtype="<U9")
    shapes[envelope > 0.6] = "open"
    shapes[active & (envelope < 0.3)] = "closed"
    shapes[~active] = "rest"
    return VoiceTrack(envelope=envelope.astype(np.float32), active=active, shapes=shapes)


def mouth_for(opening: np.ndarray):
    """A MouthTrack with the given opening (steady lips: no jitter)."""
    n = len(opening)
    track = mouth_track(np.full((n, 468, 2), np.nan), np.arange(n), np.arange(n) / FPS)
    track.opening = np.asarray(opening, np.float64)
    track.lips = np.zeros((n, len(LIP_POINTS), 2), np.float32)
    return track


# --- Phones -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "shape"),
    [
        (("P", "B", "M"), "closed"),
        (("F", "V"), "lip_teeth"),
        (("OW", "UW", "UH", "W", "AO"), "rounded"),
        (("AA", "AE", "AH", "AY", "AW", "EH"), "open"),
        (("SIL", "+NSN+", "+SPN+", ""), "rest"),
        (("T", "S", "IY", "K", "R"), "other"),
        (("AA1", "m", "uw0"), None),
    ],
)
def test_phone_shapes(labels: tuple[str, ...], shape: str | None) -> None:
    if shape is None:  # stress digits and case do not matter
        assert [phone_shape(label) for label in labels] == ["open", "closed", "rounded"]
    else:
        assert {phone_shape(label) for label in labels} == {shape}


def test_shapes_at_takes_the_phone_under_each_frame_middle() -> None:
    phones = [
        Phone("SIL", 0.0, 0.1, "rest"),
        Phone("M", 0.1, 0.17, "closed"),
        Phone("AA", 0.17, 0.3, "open"),
    ]
    # Frames of 40 ms: middles at 0.02, 0.06, 0.10, 0.14, 0.18, 0.22, 0.26, 0.30, 0.34.
    shapes = shapes_at(phones, np.arange(9) * 0.04)
    assert shapes.tolist() == ["rest"] * 2 + ["closed"] * 2 + ["open"] * 3 + ["rest"] * 2
    assert shapes_at([], np.arange(3) * 0.04).tolist() == ["rest"] * 3


def test_segment_phones_on_real_speech(shared_media: Path) -> None:
    wav, _ = load_audio(shared_media / "talk1.mp4", rate=SAMPLE_RATE, mono=True)
    phones = segment_phones(wav[0])

    starts = np.array([p.start for p in phones])
    ends = np.array([p.end for p in phones])
    assert np.all(np.diff(starts) > 0) and np.all(ends > starts)
    assert np.all(starts[1:] >= ends[:-1] - 1e-9)  # no overlaps
    assert starts[0] < 0.05 and ends[-1] > wav.shape[1] / SAMPLE_RATE - 0.2

    # talk1 is speech with one long pause, from about 2.4 s to 3.4 s.
    speech = [p for p in phones if p.shape != "rest"]
    rate = len(speech) / sum(p.end - p.start for p in speech)
    assert 6 <= rate <= 16  # phones a second of speech; measured 7.9-10.8 on the shared audio
    assert {"open", "rounded", "lip_teeth", "other"} <= {p.shape for p in speech}
    pause = [p for p in phones if p.start < 3.3 and p.end > 2.6]
    assert pause and all(p.shape == "rest" for p in pause)


def test_segment_phones_handles_tiny_and_silent_input() -> None:
    assert segment_phones(np.zeros(100, np.float32)) == []
    with pytest.raises(ValueError):
        segment_phones(np.zeros((2, 1600), np.float32))


# --- Scores on tracks with known answers ---------------------------------------------------


@pytest.mark.parametrize("lag", [2, -3, 0])
def test_lag_search_finds_a_known_delay(lag: int) -> None:
    envelope = smooth_track(1)
    opening = np.roll(envelope, lag)  # opening[t] = envelope[t - lag]
    curve = lag_search(opening, envelope, max_lag=8)
    assert curve.lag == lag
    assert curve.peak > 0.95
    assert curve.lags.tolist() == list(range(-8, 9))


def test_lag_search_confidence_is_high_for_a_copy_and_low_for_noise() -> None:
    for seed in range(20):
        envelope = smooth_track(seed)
        copy = lag_search(delayed(envelope, 2), envelope)
        noise = lag_search(np.random.default_rng(100 + seed).random(150), envelope)
        # Measured over these seeds: copies 0.43-0.95, noise 0.05-0.21.
        assert copy.confidence > 0.4
        assert noise.confidence < 0.3


def test_lag_search_skips_frames_without_a_face() -> None:
    envelope = smooth_track(2)
    opening = delayed(envelope, 2)
    opening[40:60] = np.nan
    assert lag_search(opening, envelope).lag == 2
    flat = lag_search(np.full(150, 0.3), envelope)
    assert flat.peak == 0.0 and flat.confidence == 0.0


def test_viseme_auc_known_answers() -> None:
    shapes = np.array(["open", "open", "closed", "lip_teeth", "other", "rest"])
    assert viseme_auc(np.array([0.3, 0.2, 0.0, 0.1, 0.5, 0.5]), shapes) == (1.0, 2, 2)
    assert viseme_auc(np.array([0.0, 0.1, 0.3, 0.2, 0.0, 0.0]), shapes)[0] == 0.0
    assert viseme_auc(np.full(6, 0.1), shapes)[0] == 0.5  # ties count half
    assert viseme_auc(np.array([0.3, np.nan, 0.0, np.nan, 0, 0]), shapes) == (1.0, 1, 1)
    assert viseme_auc(np.ones(3), np.array(["open", "other", "rest"])) == (None, 1, 0)


def test_scores_of_a_mouth_that_follows_the_sound_late() -> None:
    envelope = smooth_track(3)
    voice = voice_for(envelope)
    in_sync = score_tracks(mouth_for(0.2 * envelope), voice)
    assert in_sync.offset == 0 and in_sync.score > 0.99

    two_late = score_tracks(mouth_for(0.2 * delayed(envelope, 2)), voice)
    assert two_late.offset == 2 and two_late.offset_confidence > 0.4
    assert two_late.envelope_lag == 2 and two_late.envelope_corr > 0.95
    # The score is taken within one frame of 0 (at 25 fps): a smooth mouth two frames late
    # still scores high there (measured 0.98); five frames late it does not (0.37).
    assert 0.9 < two_late.score < in_sync.score
    five_late = score_tracks(mouth_for(0.2 * delayed(envelope, 5)), voice)
    assert five_late.offset == 5 and five_late.score < 0.6


def test_scores_of_opposite_and_unrelated_mouths() -> None:
    envelope = smooth_track(4)
    voice = voice_for(envelope)
    opposite = score_tracks(mouth_for(0.2 * (1 - envelope)), voice)
    assert opposite.score < -0.9 and opposite.viseme_auc == 0.0

    unrelated = [
        score_tracks(mouth_for(0.2 * smooth_track(200 + seed)), voice).score for seed in range(10)
    ]
    # Measured: mean 0.04, from -0.36 to 0.44.
    assert abs(float(np.mean(unrelated))) < 0.15
    assert max(abs(s) for s in unrelated) < 0.6


def test_silent_rest_share() -> None:
    active = np.array([True] * 20 + [False] * 10)
    opening = np.concatenate([np.linspace(0.05, 0.25, 20), np.full(10, 0.01)])
    assert silent_rest_share(opening, active) == (1.0, 10)

    opening[25:] = 0.2  # half the pause with the mouth open
    assert silent_rest_share(opening, active) == (0.5, 10)
    opening[22] = np.nan  # a frame without a face is not counted
    assert silent_rest_share(opening, active) == (pytest.approx(4 / 9), 9)
    assert silent_rest_share(opening, np.ones(30, bool)) == (None, 0)


def test_jitter_measures_landmark_noise_not_motion() -> None:
    rng = np.random.default_rng(5)
    base = rng.standard_normal((1, len(LIP_POINTS), 2)) * 0.1
    steady = np.zeros(150)
    for sigma in (0.001, 0.005):
        noisy = (base + rng.standard_normal((150, len(LIP_POINTS), 2)) * sigma).astype(np.float32)
        assert mouth_jitter(noisy, steady) == pytest.approx(100 * sigma, rel=0.1)

    # A slow, smooth opening and closing is motion, not noise.
    times = np.arange(150) / FPS
    slow = base + 0.05 * np.sin(2 * np.pi * 0.5 * times)[:, None, None]
    assert mouth_jitter(slow.astype(np.float32), steady) < 0.05

    # Where the sound never holds steady there is nothing to measure.
    assert mouth_jitter(noisy, np.tile([0.0, 0.5], 75)) is None


def test_mouth_track_from_a_face_moving_rigidly(portrait) -> None:
    _, landmarks = portrait
    angles = np.linspace(-0.2, 0.2, 12)
    frames = []
    for k, angle in enumerate(angles):
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        frames.append((landmarks - 120) @ rotation.T * (1 + 0.02 * k) + 120 + 3 * k)
    frames[5] = np.full_like(landmarks, np.nan)  # no face on one frame

    track = mouth_track(np.stack(frames), np.arange(12), np.arange(12) / FPS)
    assert np.isnan(track.opening[5]) and track.has_face.sum() == 11
    # Rotation, zoom and shift change neither the normalized shape nor the lips' pose-free
    # positions: a rigidly moving head has no mouth jitter.
    seen = track.has_face
    assert np.ptp(track.opening[seen]) < 1e-6 and np.ptp(track.width[seen]) < 1e-6
    assert np.nanmax(np.abs(np.diff(track.lips[6:], axis=0))) < 1e-5
    assert mouth_jitter(track.lips, np.zeros(12), min_frames=3) == pytest.approx(0, abs=1e-4)


# --- Real clips ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(shared_media: Path):
    """Every shared clip's mouth, and every voice's samples and phones, measured once."""
    mouths = {name: measure_mouth(probe_video(shared_media / f"{name}.mp4")) for name in CLIPS}
    paths = {name: shared_media / f"{name}.mp4" for name in CLIPS}
    paths |= {name: shared_media / f"{name}.wav" for name in ("speech_a", "speech_b")}
    wavs = {
        name: load_audio(path, rate=SAMPLE_RATE, mono=True)[0][0] for name, path in paths.items()
    }
    phones = {name: segment_phones(wav) for name, wav in wavs.items()}
    return shared_media, mouths, wavs, phones


def pair_score(measured, clip: str, voice: str) -> float:
    media, mouths, wavs, phones = measured
    mouth = mouths[clip]
    offset = own_sound_offset(media / f"{clip}.mp4") if clip == voice else 0.0
    times = mouth.frame_times + offset
    rows = int(np.sum(times < len(wavs[voice]) / SAMPLE_RATE))
    track = measure_voice(wavs[voice], times, phones[voice])
    return score_tracks(mouth.slice(0, rows), track.slice(0, rows)).score


def test_true_pairs_outscore_mismatched_pairs(measured) -> None:
    voices = (*CLIPS, "speech_a", "speech_b")
    true = [pair_score(measured, clip, clip) for clip in CLIPS]
    mismatched = [pair_score(measured, c, v) for c in CLIPS for v in voices if v != c]

    auc = np.mean([(t > m) + 0.5 * (t == m) for t in true for m in mismatched])
    # Measured: AUC 0.993; true pairs 0.39-0.59, mismatched mean 0.10, max 0.41.
    assert auc >= 0.9
    assert min(true) > 0.3
    assert np.mean(mismatched) < 0.2


def test_evaluate_a_true_pair_and_plot_it(shared_media: Path, tmp_path: Path) -> None:
    report = evaluate(shared_media / "talk3.mp4")
    assert isinstance(report, SyncReport)
    s = report.scores
    # Measured: score 0.59, offset 0, viseme AUC 0.95, envelope r 0.39 at lag -1.
    assert report.score == s.score > 0.4
    assert abs(s.offset) <= 2 and abs(s.envelope_lag) <= 2
    assert s.viseme_auc > 0.8
    assert s.frames == len(report.mouth) == len(report.voice) == 125
    assert s.face_frames == 125 and 0 < s.speech_frames < 125
    assert s.jitter is not None and 0 < s.jitter < 2
    assert report.voice.phones and json.dumps(report.to_dict())

    picture = plot_report(report, tmp_path / "talk3.png")
    import cv2

    image = cv2.imread(str(picture))
    assert image is not None and image.shape[1] >= 1200 and image.shape[0] >= 700


def test_evaluate_a_window_with_another_voice(shared_media: Path) -> None:
    report = evaluate(shared_media / "talk2.mp4", shared_media / "speech_a.wav", window=(1, 4))
    assert report.start == pytest.approx(1.0) and report.end == pytest.approx(4.0)
    assert report.scores.frames == 75
    assert report.score < 0.3  # measured: 0.01


def test_evaluate_refuses_bad_input(shared_media: Path, tmp_path: Path) -> None:
    video = shared_media / "talk3.mp4"
    with pytest.raises(InvalidOptionError):
        evaluate(video, window=(3.0, 2.0))
    with pytest.raises(InvalidOptionError):
        evaluate(video, window=(9.0, 10.0))
    with pytest.raises(InvalidOptionError):
        evaluate(video, max_lag=-1)
    with pytest.raises(DataCorruptedError):
        evaluate(tmp_path / "missing.mp4")


def write_clip(path: Path, *, audio: bool, seconds: float = 1.0) -> Path:
    """A faceless grey clip, with a tone as its sound if asked."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 128, 128, "yuv420p"
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(int(25 * seconds)):
            image = np.full((128, 128, 3), 90 + i, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            t = np.arange(int(16000 * seconds)) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            frame.sample_rate, frame.time_base, frame.pts = 16000, Fraction(1, 16000), 0
            container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def test_evaluate_without_a_face_or_without_sound(tmp_path: Path) -> None:
    with pytest.raises(NoFaceFoundError):
        evaluate(write_clip(tmp_path / "grey.mp4", audio=True))
    with pytest.raises(DataCorruptedError):
        evaluate(write_clip(tmp_path / "mute.mp4", audio=False))


def test_package_exports_the_function() -> None:
    import lipsync.evaluation  # noqa: F401  (importing the module must not shadow it)

    assert lipsync.evaluate is evaluate
    assert lipsync.evaluate is evaluate


# --- Command line ---------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lipsync", "eval", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_eval_json_and_plot(shared_media: Path, tmp_path: Path) -> None:
    plot = tmp_path / "eval.png"
    done = run_cli(shared_media / "talk5.mp4", "--json", "--plot", plot, "--end", "3")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # Measured on 0-3 s of talk5 with its own sound: score 0.59.
    assert result["score"] > 0.3 and result["frames"] == 75
    assert {"viseme_auc", "envelope_corr", "envelope_lag", "silent_rest_share", "jitter"} <= set(
        result
    )
    assert result["plot"] == str(plot) and plot.stat().st_size > 20_000


def test_cli_eval_table(shared_media: Path) -> None:
    done = run_cli(shared_media / "talk3.mp4", shared_media / "speech_b.wav", "-q")
    assert done.returncode == 0, done.stderr
    assert "sync score" in done.stdout and "viseme agreement" in done.stdout


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("missing.mp4",), 4),  # DataCorruptedError
        (("notes.txt",), 3),  # InvalidFormatError: wrong extension
        (("clip.mp4", "--plot", "out.jpg"), 2),  # InvalidOptionError
    ],
)
def test_cli_eval_exit_codes(tmp_path: Path, args: tuple[str, ...], code: int) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    write_clip(tmp_path / "clip.mp4", audio=True, seconds=0.5)
    done = run_cli(*(tmp_path / a if not a.startswith("-") and "." in a else a for a in args))
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
