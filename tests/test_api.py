"""The public functions: argument forms, dtypes, memory layouts, out=, and inputs left alone."""

import dataclasses
import hashlib

import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, reference


def _ints(rng, shape, dtype=np.float32):
    return rng.integers(-4, 5, size=shape).astype(dtype)


def test_torch_argument_forms_give_the_same_result(rng):
    x, w = _ints(rng, (2, 4, 9, 10)), _ints(rng, (6, 4, 3, 3))
    base = numbaconv.conv2d(x, w, stride=(2, 2), padding=(1, 1), dilation=(1, 1))
    assert np.array_equal(numbaconv.conv2d(x, w, stride=2, padding=1, dilation=1), base)
    assert np.array_equal(numbaconv.conv2d(x, w, stride=[2, 2], padding=[1, 1]), base)
    assert np.array_equal(numbaconv.conv2d(x, w, stride=2, padding=((1, 1), (1, 1))), base)
    assert np.array_equal(numbaconv.conv2d(x, w, stride=np.int64(2), padding=np.int32(1)), base)
    assert np.array_equal(numbaconv.conv2d(x, w, padding="valid"), numbaconv.conv2d(x, w))


def test_same_padding_keeps_size_with_extra_pad_at_bottom_right(rng):
    x = _ints(rng, (1, 2, 7, 8))
    for kernel, dilation in [((3, 3), 1), ((4, 2), 1), ((2, 5), 2), ((1, 4), 3)]:
        w = _ints(rng, (3, 2) + kernel)
        y = numbaconv.conv2d(x, w, padding="same", dilation=dilation)
        assert y.shape == (1, 3, 7, 8)
        pads = tuple((dilation * (k - 1) // 2, dilation * (k - 1) - dilation * (k - 1) // 2)
                     for k in kernel)
        assert np.array_equal(y, reference.conv2d(x, w, padding=pads, dilation=dilation))


def test_asymmetric_padding_equals_explicit_zero_padding(rng):
    x, w = _ints(rng, (1, 3, 6, 7)), _ints(rng, (2, 3, 3, 2))
    y = numbaconv.conv2d(x, w, padding=((0, 2), (3, 1)))
    padded = np.pad(x, ((0, 0), (0, 0), (0, 2), (3, 1)))
    assert np.array_equal(y, numbaconv.conv2d(padded, w))


def test_unbatched_input(rng):
    x, w, b = _ints(rng, (3, 8, 8)), _ints(rng, (5, 3, 3, 3)), _ints(rng, (5,))
    y = numbaconv.conv2d(x, w, b, padding=1)
    assert y.shape == (5, 8, 8)
    assert np.array_equal(y, numbaconv.conv2d(x[None], w, b, padding=1)[0])
    t = numbaconv.conv_transpose2d(x, _ints(rng, (3, 2, 2, 2)), stride=2)
    assert t.shape == (2, 16, 16)
    # repeated calls (the remembered path) keep the unbatched form
    assert np.array_equal(numbaconv.conv2d(x, w, b, padding=1), y)
    assert np.array_equal(numbaconv.conv2d(x, w, b, padding=1), y)


@pytest.mark.parametrize("x_dtype,w_dtype,expected", [
    (np.float32, np.float32, np.float32),
    (np.float64, np.float64, np.float64),
    (np.float32, np.float64, np.float64),
    (np.float64, np.float32, np.float64),
    (np.int64, np.float32, np.float64),
    (np.int32, np.int32, np.float64),
    (np.uint8, np.float32, np.float64),
    (np.bool_, np.float32, np.float64),
    (np.float16, np.float32, np.float32),
    (np.float16, np.float16, np.float32),
])
def test_dtype_promotion(rng, x_dtype, w_dtype, expected):
    x = rng.integers(0, 2, (1, 2, 5, 5)).astype(x_dtype)
    w = rng.integers(-2, 3, (3, 2, 3, 3)).astype(w_dtype)
    y = numbaconv.conv2d(x, w)
    assert y.dtype == expected
    assert np.array_equal(y, reference.conv2d(x.astype(np.float64), w.astype(np.float64)))


def test_bias_dtype_takes_part_in_promotion(rng):
    x, w = _ints(rng, (1, 2, 5, 5)), _ints(rng, (3, 2, 3, 3))
    assert numbaconv.conv2d(x, w, np.zeros(3, np.float64)).dtype == np.float64
    assert numbaconv.conv2d(x, w, np.zeros(3, np.float32)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, object, "U1", "datetime64[s]",
                                   np.longdouble])
def test_unsupported_dtypes_raise_type_error(dtype):
    if np.dtype(dtype) == np.float64:  # platforms where longdouble is double
        pytest.skip("longdouble is float64 here")
    x = np.zeros((1, 1, 3, 3), dtype=dtype)
    with pytest.raises(TypeError, match="input"):
        numbaconv.conv2d(x, np.zeros((1, 1, 1, 1), np.float32))
    with pytest.raises(TypeError, match="weight"):
        numbaconv.conv2d(np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 1, 1), dtype=dtype))


def _layouts(a):
    """The same values in several memory layouts."""
    yield "fortran", np.asfortranarray(a)
    flipped = np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    yield "negative strides", flipped
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    yield "strided view", big[..., ::2]
    ro = a.copy()
    ro.flags.writeable = False
    yield "read-only", ro
    yield "big-endian", a.astype(a.dtype.newbyteorder(">"))
    yield "transposed view", np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)


@pytest.mark.parametrize("transposed", [False, True])
def test_memory_layouts_give_the_same_result(rng, transposed):
    x = _ints(rng, (2, 4, 7, 6))
    w = _ints(rng, (4, 3, 3, 2)) if transposed else _ints(rng, (6, 2, 3, 2))
    b = _ints(rng, (6,))
    fn = numbaconv.conv_transpose2d if transposed else numbaconv.conv2d
    kwargs = dict(stride=2, padding=1, groups=2)
    expected = fn(x, w, b, **kwargs)
    for (nx, lx), (nw, lw), (nb, lb) in zip(_layouts(x), _layouts(w),
                                            [(n, v) for n, v in _layouts(b[None])]):
        assert np.array_equal(fn(lx, lw, lb[0], **kwargs), expected), (nx, nw, nb)


@pytest.mark.parametrize("bad, error", [
    (dict(stride=True), "stride must be an int"), (dict(padding=1.0), "padding must be an int"),
    (dict(groups=True), "groups must be an int"), (dict(dilation=True), "dilation must be"),
    (dict(stride=(1, True)), "stride must be"), (dict(padding=((1, 1), (1, 1.0))), "padding")])
def test_a_remembered_call_does_not_let_equal_but_invalid_arguments_through(rng, bad, error):
    # 1 == 1.0 == True as dictionary keys: a call repeated with the same shapes must still be
    # validated when an argument only compares equal to the remembered one
    x, w = _ints(rng, (1, 3, 9, 9)), _ints(rng, (4, 3, 3, 3))
    for kwargs in (dict(stride=1, padding=1, dilation=1, groups=1),
                   dict(stride=(1, 1), padding=((1, 1), (1, 1)), dilation=(1, 1), groups=1)):
        first = numbaconv.conv2d(x, w, **kwargs)
        assert np.array_equal(numbaconv.conv2d(x, w, **kwargs), first)
        with pytest.raises(TypeError, match=error):
            numbaconv.conv2d(x, w, **{**kwargs, **bad})


def test_repeated_calls_return_new_arrays_and_run_what_their_arguments_ask(rng, monkeypatch):
    """A call repeated with the same shapes and arguments reuses the algorithm chosen the first
    time for that ``algorithm`` and ``exact`` (and ALGORITHMS table), never a result."""
    ran = []

    def spy(algorithm):
        def run(*args):
            ran.append(algorithm.name)
            return algorithm.run(*args)
        return dataclasses.replace(algorithm, run=run)

    monkeypatch.setattr(dispatch, "ALGORITHMS", [spy(a) for a in dispatch.ALGORITHMS])
    monkeypatch.setattr(dispatch, "rule",
                        lambda problem, exact, prepared=False: "direct" if exact else "gemm")
    x1, x2, w, b = (_ints(rng, (1, 4, 9, 9)), _ints(rng, (1, 4, 9, 9)), _ints(rng, (5, 4, 3, 3)),
                    _ints(rng, (5,)))
    calls = [("auto", False, x1), ("auto", False, x2), ("auto", True, x1), ("auto", True, x2),
             ("gemm", True, x1), ("direct", False, x2), ("auto", False, x1)]
    results = [numbaconv.conv2d(x, w, b, padding=1, algorithm=a, exact=e) for a, e, x in calls]
    assert ran == ["gemm", "gemm", "direct", "direct", "gemm", "direct", "gemm"]
    for (_, _, x), y in zip(calls, results):
        assert np.array_equal(y, reference.conv2d(x, w, b, padding=1))
    assert not np.shares_memory(results[0], results[-1])
    results[0][...] = np.nan  # the caller owns each result
    assert np.array_equal(numbaconv.conv2d(x1, w, b, padding=1), results[-1])
    # a new table of algorithms is a new choice
    monkeypatch.setattr(dispatch, "ALGORITHMS", [spy(a) for a in dispatch.ALGORITHMS])
    monkeypatch.setattr(dispatch, "rule", lambda problem, exact, prepared=False: "direct")
    numbaconv.conv2d(x1, w, b, padding=1)
    assert ran[-1] == "direct"


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("algorithm", ["auto"] + list(numbaconv.algorithms()))
def test_inputs_are_never_modified(rng, algorithm):
    x, w, b = _ints(rng, (2, 4, 9, 9)), _ints(rng, (4, 4, 3, 3)), _ints(rng, (4,))
    before = _digest(x, w, b)
    for fn in (numbaconv.conv2d, numbaconv.conv_transpose2d):
        try:
            fn(x, w, b, padding=1, algorithm=algorithm)
        except numbaconv.UnsupportedAlgorithm:
            pass
    assert _digest(x, w, b) == before


def test_out_argument(rng):
    x, w, b = _ints(rng, (2, 3, 8, 8)), _ints(rng, (4, 3, 3, 3)), _ints(rng, (4,))
    out = np.full((2, 4, 6, 6), np.nan, np.float32)
    assert numbaconv.conv2d(x, w, b, out=out) is out
    assert np.array_equal(out, reference.conv2d(x, w, b))
    # unbatched result into an unbatched out
    out3 = np.empty((4, 6, 6), np.float32)
    numbaconv.conv2d(x[0], w, b, out=out3)
    assert np.array_equal(out3, out[0])


@pytest.mark.parametrize("make_out,error,match", [
    (lambda: np.empty((2, 4, 6, 5), np.float32), ValueError, "output shape"),
    (lambda: np.empty((2, 4, 6, 6), np.float64), TypeError, "dtype"),
    (lambda: np.empty((2, 4, 6, 12), np.float32)[..., ::2], ValueError, "C-contiguous"),
    (lambda: [[0.0]], TypeError, "numpy.ndarray"),
])
def test_out_validation(rng, make_out, error, match):
    x, w = _ints(rng, (2, 3, 8, 8)), _ints(rng, (4, 3, 3, 3))
    with pytest.raises(error, match=match):
        numbaconv.conv2d(x, w, out=make_out())


def test_out_read_only_and_overlapping_inputs_rejected(rng):
    x, w = _ints(rng, (1, 4, 6, 6)), _ints(rng, (4, 4, 1, 1))
    ro = np.empty((1, 4, 6, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        numbaconv.conv2d(x, w, out=ro)
    before = x.copy()
    with pytest.raises(ValueError, match="must not overlap input"):
        numbaconv.conv2d(x, w, out=x)
    assert np.array_equal(x, before)
    storage = np.zeros(4 * 4 + 4 * 36, np.float32)
    w_view = storage[:16].reshape(4, 4, 1, 1)
    w_view[...] = w
    with pytest.raises(ValueError, match="must not overlap weight"):
        numbaconv.conv2d(x, w_view, out=storage[:144].reshape(1, 4, 6, 6))


def test_python_lists_and_scalars_types(rng):
    x = [[[[1, 2, 3], [4, 5, 6], [7, 8, 9]]]]
    y = numbaconv.conv2d(x, [[[[1, 0], [0, 1]]]])
    assert y.dtype == np.float64 and np.array_equal(y, [[[[6, 8], [12, 14]]]])


def test_empty_batch(rng):
    y = numbaconv.conv2d(np.zeros((0, 3, 8, 8), np.float32), _ints(rng, (4, 3, 3, 3)), padding=1)
    assert y.shape == (0, 4, 8, 8)
    t = numbaconv.conv_transpose2d(np.zeros((0, 3, 4, 4)), _ints(rng, (3, 2, 2, 2)), stride=2)
    assert t.shape == (0, 2, 8, 8)


def test_nan_and_inf_propagate(rng):
    x, w = _ints(rng, (1, 2, 6, 6)), _ints(rng, (3, 2, 3, 3))
    w[w == 0] = 1  # every product involving x[0, 0, 2, 2] is then non-zero
    x[0, 0, 2, 2] = np.nan
    x[0, 1, 5, 5] = np.inf
    usable = [n for n, why in numbaconv.explain(x, w, padding=1).reasons.items() if why is None]
    assert len(usable) >= 3
    for algorithm in ["auto"] + usable:
        y = numbaconv.conv2d(x, w, padding=1, algorithm=algorithm)
        assert np.isnan(y[0, :, 1:4, 1:4]).all()
        assert np.isnan(y[0, :, 0, 0]).sum() == 0
        expected = reference.conv2d(x, w, padding=1)
        assert np.array_equal(y, expected, equal_nan=True)


def test_output_size_for_transposed(rng):
    x, w = _ints(rng, (1, 4, 7, 7)), _ints(rng, (4, 2, 3, 3))
    a = numbaconv.conv_transpose2d(x, w, stride=2, padding=1, output_size=(14, 14))
    b = numbaconv.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1)
    assert a.shape == (1, 2, 14, 14) and np.array_equal(a, b)
    full = numbaconv.conv_transpose2d(x, w, stride=2, padding=1, output_size=[1, 2, 13, 14])
    assert full.shape == (1, 2, 13, 14)
    with pytest.raises(ValueError, match="not reachable"):
        numbaconv.conv_transpose2d(x, w, stride=2, padding=1, output_size=(15, 15))


def test_conv1d_and_conv_transpose1d(rng):
    x, w, b = _ints(rng, (2, 4, 30)), _ints(rng, (6, 2, 5)), _ints(rng, (6,))
    y = numbaconv.conv1d(x, w, b, stride=3, padding=((1, 2),), dilation=2, groups=2)
    y2 = numbaconv.conv2d(x[:, :, None], w[:, :, None], b, stride=(1, 3),
                          padding=((0, 0), (1, 2)), dilation=(1, 2), groups=2)[:, :, 0]
    assert np.array_equal(y, y2)
    assert np.array_equal(numbaconv.conv1d(x, w, b, padding="same", groups=2),
                          reference.conv1d(x, w, b, padding="same", groups=2))
    wt = _ints(rng, (4, 3, 4))
    t = numbaconv.conv_transpose1d(x, wt, b, stride=2, padding=1, output_padding=1, groups=2)
    assert np.array_equal(t, reference.conv_transpose1d(x, wt, b, stride=2, padding=1,
                                                        output_padding=1, groups=2))
    assert numbaconv.conv1d(x[0], w, groups=2).shape == (6, 26)


def test_torch_tensors_are_accepted_zero_copy():
    torch = pytest.importorskip("torch")
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    w = torch.ones(4, 3, 3, 3, requires_grad=True)
    y = numbaconv.conv2d(x, w, padding=1)
    expected = torch.nn.functional.conv2d(x, w.detach(), padding=1).numpy()
    assert y.dtype == np.float32 and np.array_equal(y, expected)
    from numbaconv._front import as_array
    assert np.shares_memory(as_array(x, "input"), x.numpy())


def test_explain_reports_choice_and_reasons():
    e = numbaconv.explain((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert e.choice in numbaconv.algorithms()
    assert e.reasons[e.choice] is None and "reference" in e.reasons
    text = repr(e)
    assert "auto picks" in text and str(e.problem) in text
    t = numbaconv.explain(np.zeros((2, 8, 5, 5)), np.zeros((8, 4, 4, 4)), stride=2,
                          transposed=True)
    assert t.problem.transposed and t.problem.dtype == "float64"
    assert all(name in numbaconv.algorithms() for name in t.reasons)
    one = numbaconv.explain((1, 4, 100), (8, 4, 3))
    assert one.problem.nd == 2


@pytest.mark.parametrize("x_shape,w_shape,stride,dtype,expected", [
    ((8, 64, 56, 56), (256, 64, 1, 1), 1, np.float32, "direct"),   # widens; 32 MB in and out
    ((3, 64, 56, 56), (256, 64, 1, 1), 1, np.float32, "direct"),   # 12.04 MB
    ((2, 64, 56, 56), (256, 64, 1, 1), 1, np.float32, "gemm"),     # 8 MB: stays in cache
    ((2, 64, 56, 56), (256, 64, 1, 1), 1, np.float64, "direct"),   # the same in float64: 16 MB
    ((8, 256, 56, 56), (64, 256, 1, 1), 1, np.float32, "gemm"),    # narrows the channels
    ((8, 64, 56, 56), (127, 64, 1, 1), 1, np.float32, "gemm"),     # less than twice as many
    ((8, 64, 56, 56), (256, 64, 1, 1), 2, np.float32, "gemm"),     # strided
    ((8, 64, 56, 56), (256, 32, 1, 1), 1, np.float32, "gemm"),     # grouped (2 groups)
])
def test_auto_moves_wide_1x1_layers_past_the_cache_to_direct(x_shape, w_shape, stride, dtype,
                                                              expected, monkeypatch):
    """Thresholds of a 32 MiB last-level cache (the machine where the rule was measured)."""
    monkeypatch.setattr(dispatch, "_WIDE_1X1_BYTES", 10 << 20)
    groups = x_shape[1] // w_shape[1]
    problem = numbaconv.explain(np.zeros(x_shape, dtype), np.zeros(w_shape, dtype),
                                stride=stride, groups=groups).problem
    assert dispatch.auto_choice(problem) == expected


def test_the_wide_1x1_threshold_follows_the_reported_last_level_cache(tmp_path):
    for index, level, size in [("index0", "1", "48K"), ("index2", "2", "2048K"),
                               ("index3", "3", "491520K"), ("index4", "x", "1G")]:
        (tmp_path / index).mkdir()
        (tmp_path / index / "level").write_text(level + "\n")
        (tmp_path / index / "size").write_text(size + "\n")
    assert dispatch._last_level_cache_bytes(str(tmp_path)) == 480 << 20
    (tmp_path / "index3" / "size").write_text("32M\n")
    assert dispatch._last_level_cache_bytes(str(tmp_path)) == 32 << 20
    assert dispatch._last_level_cache_bytes(str(tmp_path / "absent")) == 32 << 20
    assert dispatch._WIDE_1X1_BYTES == dispatch._last_level_cache_bytes() * 10 // 32
    problem = numbaconv.explain((8, 64, 56, 56), (256, 64, 1, 1)).problem
    data = 8 * (64 + 256) * 56 * 56 * 4                                        # 30.6 MiB
    expected = "direct" if data >= dispatch._WIDE_1X1_BYTES else "gemm"
    assert dispatch.auto_choice(problem) == expected


@pytest.mark.parametrize("x_shape,w_shape,stride,expected", [
    ((1, 256, 14, 14), (256, 256, 3, 3), 1, "direct"),  # ResNet-50 stage 3: 224 lanes each
    ((8, 256, 14, 14), (256, 256, 3, 3), 1, "direct"),
    ((1, 256, 28, 28), (256, 256, 3, 3), 2, "direct"),  # onto 14x14 (pitch 15)
    ((1, 256, 13, 13), (256, 256, 3, 3), 1, "gemm"),    # 224 lanes vs 192
    ((1, 128, 10, 10), (128, 128, 3, 3), 1, "direct"),  # 96 + a 32-wide last tile vs 128
    ((1, 128, 11, 11), (128, 128, 3, 3), 1, "gemm"),    # 144 lanes vs 128
    ((1, 128, 8, 8), (128, 128, 3, 3), 1, "gemm"),      # the GEMM's panels full
    ((1, 128, 12, 12), (128, 128, 5, 5), 1, "gemm"),
    ((1, 1024, 14, 14), (256, 1024, 1, 1), 1, "gemm"),  # 1x1: a plain product
    ((1, 512, 7, 7), (512, 512, 3, 3), 1, "gemm"),      # 80 lanes vs 64
])
def test_auto_takes_direct_on_small_maps_where_its_tiles_waste_few_lanes(x_shape, w_shape, stride,
                                                                         expected):
    """Small maps (fewer than 256 output pixels) go to the GEMM unless the direct kernel covers
    their rows, padding included, in at most 1.1 times the GEMM's lanes (float32; a rule measured
    with 512-bit vectors: builds with narrower ones keep the GEMM)."""
    from numbaconv.kernels import direct
    if direct._VBYTES < 64 and expected == "direct":
        expected = "gemm"
    problem = numbaconv.explain(np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32),
                                stride=stride, padding=w_shape[-1] // 2).problem
    assert dispatch.auto_choice(problem, exact=True) == expected


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,expected", [
    ((1, 512, 4, 4), (512, 256, 4, 4), 2, 1, "gemm"),      # DCGAN
    ((1, 256, 8, 8), (256, 128, 4, 4), 2, 1, "gemm"),
    ((8, 512, 12, 12), (512, 256, 3, 3), 2, 1, "gemm"),
    ((1, 128, 15, 15), (128, 64, 2, 2), 2, 0, "gemm"),
    ((1, 128, 16, 16), (128, 64, 4, 4), 2, 1, "direct"),
    ((1, 256, 16, 16), (256, 128, 4, 4), 2, 1, "direct"),   # 1.54 against 2.62 ms
    ((4, 512, 16, 16), (512, 256, 2, 2), 2, 0, "direct"),   # 6.0 against 9.5 ms
    ((1, 512, 24, 24), (512, 256, 3, 3), 2, 1, "direct"),
])
def test_auto_takes_the_transposed_gemm_below_16_input_columns(x_shape, w_shape, stride, padding,
                                                               expected):
    """Strided transposed layers without a depthwise shape: the GEMM for inputs under 16 pixels
    wide, whatever their channel counts, else the direct kernel."""
    problem = numbaconv.explain(np.zeros(x_shape, np.float32), np.zeros(w_shape, np.float32),
                                stride=stride, padding=padding, transposed=True).problem
    assert dispatch.auto_choice(problem, exact=True) == expected


@pytest.mark.parametrize("x_shape,w_shape,stride,expected", [
    ((1, 1, 2048, 2048), (1, 1, 7, 7), 1, "depthwise"),  # 49 taps
    ((1, 1, 512, 512), (4, 1, 3, 3), 1, "depthwise"),    # 36
    ((1, 1, 1024, 1024), (1, 1, 5, 5), 2, "depthwise"),
    ((1, 1, 512, 512), (4, 1, 5, 5), 1, "direct"),       # 100: the outputs share input loads
    ((1, 1, 512, 512), (32, 1, 5, 5), 1, "direct"),
    ((1, 1, 1024, 1024), (1, 1, 11, 11), 1, "direct"),   # 121
    ((1, 2, 64, 64), (1, 2, 3, 3), 1, "direct"),         # two input channels: not depthwise
])
def test_auto_takes_depthwise_for_one_input_channel_and_few_output_taps(x_shape, w_shape, stride,
                                                                         expected):
    assert numbaconv.explain(x_shape, w_shape, stride=stride, padding=w_shape[-1] // 2).choice \
        == expected


def test_unknown_algorithm_and_unsupported_forcing(rng):
    x, w = _ints(rng, (1, 2, 5, 5)), _ints(rng, (2, 2, 3, 3))
    with pytest.raises(ValueError, match="algorithm must be 'auto', 'tune' or one of"):
        numbaconv.conv2d(x, w, algorithm="winograd_f99")
    with pytest.raises(numbaconv.UnsupportedAlgorithm, match="has no transposed convolution"):
        numbaconv.conv_transpose2d(x, w, algorithm="im2col")
