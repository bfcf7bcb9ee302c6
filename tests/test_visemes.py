import numpy as np
import pytest

from lipsync.audio import AudioFeatures
from lipsync.visemes import OPEN_VOWEL_FLOOR, apply_visemes


def _features(openness, active=None) -> AudioFeatures:
    openness = np.asarray(openness, dtype=np.float32)
    active = openness > 0 if active is None else np.asarray(active)
    return AudioFeatures(np.zeros((len(openness), 80, 16), np.float32), openness, active)


def test_closures_close_and_silence_stays_closed():
    openness = [0.0, 0.6, 0.6, 0.6, 0.6, 0.6, 0.0]
    shapes = ["rest", "open", "closed", "closed", "open", "other", "rest"]
    out = apply_visemes(_features(openness), np.array(shapes))

    assert out.openness[2] == 0.0 and out.openness[3] == 0.0  # the lips meet
    assert out.openness[0] == 0.0 and out.openness[6] == 0.0  # silence rests
    assert out.openness[1] < 0.6  # anticipating the closing
    assert out.openness[4] > 0.3


def test_open_vowels_open_and_rounding_is_marked_early():
    openness = [0.1, 0.1, 0.1, 0.1, 0.1]
    shapes = np.array(["other", "open", "other", "rounded", "rounded"])
    out = apply_visemes(_features(openness), shapes)

    assert out.openness[1] >= 0.6 * OPEN_VOWEL_FLOOR
    assert out.rounding[3] > 0.5 and out.rounding[4] > 0.5
    assert 0.0 < out.rounding[2] < out.rounding[3]  # coarticulation: it starts a frame early
    assert out.rounding[0] == pytest.approx(0.0)


def test_shapes_must_match_the_frames():
    with pytest.raises(ValueError):
        apply_visemes(_features([0.1, 0.2]), np.array(["open"]))
