"""How well does the mouth in a video follow a voice track? ``evaluate`` scores it.

Two independent measurements meet frame by frame:

- the mouth: a raw (unsmoothed) face-mesh pass over the video; per frame the inner-lip
  opening and the mouth width, both in inter-ocular distances, and the lip points with the
  head pose taken out;
- the voice: speech activity and a speech envelope (:mod:`lipsync.audio`), and English
  phones mapped to the mouth shape each calls for (:mod:`lipsync.phones`).

The scores, each 0 at chance:

- viseme agreement: the AUC with which the opening ranks frames under open vowels above
  frames under lip closures (P B M) and lip-to-teeth phones (F V);
- envelope correlation: Pearson's r of the opening with the envelope at the best lag within
  +-max_lag frames, and its confidence (peak minus the median over lags);
- the share of silent frames with the mouth at rest, and the mouth jitter (frame-to-frame
  landmark noise of the lips where the sound is steady): reported, not part of the score;
- the sync score: at each lag, the mean of the viseme agreement (as 2 AUC - 1) and the
  envelope correlation, each weighted by the evidence behind it; the score is its best value
  within the tolerance of perceived sync. ``offset`` is the best lag of that curve.

Measured on the shared clips (benchmarks/sync_validation.py): the viseme agreement is the
strongest single cue and peaks within 2 frames of lag 0 on every true pair; the envelope
correlation is weaker and on one clip (talk4) hardly follows the mouth (r 0.15, best lag
at the edge of the search), so it is weighted by evidence rather than trusted alone. The
share of pauses with the mouth at rest lowered the separation when added to the score
(speakers often pause with their lips apart), and jitter belongs to the video alone, so
neither enters it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import numpy as np
from scipy.stats import rankdata

from .audio import analyze
from .errors import InternalError, InvalidOptionError, LipsyncError, NoFaceFoundError
from .faces import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, detect_faces, fit_similarity
from .landmarks import (
    LIP_POINTS,
    LIPS_LOWER_INNER,
    LIPS_UPPER_INNER,
    mouth_frame,
)
from .media import PathLike, VideoInfo, load_audio, probe_audio, validate_video
from .phones import SAMPLE_RATE, Phone, segment_phones, shapes_at
from .scenes import detect_scenes

logger = logging.getLogger(__name__)

# progress(phase, done, total), as for dub(): the phase here is "faces".
Progress = Callable[[str, int, int], None]

MAX_LAG = 8  # frames searched either side of 0
# Lags this close to 0 count as in sync (and at least one frame either way): ITU-R BT.1359
# puts the threshold for noticing sound ahead of the picture at about 45 ms.
SYNC_TOLERANCE_S = 0.045
# The envelope correlation weighs as much as the viseme contrast of a clip with one closure
# frame in ten of speech (the shared clips and voices have 0.06-0.16, mean 0.11).
ENVELOPE_WEIGHT = 0.1
# A mouth is at rest when its opening is in the lowest quarter of the speaker's own range
# (5th to 95th percentile), and never when more than 6 % of the eye distance apart.
REST_FRACTION = 0.25
REST_CEILING = 0.06
# The sound is steady over three frames when the envelope (0..1) moves less than this.
STEADY_RANGE = 0.1
MIN_FRAMES = 10  # the fewest frames worth scoring
_MEASURE_CHUNK = 1024  # frames whose full landmarks are held at once

# The inner-lip pairs at the middle of the mouth, upper and lower, and every lip point.
_INNER_PAIRS = tuple(zip(LIPS_UPPER_INNER[4:7], LIPS_LOWER_INNER[4:7], strict=True))
_CLOSED_SHAPES = ("closed", "lip_teeth")


@dataclass
class MouthTrack:
    """The mouth measured on every frame of a span of a video."""

    frame_indices: np.ndarray  # (n,) int64 source frame indices
    frame_times: np.ndarray  # (n,) float64 seconds from the video's first frame
    opening: np.ndarray  # (n,) float64 inner-lip gap / inter-ocular distance; NaN: no face
    width: np.ndarray  # (n,) float64 corner-to-corner / inter-ocular distance; NaN: no face
    lips: np.ndarray  # (n, 40, 2) float32 LIP_POINTS, head pose removed, inter-ocular units
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 px of a square around the mouth

    def __len__(self) -> int:
        return len(self.frame_indices)

    @property
    def has_face(self) -> np.ndarray:
        """(n,) bool: a face was found on the frame."""
        return ~np.isnan(self.opening)

    def slice(self, start: int, stop: int) -> MouthTrack:
        """Rows ``start <= row < stop``."""
        rows = slice(start, stop)
        return MouthTrack(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


@dataclass
class VoiceTrack:
    """The voice measured on the same frames."""

    envelope: np.ndarray  # (n,) float32 in [0, 1], audio.mouth_openness; 0 in silence
    active: np.ndarray  # (n,) bool, someone is speaking
    shapes: np.ndarray  # (n,) str mouth shape of the phone under each frame (phones.SHAPES)
    phones: list[Phone] = field(default_factory=list)  # every phone of the audio, audio time
    offset: float = 0.0  # seconds of audio before the video's first frame is shown

    def __len__(self) -> int:
        return len(self.envelope)

    def slice(self, start: int, stop: int) -> VoiceTrack:
        """Rows ``start <= row < stop`` (the phone list is kept whole)."""
        rows = slice(start, stop)
        return replace(
            self, envelope=self.envelope[rows], active=self.active[rows], shapes=self.shapes[rows]
        )


@dataclass
class LagCurve:
    """A measure of agreement at every lag; positive lags: the mouth moves after the sound."""

    lags: np.ndarray  # (2 max_lag + 1,) int64, from -max_lag to +max_lag
    values: np.ndarray  # (2 max_lag + 1,) float64
    lag: int  # the lag with the highest value
    peak: float  # that value
    confidence: float  # peak minus the median over all lags


@dataclass
class SyncScores:
    """The scores of one span; see the module docstring for what each one measures."""

    score: float  # overall sync score in [-1, 1], higher is better, 0 at chance
    offset: int  # frames, best lag of the sync curve; > 0: the mouth moves after the sound
    offset_confidence: float  # sync-curve peak minus its median over lags
    viseme_auc: float | None  # at lag 0, in [0, 1]; None without open and closed frames
    open_frames: int  # speech frames under an open vowel, with a face
    closed_frames: int  # speech frames under P B M F V, with a face
    envelope_corr: float  # Pearson r of opening and envelope at the best lag
    envelope_lag: int  # that lag, in frames
    envelope_confidence: float  # peak r minus its median over lags
    silent_rest_share: float | None  # of silent frames with a face; None if there are none
    silent_frames: int  # silent frames with a face
    jitter: float | None  # lip landmark noise, % of the eye distance; None: too few frames
    frames: int  # frames scored
    face_frames: int  # of which with a face
    speech_frames: int  # of which with speech
    sync_curve: LagCurve  # the combined agreement at every lag
    envelope_curve: LagCurve  # the envelope correlation at every lag


@dataclass
class SyncReport:
    """What ``evaluate`` found: the scores, the per-frame tracks and the phones."""

    video: Path  # the video evaluated
    audio: Path  # the voice it was compared with (the video itself for its own sound)
    fps: float  # the video's average frame rate
    start: float  # seconds: the first scored frame's time
    end: float  # seconds: the end of the last scored frame
    scores: SyncScores  # the numbers
    mouth: MouthTrack  # per-frame mouth measurements
    voice: VoiceTrack  # per-frame voice measurements, and the phones

    @property
    def score(self) -> float:
        """The overall sync score (higher is better)."""
        return self.scores.score

    def to_dict(self) -> dict:
        """A JSON-ready summary: ``score`` beside the separate scores; no per-frame data."""
        s = self.scores
        return {
            "video": str(self.video),
            "audio": str(self.audio),
            "score": _round(s.score),
            "offset": s.offset,
            "offset_confidence": _round(s.offset_confidence),
            "viseme_auc": _round(s.viseme_auc),
            "open_frames": s.open_frames,
            "closed_frames": s.closed_frames,
            "envelope_corr": _round(s.envelope_corr),
            "envelope_lag": s.envelope_lag,
            "envelope_confidence": _round(s.envelope_confidence),
            "silent_rest_share": _round(s.silent_rest_share),
            "silent_frames": s.silent_frames,
            "jitter": _round(s.jitter),
            "frames": s.frames,
            "face_frames": s.face_frames,
            "speech_frames": s.speech_frames,
            "fps": _round(self.fps),
            "start": _round(self.start),
            "end": _round(self.end),
            "phones": len(self.voice.phones),
        }


def evaluate(
    video: PathLike,
    audio: PathLike | None = None,
    *,
    window: tuple[float, float] | None = None,
    max_lag: int = MAX_LAG,
    use_cache: bool = True,
    workers: int | None = None,
    progress: Progress | None = None,
) -> SyncReport:
    """Score how well the mouth in ``video`` follows ``audio``.

    Args:
        video: a talking-head video (.mp4 or .mov).
        audio: the voice (.wav, .mp3, or a video's soundtrack); None: the video's own sound,
            aligned by the streams' start times. Any other audio starts with the first frame,
            as dub() lays it.
        window: ``(start, end)`` seconds of the video to score; None: all of it. Frames
            after the audio's end are never scored.
        max_lag: frames searched either side of 0 for the best lag.
        use_cache: reuse the cached scene list of the video.
        workers: face-analysis processes (see faces.detect_faces).
        progress: called as ``progress("faces", done, total)``.

    Returns:
        A SyncReport; ``report.score`` is the overall sync score.

    Raises:
        DataCorruptedError, InvalidFormatError: an input cannot be used (as in dub()).
        InvalidOptionError: a bad window or max_lag, or under MIN_FRAMES frames to score.
        NoFaceFoundError: no face in the scored frames.
        MissingDependencyError: pocketsphinx or mediapipe is missing.
    """
    try:
        return _evaluate(Path(video), audio, window, max_lag, use_cache, workers, progress)
    except LipsyncError:
        raise
    except MemoryError as exc:
        raise InternalError("ran out of memory while evaluating") from exc
    except Exception as exc:  # anything else is our bug: report it with the generic code
        logger.exception("unexpected failure")
        raise InternalError(f"unexpected failure: {type(exc).__name__}: {exc}") from exc


def _evaluate(video, audio, window, max_lag, use_cache, workers, progress) -> SyncReport:
    if isinstance(max_lag, bool) or not isinstance(max_lag, int) or not 0 <= max_lag <= 100:
        raise InvalidOptionError(f"max_lag must be a whole number of frames 0..100, got {max_lag}")
    info = validate_video(video)
    audio_path = video if audio is None else Path(audio)
    audio_info = probe_audio(audio_path)
    own_sound = audio_path.resolve() == video.resolve()
    offset = own_sound_offset(info.path) if own_sound else 0.0

    # Score the frames inside the window that the audio reaches.
    start, end = (0.0, info.duration) if window is None else _check_window(window, info)
    times = info.frame_times + offset
    inside = (info.frame_times >= start) & (info.frame_times < end)
    rows = np.flatnonzero(inside & (times >= 0) & (times < audio_info.duration))
    if len(rows) < MIN_FRAMES:
        raise InvalidOptionError(
            f"only {len(rows)} frame(s) of {info.path.name} lie in the window and under the "
            f"{audio_info.duration:.2f} s of audio; at least {MIN_FRAMES} are needed"
        )

    faces_progress = None
    if progress is not None:
        faces_progress = lambda done, total: progress("faces", done, total)  # noqa: E731
    first, stop = int(rows[0]), int(rows[-1]) + 1
    mouth = measure_mouth(
        info, first, stop, use_cache=use_cache, workers=workers, progress=faces_progress
    )
    if not mouth.has_face.any():
        raise NoFaceFoundError(
            f"no face found in the scored frames of {info.path.name}",
            hint="the speaker's face must be visible, frontal or three-quarter, and not tiny",
        )

    wav, _ = load_audio(audio_path, rate=SAMPLE_RATE, mono=True)
    voice = measure_voice(wav[0], mouth.frame_times + offset)
    voice.offset = offset
    scores = score_tracks(mouth, voice, max_lag=max_lag)
    logger.info(
        "%s with %s: score %.2f, offset %+d frames", info.path.name, audio_path.name,
        scores.score, scores.offset,
    )  # fmt: skip

    step = float(np.median(np.diff(info.frame_times))) if info.frame_count > 1 else 0.04
    return SyncReport(
        video=info.path,
        audio=audio_path,
        fps=float(info.fps),
        start=float(mouth.frame_times[0]),
        end=float(mouth.frame_times[-1] + step),
        scores=scores,
        mouth=mouth,
        voice=voice,
    )


def _check_window(window, info: VideoInfo) -> tuple[float, float]:
    try:
        start, end = (float(x) for x in window)
    except (TypeError, ValueError):
        raise InvalidOptionError(
            f"window must be (start, end) in seconds, got {window!r}"
        ) from None
    if not (0.0 <= start < end) or start >= info.duration:
        raise InvalidOptionError(
            f"window ({start}, {end}) must satisfy 0 <= start < end and start < the video's "
            f"{info.duration:.2f} s"
        )
    return start, end


def own_sound_offset(path: Path) -> float:
    """Seconds into the soundtrack at which the first video frame is shown.

    A container may start its streams at different times (a video track starting 33 ms
    after the sound, say); frame times count from the first frame, audio from its first
    sample.
    """
    with av.open(str(path)) as container:
        starts = {}
        for stream in (container.streams.video[0], container.streams.audio[0]):
            start = stream.start_time
            starts[stream.type] = float(start * stream.time_base) if start is not None else 0.0
    return starts["video"] - starts["audio"]


# --- Measuring ---------------------------------------------------------------------------


def measure_mouth(
    info: VideoInfo,
    start: int = 0,
    stop: int | None = None,
    *,
    use_cache: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MouthTrack:
    """Measure the mouth of the largest face of each scene on frames ``start <= i < stop``.

    The face mesh runs without temporal smoothing, so the measurement keeps whatever noise
    the video's own mouth has.
    """
    stop = info.frame_count if stop is None else min(stop, info.frame_count)
    scenes = [
        replace(scene, start=max(scene.start, start), end=min(scene.end, stop))
        for scene in detect_scenes(info, use_cache=use_cache).scenes
        if scene.start < stop and scene.end > start
    ]
    faces = detect_faces(
        info, scenes, select="largest", workers=workers, smoothing=0.0, progress=progress
    )

    # A chunk at a time, so a long video never holds a second copy of all its landmarks.
    parts = []
    for first in range(start, stop, _MEASURE_CHUNK):
        indices = np.arange(first, min(first + _MEASURE_CHUNK, stop), dtype=np.int64)
        landmarks = np.full((len(indices), 468, 2), np.nan)
        for row, index in enumerate(indices.tolist()):
            found = faces.landmarks_at(index)
            if found:
                landmarks[row] = found[0]
        parts.append(mouth_track(landmarks, indices, info.frame_times[indices]))
    names = MouthTrack.__dataclass_fields__
    return MouthTrack(*(np.concatenate([getattr(part, name) for part in parts]) for name in names))


def mouth_track(
    landmarks: np.ndarray, frame_indices: np.ndarray, frame_times: np.ndarray
) -> MouthTrack:
    """A MouthTrack from (n, 468, 2) landmarks per frame (rows of NaN where no face)."""
    n = len(landmarks)
    opening = np.full(n, np.nan)
    width = np.full(n, np.nan)
    boxes = np.zeros((n, 4), np.float32)
    seen = ~np.isnan(landmarks).any(axis=(1, 2))

    eyes = np.linalg.norm(landmarks[:, LEFT_EYE_OUTER] - landmarks[:, RIGHT_EYE_OUTER], axis=1)
    for row in np.flatnonzero(seen):
        points = landmarks[row]
        frame = mouth_frame(points)
        gaps = [(points[lower] - points[upper]) @ frame.v for upper, lower in _INNER_PAIRS]
        opening[row] = max(float(np.mean(gaps)), 0.0) / eyes[row]
        width[row] = frame.width / eyes[row]
        half = 0.9 * frame.width
        boxes[row] = (*(frame.center - half), *(frame.center + half))

    return MouthTrack(
        frame_indices=np.asarray(frame_indices, np.int64),
        frame_times=np.asarray(frame_times, np.float64),
        opening=opening,
        width=width,
        lips=_pose_free_lips(landmarks, seen),
        boxes=boxes,
    )


def _pose_free_lips(landmarks: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(n, 40, 2) lip points mapped onto the mean face by a similarity fitted on the skull.

    The fit uses faces.STABLE_POINTS, which move with the head and not with speech, so what
    is left of the lips' motion is speech and measurement noise. Units: inter-ocular
    distances of the mean face.
    """
    lips = np.full((len(landmarks), len(LIP_POINTS), 2), np.nan, np.float32)
    if not seen.any():
        return lips
    points = landmarks[seen, :, 0] + 1j * landmarks[seen, :, 1]  # (m, 468) complex
    reference = points.mean(axis=0)

    scale, shift = fit_similarity(reference, points)

    eyes = abs(reference[LEFT_EYE_OUTER] - reference[RIGHT_EYE_OUTER])
    free = (points[:, list(LIP_POINTS)] - shift[:, None]) / scale[:, None] / eyes
    lips[seen] = np.stack([free.real, free.imag], axis=-1)
    return lips


def measure_voice(
    wav: np.ndarray, frame_times: np.ndarray, phones: list[Phone] | None = None
) -> VoiceTrack:
    """Speech activity, envelope and phone shapes of 16 kHz mono audio on the given frames.

    ``frame_times`` are in audio time (seconds from the first sample). ``phones`` from an
    earlier phones.segment_phones(wav) saves decoding the audio again. Phones under frames
    the activity detector calls silent count as ``rest``: the recogniser labels every
    stretch of a recording, noise included.
    """
    features = analyze(wav, frame_times)
    phones = segment_phones(wav) if phones is None else phones
    shapes = shapes_at(phones, frame_times)
    shapes[~features.active] = "rest"
    return VoiceTrack(
        envelope=features.openness, active=features.active, shapes=shapes, phones=phones
    )


# --- Scoring -----------------------------------------------------------------------------


def score_tracks(mouth: MouthTrack, voice: VoiceTrack, *, max_lag: int = MAX_LAG) -> SyncScores:
    """Every score of one span, from its mouth and voice tracks (equal lengths)."""
    if len(mouth) != len(voice):
        raise ValueError(f"tracks differ in length: {len(mouth)} mouth, {len(voice)} voice")
    times = mouth.frame_times
    fps = 1.0 / float(np.median(np.diff(times))) if len(times) > 1 else 25.0
    tolerance = max(1, round(SYNC_TOLERANCE_S * fps))

    opening = mouth.opening
    face = mouth.has_face
    envelope_curve = lag_search(opening, voice.envelope, max_lag)
    curve = sync_curve(opening, voice, max_lag, envelope_curve)
    near = np.abs(curve.lags) <= tolerance

    auc, n_open, n_closed = viseme_auc(opening, voice.shapes)
    rest_share, n_silent = silent_rest_share(opening, voice.active)
    return SyncScores(
        score=float(curve.values[near].max()),
        offset=curve.lag,
        offset_confidence=curve.confidence,
        viseme_auc=auc,
        open_frames=n_open,
        closed_frames=n_closed,
        envelope_corr=envelope_curve.peak,
        envelope_lag=envelope_curve.lag,
        envelope_confidence=envelope_curve.confidence,
        silent_rest_share=rest_share,
        silent_frames=n_silent,
        jitter=mouth_jitter(mouth.lips, voice.envelope),
        frames=len(times),
        face_frames=int(face.sum()),
        speech_frames=int((voice.active & face).sum()),
        sync_curve=curve,
        envelope_curve=envelope_curve,
    )


def lag_search(opening: np.ndarray, envelope: np.ndarray, max_lag: int = MAX_LAG) -> LagCurve:
    """Pearson's r of ``opening[t]`` with ``envelope[t - lag]`` for every |lag| <= max_lag.

    A positive best lag means the mouth follows the sound that many frames late. Frames
    where either track is NaN are left out; a lag with under 3 frames or a flat track
    scores 0.
    """
    lags = np.arange(-max_lag, max_lag + 1)
    values = np.array([_correlation(opening, _delayed(envelope, lag)) for lag in lags])
    return _curve(lags, values)


def sync_curve(
    opening: np.ndarray, voice: VoiceTrack, max_lag: int = MAX_LAG, envelope: LagCurve | None = None
) -> LagCurve:
    """The sync score at every lag: viseme agreement and envelope correlation combined.

    At each lag, ``(n_v (2 AUC - 1) + w r) / (n_v + w)``: the viseme contrast counts as many
    times as it has evidence (the smaller of its open and closed frame counts), the
    envelope correlation r as ENVELOPE_WEIGHT times the speech frames.
    """
    if envelope is None:
        envelope = lag_search(opening, voice.envelope, max_lag)
    face = ~np.isnan(opening)
    weight = ENVELOPE_WEIGHT * float((voice.active & face).sum())

    values = []
    for lag, r in zip(envelope.lags.tolist(), envelope.values, strict=True):
        auc, n_open, n_closed = viseme_auc(opening, _delayed(voice.shapes, lag, fill="rest"))
        evidence = min(n_open, n_closed) if auc is not None else 0
        total = evidence + weight
        agreement = 2.0 * auc - 1.0 if auc is not None else 0.0
        values.append((evidence * agreement + weight * r) / total if total > 0 else 0.0)
    return _curve(envelope.lags, np.array(values))


def viseme_auc(opening: np.ndarray, shapes: np.ndarray) -> tuple[float | None, int, int]:
    """AUC of the opening between open-vowel frames and closed-lip frames.

    The probability that a frame under an open vowel shows a wider mouth than a frame under
    a lip closure or a lip-to-teeth phone (ties count half): 1 when every open frame is
    wider, 0.5 at chance. Returns ``(auc, open frames, closed frames)``; auc is None when
    either set is empty. Frames without a face (NaN) are left out.
    """
    face = ~np.isnan(opening)
    shapes = np.asarray(shapes)
    open_values = opening[face & (shapes == "open")]
    closed_values = opening[face & np.isin(shapes, _CLOSED_SHAPES)]
    n_open, n_closed = len(open_values), len(closed_values)
    if n_open == 0 or n_closed == 0:
        return None, n_open, n_closed

    ranks = rankdata(np.concatenate([open_values, closed_values]))
    u = ranks[:n_open].sum() - n_open * (n_open + 1) / 2
    return float(u / (n_open * n_closed)), n_open, n_closed


def silent_rest_share(opening: np.ndarray, active: np.ndarray) -> tuple[float | None, int]:
    """Share of the silent frames (with a face) whose mouth is at rest, and their count.

    At rest: an opening at most REST_FRACTION of the way from the 5th to the 95th
    percentile of this span's openings, and never above REST_CEILING.
    """
    face = ~np.isnan(opening)
    silent = face & ~np.asarray(active, bool)
    if not silent.any():
        return None, 0
    low, high = np.percentile(opening[face], [5.0, 95.0])
    threshold = min(low + REST_FRACTION * (high - low), REST_CEILING)
    return float(np.mean(opening[silent] <= threshold)), int(silent.sum())


def mouth_jitter(lips: np.ndarray, envelope: np.ndarray, min_frames: int = 5) -> float | None:
    """Frame-to-frame noise of the lip points where the sound is steady, in % of eye distance.

    On each run of three frames with a face over which the envelope moves less than
    STEADY_RANGE, the second difference of every lip coordinate is taken: smooth motion
    nearly cancels in it, while independent noise of standard deviation s leaves a
    standard deviation of s * sqrt(6). The result is the median over those runs of
    ``rms(second difference) / sqrt(6)``: the noise's standard deviation per coordinate.
    None with fewer than ``min_frames`` such runs.
    """
    if len(lips) < 3:
        return None
    second = lips[2:] - 2.0 * lips[1:-1] + lips[:-2]  # NaN wherever a face is missing
    env = np.asarray(envelope, np.float64)
    window = np.stack([env[:-2], env[1:-1], env[2:]])
    steady = (window.max(axis=0) - window.min(axis=0)) < STEADY_RANGE
    steady &= ~np.isnan(second).any(axis=(1, 2))
    if steady.sum() < min_frames:
        return None
    rms = np.sqrt(np.mean(second[steady].astype(np.float64) ** 2, axis=(1, 2)))
    return float(100.0 * np.median(rms) / np.sqrt(6.0))


def _delayed(values: np.ndarray, lag: int, fill=np.nan) -> np.ndarray:
    """``values`` moved ``lag`` frames later (earlier for a negative lag), padded with fill."""
    out = np.full_like(values, fill)
    if lag == 0:
        return values.copy()
    if abs(lag) >= len(values):
        return out
    if lag > 0:
        out[lag:] = values[:-lag]
    else:
        out[:lag] = values[-lag:]
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    both = ~(np.isnan(a) | np.isnan(b))
    if both.sum() < 3:
        return 0.0
    x, y = a[both] - a[both].mean(), b[both] - b[both].mean()
    norm = np.sqrt((x**2).sum() * (y**2).sum())
    return float((x * y).sum() / norm) if norm > 1e-12 else 0.0


def _curve(lags: np.ndarray, values: np.ndarray) -> LagCurve:
    best = int(np.argmax(values))
    return LagCurve(
        lags=lags.astype(np.int64),
        values=values.astype(np.float64),
        lag=int(lags[best]),
        peak=float(values[best]),
        confidence=float(values[best] - np.median(values)),
    )


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
