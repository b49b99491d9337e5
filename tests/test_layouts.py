"""Channels-last data ('NHWC', 'NWC') and TensorFlow weight layouts: the same numbers as the
channels-first call, exactly, for every algorithm; the 1x1 GEMM path against the reference."""

import numpy as np
import pytest

import numbaconv
from numbaconv import reference
from numbaconv._jit import vector_bytes
from numbaconv.kernels import conv_nhwc

from cases import forward_corner_cases, transposed_corner_cases


def _nhwc(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _tf_weight(w):
    """torch (A, B, kH, kW) -> TensorFlow (kH, kW, B, A)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


@pytest.mark.parametrize("case", forward_corner_cases(), ids=str)
@pytest.mark.parametrize("algorithm", ["auto", "gemm", "direct"])
def test_conv2d_nhwc_equals_nchw(case, algorithm, rng):
    x, w, b = case.arrays(rng)
    want = reference.conv2d(x, w, b, **case.kwargs)
    y = numbaconv.conv2d(_nhwc(x), _tf_weight(w), b, data_format="NHWC", algorithm=algorithm,
                         **case.kwargs)
    assert np.array_equal(y, _nhwc(want))
    # torch-ordered weights with channels-last data, and TensorFlow weights with NCHW data
    y2 = numbaconv.conv2d(_nhwc(x), w, b, data_format="NHWC", weight_format="OIHW",
                          **case.kwargs)
    assert np.array_equal(y2, _nhwc(want))
    y3 = numbaconv.conv2d(x, _tf_weight(w), b, weight_format="HWIO", **case.kwargs)
    assert np.array_equal(y3, want)


@pytest.mark.parametrize("case", transposed_corner_cases(), ids=str)
def test_conv_transpose2d_nhwc_equals_nchw(case, rng):
    x, w, b = case.arrays(rng)
    want = reference.conv_transpose2d(x, w, b, **case.kwargs)
    y = numbaconv.conv_transpose2d(_nhwc(x), _tf_weight(w), b, data_format="NHWC",
                                   **case.kwargs)
    assert np.array_equal(y, _nhwc(want))


def test_pointwise_gemm_path_unbatched_out_and_1d(rng):
    x = rng.integers(-4, 5, (2, 7, 9, 16)).astype(np.float32)
    w = rng.integers(-4, 5, (1, 1, 16, 24)).astype(np.float32)
    b = rng.integers(-4, 5, 24).astype(np.float32)
    want = _nhwc(reference.conv2d(np.moveaxis(x, -1, 1), w.transpose(3, 2, 0, 1), b))
    assert np.array_equal(numbaconv.conv2d(x, w, b, data_format="NHWC"), want)
    out = np.full((7, 9, 24), np.nan, np.float32)
    assert numbaconv.conv2d(x[1], w, b, data_format="NHWC", out=out) is out
    assert np.array_equal(out, want[1])
    xs = rng.integers(-4, 5, (3, 11, 5)).astype(np.float64)          # (N, L, C)
    ws = rng.integers(-4, 5, (3, 5, 4)).astype(np.float64)           # (k, C_in, C_out)
    y = numbaconv.conv1d(xs, ws, stride=2, padding=1, data_format="NWC")
    ref = reference.conv1d(np.moveaxis(xs, -1, 1), ws.transpose(2, 1, 0), stride=2, padding=1)
    assert np.array_equal(y, np.moveaxis(ref, 1, -1))
    xt = rng.integers(-4, 5, (1, 6, 3)).astype(np.float64)
    wt = rng.integers(-4, 5, (2, 4, 3)).astype(np.float64)           # (k, C_out, C_in)
    yt = numbaconv.conv_transpose1d(xt, wt, stride=2, data_format="NWC")
    reft = reference.conv_transpose1d(np.moveaxis(xt, -1, 1), wt.transpose(2, 1, 0), stride=2)
    assert np.array_equal(yt, np.moveaxis(reft, 1, -1))


def test_layout_errors(rng):
    x = np.ones((1, 8, 8, 3), np.float32)
    w = np.ones((3, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="data_format must be 'NCHW' or 'NHWC'"):
        numbaconv.conv2d(x, w, data_format="NCWH")
    with pytest.raises(ValueError, match="weight_format must be 'OIHW' or 'HWIO'"):
        numbaconv.conv2d(x, w, data_format="NHWC", weight_format="IOHW")
    with pytest.raises(ValueError, match="weight_format must be 'IOHW' or 'HWOI'"):
        numbaconv.conv_transpose2d(x, w, data_format="NHWC", weight_format="HWIO")
    with pytest.raises(ValueError, match="channels-last input must have shape"):
        numbaconv.conv2d(x[0, 0], w, data_format="NHWC")
    with pytest.raises(ValueError, match="expects 3 input channels|input has"):
        numbaconv.conv2d(np.ones((1, 8, 8, 5), np.float32), w, data_format="NHWC")
    with pytest.raises(ValueError, match="out must be"):
        numbaconv.conv2d(x, w, data_format="NHWC", out=np.empty((1, 4, 6, 6), np.float32))


NDHWC_CASES = [
    ((2, 3, 4, 5, 6), (4, 3, 3, 3, 3), dict(padding=1), False),
    ((1, 4, 5, 6, 7), (6, 2, 2, 3, 1), dict(stride=(2, 1, 2), padding=((1, 0), 0, (0, 2)), groups=2),
     False),
    ((1, 2, 5, 5, 5), (5, 2, 1, 1, 1), dict(), False),                 # 1x1x1: one GEMM in place
    ((2, 4, 3, 4, 5), (4, 3, 2, 3, 2), dict(stride=2, padding=1, output_padding=1), True),
    ((1, 4, 3, 3, 4), (4, 2, 3, 2, 3), dict(stride=(1, 2, 2), groups=2, dilation=(2, 1, 1)), True),
]


@pytest.mark.parametrize("x_shape,w_shape,kw,transposed", NDHWC_CASES)
def test_conv3d_ndhwc_equals_ncdhw(x_shape, w_shape, kw, transposed, rng):
    """(N, D, H, W, C) data with TensorFlow's DHWIO / DHWOI weights (and torch's) gives the
    NCDHW result, transposed, bit for bit on integer data; inputs are not modified."""
    fn = numbaconv.conv_transpose3d if transposed else numbaconv.conv3d
    x = rng.integers(-4, 5, x_shape).astype(np.float32)
    w = rng.integers(-4, 5, w_shape).astype(np.float32)
    c_out = w_shape[1] * kw.get("groups", 1) if transposed else w_shape[0]
    b = rng.integers(-4, 5, c_out).astype(np.float32)
    expected = fn(x, w, b, **kw, exact=True)
    ref = (reference.conv_transpose3d if transposed else reference.conv3d)(x, w, b, **kw)
    assert np.array_equal(expected, ref)
    x_last = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1))
    w_tf = np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0))
    saved = x_last.copy(), w_tf.copy()
    got = fn(x_last, w_tf, b, **kw, data_format="NDHWC", exact=True)
    assert np.array_equal(got, expected.transpose(0, 2, 3, 4, 1))
    got_torch_w = fn(x_last, w, b, **kw, data_format="NDHWC", weight_format="IODHW" if transposed
                     else "OIDHW", exact=True)
    assert np.array_equal(got_torch_w, got)
    unbatched = fn(x_last[0], w_tf, b, **kw, data_format="NDHWC", exact=True)
    assert np.array_equal(unbatched, got[0])
    assert np.array_equal(x_last, saved[0]) and np.array_equal(w_tf, saved[1])


def test_conv3d_layout_errors(rng):
    x = np.zeros((1, 4, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="data_format must be 'NCDHW' or 'NDHWC'"):
        numbaconv.conv3d(x, np.zeros((3, 3, 3, 2, 2)), data_format="NHWC")
    with pytest.raises(ValueError, match="weight_format must be 'OIDHW' or 'DHWIO'"):
        numbaconv.conv3d(x, np.zeros((3, 3, 3, 2, 2)), data_format="NDHWC", weight_format="HWIO")
    with pytest.raises(ValueError, match="weight_format must be 'IODHW' or 'DHWOI'"):
        numbaconv.conv_transpose3d(x, np.zeros((3, 3, 3, 2, 2)), data_format="NDHWC",
                                   weight_format="OIDHW")


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=1), dict(padding="same", dilation=2),
                                dict(padding=((0, 2), (3, 1)), stride=(1, 2)), dict(), dict(padding=4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_nhwc_depthwise_equals_the_reference(kw, dtype, rng):
    """The channels-last depthwise kernel (no transposes) gives the reference's bits on integer
    data, batched or not, with out=, for 1 and 2 threads; inputs unchanged."""
    x = rng.integers(-4, 5, (2, 13, 11, 37)).astype(dtype)          # C = 37: a masked tail
    w = rng.integers(-4, 5, (37, 1, 3, 3)).astype(dtype)
    b = rng.integers(-4, 5, 37).astype(dtype)
    expected = reference.conv2d(x.transpose(0, 3, 1, 2), w, b, groups=37, **kw).transpose(0, 2, 3, 1)
    w_tf = np.ascontiguousarray(w.transpose(2, 3, 1, 0))              # HWIO: (3, 3, 1, 37)
    saved = x.copy(), w_tf.copy()
    with numbaconv.num_threads(1):
        one = numbaconv.conv2d(x, w_tf, b, groups=37, data_format="NHWC", **kw)
    assert np.array_equal(one, expected)
    out = np.full(expected.shape, np.nan, dtype)
    assert numbaconv.conv2d(x, w_tf, b, groups=37, data_format="NHWC", out=out, **kw) is out
    assert np.array_equal(out, expected)
    assert np.array_equal(numbaconv.conv2d(x[1], w_tf, b, groups=37, data_format="NHWC", **kw),
                          expected[1])
    strided = np.asfortranarray(x)
    assert np.array_equal(numbaconv.conv2d(strided, w_tf, None, groups=37, data_format="NHWC", **kw),
                          numbaconv.conv2d(x, w_tf, None, groups=37, data_format="NHWC", **kw))
    assert np.array_equal(x, saved[0]) and np.array_equal(w_tf, saved[1])
    with pytest.raises(ValueError, match="out must"):
        numbaconv.conv2d(x, w_tf, b, groups=37, data_format="NHWC", out=out.astype(np.float16), **kw)


DENSE_FORMS = [dict(padding=1), dict(stride=2, padding=1), dict(padding="same", dilation=2),
               dict(padding=((0, 2), (3, 1)), stride=(1, 2)), dict(), dict(padding=4),
               dict(stride=3, dilation=(1, 2), padding=(2, 0))]


@pytest.fixture
def dense_calls(monkeypatch):
    """Counts calls of the channels-last implicit-GEMM kernel (so a test knows it ran)."""
    from numbaconv.kernels import conv_nhwc
    calls = []
    real = conv_nhwc.conv3d_ndhwc

    def spy(*args):
        calls.append(args[1].shape)
        return real(*args)

    monkeypatch.setattr(conv_nhwc, "conv3d_ndhwc", spy)
    return calls


@pytest.mark.parametrize("kw", DENSE_FORMS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups,c_in,c_out,k", [(1, 19, 70, 3), (2, 10, 80, 3), (1, 3, 33, 5)])
def test_native_nhwc_dense_equals_the_reference(kw, dtype, groups, c_in, c_out, k, rng,
                                                dense_calls):
    """The channels-last implicit GEMM (no transposes) gives the reference's bits on integer
    data for strides, dilations, asymmetric padding, groups and a column tail (70 = 64 + 6
    channels), batched or not, with out=, for 1 and 2 threads; inputs unchanged."""
    x = rng.integers(-4, 5, (2, 13, 11, c_in)).astype(dtype)
    w = rng.integers(-4, 5, (c_out, c_in // groups, k, k)).astype(dtype)
    b = rng.integers(-4, 5, c_out).astype(dtype)
    expected = reference.conv2d(x.transpose(0, 3, 1, 2), w, b, groups=groups,
                                **kw).transpose(0, 2, 3, 1)
    w_tf = _tf_weight(w)
    saved = x.copy(), w_tf.copy()
    with numbaconv.num_threads(1):
        one = numbaconv.conv2d(x, w_tf, b, groups=groups, data_format="NHWC", **kw)
    assert dense_calls, "the native channels-last kernel did not run"
    assert np.array_equal(one, expected)
    out = np.full(expected.shape, np.nan, dtype)
    assert numbaconv.conv2d(x, w_tf, b, groups=groups, data_format="NHWC", out=out, **kw) is out
    assert np.array_equal(out, expected)
    assert np.array_equal(numbaconv.conv2d(x[1], w, b, groups=groups, data_format="NHWC",
                                           weight_format="OIHW", algorithm="gemm", **kw),
                          expected[1])
    strided = np.asfortranarray(x)
    assert np.array_equal(numbaconv.conv2d(strided, w_tf, None, groups=groups,
                                           data_format="NHWC", **kw),
                          expected - b)
    assert np.array_equal(x, saved[0]) and np.array_equal(w_tf, saved[1])
    with pytest.raises(ValueError, match="out must"):
        numbaconv.conv2d(x, w_tf, b, groups=groups, data_format="NHWC",
                         out=out.astype(np.float16), **kw)
    shared = np.zeros(x.size + out.size, dtype)
    x_in = shared[:x.size].reshape(x.shape)
    x_in[...] = x
    with pytest.raises(ValueError, match="out must not overlap"):
        numbaconv.conv2d(x_in, w_tf, b, groups=groups, data_format="NHWC",
                         out=shared[:out.size].reshape(out.shape), **kw)


def test_native_nhwc_dense_real_data_is_thread_invariant_and_within_bound(rng, dense_calls):
    """Random real data (a ResNet-like 3x3 layer): the same bits for 1 and 2 threads and run to
    run; within the forward error bound of the float64 reference."""
    x = rng.standard_normal((2, 14, 14, 96)).astype(np.float32)
    w = rng.standard_normal((3, 3, 96, 128)).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    with numbaconv.num_threads(1):
        one = numbaconv.conv2d(x, w, b, padding=1, data_format="NHWC")
    with numbaconv.num_threads(2):
        two = numbaconv.conv2d(x, w, b, padding=1, data_format="NHWC")
        again = numbaconv.conv2d(x, w, b, padding=1, data_format="NHWC")
    assert len(dense_calls) == 3
    assert np.array_equal(one, two) and np.array_equal(two, again)
    x64 = x.astype(np.float64).transpose(0, 3, 1, 2)
    w64 = w.astype(np.float64).transpose(3, 2, 0, 1)
    exact = reference.conv2d(x64, w64, b.astype(np.float64), padding=1).transpose(0, 2, 3, 1)
    magnitude = reference.conv2d(np.abs(x64), np.abs(w64), np.abs(b.astype(np.float64)),
                                 padding=1).transpose(0, 2, 3, 1)
    k = 96 * 9 + 1
    assert np.all(np.abs(one - exact) <= k * np.finfo(np.float32).eps / 2 * magnitude)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_native_nhwc_padding_modes(mode, rng, dense_calls):
    """Padding modes on the channels-last kernels (dense and depthwise, 2-D and 1-D) equal the
    channels-first results, which are tested against torch."""
    x = rng.integers(-4, 5, (2, 9, 8, 40)).astype(np.float32)
    w = rng.integers(-4, 5, (48, 40, 3, 3)).astype(np.float32)
    want = numbaconv.conv2d(x.transpose(0, 3, 1, 2), w, padding=(2, 1), padding_mode=mode)
    got = numbaconv.conv2d(x, _tf_weight(w), padding=(2, 1), padding_mode=mode, data_format="NHWC")
    assert dense_calls and np.array_equal(got, _nhwc(want))
    wd = rng.integers(-4, 5, (40, 1, 3, 3)).astype(np.float32)
    want = numbaconv.conv2d(x.transpose(0, 3, 1, 2), wd, padding=1, groups=40, padding_mode=mode)
    got = numbaconv.conv2d(x, _tf_weight(wd), padding=1, groups=40, padding_mode=mode,
                           data_format="NHWC")
    assert np.array_equal(got, _nhwc(want))
    x1, w1 = x[:, 0], w[:, :, 0]
    want = numbaconv.conv1d(x1.transpose(0, 2, 1), w1, padding=2, padding_mode=mode)
    got = numbaconv.conv1d(x1, w1.transpose(2, 1, 0), padding=2, padding_mode=mode,
                           data_format="NWC")
    assert np.array_equal(got, np.ascontiguousarray(want.transpose(0, 2, 1)))


def test_native_nwc_1d(rng, dense_calls):
    """conv1d in NWC runs on the channels-last kernel as a unit-height image."""
    x = rng.integers(-4, 5, (3, 50, 24)).astype(np.float64)
    w = rng.integers(-4, 5, (64, 24, 5)).astype(np.float64)
    want = reference.conv1d(x.transpose(0, 2, 1), w, None, stride=2, padding=3,
                            dilation=2).transpose(0, 2, 1)
    got = numbaconv.conv1d(x, w.transpose(2, 1, 0), stride=2, padding=3, dilation=2,
                           data_format="NWC")
    assert dense_calls and np.array_equal(got, want)
    assert np.array_equal(numbaconv.conv1d(x[0], w.transpose(2, 1, 0), stride=2, padding=3,
                                           dilation=2, data_format="NWC"), want[0])


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 33, 70), (1, 3, 4096), (3, 64, 1), (1, 31, 32)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_transpose(shape, dtype, rng):
    from numbaconv.kernels import transpose
    src = rng.standard_normal(shape).astype(dtype)
    assert np.array_equal(transpose.swap_last_two(src), src.transpose(0, 2, 1))
    dst = np.empty((shape[0], shape[2], shape[1]), dtype)
    assert transpose.swap_last_two(src, dst) is dst


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_register_tile_transpose_writes_only_its_tile(dtype, rng):
    """``tile_transpose`` for every tile size up to a vector's width, at odd offsets and
    strides: the transposed tile, and no element outside it read into it or written."""
    import numba
    from numbaconv.kernels.transpose import tile_transpose

    @numba.njit
    def run(src, soff, lds, dst, doff, ldd, rows, cols):
        tile_transpose(src, soff, lds, dst, doff, ldd, rows, cols)

    lanes = vector_bytes() // np.dtype(dtype).itemsize
    src = rng.standard_normal(40 * 37).astype(dtype)
    for rows in range(lanes + 1):
        for cols in (0, 1, lanes // 2 + 1, lanes):
            soff, lds, doff, ldd = 5, 37, 3, lanes + 3
            dst = np.full(ldd * (lanes + 1), np.nan, dtype)
            run(src, soff, lds, dst, doff, ldd, rows, cols)
            want = np.full_like(dst, np.nan)
            for j in range(cols):
                for i in range(rows):
                    want[doff + j * ldd + i] = src[soff + i * lds + j]
            assert np.array_equal(dst, want, equal_nan=True), (rows, cols)


def test_transposing_path_layouts(rng):
    """Problems without a native channels-last kernel (few channels per group, one channel,
    3-D) give the channels-first bits through the blocked transposes."""
    x = rng.integers(-4, 5, (2, 12, 10, 8)).astype(np.float32)
    w = rng.integers(-4, 5, (8, 2, 3, 3)).astype(np.float32)
    want = reference.conv2d(x.transpose(0, 3, 1, 2), w, None, padding=1, groups=4)
    assert np.array_equal(numbaconv.conv2d(x, _tf_weight(w), padding=1, groups=4,
                                           data_format="NHWC"), _nhwc(want))
    x1 = x[..., :1]
    w1 = rng.integers(-4, 5, (1, 1, 5, 5)).astype(np.float32)
    want = reference.conv2d(x1.transpose(0, 3, 1, 2), w1, None, padding=2)
    got = numbaconv.conv2d(x1, _tf_weight(w1), padding=2, data_format="NHWC")
    assert got.flags.c_contiguous and np.array_equal(got, _nhwc(want))


@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=(2, 1, 2), padding=((1, 0), (0, 2), (1, 1))),
                                dict(dilation=(2, 1, 1), padding="same"), dict()], ids=str)
@pytest.mark.parametrize("groups", [1, 2])
def test_native_ndhwc_dense_equals_the_reference(kw, groups, rng, dense_calls):
    """conv3d in NDHWC runs on the channels-last implicit GEMM (taps over depth, height and
    width) and gives the 3-D reference's bits on integer data, batched or not."""
    x = rng.integers(-4, 5, (2, 6, 7, 5, 6)).astype(np.float32)
    w = rng.integers(-4, 5, (80, 6 // groups, 3, 2, 3)).astype(np.float32)
    b = rng.integers(-4, 5, 80).astype(np.float32)
    want = np.moveaxis(reference.conv3d(np.moveaxis(x, -1, 1), w, b, groups=groups, **kw), 1, -1)
    w_tf = np.ascontiguousarray(w.transpose(2, 3, 4, 1, 0))
    got = numbaconv.conv3d(x, w_tf, b, groups=groups, data_format="NDHWC", **kw)
    assert dense_calls and np.array_equal(got, want)
    assert np.array_equal(numbaconv.conv3d(x[0], w, b, groups=groups, data_format="NDHWC",
                                           weight_format="OIDHW", **kw), want[0])


@pytest.fixture
def transposed_calls(monkeypatch):
    """Records ``(kernel, input shape)`` for calls of the channels-last transposed kernels:
    ``'phases'`` (stride phases on the implicit GEMM) and ``'few'`` (few input pixels)."""
    from numbaconv.kernels import conv_transpose_nhwc
    calls = []
    for name, fn in (("phases", "conv_transpose3d_ndhwc"),
                     ("few", "conv_transpose3d_ndhwc_few_pixels")):
        def spy(*args, _real=getattr(conv_transpose_nhwc, fn), _name=name):
            calls.append((_name, args[0].shape))
            return _real(*args)

        monkeypatch.setattr(conv_transpose_nhwc, fn, spy)
    return calls


TRANSPOSED_FORMS = [dict(stride=2, padding=1, output_padding=1), dict(stride=(1, 2), dilation=2),
                    dict(stride=3, padding=(0, 2), output_padding=(2, 1)),
                    dict(stride=2, padding=1, output_size="+(1, 0)"), dict(padding=2)]


@pytest.mark.parametrize("kw", TRANSPOSED_FORMS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("groups,c_in,c_out,k", [(1, 9, 70, 3), (2, 10, 80, 4), (1, 5, 33, 1)])
@pytest.mark.parametrize("size", [(12, 11), (5, 6)], ids=["phases", "few"])
def test_native_nhwc_transposed_equals_the_reference(kw, dtype, groups, c_in, c_out, k, size,
                                                     rng, transposed_calls):
    """Transposed convolution in NHWC runs natively (no transposes): as stride phases on the
    channels-last implicit GEMM, or, without groups and with few input pixels, as one GEMM over
    the weights plus strided adds. Both give the reference's bits on integer data: strides,
    dilation, output padding/size, groups, a 1x1 kernel with stride 3 (phases no tap reaches:
    the bias alone), batched or not, with out=, for 1 and 2 threads; inputs unchanged."""
    h, wd = size
    x = rng.integers(-4, 5, (2, h, wd, c_in)).astype(dtype)
    w = rng.integers(-4, 5, (c_in, c_out // groups, k, k)).astype(dtype)
    b = rng.integers(-4, 5, c_out).astype(dtype)
    if "output_size" in kw:  # one row more than the smallest output: output_padding (1, 0)
        kw = dict(kw, output_size=((h - 1) * 2 - 2 + k + 1, (wd - 1) * 2 - 2 + k))
        ref_kw = dict(stride=2, padding=1, output_padding=(1, 0))
    else:
        ref_kw = kw
    expected = _nhwc(reference.conv_transpose2d(x.transpose(0, 3, 1, 2), w, b, groups=groups,
                                                **ref_kw))
    w_tf = _tf_weight(w)
    saved = x.copy(), w_tf.copy()
    with numbaconv.num_threads(1):
        one = numbaconv.conv_transpose2d(x, w_tf, b, groups=groups, data_format="NHWC", **kw)
    few = groups == 1 and 2 * h * wd <= 256
    assert transposed_calls and transposed_calls[0][0] == ("few" if few else "phases")
    assert np.array_equal(one, expected)
    out = np.full(expected.shape, np.nan, dtype)
    assert numbaconv.conv_transpose2d(x, w_tf, b, groups=groups, data_format="NHWC", out=out,
                                      **kw) is out
    assert np.array_equal(out, expected)
    assert np.array_equal(numbaconv.conv_transpose2d(
        x[1], w, None, groups=groups, data_format="NHWC", weight_format="IOHW",
        algorithm="gemm", **kw), expected[1] - b)
    assert np.array_equal(x, saved[0]) and np.array_equal(w_tf, saved[1])


def test_native_transposed_1d_3d_real_data_and_errors(rng, transposed_calls):
    """NWC and NDHWC transposed calls on the native kernel; random real data gives the same
    bits for 1 and 2 threads and stays within the forward error bound; a bias of the wrong
    length is refused on every channels-last path."""
    x1 = rng.integers(-4, 5, (2, 9, 6)).astype(np.float32)
    w1 = rng.integers(-4, 5, (6, 40, 4)).astype(np.float32)         # torch (C_in, C_out, k)
    want1 = np.moveaxis(reference.conv_transpose1d(np.moveaxis(x1, -1, 1), w1, stride=2,
                                                   padding=1), 1, -1)
    got1 = numbaconv.conv_transpose1d(x1, w1.transpose(2, 1, 0), stride=2, padding=1,
                                      data_format="NWC")
    assert transposed_calls[-1][0] == "few" and np.array_equal(got1, want1)
    x3 = rng.integers(-4, 5, (1, 3, 4, 5, 6)).astype(np.float32)
    w3 = rng.integers(-4, 5, (6, 32, 3, 3, 3)).astype(np.float32)
    want3 = np.moveaxis(reference.conv_transpose3d(np.moveaxis(x3, -1, 1), w3, stride=2,
                                                   padding=1, output_padding=1), 1, -1)
    got3 = numbaconv.conv_transpose3d(x3, w3.transpose(2, 3, 4, 1, 0), stride=2, padding=1,
                                      output_padding=1, data_format="NDHWC")
    assert transposed_calls[-1][0] == "few" and np.array_equal(got3, want3)
    x3 = rng.integers(-4, 5, (2, 3, 8, 9, 6)).astype(np.float32)   # 432 pixels: phases
    want3 = np.moveaxis(reference.conv_transpose3d(np.moveaxis(x3, -1, 1), w3, stride=2,
                                                   padding=1, output_padding=1), 1, -1)
    got3 = numbaconv.conv_transpose3d(x3, w3.transpose(2, 3, 4, 1, 0), stride=2, padding=1,
                                      output_padding=1, data_format="NDHWC")
    assert transposed_calls[-1][0] == "phases" and np.array_equal(got3, want3)

    for size, kernel in ((16, "few"), (20, "phases")):
        x = rng.standard_normal((1, size, size, 64)).astype(np.float32)
        w = rng.standard_normal((4, 4, 32, 64)).astype(np.float32)     # HWOI
        with numbaconv.num_threads(1):
            one = numbaconv.conv_transpose2d(x, w, stride=2, padding=1, data_format="NHWC")
        assert transposed_calls[-1][0] == kernel
        with numbaconv.num_threads(2):
            two = numbaconv.conv_transpose2d(x, w, stride=2, padding=1, data_format="NHWC")
        assert np.array_equal(one, two)
        x64 = x.astype(np.float64).transpose(0, 3, 1, 2)
        w64 = w.astype(np.float64).transpose(3, 2, 0, 1)
        exact = reference.conv_transpose2d(x64, w64, stride=2, padding=1).transpose(0, 2, 3, 1)
        magnitude = reference.conv_transpose2d(np.abs(x64), np.abs(w64), stride=2,
                                               padding=1).transpose(0, 2, 3, 1)
        k = 64 * 4  # taps per output (2x2) x input channels
        assert np.all(np.abs(one - exact) <= k * np.finfo(np.float32).eps / 2 * magnitude)

    bad = np.ones(3, np.float32)
    xs = np.ones((1, 6, 6, 16), np.float32)
    calls = [(numbaconv.conv2d, np.ones((3, 3, 16, 64), np.float32), {}),
             (numbaconv.conv2d, np.ones((1, 1, 16, 8), np.float32), {}),
             (numbaconv.conv2d, np.ones((3, 3, 1, 16), np.float32), dict(groups=16)),
             (numbaconv.conv_transpose2d, np.ones((3, 3, 64, 16), np.float32), dict(stride=2))]
    for fn, wt, kw in calls:
        with pytest.raises(ValueError, match=r"bias must have shape \("):
            fn(xs, wt, bad, data_format="NHWC", **kw)


GROUPED_FORMS = [dict(padding=1), dict(stride=2), dict(padding=((2, 0), (1, 3)), dilation=(2, 1)),
                 dict(padding="same")]


@pytest.mark.parametrize("kw", GROUPED_FORMS, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cg,og", [(2, 2), (4, 4), (8, 8), (16, 16), (1, 2), (1, 4), (1, 16)])
def test_native_nhwc_small_groups_equal_the_reference(cg, og, dtype, kw, rng, monkeypatch):
    """Groups of few channels (ResNeXt's, depthwise with a channel multiplier) run natively in
    NHWC and give the reference's bits on integer data, with out=, unbatched, inputs
    unchanged; shapes the kernel does not cover (3 channels per group, or more output lanes
    than a float64 vector holds) take the transposing path, as exactly."""
    from numbaconv.kernels import grouped_nhwc
    calls = []
    real = grouped_nhwc.conv2d_grouped_nhwc
    monkeypatch.setattr(grouped_nhwc, "conv2d_grouped_nhwc",
                        lambda *a: calls.append(a[1].shape) or real(*a))
    groups = 5
    x = rng.integers(-4, 5, (2, 13, 11, cg * groups)).astype(dtype)
    w = rng.integers(-4, 5, (3, 3, cg, og * groups)).astype(dtype)      # HWIO
    b = rng.integers(-4, 5, og * groups).astype(dtype)
    saved = x.copy(), w.copy()
    expected = _nhwc(reference.conv2d(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), b,
                                      groups=groups, **kw))
    got = numbaconv.conv2d(x, w, b, groups=groups, data_format="NHWC", **kw)
    assert np.array_equal(got, expected)
    # groups of up to one vector of output channels run on the kernel, unless they fill half of
    # the channels-last GEMM's tile of conv_nhwc.NV vectors (dense_pays): 16 float32 / 8 float64
    # channels and all of them with AVX-512, fewer with AVX2
    lanes = vector_bytes() // np.dtype(dtype).itemsize
    native = og <= lanes and og < conv_nhwc.NV * lanes // 2
    assert bool(calls) == native
    out = np.full(expected.shape, np.nan, dtype)
    assert numbaconv.conv2d(x, w, b, groups=groups, data_format="NHWC", out=out, **kw) is out
    assert np.array_equal(out, expected)
    assert np.array_equal(numbaconv.conv2d(x[1], w, None, groups=groups, data_format="NHWC", **kw),
                          expected[1] - b)
    assert np.array_equal(x, saved[0]) and np.array_equal(w, saved[1])


def test_native_nhwc_small_groups_real_data_threads_and_fallback(rng):
    """Random real data: the same bits for 1 and 2 threads, within the forward error bound;
    3 channels per group (not covered) goes through channels-first, exactly on integers."""
    x = rng.standard_normal((1, 20, 24, 128)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 128)).astype(np.float32)
    with numbaconv.num_threads(1):
        one = numbaconv.conv2d(x, w, padding=1, groups=32, data_format="NHWC")
    with numbaconv.num_threads(2):
        two = numbaconv.conv2d(x, w, padding=1, groups=32, data_format="NHWC")
    assert np.array_equal(one, two)
    x64 = x.astype(np.float64).transpose(0, 3, 1, 2)
    w64 = w.astype(np.float64).transpose(3, 2, 0, 1)
    exact = _nhwc(reference.conv2d(x64, w64, padding=1, groups=32))
    magnitude = _nhwc(reference.conv2d(np.abs(x64), np.abs(w64), padding=1, groups=32))
    assert np.all(np.abs(one - exact) <= 36 * np.finfo(np.float32).eps / 2 * magnitude)
    x3 = rng.integers(-4, 5, (1, 9, 9, 12)).astype(np.float32)
    w3 = rng.integers(-4, 5, (3, 3, 3, 12)).astype(np.float32)
    assert np.array_equal(
        numbaconv.conv2d(x3, w3, padding=1, groups=4, data_format="NHWC"),
        _nhwc(reference.conv2d(x3.transpose(0, 3, 1, 2), w3.transpose(3, 2, 0, 1), padding=1,
                               groups=4)))


@pytest.mark.parametrize("cg,og,kw", [(1, 1, dict(padding="same")), (1, 4, dict(stride=2)),
                                      (4, 4, dict(padding=3, dilation=2))])
def test_native_nwc_depthwise_and_small_groups(cg, og, kw, rng, monkeypatch):
    """1-D channels-last depthwise and few-channel groups run on the same kernel (unit height)
    and give the reference's bits, batched and not."""
    from numbaconv.kernels import grouped_nhwc
    calls = []
    real = grouped_nhwc.conv2d_grouped_nhwc
    monkeypatch.setattr(grouped_nhwc, "conv2d_grouped_nhwc",
                        lambda *a: calls.append(a[0].shape) or real(*a))
    groups = 6
    x = rng.integers(-4, 5, (2, 37, cg * groups)).astype(np.float32)
    w = rng.integers(-4, 5, (5, cg, og * groups)).astype(np.float32)          # WIO
    b = rng.integers(-4, 5, og * groups).astype(np.float32)
    expected = np.moveaxis(reference.conv1d(np.moveaxis(x, -1, 1), w.transpose(2, 1, 0), b,
                                            groups=groups, **kw), 1, -1)
    got = numbaconv.conv1d(x, w, b, groups=groups, data_format="NWC", **kw)
    assert calls and calls[0][1] == 1 and np.array_equal(got, expected)
    assert np.array_equal(numbaconv.conv1d(x[0], w, b, groups=groups, data_format="NWC", **kw),
                          expected[0])
