"""A sample input built from nothing: a synthetic voice and a short portrait video.

Useful on a fresh machine with no media at hand (no test clips, no internet): the voice is
synthesized here, and the pictures are ones that scikit-image ships inside its wheel. The
astronaut portrait (Eileen Collins, a NASA photograph) is in the public domain.
"""

from __future__ import annotations

import logging
import os
import wave
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import scipy.signal
import skimage.data

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

# Textbook average formants of an adult male voice (F1, F2, F3 in Hz, Peterson and Barney).
VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
_FORMANT_BANDWIDTHS = (80.0, 100.0, 140.0)  # Hz, for F1, F2, F3
_PEAK_LEVEL = 0.5  # the voice's peak sample (-6 dBFS)
_EDGE_GAP = 0.08  # seconds of silence kept at either side of a stretch of speech

# Where the face sits in skimage's 512x512 astronaut, and the square cut around it (px).
_FACE_CENTER = (225.0, 130.0)
_FACE_CROP = 240.0
# The faceless shot: the middle of skimage's coffee cup picture (600x400).
_OTHER_CENTER = (300.0, 200.0)
_OTHER_CROP = 360.0
_FACELESS_SECONDS = 1.0  # the length of the shot after the cut, at most


@dataclass(frozen=True)
class DemoInputs:
    """The files :func:`make_demo_inputs` wrote, and where their parts are."""

    video: Path  # demo_video.mp4: H.264, yuv420p, no audio track
    audio: Path  # demo_voice.wav: 16-bit PCM mono synthetic speech
    face_seconds: float  # the face shot lasts from 0 to this many seconds
    cut_frame: int  # index of the first frame of the faceless shot
    pauses: tuple[tuple[float, float], ...]  # (start, end) seconds where the voice is silent


def _resonator(freq: float, bandwidth: float, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A two-pole formant resonator with unit gain at 0 Hz."""
    radius = np.exp(-np.pi * bandwidth / rate)
    a = np.array([1.0, -2.0 * radius * np.cos(2.0 * np.pi * freq / rate), radius**2])
    return np.array([a.sum()]), a


def _glottal_source(f0: np.ndarray, rate: int) -> np.ndarray:
    """A pulse train following the pitch contour, shaped like glottal flow at the lips.

    One impulse per pitch period, then two real poles near 0 Hz (the glottal pulse's
    -12 dB/octave roll-off) and a first difference (radiation at the lips, +6 dB/octave).
    """
    phase = np.cumsum(f0 / rate)
    pulses = np.zeros_like(f0)
    pulses[1:][np.diff(np.floor(phase)) > 0] = 1.0

    pole = 0.96
    flow = scipy.signal.lfilter([1.0], [1.0, -2.0 * pole, pole**2], pulses)
    return scipy.signal.lfilter([1.0, -1.0], [1.0], flow)


def _envelope(length: int, attack: int, release: int) -> np.ndarray:
    """Raised-cosine attack, flat sustain, raised-cosine release."""
    env = np.ones(length)
    attack, release = min(attack, length // 2), min(release, length // 2)
    env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / max(attack, 1))
    env[length - release :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / max(release, 1))
    return env


def _noise_burst(
    rng: np.random.Generator, length: int, band: tuple[float, float], rate: int
) -> np.ndarray:
    """Band-passed white noise: the burst of a plosive or the hiss of a fricative."""
    high = min(band[1], 0.45 * rate)
    sos = scipy.signal.butter(4, (band[0], high), btype="bandpass", fs=rate, output="sos")
    return scipy.signal.sosfilt(sos, rng.standard_normal(length + 256))[256:]


def _speech_stretches(
    seconds: float, pauses: Iterable[tuple[float, float]]
) -> list[tuple[float, float]]:
    """The (start, end) seconds of speech: the whole length less the pauses."""
    stretches, cursor = [], 0.0
    for start, end in sorted((max(a, 0.0), min(b, seconds)) for a, b in pauses):
        if end <= start:
            continue
        if start > cursor:
            stretches.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < seconds:
        stretches.append((cursor, seconds))
    return stretches


def _syllable(rng: np.random.Generator, source: np.ndarray, start: int, rate: int) -> np.ndarray:
    """One consonant-vowel syllable beginning at sample ``start``."""
    pieces: list[np.ndarray] = []
    kind = rng.choice(["none", "plosive", "fricative"], p=[0.4, 0.35, 0.25])

    if kind == "plosive":
        # A closure (the lips or tongue stop the air), then a short release burst.
        closure = int(rate * rng.uniform(0.03, 0.05))
        burst_len = int(rate * rng.uniform(0.010, 0.020))
        centre = rng.choice([1200.0, 2500.0, 4000.0])
        burst = _noise_burst(rng, burst_len, (0.6 * centre, 1.6 * centre), rate)
        burst *= 0.25 * np.exp(-np.arange(burst_len) / (0.3 * burst_len))
        pieces += [np.zeros(closure), burst]
    elif kind == "fricative":
        hiss_len = int(rate * rng.uniform(0.05, 0.08))
        band = [(3500.0, 7000.0), (2000.0, 4500.0), (1200.0, 6000.0)][rng.integers(3)]
        hiss = _noise_burst(rng, hiss_len, band, rate) * 0.12 * _envelope(hiss_len, 80, 80)
        pieces.append(hiss)

    # The vowel: the voice source through three formant resonators in cascade.
    onset = start + sum(len(p) for p in pieces)
    vowel_len = int(rate * rng.uniform(0.12, 0.17))
    excitation = source[onset : onset + vowel_len]
    excitation = excitation + 0.02 * rng.standard_normal(len(excitation))  # breathiness
    formants = VOWEL_FORMANTS[str(rng.choice(list(VOWEL_FORMANTS)))]
    voiced = excitation
    for freq, bandwidth in zip(formants, _FORMANT_BANDWIDTHS, strict=True):
        voiced = scipy.signal.lfilter(*_resonator(freq, bandwidth, rate), voiced)
    stress = rng.uniform(0.55, 1.0)
    envelope = _envelope(len(voiced), int(0.02 * rate), int(0.045 * rate))
    pieces.append(stress * voiced * envelope)

    # A brief dip before the next syllable.
    pieces.append(np.zeros(int(rate * rng.uniform(0.02, 0.05))))
    return np.concatenate(pieces)


def synth_speech(
    seconds: float = 4.0,
    rate: int = 16000,
    *,
    seed: int = 0,
    pauses: Sequence[tuple[float, float]] = ((1.5, 2.0),),
) -> np.ndarray:
    """A speech-like voice as float32 mono samples in [-1, 1], peaking at -6 dBFS.

    A glottal pulse train (pitch about 100-145 Hz: a falling declination plus a gentle
    rise and fall about twice a second) drives cascaded resonators at the textbook formants of a, e,
    i, o and u, one vowel per syllable. Syllables come at about 4.5 a second, each with
    an attack and a decay, some preceded by a closure and burst (a plosive) or by a hiss
    (a fricative). Inside ``pauses`` ((start, end) seconds) and in the first and last
    80 ms of each stretch of speech the signal is exactly zero. The same seed gives the
    same samples.
    """
    if seconds <= 0 or rate < 8000:
        raise ValueError(f"need seconds > 0 and rate >= 8000, got {seconds} and {rate}")
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate

    # Pitch: declination from 135 to 105 Hz, plus a slow wobble that reads as intonation.
    declination = 135.0 - 30.0 * t / max(seconds, 1e-9)
    wobble = 10.0 * np.sin(2.0 * np.pi * 2.2 * t + rng.uniform(0, 2 * np.pi))
    source = _glottal_source(np.clip(declination + wobble, 95.0, 155.0), rate)
    source = np.concatenate([source, np.zeros(rate)])  # room for a syllable that runs over

    out = np.zeros(n)
    for begin, end in _speech_stretches(seconds, pauses):
        cursor = int((begin + _EDGE_GAP) * rate)
        stop = int((end - _EDGE_GAP) * rate)
        while cursor < stop:
            body = _syllable(rng, source, cursor, rate)
            if cursor + len(body) > stop:
                break
            out[cursor : cursor + len(body)] = body
            cursor += len(body)

    peak = np.max(np.abs(out))
    if peak > 0:
        out *= _PEAK_LEVEL / peak
    return out.astype(np.float32)


def _moving_shot(
    image: np.ndarray,
    centre: tuple[float, float],
    crop: float,
    size: int,
    times: np.ndarray,
) -> Iterator[np.ndarray]:
    """Frames of a square cut of ``image`` that drifts, zooms and tilts slowly and smoothly.

    The motion is a sum of slow sines (periods of 4.5 to 7 s), so consecutive frames move
    by a fraction of a pixel and never jump.
    """
    for t in times:
        dx = 5.0 * np.sin(2.0 * np.pi * t / 5.0)
        dy = 3.0 * np.sin(2.0 * np.pi * t / 7.0 + 1.0)
        zoom = 1.0 + 0.04 * np.sin(2.0 * np.pi * t / 6.0)
        angle = 2.5 * np.sin(2.0 * np.pi * t / 4.5)

        # Rotate and scale about the drifting centre, then move that centre to mid-frame.
        source_centre = (centre[0] + dx, centre[1] + dy)
        matrix = cv2.getRotationMatrix2D(source_centre, angle, zoom * size / crop)
        matrix[:, 2] += np.array([size / 2.0, size / 2.0]) - np.array(source_centre)
        yield cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101
        )


def _write_video(path: Path, frames: Iterable[np.ndarray], fps: int, size: int) -> int:
    """Encode RGB frames as H.264 yuv420p with no audio; returns the number written."""
    count = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}

        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = count
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM mono WAV."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


# The voice's pause sits inside the face shot, so the demo shows the mouth at rest too.
_DEMO_PAUSES = ((1.5, 2.0),)


def make_demo_inputs(
    folder: PathLike, *, seconds: float = 4.0, fps: int = 25, size: int = 512
) -> DemoInputs:
    """Write ``demo_video.mp4`` and ``demo_voice.wav`` into ``folder`` (created if needed).

    The video shows the astronaut portrait shipped with scikit-image, cut close around the
    face and moving gently, then a hard cut to a faceless shot (a cup of coffee, also
    moving) for the last second (a quarter of the length for clips under 4 s). The voice is
    :func:`synth_speech` at 16 kHz, as long as the video, with its default pause.
    """
    if seconds < 0.5 or fps <= 0 or size < 64 or size % 2:
        raise ValueError(
            f"need seconds >= 0.5, fps > 0 and an even size >= 64; got {seconds}, {fps}, {size}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    total = int(round(seconds * fps))
    cut_frame = total - int(round(min(_FACELESS_SECONDS, seconds / 4.0) * fps))
    times = np.arange(total) / fps

    def frames() -> Iterator[np.ndarray]:
        yield from _moving_shot(
            skimage.data.astronaut(), _FACE_CENTER, _FACE_CROP, size, times[:cut_frame]
        )
        yield from _moving_shot(
            skimage.data.coffee(), _OTHER_CENTER, _OTHER_CROP, size, times[cut_frame:]
        )

    video = folder / "demo_video.mp4"
    written = _write_video(video, frames(), fps, size)

    audio = folder / "demo_voice.wav"
    pauses = _DEMO_PAUSES
    _write_wav(audio, synth_speech(total / fps, 16000, pauses=pauses), 16000)

    logger.info("demo inputs: %s (%d frames, cut at %d) and %s", video, written, cut_frame, audio)
    return DemoInputs(
        video=video,
        audio=audio,
        face_seconds=cut_frame / fps,
        cut_frame=cut_frame,
        pauses=pauses,
    )
