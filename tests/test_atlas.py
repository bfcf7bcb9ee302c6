import numpy as np

from lipsync.audio import AudioFeatures
from lipsync.generators import FaceFrame, get_generator
from lipsync.generators.atlas import (
    CANON_WIDTH,
    CENTER,
    MIN_OPENING,
    MouthAtlas,
    cut_sample,
    pick_frames,
)
from lipsync.landmarks import INNER_LOWER_MID, MOUTH_LEFT, MOUTH_RIGHT, mouth_frame


def _with_opening(landmarks: np.ndarray, gap_widths: float) -> np.ndarray:
    """The landmarks with the lower inner lip moved so the mouth opens by ``gap_widths``."""
    moved = landmarks.astype(np.float64).copy()
    frame = mouth_frame(moved)
    moved[INNER_LOWER_MID] = moved[13] + frame.v * gap_widths * frame.width
    return moved


def test_pick_frames_takes_one_frame_per_band_of_openings(portrait):
    _, landmarks = portrait
    openings = [0.0, 0.02, 0.1, 0.12, 0.2, 0.3, 0.31]
    track = np.stack([_with_opening(landmarks, g) for g in openings])

    rows = pick_frames(track, bins=3)
    assert len(rows) == 3 and len(set(rows)) == 3
    assert all(openings[r] >= MIN_OPENING for r in rows)
    assert pick_frames(track[:2]) == []  # a mouth that never opens gives no sample


def test_cut_sample_puts_the_mouth_in_the_canonical_frame(portrait):
    image, landmarks = portrait
    sample = cut_sample(image, landmarks)
    assert sample.image.shape == (2 * int(CENTER), 2 * int(CENTER), 3)
    assert abs(sample.opening - sample.gap / CANON_WIDTH) < 1e-6

    # The mouth corners land at CENTER -+ CANON_WIDTH / 2 on the middle row: compare colours.
    frame = mouth_frame(landmarks)
    for index, x in (
        (MOUTH_LEFT, CENTER - CANON_WIDTH / 2),
        (MOUTH_RIGHT, CENTER + CANON_WIDTH / 2),
    ):
        px, py = np.round(landmarks[index]).astype(int)
        original = image[py, px].astype(int)
        canonical = sample.image[int(CENTER), int(round(x))].astype(int)
        assert np.abs(original - canonical).max() < 40, (index, frame.width)


def test_e1_fills_the_new_mouth_from_the_atlas(portrait):
    image, landmarks = portrait
    sample = cut_sample(image, landmarks)
    sample.image[:] = (0, 255, 0)  # a green mouth inside, impossible to miss
    sample.lip_rgb = np.array([128.0, 128.0, 128.0], np.float32)

    openness = np.array([1.0], np.float32)
    generator = get_generator("e1", intensity=3)
    generator.prepare(AudioFeatures(np.zeros((1, 80, 16), np.float32), openness, openness > 0))
    generator._atlases = {0: MouthAtlas([sample])}
    out = image.copy()
    generator.render([FaceFrame(out, landmarks, 0, 0)])

    frame = mouth_frame(landmarks)
    cx, cy = np.round(frame.center + frame.v * 0.12 * frame.width).astype(int)
    centre = out[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3).astype(int)
    assert (centre[:, 1] - centre[:, 0] > 60).all()  # the opened mouth shows the sample
