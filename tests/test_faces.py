"""Phase 2: face landmarks on real and synthetic clips, tracking, selection and smoothing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data

from lipsync import faces
from lipsync.errors import InvalidOptionError
from lipsync.faces import (
    FaceResult,
    FaceTrack,
    build_tracks,
    detect_faces,
    plan_chunks,
    smooth_landmarks,
    steady_lower_face,
)
from lipsync.media import VideoInfo, probe_video
from lipsync.scenes import Scene, detect_scenes

MOUTH = (13, 14, 61, 291)
RIGID = (1, 4, 6, 168, 33, 133, 362, 263)  # nose line and eye corners


def write_clip(path: Path, images: list[np.ndarray], fps: int = 25, rotation: int = 0) -> Path:
    """Encode RGB frames as H.264 in an .mp4, with optional display rotation."""
    height, width = images[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def whole(info: VideoInfo, stop: int | None = None) -> list[Scene]:
    """One scene over the first ``stop`` frames (all by default)."""
    stop = info.frame_count if stop is None else stop
    end_time = info.duration if stop == info.frame_count else float(info.frame_times[stop])
    return [Scene(0, 0, stop, 0.0, end_time)]


def head(size: int) -> np.ndarray:
    """The astronaut's head and shoulders, scaled to a size x size square."""
    crop = data.astronaut()[0:300, 80:380]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def moving_portrait(count: int) -> list[np.ndarray]:
    """A head drifting right and down on a grey background: real motion, one face."""
    frames = []
    for i in range(count):
        canvas = np.full((360, 480, 3), 100, np.uint8)
        canvas[20 + i : 320 + i, 60 + 2 * i : 360 + 2 * i] = head(300)
        frames.append(canvas)
    return frames


def jitter(landmarks: np.ndarray) -> float:
    """RMS second difference of the rigid points, relative to the eye-corner distance."""
    points = landmarks[:, RIGID].astype(np.float64)
    accel = points[:-2] - 2 * points[1:-1] + points[2:]
    return float(np.sqrt((accel**2).sum(-1).mean()) / eye_distance(landmarks))


def eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[:, 33] - landmarks[:, 263], axis=1).mean())


def velocity_lag(raw: np.ndarray, smoothed: np.ndarray, reach: int = 4) -> int:
    """The shift, in frames, that best lines up the two trajectories' velocities."""
    v = np.diff(raw[:, RIGID].mean(axis=1), axis=0)
    w = np.diff(smoothed[:, RIGID].mean(axis=1), axis=0)
    n = len(v)
    scores = {
        k: float((v[max(0, k) : n + min(0, k)] * w[max(0, -k) : n + min(0, -k)]).sum())
        for k in range(-reach, reach + 1)
    }
    return max(scores, key=scores.get)


# Real clips


@pytest.mark.parametrize("name", ["talk1", "talk2", "talk3", "talk4", "talk5"])
def test_face_on_every_frame_of_real_clips(shared_media, name):
    info = probe_video(shared_media / f"{name}.mp4")
    count = round(2 * float(info.fps))
    result = detect_faces(info, whole(info, count), workers=1)

    [track] = result.tracks
    assert (track.scene, track.face) == (0, 0)
    np.testing.assert_array_equal(track.frames, np.arange(count))
    assert result.frames_with_face == count
    assert track.landmarks.shape == (count, 468, 2) and track.landmarks.dtype == np.float32
    assert track.landmarks[..., 0].min() >= 0 and track.landmarks[..., 0].max() < info.width
    assert track.landmarks[..., 1].min() >= 0 and track.landmarks[..., 1].max() < info.height

    # The mouth sits in the lower middle of the face box (measured: centre 0.4-0.6 across,
    # every mouth point 0.65-0.81 down).
    box = track.boxes[:, None, :]
    mouth = track.landmarks[:, MOUTH]
    across = (mouth[..., 0] - box[..., 0]) / (box[..., 2] - box[..., 0])
    down = (mouth[..., 1] - box[..., 1]) / (box[..., 3] - box[..., 1])
    assert np.all((across.mean(axis=1) > 0.35) & (across.mean(axis=1) < 0.65))
    assert np.all((down > 0.55) & (down < 0.9))
    assert np.all(mouth[:, 2, 0] < mouth[:, 0, 0]) and np.all(mouth[:, 0, 0] < mouth[:, 3, 0])


def test_smoothing_cuts_jitter_without_lagging_head_motion(shared_media):
    # talk4's head nods and turns; the face mesh's raw landmarks jitter on top of that.
    info = probe_video(shared_media / "talk4.mp4")
    [track] = detect_faces(info, whole(info), smoothing=0, workers=1).tracks
    raw = track.landmarks
    smoothed = smooth_landmarks(raw, float(info.fps))

    # Measured: jitter 3.1 % of the eye distance raw, 0.25x of that smoothed; no lag;
    # 5-frame head displacements kept at 0.86 (median over the fastest quarter); mouth
    # opening amplitude kept at 0.95.
    assert jitter(smoothed) < 0.45 * jitter(raw)
    assert velocity_lag(raw, smoothed) == 0

    nose, nose_smoothed = raw[:, RIGID].mean(axis=1), smoothed[:, RIGID].mean(axis=1)
    moved = np.linalg.norm(nose[5:] - nose[:-5], axis=1)
    moved_smoothed = np.linalg.norm(nose_smoothed[5:] - nose_smoothed[:-5], axis=1)
    fast = moved > np.percentile(moved, 75)
    assert np.median(moved_smoothed[fast] / moved[fast]) > 0.75

    opening = np.linalg.norm(raw[:, 13] - raw[:, 14], axis=1)
    opening_smoothed = np.linalg.norm(smoothed[:, 13] - smoothed[:, 14], axis=1)
    assert opening_smoothed.std() > 0.85 * opening.std()


# Synthetic clips


def test_rotated_sources_give_decoded_coordinates(tmp_path):
    upright = np.ascontiguousarray(data.astronaut()[0:384])  # 512 wide, 384 tall
    info = probe_video(write_clip(tmp_path / "upright.mp4", [upright] * 4))
    [reference] = detect_faces(info, whole(info)).tracks
    u, v = reference.landmarks[..., 0], reference.landmarks[..., 1]

    # Display rotation is counter-clockwise: +90 means the pixels are stored turned clockwise.
    cases = {
        90: (np.rot90(upright, k=-1), np.stack([384 - v, u], axis=-1)),
        -90: (np.rot90(upright, k=1), np.stack([v, 512 - u], axis=-1)),
    }
    for rotation, (stored, expected) in cases.items():
        clip = write_clip(tmp_path / f"r{rotation}.mp4", [stored] * 4, rotation=rotation)
        info = probe_video(clip)
        assert info.rotation == rotation % 360
        assert (info.width, info.height) == (384, 512)

        [track] = detect_faces(info, whole(info)).tracks
        error = np.linalg.norm(track.landmarks - expected, axis=-1)
        assert error.mean() < 2.0, (rotation, error.mean())


def test_faceless_scene_gets_no_track(tmp_path):
    # 20 frames of a face, then a cut to 20 of coffee: only the first scene has a track.
    frames = moving_portrait(20) + [cv2.resize(data.coffee(), (480, 360))] * 20
    info = probe_video(write_clip(tmp_path / "cut.mp4", frames))
    scene_list = detect_scenes(info, use_cache=False).scenes
    assert [s.start for s in scene_list] == [0, 20]

    result = detect_faces(info, scene_list)
    assert [(t.scene, len(t)) for t in result.tracks] == [(0, 20)]
    assert result.faces_in_scene(0) == 1 and result.faces_in_scene(1) == 0
    assert result.frames_with_face == 20
    assert result.landmarks_at(25) == [] and len(result.landmarks_at(5)) == 1


def test_largest_all_and_rank_on_two_faces(tmp_path):
    canvas = np.full((400, 640, 3), 90, np.uint8)
    canvas[40:340, 20:320] = head(300)
    canvas[120:270, 400:550] = head(150)
    info = probe_video(write_clip(tmp_path / "two.mp4", [canvas] * 12))
    scenes = whole(info)

    everyone = detect_faces(info, scenes, select="all").tracks
    assert [t.face for t in everyone] == [0, 1]
    assert all(len(t) == 12 for t in everyone)
    big, small = (t.boxes.mean(axis=0) for t in everyone)
    assert big[2] < 330 and small[0] > 390  # the big head is on the left
    assert (big[2] - big[0]) > 1.5 * (small[2] - small[0])

    [largest] = detect_faces(info, scenes, select="largest").tracks
    np.testing.assert_allclose(largest.landmarks, everyone[0].landmarks, atol=0.5)

    [second] = detect_faces(info, scenes, select=1).tracks
    assert second.face == 1
    np.testing.assert_allclose(second.landmarks, everyone[1].landmarks, atol=0.5)
    assert detect_faces(info, scenes, select=2).tracks == []


def test_parallel_workers_match_one_worker(tmp_path, monkeypatch):
    info = probe_video(write_clip(tmp_path / "moving.mp4", moving_portrait(40)))
    monkeypatch.setattr(faces, "CHUNK_FRAMES", 10)  # four chunks for two workers
    calls: list[tuple[int, int]] = []

    parallel = detect_faces(info, whole(info), workers=2, progress=lambda *a: calls.append(a))
    single = detect_faces(info, whole(info), workers=1)

    [a], [b] = parallel.tracks, single.tracks
    np.testing.assert_array_equal(a.frames, np.arange(40))
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.01)
    assert calls[-1] == (40, 40) and len(calls) == 4

    # The head moves 2 px right and 1 px down a frame; so must the landmarks.
    drift = np.diff(a.landmarks[:, RIGID].mean(axis=1), axis=0).mean(axis=0)
    np.testing.assert_allclose(drift, [2.0, 1.0], atol=0.3)


# Smoothing, tracking and the result index, without video


@pytest.fixture(scope="module")
def face_shape() -> np.ndarray:
    """(468, 2) px landmarks of the astronaut, from one static face-mesh pass."""
    mesh_module, _ = faces._mediapipe()
    with mesh_module.FaceMesh(static_image_mode=True) as mesh:
        [shape] = faces._mesh_faces(mesh, head(300))
    return (shape * 300).astype(np.float64)


def test_smoothing_recovers_a_known_motion(face_shape):
    # A head swaying at 1 Hz and turning a little, the jaw opening and closing at 4 Hz (fast
    # speech), and white noise of 1 % of the eye distance on every landmark, at 25 fps.
    fps, count = 25.0, 100
    t = np.arange(count) / fps
    eyes = float(np.linalg.norm(face_shape[33] - face_shape[263]))
    jaw = face_shape[:, 1] > (face_shape[13, 1] + face_shape[14, 1]) / 2

    truth = np.repeat(face_shape[None], count, axis=0)
    truth[:, jaw, 1] += (0.08 * eyes * (1 + np.sin(2 * np.pi * 4 * t)))[:, None]
    angle = np.radians(4) * np.sin(2 * np.pi * 0.7 * t)
    centre = face_shape.mean(axis=0)
    turn = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1)
    truth = np.einsum("tij,tnj->tni", turn.reshape(-1, 2, 2), truth - centre) + centre
    truth[..., 0] += (0.1 * eyes * np.sin(2 * np.pi * t))[:, None]
    noisy = truth + np.random.default_rng(0).normal(0, 0.01 * eyes, truth.shape)

    smoothed = smooth_landmarks(noisy, fps)

    def error(points: np.ndarray, rows) -> float:
        return float(np.linalg.norm(points[:, rows] - truth[:, rows], axis=-1).mean())

    # Measured: error to the truth 0.48x of the noise's on the rigid points, 0.77x on the
    # mouth; the 4 Hz opening keeps 0.83 of its amplitude; no lag.
    assert error(smoothed, list(RIGID)) < 0.6 * error(noisy, list(RIGID))
    assert error(smoothed, list(MOUTH)) < 0.9 * error(noisy, list(MOUTH))
    assert velocity_lag(truth, smoothed) == 0

    opening = np.linalg.norm(truth[:, 13] - truth[:, 14], axis=1)
    opening_smoothed = np.linalg.norm(smoothed[:, 13] - smoothed[:, 14], axis=1)
    assert opening_smoothed.std() > 0.75 * opening.std()

    unsmoothed = smooth_landmarks(noisy, fps, strength=0)
    np.testing.assert_array_equal(unsmoothed, noisy.astype(np.float32))


def test_steady_lower_face_drops_speech_and_keeps_pose_and_expression(face_shape):
    # The jaw opens and closes at 4 Hz (speech) while the lower face slowly widens (a smile
    # growing over 4 s) and the head sways at 0.7 Hz, at 25 fps.
    fps, count = 25.0, 100
    t = np.arange(count) / fps
    eyes = float(np.linalg.norm(face_shape[33] - face_shape[263]))
    mouth_y = (face_shape[13, 1] + face_shape[14, 1]) / 2
    jaw = face_shape[:, 1] > mouth_y
    centre_x = face_shape[jaw, 0].mean()

    truth = np.repeat(face_shape[None], count, axis=0)
    smile = 1.0 + 0.08 * t / t[-1]
    truth[:, jaw, 0] = centre_x + (truth[:, jaw, 0] - centre_x) * smile[:, None]
    speech = truth.copy()
    speech[:, jaw, 1] += (0.08 * eyes * (1 + np.sin(2 * np.pi * 4 * t)))[:, None]
    sway = (0.1 * eyes * np.sin(2 * np.pi * 0.7 * t))[:, None]
    truth[..., 0] += sway
    speech[..., 0] += sway
    track = FaceTrack(0, 0, np.arange(count), speech.astype(np.float32), np.zeros((count, 4)))

    steady = steady_lower_face(track, fps)

    def chin_drop(points):
        return points[:, 152, 1] - points[:, 10, 1]  # chin below the forehead

    # The 4 Hz jaw motion is all but gone (measured: 1.8 % of its amplitude left); the slow
    # widening and the head's sway come through (measured: exactly, to float precision).
    middle = slice(10, count - 10)
    assert chin_drop(steady)[middle].std() < 0.05 * chin_drop(speech)[middle].std()
    width = steady[:, 291, 0] - steady[:, 61, 0]
    true_width = truth[:, 291, 0] - truth[:, 61, 0]
    assert np.abs(width - true_width)[middle].max() < 0.005 * eyes
    assert np.abs(steady[:, 10, 0] - speech[:, 10, 0]).max() < 1e-3 * eyes, "pose kept"

    # A few points alone (e1 needs the lips) come out as the same columns of the whole.
    lips = [61, 13, 14, 291, 152]
    np.testing.assert_array_equal(steady_lower_face(track, fps, points=lips), steady[:, lips])


def test_tracks_follow_two_faces_through_gaps(face_shape):
    big = face_shape.astype(np.float32)
    small = (face_shape * 0.5 + (400, 50)).astype(np.float32)
    frames, landmarks = [], []
    for frame in range(20):
        faces_here = [small, big] if frame % 2 else [big, small]
        if 5 <= frame <= 7:
            faces_here = [big]  # the small face is missed for three frames
        for face in faces_here:
            frames.append(frame)
            landmarks.append(face + frame)  # both drift one pixel a frame
    frames, landmarks = np.asarray(frames), np.stack(landmarks)

    tracks = build_tracks(3, frames, landmarks, "all", fps=25.0, smoothing=0)
    assert [(t.scene, t.face, len(t)) for t in tracks] == [(3, 0, 20), (3, 1, 17)]
    np.testing.assert_allclose(tracks[0].landmarks[6], big + 6)
    np.testing.assert_allclose(tracks[1].landmarks[5], small + 8)  # the first frame after the gap
    np.testing.assert_allclose(tracks[1].boxes[0], [*(small.min(0)), *(small.max(0))])

    # The smoothed track still keeps every frame, and the gap splits the smoothing runs.
    [smoothed] = build_tracks(3, frames, landmarks, 1, fps=25.0, smoothing=1)
    np.testing.assert_array_equal(smoothed.frames, tracks[1].frames)
    np.testing.assert_allclose(smoothed.landmarks, tracks[1].landmarks, atol=1e-3)


def test_face_result_index():
    def track(scene: int, face: int, frames: list[int]) -> FaceTrack:
        marks = np.stack([np.full((468, 2), f + 0.5 * face, np.float32) for f in frames])
        return FaceTrack(scene, face, np.asarray(frames), marks, faces.landmark_boxes(marks))

    result = FaceResult(
        tracks=[track(0, 0, [0, 1, 2]), track(0, 1, [2, 3]), track(2, 0, [9])], frame_count=12
    )

    assert result.frames_with_face == 5
    assert [result.faces_in_scene(s) for s in range(3)] == [2, 0, 1]
    assert [m[0, 0] for m in result.landmarks_at(2)] == [2.0, 2.5]
    assert [(t, m[0, 0]) for t, m in result.tracks_at(3)] == [(1, 3.5)]
    assert result.landmarks_at(5) == [] and result.tracks_at(11) == []


def test_plan_chunks_covers_scenes_in_short_runs():
    scenes = [Scene(0, 0, 650, 0, 26), Scene(1, 650, 660, 26, 26.4), Scene(2, 660, 660, 0, 0)]
    chunks = plan_chunks(scenes, frame_count=700)

    assert [(c.scene, c.start, c.stop) for c in chunks] == [
        (0, 0, 217),
        (0, 217, 433),
        (0, 433, 650),
        (1, 650, 660),
    ]


@pytest.fixture(scope="module")
def tiny_info(tmp_path_factory) -> VideoInfo:
    folder = tmp_path_factory.mktemp("faces")
    return probe_video(write_clip(folder / "tiny.mp4", [np.zeros((64, 64, 3), np.uint8)] * 2))


def stretched(info: VideoInfo, frame_count: int) -> VideoInfo:
    """``info`` claiming ``frame_count`` frames at 25 fps (for tests that never decode)."""
    return replace(
        info,
        frame_pts=np.arange(frame_count, dtype=np.int64),
        frame_times=np.arange(frame_count) / 25.0,
        duration=frame_count / 25.0,
    )


@pytest.mark.parametrize(
    ("frame_count", "cpus", "workers", "expected"),
    [(100, 8, None, 1), (1000, 8, None, 4), (1000, 2, None, 2), (1000, 8, 3, 3), (200, 8, 5, 1)],
)
def test_worker_count(monkeypatch, tiny_info, frame_count, cpus, workers, expected):
    # A worker costs seconds to start: short videos stay in this process unless asked.
    used = []

    def record(info, chunks, analysis_size, workers, progress, **_):
        used.append(workers)
        empty = (np.zeros(0, np.int64), np.zeros((0, 468, 2), np.float32))
        return [faces._Found(*empty) for _ in chunks]

    monkeypatch.setattr(faces, "_cpu_count", lambda: cpus)
    monkeypatch.setattr(faces, "_analyse_chunks", record)
    info = stretched(tiny_info, frame_count)
    result = detect_faces(info, whole(info), workers=workers)

    assert used == [expected]
    assert result.tracks == [] and result.frames_with_face == 0


@pytest.mark.parametrize(
    "options",
    [{"select": "biggest"}, {"select": -1}, {"select": 4}, {"select": True}, {"workers": 0},
     {"analysis_size": 32}, {"smoothing": -1.0}, {"smoothing": float("inf")}],
)  # fmt: skip
def test_bad_options_are_refused(options):
    with pytest.raises(InvalidOptionError):
        detect_faces(None, [], **options)  # refused before the video is looked at
