"""Phase 2: find the faces of every scene, with 468 face-mesh landmarks per frame.

MediaPipe's face mesh runs in tracking mode over each run of consecutive frames, at a reduced
analysis resolution, upright (display rotation undone first). Faces too small for the mesh's
own detector are found by the full-range face detector and meshed on an enlarged crop. Scenes
are split into chunks analysed in parallel worker processes; the parent then links each
scene's faces from frame to frame into tracks, picks the face(s) asked for, and smooths the
landmarks over time. Landmarks are returned in decoded-frame pixels at full resolution,
because that is what the renderer draws on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter
from scipy.ndimage import gaussian_filter1d

from .errors import DataCorruptedError, InternalError, InvalidOptionError, MissingDependencyError
from .landmarkers import Landmarker, get_landmarker
from .media import VideoInfo, frame_to_rgb, iter_video_frames
from .mouths import MouthCollector, MouthSample, best_per_band
from .scenes import Scene

logger = logging.getLogger(__name__)

N_LANDMARKS = 468
MAX_FACES = 4  # faces looked for per frame, and the most tracks "all" returns per scene
CHUNK_FRAMES = 300  # longest run of frames one worker task analyses
FRAMES_PER_WORKER = 250  # the least work (frames) worth starting one more worker process for

# Temporal smoothing, as Gaussian standard deviations in seconds (measured on the shared
# clips; see smooth_landmarks). The head pose carries most of the visible jitter; the upper
# face barely deforms, so it can be smoothed harder than the mouth and jaw, which must keep
# their fast speech movements.
POSE_SIGMA_S = 0.04
UPPER_SIGMA_S = 0.07
LOWER_SIGMA_S = 0.025
# The lower face's shape in steady_lower_face: slow enough that the source speaker's own
# speech (a few syllables a second) averages out, quick enough to follow a smile.
STEADY_SIGMA_S = 0.25

# Points that move with the skull and hardly with expression: forehead, nose bridge and tip,
# eye corners, temples and cheekbones. The head pose is fitted on these.
STABLE_POINTS = (
    10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263,
    127, 356, 234, 454, 109, 338, 67, 297, 103, 332,
)  # fmt: skip
NOSE_TIP, LEFT_EYE_OUTER, RIGHT_EYE_OUTER = 1, 33, 263

# A face seen on fewer frames than this is a second track only if the scene is that short.
_MIN_TRACK_FRAMES = 5
# Two faces on one frame overlapping more than this are the same face found twice.
_DUPLICATE_IOU = 0.5
# Linking a face to a track: least box overlap, or else the farthest centre distance
# relative to the track's face size.
_LINK_IOU = 0.2
_LINK_DISTANCE = 0.5
# Small faces: how often to look for new ones (frames), and the side of the square crop a
# face is meshed on, relative to the detector's box or to the last landmark box.
DISCOVER_EVERY = 10
_CROP_SCALE = 2.0
_FOLLOW_SCALE = 1.6

# Bump when the analysis or the stored layout changes, so old cache entries are ignored.


@dataclass
class FaceTrack:
    """One face followed through one scene."""

    scene: int  # index of the scene the track belongs to
    face: int  # rank of this face within its scene by size, 0 = largest
    frames: np.ndarray  # (n,) int64 sorted source frame indices where the face was found
    landmarks: np.ndarray  # (n, 468, 2) float32 px (x, y) in decoded frames, full resolution
    boxes: np.ndarray  # (n, 4) float32 x0, y0, x1, y1 px of the landmarks

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class FaceResult:
    """Every face track of a video, with a per-frame index for the renderer."""

    tracks: list[FaceTrack]  # ordered by scene, then by face rank
    frame_count: int  # frames in the source video
    # track position -> open-mouth samples of that face, cut at full resolution, one per
    # band of openings (see lipsync.mouths); a track that never opens its mouth has none.
    mouths: dict[int, list[MouthSample]] = field(default_factory=dict)
    from_cache: bool = False  # read from the face cache: nothing was decoded or analysed
    _by_frame: dict[int, list[tuple[int, int]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # frame index -> [(track position, row in that track)], built once: the renderer asks
        # for every frame, and a scan of all tracks per frame grows with the video.
        self._by_frame = {}
        for position, track in enumerate(self.tracks):
            for row, frame in enumerate(track.frames.tolist()):
                self._by_frame.setdefault(frame, []).append((position, row))

    def tracks_at(self, index: int) -> list[tuple[int, np.ndarray]]:
        """(track position in ``tracks``, (468, 2) landmarks) of each face on frame ``index``."""
        return [(t, self.tracks[t].landmarks[row]) for t, row in self._by_frame.get(index, [])]

    def landmarks_at(self, index: int) -> list[np.ndarray]:
        """The (468, 2) landmark arrays of the faces present on frame ``index``."""
        return [self.tracks[t].landmarks[row] for t, row in self._by_frame.get(index, [])]

    @property
    def frames_with_face(self) -> int:
        """How many frames show at least one tracked face."""
        return len(self._by_frame)

    def faces_in_scene(self, scene_index: int) -> int:
        """How many face tracks the scene has."""
        return sum(track.scene == scene_index for track in self.tracks)


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive frames of one scene, analysed by one worker task."""

    scene: int  # scene index
    start: int  # first frame index
    stop: int  # one past the last frame index


@dataclass
class _Found:
    """Every face a chunk's analysis found, before tracking: one row per face and frame."""

    frames: np.ndarray  # (m,) int64 frame index of each face found, non-decreasing
    landmarks: np.ndarray  # (m, 468, 2) float32 px in decoded frames, full resolution
    # (frame index, raw landmarks, sample) of the main face's open mouths, best per band
    mouths: list[tuple[int, np.ndarray, MouthSample]] = field(default_factory=list)


def detect_faces(
    info: VideoInfo,
    scenes: Sequence[Scene],
    *,
    select: str | int = "largest",
    workers: int | None = None,
    analysis_size: int = 640,
    smoothing: float = 1.0,
    use_cache: bool = False,
    progress: Callable[[int, int], None] | None = None,
    landmarker: str | Landmarker = "mediapipe",
) -> FaceResult:
    """Find, track and smooth the faces of each scene.

    Args:
        info: the probed source video.
        scenes: the scenes from phase 1; each is analysed on its own, and a face track never
            crosses a cut.
        select: ``"largest"`` for one track per scene (the face with the largest landmark box
            summed over the scene's frames, so a face seen throughout beats a brief one),
            ``"all"`` for up to MAX_FACES tracks per scene, or an int k for the k-th face by
            that size (0 = largest).
        workers: worker processes. None uses one per CPU, but no more than one per chunk
            and one per FRAMES_PER_WORKER frames (a worker's start-up costs seconds). With
            one worker, or one chunk, everything runs in this process.
        analysis_size: the longest side, in pixels, of the frames given to the face models.
            Sources smaller than this are analysed as they are.
        smoothing: strength of the temporal landmark filter: 0 turns it off, 1 is the
            measured default, 2 doubles every kernel width (see smooth_landmarks).
        use_cache: read and write the result in the cache (kind ``"faces"``), keyed by the
            video's bytes, the scenes and every argument above but ``workers``; a damaged
            or stale entry is ignored and rewritten.
        progress: called as ``progress(done, total)`` in frames as the analysis advances.
        landmarker: the engine that finds the faces (see :mod:`lipsync.landmarkers`):
            ``"mediapipe"``, MediaPipe's own API on the CPU, or ``"onnx"``, the same models
            converted to ONNX and run in batches on onnxruntime (a GPU where present); or a
            Landmarker instance. Tracking and smoothing are the same for both.

    Returns:
        A FaceResult. Scenes without a face have no track; that is not an error here.

    Raises:
        InvalidOptionError: an argument is out of range.
        DataCorruptedError: the video cannot be decoded.
        MissingDependencyError: mediapipe is not installed, or (``"onnx"``) onnxruntime.
        ModelNotInstalledError: (``"onnx"``) the face models are not converted and the
            converter is not installed; the hint says how to convert them.
    """
    _check_options(select, workers, analysis_size, smoothing)
    engine = get_landmarker(landmarker) if isinstance(landmarker, str) else landmarker
    # Imported here: the cache module builds FaceResults, so it imports this one.
    from .face_cache import cache_key, load_cached_faces, store_cached_faces

    key = None
    if use_cache:
        key = cache_key(info, scenes, select, analysis_size, smoothing, engine.name)
    if key is not None:
        cached = load_cached_faces(key, info.frame_count)
        if cached is not None:
            logger.info(
                "faces of %s taken from the cache (%d track(s))", info.path.name, len(cached.tracks)
            )
            if progress is not None:
                progress(info.frame_count, info.frame_count)
            return cached

    result = _detect_faces(
        info, scenes, select, workers, analysis_size, smoothing, progress, engine
    )
    if key is not None:
        store_cached_faces(key, result)
    return result


def _detect_faces(
    info: VideoInfo,
    scenes: Sequence[Scene],
    select: str | int,
    workers: int | None,
    analysis_size: int,
    smoothing: float,
    progress: Callable[[int, int], None] | None,
    engine: Landmarker,
) -> FaceResult:
    """detect_faces without the cache."""
    chunks = plan_chunks(scenes, info.frame_count)
    total = sum(chunk.stop - chunk.start for chunk in chunks)
    if workers is None:
        # A spawned worker takes ~1.5-3 s to start (imports, model graphs): only start as
        # many as there is work to repay it.
        workers = min(_cpu_count(), total // FRAMES_PER_WORKER)
    workers = max(1, min(workers, len(chunks)))
    logger.info(
        "looking for faces on %d frames of %s: %d scene(s), %d chunk(s), %s, %d worker(s)",
        total, info.path.name, len(scenes), len(chunks), engine.name, workers,
    )  # fmt: skip

    # The mesh's own tracker re-runs its detector on every frame where it follows fewer
    # faces than it may (6 ms a frame instead of 3.5 at 640 px). For the largest face it
    # follows one; the periodic full-range search still finds any other face to rank.
    tracked = 1 if select == "largest" else MAX_FACES
    found = engine.analyse(info, chunks, analysis_size, workers, progress, tracked)

    # Tracks are built per scene over all its chunks, so a face keeps one track across the
    # chunk borders and "largest" is decided on the whole scene.
    fps = float(info.fps) if info.fps else 25.0
    tracks: list[FaceTrack] = []
    for scene_index in sorted({chunk.scene for chunk in chunks}):
        parts = [f for c, f in zip(chunks, found, strict=True) if c.scene == scene_index]
        frames = np.concatenate([p.frames for p in parts])
        landmarks = np.concatenate([p.landmarks for p in parts])
        tracks += build_tracks(scene_index, frames, landmarks, select, fps, smoothing)

    mouths = assign_mouths(tracks, [m for part in found for m in part.mouths])
    result = FaceResult(tracks=tracks, frame_count=info.frame_count, mouths=mouths)
    logger.info(
        "%d face track(s); a face on %d of %d frames",
        len(tracks), result.frames_with_face, info.frame_count,
    )  # fmt: skip
    return result


def plan_chunks(scenes: Sequence[Scene], frame_count: int) -> list[Chunk]:
    """Split the scenes into runs of at most CHUNK_FRAMES frames, of near-equal length.

    The plan depends only on the scenes, never on the worker count, so any number of workers
    gives the same landmarks.
    """
    chunks: list[Chunk] = []
    for scene in scenes:
        start, stop = max(0, scene.start), min(scene.end, frame_count)
        if stop <= start:
            continue
        parts = math.ceil((stop - start) / CHUNK_FRAMES)
        bounds = np.linspace(start, stop, parts + 1).round().astype(int).tolist()
        for first, last in zip(bounds[:-1], bounds[1:], strict=True):
            chunks.append(Chunk(scene.index, first, last))
    return chunks


def build_tracks(
    scene: int,
    frames: np.ndarray,
    landmarks: np.ndarray,
    select: str | int,
    fps: float,
    smoothing: float,
) -> list[FaceTrack]:
    """Link one scene's faces into tracks, keep the selected ones, and smooth them."""
    if len(frames) == 0:
        return []
    order = np.argsort(frames, kind="stable")
    frames, landmarks = frames[order], landmarks[order]
    boxes = landmark_boxes(landmarks)
    keep = _drop_duplicates(frames, boxes)
    frames, landmarks, boxes = frames[keep], landmarks[keep], boxes[keep]

    # Rank by the box area summed over the scene: the face that is big and there all along.
    members = _link(frames, boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    members.sort(key=lambda rows: -float(areas[rows].sum()))
    scene_frames = len(np.unique(frames))
    members = members[:1] + [
        rows for rows in members[1:] if len(rows) >= min(_MIN_TRACK_FRAMES, scene_frames)
    ]

    if select == "all":
        chosen = list(enumerate(members[:MAX_FACES]))
    else:
        rank = 0 if select == "largest" else int(select)
        chosen = [(rank, members[rank])] if rank < len(members) else []

    tracks = []
    for rank, rows in chosen:
        smoothed = _smooth_track(frames[rows], landmarks[rows], fps, smoothing)
        tracks.append(
            FaceTrack(
                scene=scene,
                face=rank,
                frames=frames[rows].astype(np.int64),
                landmarks=smoothed,
                boxes=landmark_boxes(smoothed),
            )
        )
    return tracks


def landmark_boxes(landmarks: np.ndarray) -> np.ndarray:
    """(n, 468, 2) landmarks -> (n, 4) float32 boxes x0, y0, x1, y1."""
    if len(landmarks) == 0:
        return np.zeros((0, 4), np.float32)
    return np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1).astype(np.float32)


def smooth_landmarks(
    landmarks: np.ndarray,
    fps: float,
    strength: float = 1.0,
    sigmas_s: tuple[float, float, float] | None = None,
    points: Sequence[int] | None = None,
) -> np.ndarray:
    """Zero-phase temporal smoothing of one face over consecutive frames.

    Each frame is split into a head pose (a similarity transform fitted on STABLE_POINTS
    against the run's mean shape) and the shape left once that pose is undone. The pose is
    filtered with a Gaussian of POSE_SIGMA_S, the upper face's shape with UPPER_SIGMA_S and
    the lower face's (mouth, jaw) with the narrower LOWER_SIGMA_S, all scaled by
    ``strength``; then pose and shape are recombined. The filter is symmetric in time, so
    it smooths without delaying real head motion.

    Args:
        landmarks: (n, 468, 2) px of one face on n consecutive frames.
        fps: frame rate, to turn the sigmas from seconds into frames.
        strength: multiplies every sigma; 0 returns the input unchanged.
        sigmas_s: (pose, upper face, lower face) sigmas in seconds instead of the defaults.
        points: smooth and return only these landmarks (the pose is still fitted on all of
            STABLE_POINTS); a caller that needs a few points of a long track then holds a
            few float64 columns, not all 468.

    Returns:
        (n, 468, 2) float32 smoothed landmarks, or (n, len(points), 2) with ``points``.
    """
    pose_s, upper_s, lower_s = sigmas_s or (POSE_SIGMA_S, UPPER_SIGMA_S, LOWER_SIGMA_S)
    landmarks = np.asarray(landmarks)
    chosen = slice(None) if points is None else np.asarray(points, dtype=np.int64)
    if strength <= 0 or len(landmarks) < 3:
        return landmarks[:, chosen].astype(np.float32)

    # Landmarks as complex numbers: a similarity transform is then z -> a * z + b. The
    # reference is the run's mean shape; the pose is fitted on the stable points alone.
    reference = _complex(landmarks.mean(axis=0, dtype=np.float64))
    stable = list(STABLE_POINTS)
    scale, shift = _fit_pose(reference[stable], _complex(landmarks[:, stable]))
    shape = (_complex(landmarks[:, chosen]) - shift[:, None]) / scale[:, None]

    # Scale and rotation are smoothed as log-magnitude and unwrapped angle, so a turn through
    # +-180 degrees or a zoom stays continuous.
    pose_sigma = strength * pose_s * fps
    log_scale = _gaussian(np.log(np.abs(scale)), pose_sigma)
    angle = _gaussian(np.unwrap(np.angle(scale)), pose_sigma)
    scale = np.exp(log_scale + 1j * angle)
    shift = _gaussian(shift.real, pose_sigma) + 1j * _gaussian(shift.imag, pose_sigma)

    lower = _lower_face(reference)[chosen]
    shape[:, ~lower] = _gaussian_complex(shape[:, ~lower], strength * upper_s * fps)
    shape[:, lower] = _gaussian_complex(shape[:, lower], strength * lower_s * fps)

    shape *= scale[:, None]
    shape += shift[:, None]
    return np.stack([shape.real, shape.imag], axis=-1).astype(np.float32)


def steady_lower_face(
    track: FaceTrack,
    fps: float,
    sigma_s: float = STEADY_SIGMA_S,
    points: Sequence[int] | None = None,
) -> np.ndarray:
    """The track's landmarks with the lower face's shape held steady, the head's pose kept.

    The shape of the mouth and jaw, once the head pose is undone, is averaged over about
    ``sigma_s`` seconds either side: what the source speaker's lips do syllable by syllable
    is gone, a slow change of expression stays. e1 builds its new mouth on this shape, so
    the old speech does not show through the new one. ``points``: only these landmarks.
    """
    return _smooth_track(
        track.frames, track.landmarks, fps, 1.0, (0.0, 0.0, sigma_s), points=points
    )


def _smooth_track(
    frames: np.ndarray,
    landmarks: np.ndarray,
    fps: float,
    strength: float,
    sigmas_s: tuple[float, float, float] | None = None,
    points: Sequence[int] | None = None,
):
    """Smooth each run of consecutive frames on its own: a gap may hide any motion."""
    columns = landmarks.shape[1] if points is None else len(points)
    out = np.empty((len(landmarks), columns, 2), dtype=np.float32)
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    for rows in np.split(np.arange(len(frames)), breaks):
        out[rows] = smooth_landmarks(landmarks[rows], fps, strength, sigmas_s, points)
    return out


def fit_similarity(reference: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares a, b per frame with points ~ a * reference + b on STABLE_POINTS."""
    stable = list(STABLE_POINTS)
    return _fit_pose(reference[stable], points[:, stable])


def _fit_pose(ref: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fit_similarity on points already cut to the stable ones: (k,) and (n, k) complex."""
    ref_centred = ref - ref.mean()
    pts_centred = pts - pts.mean(axis=1, keepdims=True)
    scale = (np.conj(ref_centred) * pts_centred).sum(axis=1) / (np.abs(ref_centred) ** 2).sum()
    shift = pts.mean(axis=1) - scale * ref.mean()
    return scale, shift


def _complex(xy: np.ndarray) -> np.ndarray:
    """(..., 2) x, y as complex128 x + iy."""
    return xy[..., 0].astype(np.float64) + 1j * xy[..., 1].astype(np.float64)


def _lower_face(reference: np.ndarray) -> np.ndarray:
    """(468,) bool: points below the nose tip once the eyes are level (mouth, jaw, chin)."""
    eyes = reference[RIGHT_EYE_OUTER] - reference[LEFT_EYE_OUTER]
    level = reference * np.exp(-1j * np.angle(eyes))
    return level.imag > level[NOSE_TIP].imag


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter along axis 0, zero-phase, that keeps a steady motion at the run ends.

    The run is extended past each end by point reflection (2 * end - mirrored values), so a
    head that keeps moving at a run's first or last frame is not pulled back towards it.
    """
    if sigma < 0.1 or len(values) < 2:  # under a tenth of a frame the kernel is the identity
        return values
    pad = min(len(values) - 1, math.ceil(4 * sigma))
    head = 2 * values[:1] - values[pad:0:-1]
    tail = 2 * values[-1:] - values[-2 : -pad - 2 : -1]
    padded = np.concatenate([head, values, tail])
    return gaussian_filter1d(padded, sigma, axis=0, mode="nearest")[pad : pad + len(values)]


def _gaussian_complex(values: np.ndarray, sigma: float) -> np.ndarray:
    return _gaussian(values.real, sigma) + 1j * _gaussian(values.imag, sigma)


def _drop_duplicates(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Row indices to keep: on each frame, a face overlapping an earlier one is dropped."""
    keep: list[int] = []
    for rows in _frame_groups(frames):
        kept: list[int] = []
        for row in rows:
            if all(_iou(boxes[row], boxes[k]) <= _DUPLICATE_IOU for k in kept):
                kept.append(row)
        keep += kept
    return np.asarray(keep, dtype=np.int64)


def _link(frames: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Group face rows into tracks, frame by frame, by box overlap or else nearest centre.

    Returns one array of row indices per track, in frame order.
    """
    tracks: list[list[int]] = []
    for rows in _frame_groups(frames):
        free = set(range(len(tracks)))
        unlinked = set(rows)

        # Best matches first, so two faces side by side cannot swap tracks.
        pairs = sorted(
            ((_link_score(boxes[tracks[t][-1]], boxes[r]), t, r) for t in free for r in rows),
            reverse=True,
        )
        for score, t, r in pairs:
            if score <= 0 or t not in free or r not in unlinked:
                continue
            tracks[t].append(r)
            free.discard(t)
            unlinked.discard(r)
        tracks += [[r] for r in rows if r in unlinked]
    return [np.asarray(rows, dtype=np.int64) for rows in tracks]


def _frame_groups(frames: np.ndarray) -> list[list[int]]:
    """Row indices grouped by frame, for rows sorted by frame."""
    starts = np.flatnonzero(np.diff(frames, prepend=-1) != 0).tolist()
    return [list(range(a, b)) for a, b in zip(starts, [*starts[1:], len(frames)], strict=True)]


def _link_score(last: np.ndarray, box: np.ndarray) -> float:
    """How well a face box continues a track whose last box is ``last``; <= 0: not at all."""
    overlap = _iou(last, box)
    if overlap >= _LINK_IOU:
        return 1.0 + overlap
    size = max(last[2] - last[0], last[3] - last[1], 1e-6)
    distance = np.hypot(*((box[:2] + box[2:]) / 2 - (last[:2] + last[2:]) / 2)) / size
    return float(_LINK_DISTANCE - distance)  # in (0, 0.5] when close enough


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _analyse_chunks(
    info: VideoInfo,
    chunks: list[Chunk],
    analysis_size: int,
    workers: int,
    progress: Callable[[int, int], None] | None,
    tracked: int = MAX_FACES,
) -> list[_Found]:
    """The faces of every chunk, in chunk order; in worker processes when it pays."""
    total = sum(chunk.stop - chunk.start for chunk in chunks)
    if workers <= 1 or len(chunks) <= 1:
        found: list[_Found] = []
        done = 0
        for chunk in chunks:
            report = None if progress is None else _offset_progress(progress, done, total)
            found.append(
                _analyse_chunk(info, chunk.start, chunk.stop, analysis_size, report, tracked)
            )
            done += chunk.stop - chunk.start
        return found

    # Spawn, not fork: mediapipe's graphs and the decoder's threads do not survive a fork.
    context = multiprocessing.get_context("spawn")
    results: dict[int, _Found] = {}
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            pending = {
                pool.submit(_analyse_chunk, info, c.start, c.stop, analysis_size, None, tracked): i
                for i, c in enumerate(chunks)
            }
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    i = pending.pop(future)
                    results[i] = future.result()
                    done += chunks[i].stop - chunks[i].start
                    logger.debug("faces: chunk %d/%d done", len(results), len(chunks))
                    if progress is not None:
                        progress(done, total)
    except BrokenProcessPool as exc:
        raise InternalError(
            "a face-analysis worker process died",
            hint="out of memory, or a script that starts lipsync without an "
            "`if __name__ == '__main__':` guard (workers are spawned and import the script)",
        ) from exc
    return [results[i] for i in range(len(chunks))]


def _offset_progress(
    progress: Callable[[int, int], None], base: int, total: int
) -> Callable[[int], None]:
    """A chunk's progress(n) as the whole job's progress(done, total)."""
    return lambda n: progress(base + n, total)


def _analyse_chunk(
    info: VideoInfo,
    start: int,
    stop: int,
    analysis_size: int = 640,
    progress: Callable[[int], None] | None = None,
    tracked: int = MAX_FACES,
) -> _Found:
    """Every face on frames ``start <= index < stop``, unsmoothed and untracked.

    Runs in a worker process; decodes only its own frame range. ``progress(n)`` gets the
    number of frames done so far.
    """
    mesh_module, detection_module = _mediapipe()
    width, height = _analysis_dims(info, analysis_size)
    finder = _FaceFinder(mesh_module, detection_module, tracked)
    frames: list[int] = []
    landmarks: list[np.ndarray] = []
    # The frame is decoded at full size anyway: the main face's open mouths are cut from
    # it here, so no later pass has to decode frames again for the mouth atlas.
    mouths = MouthCollector()
    reformatter = VideoReformatter()

    done = 0
    try:
        for index, frame in iter_video_frames(info, start, stop):
            image = frame_to_rgb(frame, (width, height), reformatter)
            faces = [
                _to_decoded_px(face, info) for face in finder.find(_upright(image, info.rotation))
            ]
            for face in faces:
                frames.append(index)
                landmarks.append(face)
            if faces:
                mouths.offer(index, frame, max(faces, key=_box_area))
            done += 1
            if progress is not None and (done % 16 == 0 or index == stop - 1):
                progress(done)
    except av.FFmpegError as exc:
        raise DataCorruptedError(f"cannot decode {info.path.name}: {exc}") from exc
    finally:
        finder.close()

    logger.debug("faces: frames %d-%d: %d face(s) found", start, stop, len(frames))
    if not frames:
        return _Found(np.zeros(0, np.int64), np.zeros((0, N_LANDMARKS, 2), np.float32))
    return _Found(
        np.asarray(frames, np.int64), np.stack(landmarks).astype(np.float32), mouths.samples()
    )


def _box_area(landmarks: np.ndarray) -> float:
    extent = landmarks.max(axis=0) - landmarks.min(axis=0)
    return float(extent[0] * extent[1])


def assign_mouths(
    tracks: list[FaceTrack], found: Sequence[tuple[int, np.ndarray, MouthSample]]
) -> dict[int, list[MouthSample]]:
    """Give each mouth sample to the track whose face it was cut from.

    A sample belongs to the track that has a face on its frame within a tenth of the face's
    size of the raw landmarks it was cut with (tracks are smoothed, so not exactly on them).
    Each track then keeps the most frontal sample per band of openings.
    """
    by_track: dict[int, list[MouthSample]] = {}
    for index, raw, sample in found:
        best, best_error = None, np.inf
        for position, track in enumerate(tracks):
            row = int(np.searchsorted(track.frames, index))
            if row == len(track.frames) or track.frames[row] != index:
                continue
            box = track.boxes[row]
            size = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
            error = float(np.abs(track.landmarks[row] - raw).mean()) / size
            if error < 0.1 and error < best_error:
                best, best_error = position, error
        if best is not None:
            by_track.setdefault(best, []).append(sample)
    return {position: best_per_band(samples) for position, samples in by_track.items()}


class _FaceFinder:
    """Every face on a run of consecutive upright frames, fed in order.

    The face mesh in tracking mode follows the faces its own short-range detector finds:
    the big, near ones. Smaller faces are looked for with the full-range detector on the
    first frame, every DISCOVER_EVERY frames after it and on any frame with no face, then
    followed frame to frame by meshing an enlarged crop around where each one last was.
    """

    def __init__(self, mesh_module, detection_module, tracked: int = MAX_FACES) -> None:
        self._mesh_module = mesh_module
        self._detection_module = detection_module
        self._mesh = mesh_module.FaceMesh(
            static_image_mode=False, max_num_faces=tracked, refine_landmarks=False
        )
        self._crop_mesh = None  # built on first use: most videos never need it
        self._detector = None
        self._followed: list[np.ndarray] = []  # (468, 2) px of the small faces, last frame
        self._count = 0

    def find(self, image: np.ndarray) -> list[np.ndarray]:
        """(468, 2) landmarks normalised to ``image`` (x / width, y / height), one per face."""
        height, width = image.shape[:2]
        faces = [face * (width, height) for face in _mesh_faces(self._mesh, image)]

        followed: list[np.ndarray] = []
        for last in self._followed:
            face = self._mesh_crop(image, _box_of(last), _FOLLOW_SCALE)
            if face is not None and not _covered(_box_of(face), faces + followed):
                followed.append(face)

        if self._count % DISCOVER_EVERY == 0 or not (faces or followed):
            for box in self._detect(image):
                if len(faces) + len(followed) >= MAX_FACES or _covered(box, faces + followed):
                    continue
                face = self._mesh_crop(image, box, _CROP_SCALE)
                if face is not None and not _covered(_box_of(face), faces + followed):
                    followed.append(face)

        self._followed = followed
        self._count += 1
        return [face / (width, height) for face in (faces + followed)[:MAX_FACES]]

    def close(self) -> None:
        for graph in (self._mesh, self._crop_mesh, self._detector):
            if graph is not None:
                graph.close()

    def _detect(self, image: np.ndarray) -> list[np.ndarray]:
        """Face boxes (x0, y0, x1, y1 px) from the full-range detector."""
        if self._detector is None:
            self._detector = self._detection_module.FaceDetection(model_selection=1)
        height, width = image.shape[:2]
        boxes = []
        for detection in self._detector.process(image).detections or []:
            box = detection.location_data.relative_bounding_box
            x0, y0 = box.xmin * width, box.ymin * height
            boxes.append(np.array([x0, y0, x0 + box.width * width, y0 + box.height * height]))
        return boxes

    def _mesh_crop(self, image: np.ndarray, box: np.ndarray, scale: float) -> np.ndarray | None:
        """(468, 2) px landmarks of the face in a square crop ``scale`` times ``box``."""
        if self._crop_mesh is None:
            self._crop_mesh = self._mesh_module.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=False
            )
        side = max(16, round(scale * max(box[2] - box[0], box[3] - box[1])))
        x0 = round((box[0] + box[2]) / 2 - side / 2)
        y0 = round((box[1] + box[3]) / 2 - side / 2)
        faces = _mesh_faces(self._crop_mesh, _crop_padded(image, x0, y0, side))
        return faces[0] * side + (x0, y0) if faces else None


def _box_of(face: np.ndarray) -> np.ndarray:
    return np.concatenate([face.min(axis=0), face.max(axis=0)])


def _covered(box: np.ndarray, faces: list[np.ndarray]) -> bool:
    """Whether the box's centre lies inside the landmark box of a face already found."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for face in faces:
        x0, y0, x1, y1 = _box_of(face)
        if x0 <= cx <= x1 and y0 <= cy <= y1:
            return True
    return False


def _crop_padded(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """A side x side crop at (x0, y0), black where it leaves the image."""
    crop = np.zeros((side, side, 3), np.uint8)
    height, width = image.shape[:2]
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(width, x0 + side), min(height, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return crop


def _mesh_faces(mesh, image: np.ndarray) -> list[np.ndarray]:
    """(468, 2) float64 landmarks normalised to the image, one per face the mesh found."""
    result = mesh.process(image)
    faces = []
    for face in result.multi_face_landmarks or []:
        points = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float64)
        faces.append(points[:N_LANDMARKS])
    return faces


def _upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as displayed: VideoInfo.rotation is counter-clockwise, in degrees."""
    codes = {
        90: cv2.ROTATE_90_COUNTERCLOCKWISE,
        180: cv2.ROTATE_180,
        270: cv2.ROTATE_90_CLOCKWISE,
    }
    code = codes.get(_quarter_turns(rotation) * 90)
    return np.ascontiguousarray(image) if code is None else cv2.rotate(image, code)


def _to_decoded_px(face: np.ndarray, info: VideoInfo) -> np.ndarray:
    """Landmarks normalised to the upright frame -> pixels of the full-size decoded frame."""
    u, v = face[:, 0], face[:, 1]
    turns = _quarter_turns(info.rotation)
    if turns == 1:
        x, y = 1.0 - v, u
    elif turns == 2:
        x, y = 1.0 - u, 1.0 - v
    elif turns == 3:
        x, y = v, 1.0 - u
    else:
        x, y = u, v
    return np.stack([x * info.width, y * info.height], axis=-1).astype(np.float32)


def _quarter_turns(rotation: int) -> int:
    return round(rotation / 90) % 4


def _analysis_dims(info: VideoInfo, analysis_size: int) -> tuple[int, int]:
    """Decoded-orientation (width, height) whose longest side is at most analysis_size."""
    scale = min(1.0, analysis_size / max(info.width, info.height))
    return max(1, round(info.width * scale)), max(1, round(info.height * scale))


def _mediapipe():
    """The face-mesh and face-detection solution modules (imported late: mediapipe is slow
    to import and only the workers need it)."""
    try:
        from mediapipe.python.solutions import face_detection, face_mesh
    except ImportError as exc:
        raise MissingDependencyError(
            "face detection needs mediapipe", hint="pip install mediapipe==0.10.21"
        ) from exc
    return face_mesh, face_detection


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _check_options(
    select: str | int, workers: int | None, analysis_size: int, smoothing: float
) -> None:
    if isinstance(select, bool) or not (
        select in ("largest", "all") or (isinstance(select, int) and 0 <= select < MAX_FACES)
    ):
        raise InvalidOptionError(
            f"select must be 'largest', 'all' or a face rank 0..{MAX_FACES - 1}, got {select!r}"
        )
    if workers is not None and workers < 1:
        raise InvalidOptionError(f"workers must be at least 1, got {workers}")
    if analysis_size < 64:
        raise InvalidOptionError(f"analysis_size must be at least 64 px, got {analysis_size}")
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise InvalidOptionError(f"smoothing must be a number >= 0, got {smoothing}")
