"""The ONNX generators (e2, e3) with a tiny contract-honouring model: crops, batches, mask."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from tiny_onnx import random_features, tiny_model  # noqa: E402

from lipsync.generators import FaceFrame, get_generator  # noqa: E402
from lipsync.generators.e1 import lower_face_alpha  # noqa: E402
from lipsync.generators.onnx import crop_box  # noqa: E402
from lipsync.models import import_onnx  # noqa: E402
from lipsync.ortrun import run_session, session_device  # noqa: E402


@pytest.fixture
def e2(tmp_path, monkeypatch):
    """A home of this test's own with the tiny model installed as e2."""
    monkeypatch.setenv("LIPSYNC_HOME", str(tmp_path / "home"))
    import_onnx(tiny_model(tmp_path / "tiny.onnx"), name="e2")


def test_crop_box_is_square_and_holds_the_face(portrait):
    _, landmarks = portrait
    x0, y0, x1, y1 = crop_box(landmarks)
    assert x1 - x0 == y1 - y0
    assert landmarks[:, 0].min() >= x0 and landmarks[:, 0].max() <= x1
    assert landmarks[:, 1].min() >= y0 and landmarks[:, 1].max() <= y1


def test_only_the_lower_face_mask_changes(e2, portrait):
    image, landmarks = portrait
    generator = get_generator("e2")
    generator.prepare(random_features(1))
    out = image.copy()
    generator.render([FaceFrame(out, landmarks, 0, 0)])

    (x0, y0, x1, y1), alpha = lower_face_alpha(landmarks, image.shape)
    inside = np.zeros(image.shape[:2], bool)
    inside[y0:y1, x0:x1] = alpha > 0
    assert np.array_equal(out[~inside], image[~inside])
    # The tiny model draws a flat lower half: the mouth's detail is replaced.
    core = alpha > 0.99
    before = image[y0:y1, x0:x1][core].astype(float).std(axis=0)
    after = out[y0:y1, x0:x1][core].astype(float).std(axis=0)
    assert (after < 0.6 * before).all()


def test_batch_sizes_agree(e2, portrait):
    image, landmarks = portrait
    features = random_features(40)
    outputs = {}
    for batch in (1, 32):
        generator = get_generator("e2")
        generator.batch_size = batch
        generator.prepare(features)
        frames = [FaceFrame(image.copy(), landmarks, i, 0) for i in range(40)]
        generator.render(frames)
        outputs[batch] = np.stack([f.image for f in frames])
    assert np.array_equal(outputs[1], outputs[32])
    assert not np.array_equal(outputs[1][0], outputs[1][1])  # the mel window matters


def test_sharpening_restores_edges_of_the_upscaled_crop(e2, portrait):
    image, landmarks = portrait
    (x0, y0, x1, y1), alpha = lower_face_alpha(landmarks, image.shape)
    edges = {}
    for amount in (0.0, 1.0):
        generator = get_generator("e2")
        generator.sharpen = amount
        generator.prepare(random_features(1))
        out = image.copy()
        generator.render([FaceFrame(out, landmarks, 0, 0)])
        roi = out[y0:y1, x0:x1].astype(float).mean(axis=2)
        laplacian = np.abs(
            roi[1:-1, 1:-1] * 4 - roi[:-2, 1:-1] - roi[2:, 1:-1] - roi[1:-1, :-2] - roi[1:-1, 2:]
        )
        edges[amount] = laplacian[alpha[1:-1, 1:-1] > 0.5].mean()
    assert edges[1.0] > 1.1 * edges[0.0]


def test_bound_runs_match_plain_runs(tmp_path):
    # The GPU path binds its inputs and outputs; bound on the CPU it must give what a plain
    # run gives, so the code a GPU runs is the code tested here.
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(tiny_model(tmp_path / "tiny.onnx")), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(7)
    feeds = {
        "mel": rng.uniform(-4, 4, (5, 1, 80, 16)).astype(np.float32),
        "video": rng.uniform(0, 1, (5, 6, 96, 96)).astype(np.float32),
    }
    assert session_device(session) == "cpu"

    (plain,) = run_session(session, ["face"], feeds)
    (bound,) = run_session(session, ["face"], feeds, bind=True)
    (every,) = run_session(session, None, feeds, bind=True)

    assert plain.shape == (5, 3, 96, 96)
    np.testing.assert_array_equal(bound, plain)
    np.testing.assert_array_equal(every, plain)
