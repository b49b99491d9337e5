"""The dot-product kernel's own paths: pixel chunks, ragged tiles, unaligned weights, and
when 'auto' picks it. (The algorithm grid of test_algorithms.py covers the rest.)"""

import numba
import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, reference
from numbaconv.bench import extra_memory
from numbaconv.kernels import dot
from numbaconv.problem import ConvProblem


def _ints(rng, shape, dtype):
    return rng.integers(-4, 5, shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk_bytes", [1, 3000, 1 << 20])
def test_pixel_chunks_and_ragged_tiles_equal_the_reference(monkeypatch, dtype, chunk_bytes):
    # 3 images of 5x6 outputs: tiles of 7 pixels and chunks cross image boundaries; 11 output
    # channels leave a partial weight-row tile; K = 7 * 9 = 63 ends inside a vector
    monkeypatch.setattr(dot, "_CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(5)
    x = _ints(rng, (3, 7, 6, 7), dtype)
    w = _ints(rng, (11, 7, 3, 3), dtype)
    b = _ints(rng, 11, dtype)
    expected = reference.conv2d(x, w, b, stride=(1, 2), padding=(0, 2), dilation=(1, 2))
    out = np.full(expected.shape, np.nan, dtype=dtype)
    numbaconv.conv2d(x, w, b, stride=(1, 2), padding=(0, 2), dilation=(1, 2), algorithm="dot",
                     out=out)
    np.testing.assert_array_equal(out, expected)


def test_unaligned_weights_and_one_or_two_threads_give_the_same_bits():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 300, 5, 5)).astype(np.float32)
    raw = rng.standard_normal(40 * 300 * 9 + 1).astype(np.float32)
    w = raw[1:].reshape(40, 300, 3, 3)  # rows start 4 bytes off any vector boundary
    results = []
    for threads in (1, 2):
        before = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            results.append(numbaconv.conv2d(x, w, padding=1, algorithm="dot"))
        finally:
            numba.set_num_threads(before)
    assert results[0].tobytes() == results[1].tobytes()
    bound = 2 * 2700 * np.finfo(np.float32).eps * reference.conv2d(
        np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), padding=1)
    exact = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    assert (np.abs(results[0] - exact) <= bound).all()


@pytest.mark.parametrize("x_shape,w_shape,padding,expected", [
    ((1, 512, 7, 7), (512, 512, 3, 3), 1, "gemm"),     # ResNet-50 stage 4: larger than 1x1
    ((8, 512, 7, 7), (512, 512, 3, 3), 1, "gemm"),
    ((1, 2048, 4, 4), (512, 2048, 1, 1), 0, "dot"),    # 1x1: the GEMM's tiles half used
    ((16, 2048, 4, 4), (512, 2048, 1, 1), 0, "dot"),
    ((1, 2048, 7, 7), (512, 2048, 1, 1), 0, "gemm"),   # 1x1 with the GEMM's tiles 77% used
    ((1, 512, 8, 8), (512, 512, 3, 3), 1, "gemm"),     # 64 pixels fill the GEMM's tiles
    ((1, 128, 7, 7), (128, 128, 3, 3), 1, "gemm"),     # K = 1152: too short
])
def test_auto_picks_dot_for_few_pixels_and_long_reductions(x_shape, w_shape, padding, expected):
    """Among the exact kernels (Winograd takes the widest 7x7 layers from batch 8: see
    test_winograd.py): 1x1 layers only, where the GEMM's tiles are half used."""
    problem = ConvProblem.for_conv(x_shape, w_shape, padding=padding)
    assert dispatch.auto_choice(problem, exact=True) == expected


def test_dot_refuses_groups():
    with pytest.raises(dispatch.UnsupportedAlgorithm, match="ungrouped"):
        numbaconv.conv2d(np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3)), groups=2,
                         algorithm="dot")


def test_workspace_stays_one_chunk_on_a_large_image():
    # im2col rows of all 16384 pixels would take 37 MB; chunks of about 1 MiB per thread are built
    # in turn (plus the vector accumulators of a chunk's pixel tiles, MR vectors per pixel)
    rng = np.random.default_rng(7)
    x = _ints(rng, (1, 64, 128, 128), np.float32)
    w = _ints(rng, (64, 64, 3, 3), np.float32)
    out = np.empty((1, 64, 128, 128), np.float32)
    numbaconv.conv2d(x[:, :, :8, :8], w, padding=1, algorithm="dot")  # compile outside the trace
    peak = extra_memory(lambda: numbaconv.conv2d(x, w, padding=1, algorithm="dot", out=out), 0)
    budget = dot.workspace_bytes(64 * 9, 128 * 128, 4)
    rows = (1 << 20) // (64 * 9 * 4)   # pixels of one chunk
    assert budget <= numba.get_num_threads() * (rows + dot.NR) * (64 * 9 + dot.MR * 16) * 4
    assert peak <= budget + (256 << 10), peak
    np.testing.assert_array_equal(out, reference.conv2d(x, w, padding=1))
