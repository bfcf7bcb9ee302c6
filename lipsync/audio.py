"""Audio features for the lip generators: mel windows, speech activity and mouth openness.

The mel spectrogram follows the recipe the published Wav2Lip model was trained on, so its
windows can be fed to a Wav2Lip-compatible network unchanged: 16 kHz mono, pre-emphasis,
an 800-point STFT every 200 samples (80 frames a second), 80 Slaney mel bands from 55 to
7600 Hz, decibels and a symmetric clip to [-4, 4].

Speech activity and mouth openness are derived from the same spectrum and are meant for
renderers that do not learn the mouth from the mel (the built-in one) and for keeping a
learned renderer's mouth shut where the new voice is silent.

Time convention: a ``frame_times`` array holds the start of each video frame in seconds,
measured from the first audio sample. A frame lasts until the next one starts; the last
frame lasts as long as the typical frame before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.signal

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Hz; every function here expects mono audio at this rate
N_FFT = 800  # STFT size, samples (50 ms)
HOP = 200  # STFT step, samples (12.5 ms)
WIN = 800  # Hann window length, samples
N_MELS = 80  # mel bands
FMIN = 55.0  # lowest mel band edge, Hz
FMAX = 7600.0  # highest mel band edge, Hz
PREEMPHASIS = 0.97  # y[n] = x[n] - 0.97 x[n-1]
REF_LEVEL_DB = 20.0  # subtracted from the magnitude in dB
MIN_LEVEL_DB = -100.0  # the dB value that maps to -MAX_ABS_VALUE
MAX_ABS_VALUE = 4.0  # normalized mel values lie in [-4, 4]
MEL_STEP_SIZE = 16  # mel frames per video-frame window (200 ms)
MEL_FPS = 80  # mel frames per second (SAMPLE_RATE / HOP)

# Speech activity, all measured on the 80 fps mel grid.
_SILENCE_DBFS = -90.0  # columns whose RMS is below this are silent (digital silence, dither)
_SILENCE_BELOW_LOUD_DB = 50.0  # and so are columns this far below the loudest ones
_SPEECH_BAND_HZ = (100.0, 7600.0)  # voicing up to fricatives; mains hum stays out
_FLOOR_PERCENTILE = 5.0  # of all columns: the adaptive noise floor
_PEAK_PERCENTILE = 95.0  # of the non-silent columns: a loud speech column
_THRESHOLD_FRACTION = 0.25  # of the floor-to-peak range in dB, above the floor
_MIN_MARGIN_DB = 6.0  # a frame must be at least this far above the floor
_MAX_DEPTH_DB = 30.0  # and no more than this far below the loud level (breaths, room tone)
_MAX_GAP_FRAMES = 10  # gaps shorter than 125 ms between speech are bridged
_MIN_RUN_FRAMES = 4  # speech shorter than 50 ms on its own (a click) is dropped
_ONSET_PAD_FRAMES = 1  # start opening 12.5 ms before the energy rises
_RELEASE_PAD_FRAMES = 2  # and close 25 ms after it falls

# Mouth openness.
_OPEN_BAND_HZ = (300.0, 3000.0)  # first and second formants of voiced speech
_OPEN_FLOOR_PERCENTILE = 10.0  # of active frames: closed
_OPEN_PEAK_PERCENTILE = 98.0  # of active frames: fully open
_OPEN_RANGE_DB = 30.0  # at most this far below fully open is closed (as in real speech)
_OPEN_SMOOTH_SIGMA = 1.5  # mel frames (about 19 ms), a zero-phase Gaussian


@dataclass
class AudioFeatures:
    """What the generators need from the new voice, one row per output video frame."""

    mel: np.ndarray  # (n, 80, 16) float32 normalized mel windows, values in [-4, 4]
    openness: np.ndarray  # (n,) float32 in [0, 1]; exactly 0 where active is False
    active: np.ndarray  # (n,) bool, True where someone is speaking
    rounding: np.ndarray | None = None  # (n,) float32 in [0, 1], lips rounded (o, u, w)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz * 3.0 / 200.0
    log_region = hz >= 1000.0
    mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) / (np.log(6.4) / 27.0)
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * 200.0 / 3.0
    log_region = mel >= 15.0
    hz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_region] - 15.0))
    return hz


def _band_edges_hz() -> np.ndarray:
    """The N_MELS + 2 corner frequencies of the triangular filters, evenly spaced in mel."""
    mels = np.linspace(_hz_to_mel(np.array([FMIN]))[0], _hz_to_mel(np.array([FMAX]))[0], N_MELS + 2)
    return _mel_to_hz(mels)


def mel_filterbank() -> np.ndarray:
    """The (80, 401) float32 matrix that turns an STFT magnitude column into mel bands.

    Triangular filters between neighbouring corner frequencies, each scaled to unit area
    (Slaney normalization), as librosa builds by default.
    """
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    edges = _band_edges_hz()
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]

    weights = np.zeros((N_MELS, fft_hz.size))
    for band in range(N_MELS):
        rising = -ramps[band] / widths[band]
        falling = ramps[band + 2] / widths[band + 1]
        weights[band] = np.maximum(0.0, np.minimum(rising, falling))

    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def _band_centers_hz() -> np.ndarray:
    """The peak frequency of each mel filter."""
    return _band_edges_hz()[1:-1]


def _check_wav(wav: np.ndarray) -> np.ndarray:
    """The samples as a 1-D float32 array, or ValueError naming what was passed."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio as a 1-D array, got shape {wav.shape}")
    if not np.issubdtype(wav.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {wav.dtype}")
    return wav.astype(np.float32, copy=False)


def _mel_magnitude(wav: np.ndarray, chunk_frames: int = 4096) -> np.ndarray:
    """(80, T) float32 linear mel magnitudes of the pre-emphasized signal, T = 1 + len // HOP.

    Frames are centred on multiples of HOP (the signal is reflect-padded by N_FFT / 2 on
    both sides, as the librosa version Wav2Lip used did), and computed a chunk at a time so
    long tracks do not need the whole complex spectrogram in memory.
    """
    if wav.size < 2:
        # Reflect padding needs two samples; one or none is silence for our purposes.
        emphasized = np.zeros(2, dtype=np.float32)
    else:
        emphasized = scipy.signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav).astype(np.float32)
    padded = np.pad(emphasized, N_FFT // 2, mode="reflect")

    n_frames = 1 + len(wav) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    window = scipy.signal.get_window("hann", WIN, fftbins=True).astype(np.float32)
    basis = mel_filterbank()

    mel = np.empty((N_MELS, n_frames), dtype=np.float32)
    for start in range(0, n_frames, chunk_frames):
        block = frames[start : start + chunk_frames] * window
        magnitude = np.abs(scipy.fft.rfft(block, axis=1))
        mel[:, start : start + len(block)] = basis @ magnitude.T
    return mel


def _normalize(mel_magnitude: np.ndarray) -> np.ndarray:
    """Linear mel magnitudes to Wav2Lip's clipped, symmetric decibel scale."""
    db = 20.0 * np.log10(np.maximum(1e-5, mel_magnitude)) - REF_LEVEL_DB
    scaled = 2 * MAX_ABS_VALUE * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """The normalized (80, T) float32 mel spectrogram of 16 kHz mono float audio.

    T is ``1 + len(wav) // 200``: column j describes the 50 ms around ``j / 80`` seconds.
    Values lie in [-4, 4]; silence is -4.
    """
    return _normalize(_mel_magnitude(_check_wav(wav)))


def _mel_start_indices(frame_times: np.ndarray) -> np.ndarray:
    """Wav2Lip's window start for each frame: ``int(80 * t)``.

    A hair is added before truncating because frame times come from timestamps times a
    time base, and 0.35 s must not land at 27.999999 and start one step early.
    """
    times = np.maximum(np.asarray(frame_times, dtype=np.float64), 0.0)
    return np.floor(times * MEL_FPS + 1e-6).astype(np.int64)


def mel_windows(mel: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """(n, 80, 16) float32: the 16 mel columns starting at ``int(80 * t)`` for each frame.

    Windows that run past the end of the spectrogram repeat its last column, so every
    frame gets a full window however short the audio is.
    """
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[0] != N_MELS or mel.shape[1] == 0:
        raise ValueError(f"expected a (80, T) mel spectrogram with T > 0, got {mel.shape}")

    starts = np.minimum(_mel_start_indices(frame_times), mel.shape[1])
    padded = np.pad(mel, ((0, 0), (0, MEL_STEP_SIZE)), mode="edge")
    offsets = np.arange(MEL_STEP_SIZE)
    return np.ascontiguousarray(padded[:, starts[:, None] + offsets].transpose(1, 0, 2))


def _frame_spans(frame_times: np.ndarray, n_mel: int) -> tuple[np.ndarray, np.ndarray]:
    """For each video frame, the mel columns [first, last) whose centres fall inside it."""
    times = np.asarray(frame_times, dtype=np.float64)
    if times.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty

    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0 / 25.0
    ends = np.append(times[1:], times[-1] + max(step, 1e-3))
    first = np.ceil(times * MEL_FPS - 1e-6).astype(np.int64)
    last = np.ceil(ends * MEL_FPS - 1e-6).astype(np.int64)

    # A frame shorter than a mel step still reads the column nearest its start.
    last = np.maximum(last, first + 1)
    return np.clip(first, 0, n_mel), np.clip(last, 0, n_mel)


def _per_frame_mean(values: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over each span; 0 for spans past the end of the audio."""
    sums = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    counts = last - first
    means = np.zeros(first.shape, dtype=np.float64)
    inside = counts > 0
    means[inside] = (sums[last[inside]] - sums[first[inside]]) / counts[inside]
    return means


def _frame_rms_dbfs(wav: np.ndarray, n_mel: int) -> np.ndarray:
    """RMS level in dBFS of the 400 samples around each mel column's centre."""
    half = HOP
    squares = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    centres = np.arange(n_mel) * HOP
    lo = np.clip(centres - half, 0, len(wav))
    hi = np.clip(centres + half, 0, len(wav))
    power = (squares[hi] - squares[lo]) / np.maximum(hi - lo, 1)
    return 10.0 * np.log10(np.maximum(power, 1e-12))


def _band_power_db(mel_magnitude: np.ndarray, band_hz: tuple[float, float]) -> np.ndarray:
    """Power in dB (arbitrary reference) of the mel bands centred inside ``band_hz``."""
    centres = _band_centers_hz()
    rows = (centres >= band_hz[0]) & (centres <= band_hz[1])
    power = np.sum(mel_magnitude[rows].astype(np.float64) ** 2, axis=0)
    return 10.0 * np.log10(power + 1e-20)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, stop) ranges where a boolean array is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _smooth_activity(raw: np.ndarray) -> np.ndarray:
    """Bridge short gaps, drop isolated clicks, then widen each speech run slightly."""
    active = raw.copy()
    runs = _runs(active)
    for (_, stop), (start, _) in zip(runs[:-1], runs[1:], strict=True):
        if start - stop < _MAX_GAP_FRAMES:
            active[stop:start] = True

    for start, stop in _runs(active):
        if stop - start < _MIN_RUN_FRAMES:
            active[start:stop] = False

    widened = active.copy()
    for start, stop in _runs(active):
        widened[max(start - _ONSET_PAD_FRAMES, 0) : stop + _RELEASE_PAD_FRAMES] = True
    return widened


def _mel_activity(wav: np.ndarray, mel_magnitude: np.ndarray) -> np.ndarray:
    """(T,) bool speech activity on the mel grid.

    A column is speech when it is not silent and its speech-band energy stands above an
    adaptive floor. The loud level is a percentile of the non-silent columns and the floor
    a low percentile of all of them, silent ones counted as 50 dB below the loud level, so
    the decision moves with the recording's level and noise: in a noisy recording the
    floor is the noise, in a clean one it is the silence, never the quietest speech.
    """
    rms = _frame_rms_dbfs(wav, mel_magnitude.shape[1])
    loud = np.percentile(rms, 99.0)
    silent = rms < max(_SILENCE_DBFS, loud - _SILENCE_BELOW_LOUD_DB)
    if silent.all():
        return np.zeros(silent.shape, dtype=bool)

    energy = _band_power_db(mel_magnitude, _SPEECH_BAND_HZ)
    peak = np.percentile(energy[~silent], _PEAK_PERCENTILE)
    quietest = peak - _SILENCE_BELOW_LOUD_DB
    floor = np.percentile(
        np.where(silent, quietest, np.maximum(energy, quietest)), _FLOOR_PERCENTILE
    )
    threshold = floor + max(_MIN_MARGIN_DB, _THRESHOLD_FRACTION * (peak - floor))
    threshold = max(threshold, peak - _MAX_DEPTH_DB)
    raw = ~silent & (energy > threshold)

    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "activity: floor %.1f dB, peak %.1f dB, threshold %.1f dB, %.0f %% raw active",
            floor,
            peak,
            threshold,
            100.0 * raw.mean(),
        )
    return _smooth_activity(raw)


def _mel_openness(mel_magnitude: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(T,) openness on the mel grid: formant-band level above its floor, in [0, 1]."""
    if not active.any():
        return np.zeros(active.shape, dtype=np.float64)

    level = _band_power_db(mel_magnitude, _OPEN_BAND_HZ)
    # Bridged gaps inside clean speech can be digitally silent, which would drag a plain
    # percentile floor far down and squash every vowel towards 1; the range is capped.
    floor_pct = np.percentile(level[active], _OPEN_FLOOR_PERCENTILE)
    peak = np.percentile(level[active], _OPEN_PEAK_PERCENTILE)
    floor = max(floor_pct, peak - _OPEN_RANGE_DB)
    openness = np.clip((level - floor) / max(peak - floor, 1.0), 0.0, 1.0)

    openness = scipy.ndimage.gaussian_filter1d(openness, _OPEN_SMOOTH_SIGMA, mode="nearest")
    return np.where(active, openness, 0.0)


def _analyze_spans(
    wav: np.ndarray, frame_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mel magnitudes, per-frame activity and per-frame openness in one pass."""
    wav = _check_wav(wav)
    magnitude = _mel_magnitude(wav)
    first, last = _frame_spans(frame_times, magnitude.shape[1])

    mel_active = _mel_activity(wav, magnitude)
    active = _per_frame_mean(mel_active, first, last) >= 0.5
    openness = _per_frame_mean(_mel_openness(magnitude, mel_active), first, last)
    openness = np.where(active, np.clip(openness, 0.0, 1.0), 0.0).astype(np.float32)
    return magnitude, active, openness


def speech_activity(wav: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """(n,) bool: whether each video frame falls in speech (True) or silence (False).

    Works on the 80 fps mel grid, then takes a majority vote over the mel columns inside
    each frame. Columns more than 50 dB below the loudest (or under -90 dBFS) are silent.
    Of the rest, a column is speech when its 100-7600 Hz energy is a quarter of the way
    (and at least 6 dB) from the noise floor to the loud level, and no more than 30 dB
    below the loud level. The loud level is the 95th percentile of the non-silent columns;
    the floor is the 5th percentile of all columns, silent ones counted as 50 dB below the
    loud level, so it is the noise in a noisy recording and the silence in a clean one.
    Everything is relative, so the result does not change with the recording's level.
    Gaps under 125 ms between speech (closures, syllable boundaries) are bridged, runs
    under 50 ms on their own are dropped, and each run is widened by 12.5 ms before and
    25 ms after, so pauses from about 150 ms on still read as silence.
    """
    return _analyze_spans(wav, frame_times)[1]


def mouth_openness(wav: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """(n,) float32 in [0, 1]: how far the mouth should be open on each video frame.

    Design: the loudness of the 300-3000 Hz mel bands (where the first two formants of
    vowels carry their energy, and which opens up with the jaw) is measured in dB, so it
    is already compressed; it is mapped linearly from the 10th percentile of the speech
    columns (0, mouth nearly closed; at most 30 dB down, the span of real speech) to their
    98th percentile (1, fully open), clipped, and smoothed with a zero-phase Gaussian of
    about 19 ms so it neither flickers nor lags. Each video frame takes the mean over the
    mel columns centred inside it, and frames that :func:`speech_activity` calls silent
    are exactly 0. The mapping is relative, so the same speech at another level gives the
    same curve; it is fully deterministic.
    """
    return _analyze_spans(wav, frame_times)[2]


def analyze(wav: np.ndarray, frame_times: np.ndarray) -> AudioFeatures:
    """Everything the generators need from 16 kHz mono audio, for the given video frames.

    One STFT serves all three results: the (n, 80, 16) mel windows of :func:`mel_windows`,
    :func:`mouth_openness` and :func:`speech_activity`, identical to calling them apart.
    """
    magnitude, active, openness = _analyze_spans(wav, frame_times)
    windows = mel_windows(_normalize(magnitude), frame_times)

    logger.debug(
        "audio features: %d frames, %d mel columns, %.0f %% active",
        len(active),
        magnitude.shape[1],
        100.0 * active.mean() if len(active) else 0.0,
    )
    return AudioFeatures(mel=windows, openness=openness, active=active)
