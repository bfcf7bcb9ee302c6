import numpy as np

from lipsync.kernels import blend_masked, displacement_field


def test_field_reproduces_an_isolated_move_and_fades_away():
    xs = np.arange(0, 200, 2, dtype=np.float64)
    ys = np.arange(0, 100, 2, dtype=np.float64)
    points = np.array([[100.0, 50.0]])
    moves = np.array([[0.0, 10.0]])
    field = displacement_field(xs, ys, points, moves, np.array([8.0]), 1e-3)

    assert field.shape == (50, 100, 2)
    assert abs(field[25, 50, 1] - 10.0) < 0.05  # at the control point
    assert np.abs(field[:, :10]).max() < 1e-3  # far away, nothing moves
    assert np.abs(field[..., 0]).max() < 1e-6  # a vertical move has no horizontal part


def test_field_is_the_weighted_mean_between_two_points():
    xs = np.array([50.0])
    ys = np.array([0.0])
    points = np.array([[40.0, 0.0], [60.0, 0.0]])
    moves = np.array([[0.0, 4.0], [0.0, -4.0]])
    field = displacement_field(xs, ys, points, moves, np.array([10.0, 10.0]), 0.0)
    assert abs(field[0, 0, 1]) < 1e-6  # equidistant: the two moves cancel


def test_blend_writes_only_where_alpha_is_positive():
    rng = np.random.default_rng(0)
    dst = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    src = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    alpha = np.zeros((32, 48), np.float32)
    alpha[8:20, 10:30] = np.linspace(0.1, 1.0, 20, dtype=np.float32)[None, :]
    before = dst.copy()

    written = blend_masked(dst, src, alpha)

    assert written == 12 * 20
    outside = alpha == 0
    assert np.array_equal(dst[outside], before[outside])
    full = alpha == 1.0
    assert np.array_equal(dst[full], src[full])
    expected = before[8:20, 10:30] + alpha[8:20, 10:30, None] * (
        src[8:20, 10:30].astype(np.float32) - before[8:20, 10:30]
    )
    assert np.abs(dst[8:20, 10:30] - np.round(expected)).max() <= 1


def test_seam_split_maps_take_each_sides_field():
    from lipsync.kernels import seam_split_maps

    upper = np.zeros((8, 8, 2), np.float32)
    lower = np.zeros((8, 8, 2), np.float32)
    upper[..., 1] = -2.0  # the upper lip moves up by 2 px
    lower[..., 1] = 3.0  # the lower lip moves down by 3 px
    frame = np.array([10.0, 10.0, 1.0, 0.0, 0.0, 1.0])  # centre (10, 10), u = x, v = y
    seam_u = np.array([-100.0, 100.0])
    seam_v = np.array([0.5, 0.5])

    map_x, map_y = seam_split_maps(upper, lower, 4, 0, 0, 20, 20, frame, seam_u, seam_v)

    ys = np.arange(20, dtype=np.float32)[:, None]
    assert np.allclose(map_x, np.arange(20)[None, :])
    assert np.allclose(map_y[:11], (ys + 2.0)[:11].repeat(20, 1))  # v <= 0.5: upper field
    assert np.allclose(map_y[11:], (ys - 3.0)[11:].repeat(20, 1))  # below the seam
