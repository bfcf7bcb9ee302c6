"""``onnx``: MediaPipe's face models on onnxruntime, many runs of frames in lockstep.

Tracking makes frame t depend on frame t-1, so one run of frames cannot be batched along
time. Instead every chunk is cut into runs of about RUN_FRAMES frames, each a track of its
own (it starts with a detection, as every chunk of the CPU path does), and up to
``batch_size`` runs advance together: each step decodes the next frame of every live run
(each run has its own decoder, fed in a thread pool) and sends all of their detector and
mesh work to the models as one batch per model. When a run ends the next one takes its
lane, so the batch stays full until the last runs. Runs of several videos can share the
lanes too (:func:`analyse_runs`), which is how a batch of short clips keeps a GPU busy.

The run plan depends only on the chunks, never on the batch size or the provider, so
every batch size gives the same landmarks.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ..errors import DataCorruptedError, InvalidOptionError
from ..media import VideoInfo, frame_to_rgb, iter_video_frames
from ..mouths import MouthCollector
from . import Landmarker, register

logger = logging.getLogger(__name__)

# Frames per run: a fresh detection costs about one mesh call and a run's decoder seeks to
# the keyframe before it, so runs much shorter than this cost decode time; longer ones leave
# short videos with too few runs to fill a batch.
RUN_FRAMES = 64
# A run that starts inside a chunk begins tracking this many frames early and keeps none of
# their faces: by its first own frame its regions come from landmarks, as they would had the
# chunk been tracked in one piece. Measured on the shared clips: the worst frame of a run
# start differs from the unsplit track by 3.4 px with no warm-up, 1.0 px with 2, 0.26 px
# with 4 (the mean over all frames: 0.10, 0.04, 0.03 px).
WARMUP_FRAMES = 4
BATCH_SIZE = 32  # runs advanced together (lanes)


@dataclass(frozen=True)
class Run:
    """Consecutive frames of one video, tracked as one sequence."""

    info: VideoInfo  # the video
    start: int  # first frame index whose faces are kept
    stop: int  # one past the last frame index
    warmup: int = 0  # frames before ``start`` tracked but not kept


@register("onnx")
class OnnxLandmarker(Landmarker):
    """The batched path: converted face models, runs advanced in lockstep."""

    def __init__(
        self,
        batch_size: int = BATCH_SIZE,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidOptionError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size  # runs advanced together
        self.providers = providers  # onnxruntime providers; None: CUDA if present, else CPU
        self.threads = threads  # onnxruntime intra-op threads; None: its default
        self._models = None

    def models(self):
        """The face models' sessions, opened (and converted, if needed) on first use."""
        if self._models is None:
            from .face_models import FaceModels

            self._models = FaceModels(self.providers, self.threads)
        return self._models

    def analyse(self, info, chunks, analysis_size, workers, progress, tracked):
        from ..faces import _Found

        plan = [(c, run) for c, chunk in enumerate(chunks) for run in split_chunk(info, chunk)]
        found = self.analyse_runs([run for _, run in plan], analysis_size, progress, tracked)

        per_chunk: list[list[_Found]] = [[] for _ in chunks]
        for (c, _), part in zip(plan, found, strict=True):
            per_chunk[c].append(part)
        return [_merge(parts) for parts in per_chunk]

    def analyse_runs(
        self,
        runs: list[Run],
        analysis_size: int = 640,
        progress: Callable[[int, int], None] | None = None,
        tracked: int | None = None,
    ) -> list:
        """The raw faces (a ``faces._Found``) of every run, in run order.

        ``tracked`` is how many faces each run's mesh tracker follows (default
        ``faces.MAX_FACES``); runs may come from different videos.
        """
        from ..faces import MAX_FACES
        from .finder import LaneFinder

        finder = LaneFinder(self.models(), MAX_FACES if tracked is None else tracked)
        total = sum(run.stop - run.start + run.warmup for run in runs)
        logger.info(
            "ONNX landmarks: %d run(s), %d frames, %d lane(s)",
            len(runs), total, min(self.batch_size, len(runs)),
        )  # fmt: skip
        pending = deque(enumerate(runs))
        lanes: dict[int, _Lane] = {}
        results: dict[int, object] = {}
        done = 0

        with ThreadPoolExecutor(max(1, min(self.batch_size, os.cpu_count() or 1))) as pool:
            while pending or lanes:
                while pending and len(lanes) < self.batch_size:
                    key, run = pending.popleft()
                    lanes[key] = _Lane(run, analysis_size)
                    finder.start(key)

                # Decode the next frame of every lane; a lane with none left is finished.
                frames = dict(zip(lanes, pool.map(_Lane.next_frame, lanes.values()), strict=True))
                for key in [key for key, frame in frames.items() if frame is None]:
                    results[key] = lanes.pop(key).found()
                    finder.end(key)
                    del frames[key]
                if not frames:
                    continue

                faces = finder.find({key: frames[key][1] for key in frames})
                for key, normalised in faces.items():
                    lanes[key].record(frames[key][0], normalised)
                done += len(frames)
                if progress is not None:
                    progress(done, total)

        return [results[i] for i in range(len(runs))]


def split_chunk(info: VideoInfo, chunk) -> list[Run]:
    """A chunk cut into runs of near-equal length, none longer than RUN_FRAMES."""
    parts = max(1, math.ceil((chunk.stop - chunk.start) / RUN_FRAMES))
    bounds = np.linspace(chunk.start, chunk.stop, parts + 1).round().astype(int).tolist()
    return [
        Run(info, a, b, min(WARMUP_FRAMES, a - chunk.start))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]


@dataclass
class _Lane:
    """One run being decoded and analysed."""

    run: Run
    analysis_size: int
    frames: list[int] = field(default_factory=list)  # frame index of each face found
    landmarks: list[np.ndarray] = field(default_factory=list)  # (468, 2) px, decoded frame
    _decoded: Iterator | None = None
    _current: tuple[int, av.VideoFrame] | None = None

    def __post_init__(self) -> None:
        from ..faces import _analysis_dims

        self.size = _analysis_dims(self.run.info, self.analysis_size)
        self.mouths = MouthCollector()
        self.reformatter = VideoReformatter()

    def next_frame(self) -> tuple[int, np.ndarray] | None:
        """(index, upright RGB at analysis size) of the run's next frame; None at its end."""
        from ..faces import _upright

        info = self.run.info
        if self._decoded is None:
            first = self.run.start - self.run.warmup
            self._decoded = iter_video_frames(info, first, self.run.stop)
        try:
            self._current = next(self._decoded, None)
        except av.FFmpegError as exc:
            raise DataCorruptedError(f"cannot decode {info.path.name}: {exc}") from exc
        if self._current is None:
            return None
        index, frame = self._current
        image = frame_to_rgb(frame, self.size, self.reformatter)
        return index, _upright(image, info.rotation)

    def record(self, index: int, normalised: list[np.ndarray]) -> None:
        """Keep the faces found on the current frame, and offer its main face's mouth."""
        from ..faces import _box_area, _to_decoded_px

        if index < self.run.start:  # warming up the tracker
            return
        faces = [_to_decoded_px(face, self.run.info) for face in normalised]
        for face in faces:
            self.frames.append(index)
            self.landmarks.append(face)
        if faces:
            self.mouths.offer(index, self._current[1], max(faces, key=_box_area))

    def found(self):
        from ..faces import N_LANDMARKS, _Found

        if self._decoded is not None:
            self._decoded.close()  # leaves the decoder's `with` block: the file is closed
            self._decoded = None
        if not self.frames:
            return _Found(np.zeros(0, np.int64), np.zeros((0, N_LANDMARKS, 2), np.float32))
        return _Found(
            np.asarray(self.frames, np.int64),
            np.stack(self.landmarks).astype(np.float32),
            self.mouths.samples(),
        )


def _merge(parts: list):
    """One chunk's raw faces from its runs' (in frame order)."""
    from ..faces import _Found

    return _Found(
        np.concatenate([p.frames for p in parts]),
        np.concatenate([p.landmarks for p in parts]),
        [m for p in parts for m in p.mouths],
    )
