"""Plans (numbaconv.plan_conv2d): conv2d's result from weights prepared once, checked arguments,
copies that later changes to the caller's arrays do not reach."""

import pickle

import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, plan, reference, tuning
from numbaconv.dispatch import UnsupportedAlgorithm

from cases import Case, all_cases
from error_bounds import winograd_bound
from threads import run_in_threads

FORWARD = [c for c in all_cases(60) if not c.transposed]


def _plan(case, w, b, **kw):
    return numbaconv.plan_conv2d(w, b, **case.kwargs, **kw)


@pytest.mark.parametrize("case", FORWARD, ids=str)
def test_equals_conv2d_with_the_algorithm_it_runs(case, rng):
    """Integer data: every call of a plan (first, repeated, unbatched) equals conv2d run with
    the algorithm the plan reports, and the reference; inputs stay as they were."""
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b)
    name = conv.algorithm_for(x.shape, x.dtype)
    want = reference.conv2d(x, w, b, **case.kwargs)
    saved = x.copy()
    first, again = conv(x), conv(x)
    assert np.array_equal(first, numbaconv.conv2d(x, w, b, **case.kwargs, algorithm=name))
    assert np.array_equal(again, first) and again is not first
    if dispatch.get(name, case.problem).exact:
        assert np.array_equal(first, want)
    assert np.array_equal(conv(x[0]), first[0])
    assert np.array_equal(x, saved)


@pytest.mark.parametrize("name", ["gemm", "direct", "dot", "im2col", "depthwise"])
def test_every_exact_algorithm_prepared_or_not(name, rng):
    case = (Case((2, 6, 11, 13), (6, 1, 3, 3), padding=1, groups=6) if name == "depthwise"
            else Case((2, 6, 11, 13), (10, 6, 3, 2), stride=(1, 2), padding=(2, 1)))
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b, algorithm=name)
    assert conv.algorithm_for(x.shape) == name
    for _ in range(2):
        assert np.array_equal(conv(x), reference.conv2d(x, w, b, **case.kwargs))
    if name in plan._PREPARED:
        assert (name, np.dtype(np.float32)) in conv._prepared


@pytest.mark.parametrize("case", [
    Case((2, 5, 12, 23), (13, 5, 3, 3), padding=1),                       # 8 per tile, overlap
    Case((1, 6, 15, 9), (20, 3, 3, 2), stride=2, padding=(1, 0), groups=2),  # 4 per tile
    Case((1, 4, 16, 20), (16, 4, 5, 5), padding=4, dilation=2, dtype="float64"),
], ids=str)
def test_direct_plans_blocked_weights_give_the_call_bits(case, rng):
    """Direct plans copy their weights into blocks of a tile's channels (a group's last block
    overlapping the previous one): the plain call's bits on real data, the reference's on
    integer data, for 1 and 2 threads."""
    from numbaconv.kernels import direct
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b, algorithm="direct")
    assert direct.pack_weights_direct(w, case.kwargs.get("groups", 1)).blocks is not None
    xr = rng.standard_normal(x.shape).astype(x.dtype)
    wr = rng.standard_normal(w.shape).astype(w.dtype)
    real = _plan(case, wr, b, algorithm="direct")
    for threads in (1, 2):
        with numbaconv.num_threads(threads):
            assert np.array_equal(conv(x), reference.conv2d(x, w, b, **case.kwargs))
            assert np.array_equal(real(xr), numbaconv.conv2d(xr, wr, b, **case.kwargs,
                                                             algorithm="direct"))


@pytest.mark.parametrize("case", [
    Case((1, 64, 7, 7), (64, 64, 3, 3), padding=1),                     # rows split over items
    Case((2, 16, 13, 14), (32, 16, 3, 3), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    Case((1, 12, 7, 15), (32, 12, 3, 3), bias=False),                  # rows of 7 + 6 pixels
    Case((1, 8, 3, 9), (30, 8, 3, 3), dtype="float64"),                # channels 16 + 14
], ids=str)
def test_small_map_gemm_plans_give_the_call_bits(case, rng, monkeypatch):
    """On small maps a GEMM plan puts output channels in the vector lanes (weights packed in
    channel blocks): the plain GEMM call's bits on real data, the reference's on integer data,
    every output written, for 1 and 2 threads."""
    from numbaconv.kernels import small_maps
    ran = []
    real_kernel = small_maps.conv2d_small_maps
    monkeypatch.setattr(small_maps, "conv2d_small_maps", lambda *a: ran.append(1) or
                        real_kernel(*a))
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b, algorithm="gemm")
    xr = rng.standard_normal(x.shape).astype(x.dtype)
    wr = rng.standard_normal(w.shape).astype(w.dtype)
    real = _plan(case, wr, b, algorithm="gemm")
    want = reference.conv2d(x, w, b, **case.kwargs)
    for threads in (1, 2):
        with numbaconv.num_threads(threads):
            out = np.full_like(want, np.nan)
            assert np.array_equal(conv(x, out=out), want)
            assert np.array_equal(real(xr), numbaconv.conv2d(xr, wr, b, **case.kwargs,
                                                             algorithm="gemm"))
    assert len(ran) == 4


def test_small_map_rule_takes_kernels_larger_than_1x1_on_maps_that_waste_gemm_lanes():
    from numbaconv.kernels import small_maps
    assert small_maps.pays(3, 3, 1, 1, 7, 7, 512, 4)        # 49 of 64 lanes in the GEMM
    assert small_maps.pays(3, 3, 1, 1, 14, 14, 256, 4)      # 196 of 208
    assert not small_maps.pays(1, 1, 1, 1, 7, 7, 512, 4)    # 1x1: input rows in place
    assert not small_maps.pays(3, 3, 1, 1, 28, 28, 128, 4)  # whole panels
    assert not small_maps.pays(3, 3, 2, 1, 7, 7, 512, 4)    # stride 2 along W
    assert not small_maps.pays(3, 3, 1, 2, 7, 7, 512, 4)    # groups
    assert not small_maps.pays(3, 3, 1, 1, 7, 7, 40, 4)     # 40 of 64 channel lanes


@pytest.mark.parametrize("case", [
    Case((1, 64, 14, 14), (64, 64, 3, 3), padding=1),
    Case((2, 32, 17, 19), (48, 32, 3, 3), padding=2, dilation=2),
    Case((1, 40, 30, 30), (24, 40, 3, 3), padding=1, dtype="float64", bias=False),
], ids=str)
def test_winograd_plan_gives_conv2d_bits(case, rng):
    """Transformed once or per call, the same operations in the same order: the same bits on
    real data, within Winograd's bound of the exact sum."""
    x, w, b = case.arrays(rng, kind="normal")
    conv = _plan(case, w, b, algorithm="winograd")
    got = conv(x)
    assert np.array_equal(got, numbaconv.conv2d(x, w, b, **case.kwargs, algorithm="winograd"))
    assert np.array_equal(conv(x), got)
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                            None if b is None else b.astype(np.float64), **case.kwargs)
    assert (np.abs(got - want) <= winograd_bound(case, x, w, b)).all()


def test_winograd_plan_hands_inf_and_nan_to_an_exact_kernel(rng):
    case = Case((1, 32, 12, 12), (32, 32, 3, 3), padding=1)
    x, w, b = case.arrays(rng)
    x[0, 3, 5, 7], x[0, 9, 0, 0] = np.inf, np.nan
    conv = _plan(case, w, b, algorithm="winograd")
    want = numbaconv.conv2d(x, w, b, **case.kwargs, exact=True)
    for _ in range(2):
        np.testing.assert_array_equal(conv(x), want)  # NaN where want has NaN
    assert np.isnan(want).any() and np.isinf(want).any()


@pytest.mark.parametrize("name", ["gemm", "direct", "winograd", "dot"])
def test_the_plan_holds_copies(name, rng):
    case = Case((1, 8, 9, 9), (16, 8, 3, 3), padding=1)
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b, algorithm=name)
    want = conv(x)
    w += 1
    b += 1
    assert np.array_equal(conv(x), want)
    assert not conv.weight.flags.writeable and not conv.bias.flags.writeable
    with pytest.raises(ValueError):
        conv.weight[0, 0, 0, 0] = 5
    assert np.array_equal(conv(x), want)
    # its copies start on a cache line (vector loads along its rows stay within lines), in the
    # computation dtype of every call too
    assert conv.weight.ctypes.data % 64 == 0 and conv.weight.flags.c_contiguous
    assert np.array_equal(conv(x.astype(np.float64)), numbaconv.conv2d(
        x.astype(np.float64), conv.weight, conv.bias, padding=1, algorithm=name))
    assert all(a.ctypes.data % 64 == 0 for a in conv._weights.values())


def test_computation_dtype_follows_conv2d(rng):
    """A float32 plan given float64 input computes in float64, as conv2d does; its float32
    preparations are not reused for it."""
    case = Case((2, 12, 10, 10), (24, 12, 1, 1))
    x, w, b = case.arrays(rng, kind="normal")
    conv = _plan(case, w, b, algorithm="gemm")
    y32 = conv(x)
    y64 = conv(x.astype(np.float64))
    assert y64.dtype == np.float64 and y32.dtype == np.float32
    assert np.array_equal(y64, numbaconv.conv2d(x.astype(np.float64), w, b, algorithm="gemm"))
    assert np.array_equal(conv(x.astype(np.float16)), numbaconv.conv2d(x.astype(np.float16), w, b))


def test_out_and_non_contiguous_input(rng):
    case = Case((2, 4, 10, 12), (6, 4, 3, 3), padding=1)
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b)
    want = reference.conv2d(x, w, b, padding=1)
    out = np.full(want.shape, np.nan, np.float32)
    assert conv(x, out=out) is out and np.array_equal(out, want)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert np.array_equal(conv(xt), want)
    assert np.array_equal(conv(x.tolist()), want.astype(np.float64))
    with pytest.raises(ValueError, match="out must have the output shape"):
        conv(x, out=np.empty((2, 6, 10, 11), np.float32))
    with pytest.raises(TypeError, match="out must have the computation dtype"):
        conv(x, out=np.empty(want.shape, np.float64))


def test_padding_modes(rng):
    case = Case((1, 3, 9, 8), (4, 3, 3, 3), padding=2)
    x, w, b = case.arrays(rng)
    for mode in ("reflect", "replicate", "circular"):
        conv = _plan(case, w, b, padding_mode=mode)
        want = numbaconv.conv2d(x, w, b, padding=2, padding_mode=mode)
        assert np.array_equal(conv(x), want) and np.array_equal(conv(x), want)


def test_one_and_two_threads_give_the_same_bits(rng):
    case = Case((3, 32, 20, 20), (48, 32, 3, 3), padding=1)
    x, w, b = case.arrays(rng, kind="normal")
    for name in ("gemm", "winograd", "direct"):
        conv = _plan(case, w, b, algorithm=name)
        two = conv(x)
        with numbaconv.num_threads(1):
            one = conv(x)
        assert np.array_equal(one, two)


def test_empty_batch_and_no_output_channels():
    conv = numbaconv.plan_conv2d(np.ones((4, 3, 3, 3), np.float32), padding=1)
    assert conv(np.zeros((0, 3, 5, 5), np.float32)).shape == (0, 4, 5, 5)
    for make in (lambda w: numbaconv.plan_conv2d(w),
                 lambda w: numbaconv.conv2d(np.zeros((1, 3, 5, 5), np.float32), w)):
        with pytest.raises(ValueError, match="out_channels must be >= 1"):
            make(np.ones((0, 3, 3, 3), np.float32))


def test_prepared_weights_widen_winograd(rng):
    """With weights transformed in advance, Winograd also takes 14x14 maps and DeepLab's 17-wide
    dilated phases from 16 tiles (plain calls: 100); not calls with fewer, never with exact."""
    def choice(x_shape, w_shape, prepared, exact=False, **kw):
        return dispatch.auto_choice(Case(x_shape, w_shape, **kw).problem, exact, prepared)

    c256 = ((1, 256, 14, 14), (256, 256, 3, 3))
    deeplab = ((1, 256, 33, 33), (256, 256, 3, 3))
    c512 = ((1, 512, 7, 7), (512, 512, 3, 3))
    assert choice(*c256, True, padding=1) == "winograd"
    assert choice(*c256, False, padding=1) != "winograd"
    assert choice(*c256, True, True, padding=1) != "winograd"
    assert choice(*deeplab, True, padding=2, dilation=2) == "winograd"
    assert choice(*deeplab, True, True, padding=2, dilation=2) != "winograd"
    assert choice(*c512, True, padding=1) != "winograd"                   # 6 tiles
    assert choice((8, 512, 7, 7), c512[1], True, padding=1) == "winograd"  # 48 tiles
    assert choice((1, 256, 7, 7), (256, 256, 3, 3), True, padding=0) != "winograd"  # 5x5: 42%
    assert choice((2, 16, 56, 56), (16, 16, 3, 3), True, padding=1) != "winograd"  # narrow
    conv = numbaconv.plan_conv2d(np.zeros(c256[1], np.float32), padding=1)
    assert conv.algorithm_for(c256[0]) == "winograd"
    assert numbaconv.plan_conv2d(np.zeros(c256[1], np.float32), padding=1,
                                 exact=True).algorithm_for(c256[0]) != "winograd"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weight=np.ones((4, 3, 3), np.float32)), ValueError, "weight must have 4 dimensions"),
    (dict(bias=np.ones(5, np.float32)), ValueError, r"bias must have shape \(4,\)"),
    (dict(groups=3), ValueError, "groups"),
    (dict(groups=1.0), TypeError, "groups must be an int"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=2, padding="same"), ValueError, "same"),
    (dict(algorithm="nope"), ValueError, "algorithm must be 'auto', 'tune' or one of"),
    (dict(algorithm=None), ValueError, "algorithm must be 'auto', 'tune' or one of"),
    (dict(algorithm="winograd", exact=True), UnsupportedAlgorithm, "not exact"),
    (dict(algorithm="winograd", stride=2), UnsupportedAlgorithm, "stride 1"),
    (dict(algorithm="depthwise"), UnsupportedAlgorithm, "depthwise"),
    (dict(exact=1), TypeError, "exact must be a bool"),
    (dict(padding_mode="mirror"), ValueError, "padding_mode"),
    (dict(weight=np.ones((4, 3, 3, 3), np.complex64)), TypeError, "complex"),
])
def test_bad_arguments_raise_when_planning(kwargs, error, match):
    args = dict(weight=np.ones((4, 3, 3, 3), np.float32), bias=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        numbaconv.plan_conv2d(**args)


def test_bad_inputs_raise_when_called():
    conv = numbaconv.plan_conv2d(np.ones((4, 3, 3, 3), np.float32), padding=1,
                                 algorithm="winograd")
    with pytest.raises(ValueError, match="channels"):
        conv(np.ones((1, 5, 8, 8), np.float32))
    with pytest.raises(ValueError, match="input must have shape"):
        conv(np.ones((8, 8), np.float32))
    unpadded = numbaconv.plan_conv2d(np.ones((4, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="kernel"):
        unpadded(np.ones((1, 3, 2, 8), np.float32))      # smaller than the kernel


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_layer_plans_give_the_layer_result(mode, rng):
    layer = numbaconv.Conv2d(6, 8, 3, padding=1, groups=2, padding_mode=mode, rng=1)
    x = rng.standard_normal((2, 6, 9, 10)).astype(np.float32)
    conv = layer.plan()
    want = layer(x)
    assert np.array_equal(conv(x), want)
    layer.weight[...] = 0                       # a later change reaches the layer, not the plan
    assert np.array_equal(conv(x), want) and not np.array_equal(layer(x), want)
    assert np.array_equal(layer.plan()(x), layer(x))


def test_plans_pickle_with_their_weights_only(rng):
    case = Case((2, 32, 16, 16), (32, 32, 3, 3), padding=2, dilation=2)
    x, w, b = case.arrays(rng)
    conv = _plan(case, w, b, padding_mode="circular", algorithm="winograd")
    want = conv(x)
    data = pickle.dumps(conv)
    assert len(data) < 2 * w.nbytes  # no transformed weights (36/9 times w) or remembered runs
    copy = pickle.loads(data)
    assert np.array_equal(copy(x), want) and np.array_equal(copy(x), want)
    assert repr(copy) == repr(conv) and not copy.weight.flags.writeable


@pytest.mark.parametrize("exact", [False, True])
def test_tune_times_the_candidates_once_per_input_form(exact, monkeypatch, rng):
    case = Case((1, 16, 12, 12), (16, 16, 3, 3), padding=1)
    x, w, b = case.arrays(rng)
    timed, real = [], tuning.fastest

    def spy(run, names):
        timed.append(list(names))
        return real(run, names)

    monkeypatch.setattr(tuning, "fastest", spy)
    table = tuning.choices()
    conv = _plan(case, w, b, algorithm="tune", exact=exact)
    assert conv.algorithm_for(x.shape) == "tune"
    first = conv(x)
    name = conv.algorithm_for(x.shape)
    assert name in timed[0] and "reference" not in timed[0]
    assert ("winograd" in timed[0]) is not exact and {"gemm", "direct", "dot"} <= set(timed[0])
    assert np.array_equal(first, numbaconv.conv2d(x, w, b, padding=1, algorithm=name))
    assert np.array_equal(conv(x), first) and np.array_equal(conv(x[0]), first[0])
    assert len(timed) == 1 and tuning.choices() == table  # kept in the plan, not the table
    both = np.concatenate([x, x])                           # a new input form: timed again
    assert np.array_equal(conv(both), numbaconv.conv2d(both, w, b, padding=1,
                                                       algorithm=conv.algorithm_for(both.shape)))
    assert len(timed) == 2


@pytest.mark.parametrize("name", ["auto", "gemm", "winograd"])
def test_one_plan_shared_by_python_threads(name):
    """A plan called from several Python threads at once (dask's threaded scheduler does that):
    every result as from one thread, prepared forms made while others run included."""
    rng = np.random.default_rng(7)
    case = Case((2, 24, 20, 18), (40, 24, 3, 3), padding=1)
    x1, w, b = case.arrays(rng, kind="normal")
    x2 = rng.standard_normal((1, 24, 9, 31)).astype(np.float32)
    conv, fresh = _plan(case, w, b, algorithm=name), _plan(case, w, b, algorithm=name)
    expected = [fresh(x1), fresh(x2)]
    results = {}

    def worker(t):
        for rep in range(3):
            for i, x in enumerate((x1, x2)):
                results[t, rep, i] = conv(x)

    errors = run_in_threads(worker, 4)
    assert not errors, errors
    assert len(results) == 4 * 3 * 2
    for (t, rep, i), r in results.items():
        assert np.array_equal(r, expected[i]), f"thread {t} rep {rep} input {i}"
