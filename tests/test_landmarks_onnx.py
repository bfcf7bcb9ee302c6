"""The ONNX landmark path: the TFLite converter on mediapipe's bundled face models, the model
store, batching, and parity with MediaPipe's own API (faces._FaceFinder, the CPU path)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tflite", reason="the converter needs the convert extra (tflite)")

from lipsync.convert.tflite import SUPPORTED_OPS, convert_tflite, tflite_ops  # noqa: E402
from lipsync.errors import (  # noqa: E402
    DataCorruptedError,
    InvalidFormatError,
    InvalidOptionError,
    ModelNotInstalledError,
)
from lipsync.faces import (  # noqa: E402
    MAX_FACES,
    Chunk,
    _analyse_chunk,
    _FaceFinder,
    _mediapipe,
    detect_faces,
)
from lipsync.landmarkers import available, get_landmarker  # noqa: E402
from lipsync.landmarkers.face_models import (  # noqa: E402
    SOURCES,
    FaceModels,
    bundled_tflite,
    face_model_paths,
    face_models_dir,
)
from lipsync.landmarkers.finder import LaneFinder  # noqa: E402
from lipsync.landmarkers.onnx import RUN_FRAMES, WARMUP_FRAMES, split_chunk  # noqa: E402
from lipsync.media import frame_to_rgb, iter_video_frames, probe_video  # noqa: E402
from lipsync.pipeline import DubOptions  # noqa: E402
from lipsync.scenes import Scene  # noqa: E402


@pytest.fixture(scope="module")
def models() -> FaceModels:
    """Sessions on the face models, converted into the test session's LIPSYNC_HOME."""
    return FaceModels(providers=["CPUExecutionProvider"], threads=1)


def _mean_px(a: np.ndarray, b: np.ndarray) -> float:
    """Mean landmark distance in px between two (..., 468, 2) arrays."""
    return float(np.linalg.norm(a - b, axis=-1).mean())


# --- the converter ----------------------------------------------------------------------


def test_every_op_of_the_face_models_is_converted():
    seen = set()
    for name in SOURCES:
        ops = tflite_ops(bundled_tflite(name))
        assert set(ops) <= set(SUPPORTED_OPS), f"{name}: {sorted(set(ops) - set(SUPPORTED_OPS))}"
        seen |= set(ops)
    # Float16 weights (DEQUANTIZE) and sparse ones (DENSIFY, the full-range detector) occur.
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "PRELU", "PAD", "DEQUANTIZE", "DENSIFY"} <= seen
    assert {"RESIZE_BILINEAR", "DEPTH_TO_SPACE", "CONCATENATION", "RESHAPE"} <= seen


def test_converted_models_have_a_dynamic_batch_and_batches_agree(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    for name in SOURCES:
        report = convert_tflite(bundled_tflite(name), tmp_path / f"{name}.onnx")
        (shape,) = report.inputs.values()
        assert shape[0] == "N" and all(s[0] == "N" for s in report.outputs.values())

        session = ort.InferenceSession(str(report.target), providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        batch = rng.uniform(-1, 1, (5, *shape[1:])).astype(np.float32)
        together = session.run(None, {feed: batch})
        for i in range(len(batch)):
            alone = session.run(None, {feed: batch[i : i + 1]})
            for a, b in zip(together, alone, strict=True):
                assert np.abs(a[i : i + 1] - b).max() < 1e-5


def test_a_model_with_other_ops_is_refused_by_name(tmp_path):
    hand = (
        bundled_tflite("face_landmark").parents[1] / "hand_landmark" / "hand_landmark_lite.tflite"
    )
    if not hand.is_file():
        pytest.skip("this mediapipe wheel has no hand model to try")
    with pytest.raises(InvalidFormatError, match="FULLY_CONNECTED"):
        convert_tflite(hand, tmp_path / "hand.onnx")
    assert not (tmp_path / "hand.onnx").exists()


def test_a_file_that_is_not_tflite_is_refused(tmp_path):
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(InvalidFormatError, match="not a TFLite model"):
        convert_tflite(fake, tmp_path / "fake.onnx")


# --- the model store ----------------------------------------------------------------------


def test_face_models_are_converted_once_recorded_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelNotInstalledError, match="not been converted") as missing:
        face_model_paths(convert=False)
    assert "scripts/convert_mediapipe.py" in str(missing.value)

    paths = face_model_paths()
    assert set(paths) == set(SOURCES) and all(p.parent == face_models_dir() for p in paths.values())
    stamps = {name: p.stat().st_mtime_ns for name, p in paths.items()}
    assert face_model_paths() == paths
    assert {name: p.stat().st_mtime_ns for name, p in paths.items()} == stamps  # not redone

    # A damaged file is noticed: refused when it cannot be redone, converted again otherwise.
    mesh = paths["face_landmark"]
    mesh.write_bytes(mesh.read_bytes()[:-16] + bytes(16))
    with pytest.raises(DataCorruptedError, match="SHA-256"):
        face_model_paths(convert=False)
    face_model_paths()
    face_model_paths(convert=False)


# --- the graph around the models ----------------------------------------------------------


def test_a_still_portrait_matches_mediapipe(models, portrait):
    image, expected = portrait  # expected: MediaPipe's static face mesh, px
    finder = LaneFinder(models, tracked=1)
    finder.start("portrait")
    (face,) = finder.find({"portrait": image})["portrait"]
    height, width = image.shape[:2]
    # Measured: 0.003 px.
    assert _mean_px(face * (width, height), expected) < 0.05


def _two_faces(portrait_image: np.ndarray, t: int, small: int) -> np.ndarray:
    """A 640x360 frame with the portrait large on the left and small, moving, on the right."""
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[40:307, 60:260] = cv2.resize(portrait_image, (200, 267))
    face = cv2.resize(portrait_image, (small, small * 4 // 3))
    x, y = 440 + 2 * t, 120 + t
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    return canvas


@pytest.mark.parametrize(
    ("small", "tracked"),
    [(104, 1), (120, MAX_FACES)],
    ids=["small face found by the full-range search", "two faces tracked by the mesh"],
)
def test_several_faces_follow_the_cpu_paths_rules(models, portrait, small, tracked):
    frames = [_two_faces(portrait[0], t, small) for t in range(16)]
    mesh_module, detection_module = _mediapipe()
    reference = _FaceFinder(mesh_module, detection_module, tracked)
    try:
        expected = [reference.find(frame) for frame in frames]
    finally:
        reference.close()

    finder = LaneFinder(models, tracked)
    finder.start(0)
    found = [finder.find({0: frame})[0] for frame in frames]

    errors = []
    for want, got in zip(expected, found, strict=True):
        assert len(got) == len(want) == 2
        for face in want:
            errors.append(min(_mean_px(face * (640, 360), other * (640, 360)) for other in got))
    # Measured: mean 0.003 px (small face), 0.011 px (two tracked); worst face 0.2 px.
    assert np.mean(errors) < 0.05 and np.max(errors) < 0.5


def test_lanes_advance_independently(models, portrait):
    sequences = {
        lane: [_two_faces(portrait[0], t + 3 * lane, 104) for t in range(6)] for lane in range(3)
    }
    alone = {}
    for lane, frames in sequences.items():
        finder = LaneFinder(models, 1)
        finder.start(lane)
        alone[lane] = [finder.find({lane: frame})[lane] for frame in frames]

    together = LaneFinder(models, 1)
    for lane in sequences:
        together.start(lane)
    for t in range(6):
        found = together.find({lane: frames[t] for lane, frames in sequences.items()})
        for lane in sequences:
            assert len(found[lane]) == len(alone[lane][t])
            for a, b in zip(found[lane], alone[lane][t], strict=True):
                assert np.abs(a - b).max() < 1e-6


def test_runs_cover_a_chunk_with_a_warm_up_inside_it():
    class Info:  # split_chunk only passes the video along
        pass

    chunk = Chunk(scene=0, start=10, stop=300)
    runs = split_chunk(Info(), chunk)
    assert runs[0].start == 10 and runs[-1].stop == 300
    assert all(a.stop == b.start for a, b in zip(runs, runs[1:], strict=False))
    assert all(run.stop - run.start <= RUN_FRAMES for run in runs)
    assert runs[0].warmup == 0 and all(run.warmup == WARMUP_FRAMES for run in runs[1:])


def test_landmarker_names():
    assert available() == ["mediapipe", "onnx"]
    with pytest.raises(InvalidOptionError, match="unknown landmarker"):
        get_landmarker("dlib")
    with pytest.raises(InvalidOptionError, match="landmarker"):
        DubOptions(landmarker="dlib").validate()


# --- parity on the shared clips -----------------------------------------------------------

# Frames per clip: two run borders (with their warm-ups) fall inside.
PARITY_FRAMES = 150


@pytest.mark.parametrize("clip", ["talk1", "talk4", "talk5"])
def test_parity_with_mediapipe_on_real_clips(shared_media, clip, record_property):
    info = probe_video(shared_media / f"{clip}.mp4")
    stop = min(PARITY_FRAMES, info.frame_count)
    expected = _analyse_chunk(info, 0, stop, 640, None, tracked=1)

    results = {}
    for batch in (1, 8):
        landmarker = get_landmarker("onnx", batch_size=batch, threads=1)
        (results[batch],) = landmarker.analyse(info, [Chunk(0, 0, stop)], 640, 1, None, 1)
    found = results[8]

    # Both find the face on the same frames; compare there, at source resolution.
    assert np.array_equal(found.frames, expected.frames) and len(found.frames) > 0.9 * stop
    error = _mean_px(found.landmarks, expected.landmarks)
    worst = float(np.linalg.norm(found.landmarks - expected.landmarks, axis=-1).mean(-1).max())
    record_property("mean_px", error)
    print(f"{clip}: mean landmark error {error:.3f} px, worst frame {worst:.3f} px")
    # Measured: 0.02-0.06 px mean, worst frame 0.26 px (talk1, talk4, talk5).
    assert error < 1.0

    # Batch sizes give the same landmarks: the run plan does not depend on them.
    assert np.array_equal(results[1].frames, results[8].frames)
    assert np.abs(results[1].landmarks - results[8].landmarks).max() < 1e-3
    assert found.mouths, "the runs' open mouths are collected as the CPU path collects them"


def test_detect_faces_with_the_onnx_landmarker(shared_media):
    info = probe_video(shared_media / "talk5.mp4")
    scenes = [Scene(0, 0, info.frame_count, 0.0, info.duration)]
    cpu = detect_faces(info, scenes, workers=1)
    batched = detect_faces(info, scenes, landmarker="onnx", use_cache=True)

    assert len(batched.tracks) == len(cpu.tracks) == 1
    assert np.array_equal(batched.tracks[0].frames, cpu.tracks[0].frames)
    # Smoothed tracks: measured 0.05 px apart.
    assert _mean_px(batched.tracks[0].landmarks, cpu.tracks[0].landmarks) < 1.0
    assert batched.mouths

    again = detect_faces(info, scenes, landmarker="onnx", use_cache=True)
    assert again.from_cache
    assert not detect_faces(info, scenes, use_cache=True, workers=1).from_cache  # its own key


def test_decoded_frames_are_what_the_landmarker_sees(shared_media):
    """The lanes decode exactly the frames (and pixels) a sequential pass decodes."""
    from av.video.reformatter import VideoReformatter

    from lipsync.landmarkers.onnx import Run, _Lane

    info = probe_video(shared_media / "talk1.mp4")
    lane = _Lane(Run(info, 40, 46, warmup=2), 640)
    seen = []
    while (item := lane.next_frame()) is not None:
        seen.append(item)
    assert [index for index, _ in seen] == list(range(38, 46))
    reformatter = VideoReformatter()
    expected = [frame_to_rgb(f, lane.size, reformatter) for _, f in iter_video_frames(info, 38, 46)]
    assert all(np.array_equal(a, b) for (_, a), b in zip(seen, expected, strict=True))
