import av
import numpy as np

from lipsync.patches import PatchConverter, even_box, union_box


def _frame(seed: int = 0, fmt: str = "yuv420p", size=(96, 64)) -> av.VideoFrame:
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb = np.ascontiguousarray(np.repeat(np.repeat(rgb[::4, ::4], 4, 0), 4, 1)[:h, :w])
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=fmt)
    return frame


def test_boxes_are_even_and_clipped():
    assert even_box((3, 5, 17, 21), 100, 50) == (2, 4, 18, 22)
    assert even_box((-4, -1, 120, 60), 99, 51) == (0, 0, 98, 50)
    assert union_box([(0, 5, 10, 8), (4, 2, 6, 20)]) == (0, 2, 10, 20)


def test_cut_matches_a_full_frame_conversion():
    frame = _frame()
    full = frame.to_ndarray(format="rgb24")
    patch = PatchConverter().cut(frame, (10, 7, 51, 40))
    x0, y0, x1, y1 = patch.box
    assert (x0, y0, x1, y1) == (10, 6, 52, 40)
    assert np.array_equal(patch.rgb, full[y0:y1, x0:x1])


def test_paste_rewrites_only_the_changed_pixels():
    frame = _frame(1)
    before = frame.to_ndarray().copy()
    converter = PatchConverter()

    untouched = converter.cut(frame, (20, 20, 60, 50))
    assert converter.paste(frame, untouched) == 0
    assert np.array_equal(frame.to_ndarray(), before)

    patch = converter.cut(frame, (20, 20, 60, 50))
    patch.rgb[10:14, 8:20] = (250, 20, 30)
    assert converter.paste(frame, patch) == 4 * 12

    after = frame.to_ndarray()
    w, h = frame.width, frame.height
    luma_before, luma_after = before[:h], after[:h]
    changed = np.argwhere(luma_before != luma_after)
    assert changed[:, 0].min() >= 30 and changed[:, 0].max() < 34
    assert changed[:, 1].min() >= 28 and changed[:, 1].max() < 40
    # Chroma outside the edited 2x2 blocks is untouched too.
    chroma_before = before[h:].ravel()[: (h // 2) * (w // 2)].reshape(h // 2, w // 2)
    chroma_after = after[h:].ravel()[: (h // 2) * (w // 2)].reshape(h // 2, w // 2)
    outside = np.ones_like(chroma_before, bool)
    outside[15:17, 14:20] = False
    assert np.array_equal(chroma_before[outside], chroma_after[outside])

    red = frame.to_ndarray(format="rgb24")[31, 30]
    assert red[0] > 200 and red[1] < 70 and red[2] < 80
