"""The depthwise kernel's paths on the geometries where more than one applies.

3x3 stride 1/2 and 5x5 stride 1 with left padding k // 2 run on the shifted-row kernel by
default; the flat passes ('same' and 'fill') still compute them when forced, and everything else
by default. Each path must equal the reference bit for bit on integer data, write every output
cell, and give the same bits on 1 and 2 threads. Widths straddle vector boundaries (8 float64 or
16 float32 lanes), heights and top paddings put padding rows at both ends, and thread splits
fall inside planes; stride-2 widths cover both the vertical strips (output rows of up to four
vectors) and the row steps of wider rows, and last vectors of outputs up to half full (computed
at half width) or fuller; 7x7 and 5x5 stride-2 rows stream their input rows (heights leave
steps of fewer rows).
"""

import numba
import numpy as np
import pytest

from numbaconv import reference
from numbaconv.kernels import depthwise, depthwise_rows

# (N, C, m, H, W, k, stride, pad_top, pad_bottom)
GEOMETRIES = [
    (2, 3, 1, 9, 1, 3, 1, 1, 1),
    (1, 2, 2, 5, 7, 3, 1, 1, 1),
    (2, 3, 1, 17, 15, 3, 1, 1, 1),
    (1, 4, 1, 6, 16, 3, 1, 0, 0),
    (1, 3, 2, 11, 17, 3, 1, 1, 0),
    (1, 5, 1, 7, 33, 3, 1, 0, 2),
    (1, 2, 1, 13, 56, 3, 1, 1, 1),
    (1, 3, 1, 7, 9, 3, 1, 1, 1),
    (2, 3, 1, 9, 8, 3, 2, 1, 1),
    (1, 2, 2, 10, 31, 3, 2, 1, 0),
    (1, 3, 1, 12, 32, 3, 2, 0, 1),
    (1, 2, 1, 7, 65, 3, 2, 1, 1),
    (1, 2, 1, 8, 127, 3, 2, 2, 0),
    (1, 2, 1, 6, 150, 3, 2, 1, 1),
    (1, 2, 1, 5, 136, 3, 2, 1, 1),
    (1, 2, 1, 9, 26, 3, 2, 1, 1),
    (2, 2, 1, 6, 5, 5, 1, 2, 2),
    (1, 3, 2, 9, 18, 5, 1, 1, 2),
    (1, 2, 1, 8, 40, 5, 1, 0, 0),
    (1, 2, 1, 11, 9, 5, 1, 2, 1),
    (1, 3, 1, 9, 20, 7, 1, 3, 3),
    (2, 2, 2, 13, 57, 7, 1, 1, 2),
    (1, 2, 1, 7, 100, 7, 1, 3, 3),
    (1, 3, 1, 20, 7, 7, 1, 2, 0),
    (1, 2, 1, 5, 40, 7, 1, 0, 2),
    (1, 3, 1, 9, 20, 5, 2, 2, 2),
    (2, 2, 2, 13, 57, 5, 2, 1, 2),
    (1, 2, 1, 7, 100, 5, 2, 2, 0),
    (1, 3, 1, 20, 7, 5, 2, 0, 1),
    (1, 2, 1, 9, 65, 5, 2, 2, 2),
]

PATHS = ["rows", "same", "fill"]


def _arrays(geom, dtype, seed):
    n, c, m, h, w, k = geom[:6]
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (n, c, h, w)).astype(dtype)
    wt = rng.integers(-4, 5, (c * m, 1, k, k)).astype(dtype)
    b = rng.integers(-4, 5, c * m).astype(dtype)
    return x, wt, b


def _expected(geom, x, w, b):
    n, c, m, h, wd, k, s, pt, pb = geom
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (k // 2, k // 2)))
    return reference.conv2d(xp, w, b, stride=s, groups=c)


def _run(path, geom, x, w, b, threads=None):
    n, c, m, h, wd, k, s, pt, pb = geom
    expected_shape = _expected(geom, x, w, b).shape
    out = np.full(expected_shape, np.nan, dtype=x.dtype)
    saved, before = depthwise._force_path, numba.get_num_threads()
    depthwise._force_path = path
    try:
        if threads:
            numba.set_num_threads(threads)
        depthwise.conv2d_depthwise(x, w, b, out, s, s, pt, k // 2, 1, 1)
    finally:
        depthwise._force_path = saved
        numba.set_num_threads(before)
    return out


ROWS_KERNEL = pytest.mark.skipif(not depthwise_rows.ROWS,
                                 reason="the shifted-row kernel needs 32 vector registers")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("geom", GEOMETRIES, ids=str)
def test_each_path_equals_the_reference(geom, path, dtype):
    n, c, m, h, wd, k, s = geom[:7]
    if depthwise_rows.ROWS:
        assert depthwise_rows.supports(k, k, s, s, k // 2, 1, 1)
    elif path == "rows":
        pytest.skip("the shifted-row kernel needs 32 vector registers")
    x, w, b = _arrays(geom, dtype, seed=sum(geom))
    copies = x.copy(), w.copy(), b.copy()
    out = _run(path, geom, x, w, b)
    np.testing.assert_array_equal(out, _expected(geom, x, w, b))
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


@ROWS_KERNEL
@pytest.mark.parametrize("geom", GEOMETRIES[::3], ids=str)
def test_rows_same_bits_on_one_and_two_threads(geom):
    rng = np.random.default_rng(1)
    n, c, m, h, wd, k = geom[:6]
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((c * m, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(c * m).astype(np.float32)
    one = _run("rows", geom, x, w, b, threads=1)
    two = _run("rows", geom, x, w, b, threads=2)
    assert one.tobytes() == two.tobytes()


@ROWS_KERNEL
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("extra", [0, 1, 2, 3])
def test_rows_without_right_padding(dtype, stride, extra):
    """Right padding 0 (the output width implies it): the last outputs read real columns right
    of their vector, which the vertical strips take from a scalar load; widths around one and
    two vectors of outputs."""
    lanes = 64 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(extra)
    wd = stride * lanes + extra
    x = rng.integers(-4, 5, (1, 3, 9, wd)).astype(dtype)
    w = rng.integers(-4, 5, (3, 1, 3, 3)).astype(dtype)
    b = rng.integers(-4, 5, 3).astype(dtype)
    expected = reference.conv2d(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 0))), w, b,
                                stride=stride, groups=3)
    out = np.full(expected.shape, np.nan, dtype)
    depthwise.conv2d_depthwise(x, w, b, out, stride, stride, 1, 1, 1, 1)
    np.testing.assert_array_equal(out, expected)


@ROWS_KERNEL
@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
def test_rows_propagate_an_infinite_weight_on_padded_taps_like_the_reference():
    geom = (1, 2, 1, 6, 20, 3, 1, 1, 1)
    x, w, b = _arrays(geom, np.float32, seed=3)
    w[0, 0, 0, 0] = np.inf  # multiplies the top padding row and the left padding column
    out = _run("rows", geom, x, w, b)
    expected = _expected(geom, x, w, b)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(out, expected)
    assert np.isnan(out[0, 0, 0]).all() and np.isnan(out[0, 0, :, 0]).all()


@pytest.mark.parametrize("k,stride,pl,dil", [(7, 2, 3, 1), (5, 2, 1, 1), (3, 1, 0, 1),
                                             (3, 1, 2, 2), (3, 3, 1, 1), (1, 1, 0, 1),
                                             (9, 1, 4, 1)])
def test_other_geometries_stay_with_the_flat_passes(k, stride, pl, dil):
    assert not depthwise_rows.supports(k, k, stride, stride, pl, dil, dil)
