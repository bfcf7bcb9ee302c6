import numpy as np

from lipsync.audio import AudioFeatures
from lipsync.generators import FaceFrame, get_generator
from lipsync.landmarks import INNER_LOWER_MID, MOUTH_LEFT, MOUTH_RIGHT, mouth_frame
from lipsync.mouths import (
    CANON_WIDTH,
    CENTER,
    MouthAtlas,
    MouthCollector,
    band_of,
    best_per_band,
    cut_sample,
)


def _with_opening(landmarks: np.ndarray, gap_widths: float) -> np.ndarray:
    """The landmarks with the lower inner lip moved so the mouth opens by ``gap_widths``."""
    moved = landmarks.astype(np.float64).copy()
    frame = mouth_frame(moved)
    moved[INNER_LOWER_MID] = moved[13] + frame.v * gap_widths * frame.width
    return moved


def test_collector_keeps_the_most_frontal_mouth_per_band(portrait):
    import av

    image, landmarks = portrait
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    collector = MouthCollector()

    for index, gap in enumerate([0.0, 0.02, 0.1, 0.11, 0.2, 0.3, 0.31]):
        collector.offer(index, frame, _with_opening(landmarks, gap))
    kept = collector.samples()

    assert [band_of(s.opening) for _, _, s in kept] == sorted({band_of(g) for g in (0.1, 0.2, 0.3)})
    assert [index for index, _, _ in kept] == [2, 4, 5]  # equally frontal: the first one stays
    assert all(s.image.shape == (192, 192, 3) for _, _, s in kept)

    # A more frontal face replaces the band's sample; less frontal ones never do.
    twisted = _with_opening(landmarks, 0.1)
    twisted[234] += (15.0, 0.0)  # one cheek pushed in: a face turned to the side
    collector.offer(9, frame, twisted)
    assert [index for index, _, _ in collector.samples()] == [2, 4, 5]


def test_best_per_band_merges_samples_from_chunks(portrait):
    image, landmarks = portrait
    a = cut_sample(image, _with_opening(landmarks, 0.12))
    b = cut_sample(image, _with_opening(landmarks, 0.13))
    b.frontality = a.frontality + 0.1
    c = cut_sample(image, _with_opening(landmarks, 0.3))
    merged = best_per_band([a, c, b])
    assert merged == [b, c]


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
