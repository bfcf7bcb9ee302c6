import numpy as np
import pytest
from conftest import face_landmarks

from lipsync.audio import AudioFeatures
from lipsync.errors import InvalidOptionError, MissingDependencyError
from lipsync.generators import FaceFrame, available, get_generator
from lipsync.generators.e1 import _control_moves, lower_face_alpha
from lipsync.landmarks import (
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    inner_opening,
    mouth_frame,
)


def _features(openness) -> AudioFeatures:
    openness = np.asarray(openness, dtype=np.float32)
    n = len(openness)
    return AudioFeatures(
        mel=np.zeros((n, 80, 16), np.float32), openness=openness, active=openness > 0
    )


def _render(image, landmarks, openness: float, intensity: int = 2) -> np.ndarray:
    generator = get_generator("e1", intensity=intensity)
    generator.prepare(_features([openness]))
    out = image.copy()
    generator.render([FaceFrame(out, landmarks, 0, 0)])
    return out


def _measured_opening(image) -> float:
    """Inner-lip gap as a fresh face-mesh pass sees it, in mouth widths."""
    landmarks = face_landmarks(image)
    assert landmarks is not None
    return inner_opening(landmarks) / mouth_frame(landmarks).width


def test_new_lips_are_built_on_the_steady_shape(portrait):
    _, landmarks = portrait
    landmarks = landmarks.astype(np.float64)
    frame = mouth_frame(landmarks)
    # The source speaker's lips somewhere else on this frame: lower lip down, corners in.
    talking = landmarks.copy()
    talking[list(LIPS_LOWER_INNER + LIPS_LOWER_OUTER)] += 0.08 * frame.width * frame.v
    talking[[MOUTH_LEFT, MOUTH_RIGHT]] -= 0.03 * frame.width * frame.u * [[-1], [1]]

    held = _control_moves(talking, mouth_frame(talking), 0.1 * frame.width, shape=landmarks)
    still = _control_moves(landmarks, frame, 0.1 * frame.width)

    # Wherever the pixels' lips are, the new lips are the steady shape's, opened alike, and
    # every control ends up where the still face's does.
    np.testing.assert_allclose(held.inner, still.inner, atol=1e-9)
    lips = slice(0, 2 * (len(LIPS_LOWER_INNER) - 2) + 2 * (len(LIPS_LOWER_OUTER) - 2))
    np.testing.assert_allclose(held.targets[lips], still.targets[lips], atol=1e-9)
    assert np.abs(held.moves[lips]).max() > 0.05 * frame.width, "the talking lips are moved"


def test_registry_names_and_errors():
    assert "e1" in available()
    with pytest.raises(MissingDependencyError):
        get_generator("e2")
    with pytest.raises(InvalidOptionError):
        get_generator("no-such-model")
    with pytest.raises(InvalidOptionError):
        get_generator("e1", intensity=4)


def test_nothing_outside_the_mask_changes(portrait):
    image, landmarks = portrait
    out = _render(image, landmarks, 1.0, intensity=3)

    (x0, y0, x1, y1), alpha = lower_face_alpha(landmarks, image.shape)
    inside = np.zeros(image.shape[:2], bool)
    inside[y0:y1, x0:x1] = alpha > 0
    assert np.array_equal(out[~inside], image[~inside])
    assert np.abs(out[inside].astype(int) - image[inside]).max() > 40  # the mouth did change


def test_opening_follows_the_audio_and_intensity(portrait):
    image, landmarks = portrait
    rest = _measured_opening(_render(image, landmarks, 0.0))
    half = _measured_opening(_render(image, landmarks, 0.5))
    full = {k: _measured_opening(_render(image, landmarks, 1.0, k)) for k in (1, 2, 3)}

    # Measured: rest 0.036, half 0.133, full 0.154 / 0.237 / 0.363 mouth widths.
    assert rest < half < full[2]
    assert full[1] < full[2] < full[3]
    assert full[3] - full[1] > 0.1


def test_silence_closes_a_smile_that_shows_teeth(portrait):
    image, landmarks = portrait
    assert _measured_opening(image) > 0.15  # the portrait smiles with her teeth showing

    # Measured 0.036 at every intensity: the lips meet, the teeth are covered.
    for intensity in (1, 3):
        assert _measured_opening(_render(image, landmarks, 0.0, intensity)) < 0.06


def test_rounding_narrows_the_mouth(portrait):
    image, landmarks = portrait
    widths = {}
    for rounding in (0.0, 1.0):
        generator = get_generator("e1", intensity=2)
        features = _features([0.5])
        features.rounding = np.array([rounding], np.float32)
        generator.prepare(features)
        out = image.copy()
        generator.render([FaceFrame(out, landmarks, 0, 0)])
        widths[rounding] = mouth_frame(face_landmarks(out)).width
    # ROUND_PULL draws each lip point a quarter closer to the centre; the cheeks hold the
    # corners back, and a fresh mesh measured the mouth 7.7 % narrower.
    assert widths[1.0] < 0.95 * widths[0.0]
