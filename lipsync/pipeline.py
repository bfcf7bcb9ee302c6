"""``dub``: the four phases composed into one call.

scenes -> faces -> generate -> export. Frames stream from the decoder through the generator
to the encoder in small batches, so memory does not grow with the video's length; only the
face landmarks (a few floats per frame) are kept for the whole video.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

import av
import numpy as np

from .audio import analyze
from .errors import InternalError, InvalidOptionError, LipsyncError, NoFaceFoundError
from .export import LENGTH_POLICIES, EncodeSettings, VideoWriter, plan_timeline
from .faces import FaceResult, detect_faces
from .generators import FaceFrame, Generator, SourceVideo, get_generator
from .generators import check_options as check_generator_options
from .landmarkers import available as available_landmarkers
from .media import (
    PathLike,
    frame_to_rgb,
    iter_frame_sequence,
    load_audio,
    probe_audio,
    validate_video,
)
from .patches import PATCHABLE, FramePatch, PatchConverter, union_box
from .phones import segment_phones, shapes_at
from .scenes import Scene, detect_scenes
from .visemes import apply_visemes

logger = logging.getLogger(__name__)

# progress(phase, done, total): phase is "scenes", "faces" or "export" (which also renders).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DubOptions:
    """Everything ``dub`` can be told beyond its inputs; each field has a sane default."""

    intensity: int = 2  # 1 subtle, 2 normal, 3 strong mouth motion
    model: str = "e1"  # generator name from the registry
    faces: str | int = "largest"  # "largest", "all", or the k-th face by size (0 = largest)
    length: str = "video"  # "video": as long as the video; "audio": as long as the audio
    crf: int = 18  # x264 quality; 18 is visually lossless
    preset: str = "veryfast"  # x264 speed/size trade-off
    max_duration: float | None = 3600.0  # seconds; longer inputs are refused (ERR_009)
    scene_threshold: float = 27.0  # PySceneDetect content threshold for a cut
    workers: int | None = None  # face-analysis processes; None = one per core
    use_cache: bool = True  # reuse the scenes and faces of a video seen before
    batch_size: int = 16  # frames handed to the generator at once (an ONNX model's batch)
    visemes: bool = True  # shape the mouth by the voice's phones (closures, rounding)
    landmarker: str = "mediapipe"  # face engine: "mediapipe" (CPU) or "onnx" (batched, GPU)
    precision: str = "auto"  # ONNX models: "auto" (fp16 on a GPU), "fp32" or "fp16"

    def validate(self) -> None:
        """Refuse bad options before any work; the rest are checked where they are used."""
        check_generator_options(self.intensity, self.batch_size, self.precision)
        if self.length not in LENGTH_POLICIES:
            allowed = ", ".join(LENGTH_POLICIES)
            raise InvalidOptionError(f"length must be one of {allowed}, got {self.length!r}")
        if not (isinstance(self.faces, int) or self.faces in ("largest", "all")):
            raise InvalidOptionError(
                f"faces must be 'largest', 'all' or a face index, got {self.faces!r}"
            )
        if self.landmarker not in available_landmarkers():
            known = ", ".join(available_landmarkers())
            raise InvalidOptionError(f"landmarker must be one of {known}, got {self.landmarker!r}")


@dataclass
class DubResult:
    """What a finished dub produced, and how long each phase took."""

    output: Path  # the written video
    timings: dict[str, float]  # seconds per phase, plus "total"
    scenes: list[Scene]  # the scene list phase 1 found (or took from the cache)
    scenes_from_cache: bool  # phase 1 was skipped because this video was seen before
    faces_from_cache: bool  # phase 2 was skipped: the same video, scenes and face options
    faces_found: int  # face tracks across all scenes
    frames_with_face: int  # source frames on which a face was tracked
    frames_changed: int  # output frames the generator re-rendered
    frames_written: int  # output frames in total
    duration: float  # output duration in seconds
    engine: str = ""  # the generator as it ran: "e1", "e2 on CUDA, fp16"


def dub(
    video: PathLike,
    audio: PathLike,
    intensity: int = 2,
    model: str = "e1",
    output: PathLike | None = None,
    *,
    progress: Progress | None = None,
    **options,
) -> DubResult:
    """Re-render the speaker's mouth in ``video`` to follow ``audio``; write and describe it.

    ``output`` defaults to ``<video name>_dubbed.mp4`` in the current folder. Other keyword
    options are the fields of :class:`DubOptions`. Raises a :class:`LipsyncError` subclass
    for every failure; the inputs are only read, and on failure no output file is left.
    """
    unknown = set(options) - {f.name for f in fields(DubOptions)}
    if unknown:
        raise InvalidOptionError(f"unknown option(s): {', '.join(sorted(unknown))}")
    opts = DubOptions(intensity=intensity, model=model, **options)

    try:
        return _dub(Path(video), Path(audio), output, opts, progress)
    except LipsyncError:
        raise
    except MemoryError as exc:
        raise InternalError("ran out of memory while dubbing") from exc
    except Exception as exc:  # anything else is our bug: report it with the generic code
        logger.exception("unexpected failure")
        raise InternalError(f"unexpected failure: {type(exc).__name__}: {exc}") from exc


def _dub(
    video: Path, audio: Path, output: PathLike | None, opts: DubOptions, progress
) -> DubResult:
    opts.validate()
    settings = EncodeSettings(crf=opts.crf, preset=opts.preset)
    generator = get_generator(
        opts.model, intensity=opts.intensity, batch_size=opts.batch_size, precision=opts.precision
    )
    out_path = Path(output) if output is not None else Path.cwd() / f"{video.stem}_dubbed.mp4"
    timings: dict[str, float] = {}
    started = time.perf_counter()

    info = validate_video(video, max_duration=opts.max_duration)
    audio_info = probe_audio(audio, max_duration=opts.max_duration)
    logger.info("dubbing %s (%d frames) with %s", video.name, info.frame_count, audio.name)

    timeline = plan_timeline(info, audio_info.duration, opts.length)

    # The new voice is analysed (mel features, phones) in a thread while phases 1 and 2
    # look at the picture: the phone decoder waits in C code most of the time.
    with ThreadPoolExecutor(1, thread_name_prefix="lipsync-audio") as pool:
        audio_job = pool.submit(_audio_features, audio, timeline.times, opts.visemes)

        with _timed(timings, "scenes"):
            scene_list = detect_scenes(
                info,
                threshold=opts.scene_threshold,
                use_cache=opts.use_cache,
                progress=_phase(progress, "scenes"),
            )

        with _timed(timings, "faces"):
            faces = detect_faces(
                info,
                scene_list.scenes,
                select=opts.faces,
                workers=opts.workers,
                use_cache=opts.use_cache,
                progress=_phase(progress, "faces"),
                landmarker=opts.landmarker,
            )
        if faces.frames_with_face == 0:
            raise NoFaceFoundError(
                f"no face found in any of the {len(scene_list.scenes)} scene(s) of {video.name}",
                hint="the speaker's face must be visible, frontal or three-quarter, and not tiny",
            )

        with _timed(timings, "generate"):
            features, timings["audio"] = audio_job.result()
            generator.prepare(features, SourceVideo(info, faces))
    samples, rate = load_audio(audio)

    export_started = time.perf_counter()
    with VideoWriter(out_path, info, timeline, settings, audio=(samples, rate)) as writer:
        frames = iter_frame_sequence(info, timeline.source_index)
        total = len(timeline.source_index)
        changed, generate_s = _stream(
            frames, total, faces, generator, writer, opts.batch_size, _phase(progress, "export")
        )
    # Phases 3 and 4 run interleaved; the generator's share is timed inside the loop.
    timings["generate"] += generate_s
    timings["export"] = time.perf_counter() - export_started - generate_s

    timings["total"] = time.perf_counter() - started
    logger.info("wrote %s in %.1f s", out_path, timings["total"])
    return DubResult(
        output=out_path,
        timings=timings,
        scenes=scene_list.scenes,
        scenes_from_cache=scene_list.from_cache,
        faces_from_cache=faces.from_cache,
        faces_found=len(faces.tracks),
        frames_with_face=faces.frames_with_face,
        frames_changed=changed,
        frames_written=len(timeline.source_index),
        duration=timeline.duration,
        engine=generator.describe(),
    )


def _audio_features(audio: Path, times: np.ndarray, visemes: bool):
    """Mel features, openness and (when asked) phone-shaped targets; and the seconds taken."""
    tick = time.perf_counter()
    wav16, _ = load_audio(audio, rate=16000, mono=True)
    features = analyze(wav16[0], times)
    if visemes:
        features = apply_visemes(features, shapes_at(segment_phones(wav16[0]), times))
    return features, time.perf_counter() - tick


def _stream(frames, total, faces: FaceResult, generator: Generator, writer, batch_size, progress):
    """Decode a batch, re-render the faces in it, encode it; returns (changed, generate_s)."""
    changed = written = 0
    generate_s = 0.0
    converter = PatchConverter()

    for batch in _batches(frames, batch_size):
        edits, face_frames = _prepare_batch(batch, faces, generator, converter)

        tick = time.perf_counter()
        if face_frames:
            generator.render(face_frames)
        generate_s += time.perf_counter() - tick

        for (_, _, frame), edit in zip(batch, edits, strict=True):
            if isinstance(edit, FramePatch):
                changed += converter.paste(frame, edit) > 0
                writer.write(frame)
            elif edit is not None:
                changed += 1
                writer.write(edit)
            else:
                writer.write(frame)
        written += len(batch)
        if progress:
            progress(written, total)

    return changed, generate_s


def _prepare_batch(batch, faces: FaceResult, generator: Generator, converter: PatchConverter):
    """What the generator edits on each frame of a batch, and the faces it is to render.

    A 4:2:0 frame with a face gets an RGB patch around its faces' footprints (pasted back
    after rendering); other pixel formats are converted whole; a frame without a face gets
    None and is encoded as it was decoded.
    """
    edits: list[FramePatch | np.ndarray | None] = []
    face_frames: list[FaceFrame] = []
    for out_index, source_index, frame in batch:
        tracks = faces.tracks_at(source_index)
        if not tracks:
            edits.append(None)
            continue

        if frame.format.name in PATCHABLE:
            shape = (frame.height, frame.width)
            box = union_box([generator.footprint(landmarks, shape) for _, landmarks in tracks])
            edit = converter.cut(frame, box)
            image, origin = edit.rgb, np.array(edit.box[:2], dtype=np.float32)
        else:
            edit = image = frame_to_rgb(frame)
            origin = np.zeros(2, dtype=np.float32)

        edits.append(edit)
        for track, landmarks in tracks:
            face_frames.append(FaceFrame(image, landmarks - origin, out_index, track, source_index))
    return edits, face_frames


def _batches(
    frames: Iterator[tuple[int, av.VideoFrame]], size: int
) -> Iterator[list[tuple[int, int, av.VideoFrame]]]:
    """Group (source index, frame) pairs into lists of (output index, source index, frame)."""
    batch: list[tuple[int, int, av.VideoFrame]] = []
    for out_index, (source_index, frame) in enumerate(frames):
        batch.append((out_index, source_index, frame))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _phase(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


@contextmanager
def _timed(timings: dict[str, float], name: str):
    tick = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - tick
