"""Every algorithm of the dispatch table against the reference; new algorithms need no new code.

Exact tier: integer-valued data in [-4, 4], small enough that every partial sum is exactly
representable, so any summation order gives the reference's result to the bit (np.array_equal).
Tolerance tier: standard normal data, |result - reference| bounded by forward error analysis.
"""

import zlib

import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, reference
from numbaconv.dispatch import UnsupportedAlgorithm

from cases import Case, all_cases
from error_bounds import INEXACT_BOUNDS, summation_bound
from threads import run_in_threads

CASES = all_cases()
KERNELS = [a for a in dispatch.ALGORITHMS if a.name != "reference"]


def _algo_id(a):
    return f"{a.name}-{'transposed' if a.transposed else 'forward'}"


def _call(algo, case, x, w, b, **kw):
    fn = numbaconv.conv_transpose2d if case.transposed else numbaconv.conv2d
    return fn(x, w, b, **case.kwargs, algorithm=algo, **kw)


def _reference(case, x, w, b):
    fn = reference.conv_transpose2d if case.transposed else reference.conv2d
    return fn(x, w, b, **case.kwargs)


def _pairs():
    for a in KERNELS:
        for i, case in enumerate(CASES):
            if case.transposed == a.transposed:
                yield pytest.param(a, case, id=f"{_algo_id(a)}-{i}-{case}")


@pytest.mark.parametrize("algo,case", list(_pairs()))
def test_exact_tier(algo, case):
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    x, w, b = case.arrays(rng)
    reason = algo.why_not(case.problem)
    if reason is not None:
        with pytest.raises(UnsupportedAlgorithm, match="cannot compute"):
            _call(algo.name, case, x, w, b)
        return
    expected = _reference(case, x, w, b)
    out = np.full(expected.shape, np.nan, dtype=expected.dtype)  # exposes unwritten cells
    result = _call(algo.name, case, x, w, b, out=out)
    assert result is out
    if not algo.exact:
        # its own tier: within the algorithm's forward error bound, every cell written
        assert not np.isnan(out).any(), f"{algo.name} left cells unwritten on {case}"
        excess = np.abs(out.astype(np.float64) - expected) - INEXACT_BOUNDS[algo.name](case, x, w,
                                                                                       b)
        assert excess.max() <= 0, f"{algo.name} exceeds its error bound on {case}"
        return
    assert np.array_equal(out, expected), (
        f"{algo.name} differs from the reference on {case}: max abs difference "
        f"{np.nanmax(np.abs(out - expected))}, NaN cells {int(np.isnan(out).sum())}")


@pytest.mark.parametrize("algo", KERNELS, ids=_algo_id)
def test_algorithm_covers_part_of_the_grid(algo):
    """A `limits` that refuses everything would make the exact tier vacuous."""
    mine = [c for c in CASES if c.transposed == algo.transposed]
    supported = [c for c in mine if algo.why_not(c.problem) is None]
    assert len(supported) >= 0.1 * len(mine), f"{algo.name} supports {len(supported)} cases"


def _error_bound(algo, case, x, w, b):
    if algo.exact:
        return summation_bound(case, x, w, b)
    return INEXACT_BOUNDS[algo.name](case, x, w, b)


TOLERANCE_CASES = [c for c in CASES if np.prod(c.x_shape) > 50][:120]


@pytest.mark.parametrize("algo", KERNELS, ids=_algo_id)
def test_tolerance_tier(algo):
    rng = np.random.default_rng(7)
    checked = 0
    for case in TOLERANCE_CASES:
        if case.transposed != algo.transposed or algo.why_not(case.problem):
            continue
        x, w, b = case.arrays(rng, kind="normal")
        result = _call(algo.name, case, x, w, b)
        expected = _reference(case, x, w, b)
        excess = np.abs(result.astype(np.float64) - expected) - _error_bound(algo, case, x, w, b)
        assert excess.max() <= 0, f"{algo.name} exceeds the error bound on {case}"
        checked += 1
    assert checked > 0


def _big_cases(algo):
    mine = [c for c in CASES if c.transposed == algo.transposed and not algo.why_not(c.problem)]
    return sorted(mine, key=lambda c: c.problem.macs)[-6:]


@pytest.mark.parametrize("algo", KERNELS, ids=_algo_id)
def test_same_bits_for_one_and_two_threads(algo):
    rng = np.random.default_rng(3)
    for case in _big_cases(algo):
        x, w, b = case.arrays(rng, kind="normal")
        with numbaconv.num_threads(1):
            one = _call(algo.name, case, x, w, b)
        with numbaconv.num_threads(2):
            two = _call(algo.name, case, x, w, b)
            again = _call(algo.name, case, x, w, b)
        assert np.array_equal(one, two, equal_nan=True), f"{algo.name}: 1 vs 2 threads, {case}"
        assert np.array_equal(two, again, equal_nan=True), f"{algo.name}: run to run, {case}"


@pytest.mark.parametrize("algo", KERNELS, ids=_algo_id)
def test_concurrent_calls_from_python_threads(algo):
    rng = np.random.default_rng(5)
    cases = _big_cases(algo)[-2:]
    inputs = [case.arrays(rng, kind="normal") for case in cases]
    expected = [_call(algo.name, c, *arrs) for c, arrs in zip(cases, inputs)]
    results = {}

    def worker(t):
        for rep in range(3):
            for i, (c, arrs) in enumerate(zip(cases, inputs)):
                results[t, rep, i] = _call(algo.name, c, *arrs)

    errors = run_in_threads(worker, 4)
    assert not errors, errors
    assert len(results) == 4 * 3 * len(cases)
    for (t, rep, i), r in results.items():
        assert np.array_equal(r, expected[i]), f"thread {t} rep {rep} case {cases[i]}"


@pytest.mark.parametrize("algo", [a for a in dispatch.ALGORITHMS if a.size_invariant],
                         ids=_algo_id)
def test_size_invariant_algorithms_give_the_same_bits_on_tiles(algo):
    """What the flag promises: a tile computed with its halo (numbaconv.dask cuts them) equals the
    whole-image result bit for bit on random data, for several tilings."""
    da = pytest.importorskip("dask.array")
    import numbaconv.dask as ncd

    rng = np.random.default_rng(11)
    checked = 0
    for case in _big_cases(algo):
        x, w, b = case.arrays(rng, kind="normal")
        full = _call(algo.name, case, x, w, b)
        fn = ncd.conv_transpose2d if case.transposed else ncd.conv2d
        h, wd = case.x_shape[2:]
        for tile in [(max(1, h // 2), max(1, wd // 3)), (3, 5), (h, 2)]:
            lazy = fn(da.from_array(x, chunks=(1, case.x_shape[1]) + tile), w, b, **case.kwargs,
                      algorithm=algo.name)
            assert np.array_equal(lazy.compute(scheduler="sync"), full), (case, tile)
            checked += 1
    assert checked


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_1x1_prefetching_path_equals_the_reference(dtype, monkeypatch):
    """1x1 layers whose image planes fill a page run the GEMM reading B in place with
    prefetches (the plane size limit is lowered here to reach that path on small arrays)."""
    from numbaconv.kernels import gemm
    plain = []
    real = gemm._conv_driver
    monkeypatch.setattr(gemm, "_conv_driver", lambda *a: plain.append(int(a[5][19])) or real(*a))
    rng = np.random.default_rng(5)
    x = rng.integers(-4, 5, (2, 24, 9, 13)).astype(dtype)
    w = rng.integers(-4, 5, (40, 24, 1, 1)).astype(dtype)
    b = rng.integers(-4, 5, 40).astype(dtype)
    expected = reference.conv2d(x, w, b)
    assert np.array_equal(numbaconv.conv2d(x, w, b, algorithm="gemm"), expected)
    monkeypatch.setattr(gemm, "_AHEAD_PLANE_BYTES", 0)
    assert np.array_equal(numbaconv.conv2d(x, w, b, algorithm="gemm"), expected)
    assert plain == [1, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_1x1_panels_shifted_to_vector_boundaries_equal_the_reference(dtype, monkeypatch):
    """A 1x1 layer's input read in place at every offset from a vector boundary: a narrower
    first panel aligns the others (the shift each offset gets is checked), where the image
    planes are whole vectors; the reference's bits, with the prefetching path too, two images,
    two groups, 1 and 2 threads."""
    from numbaconv.kernels import gemm
    lanes = 64 // np.dtype(dtype).itemsize
    shifts = []
    real = gemm._conv_driver
    monkeypatch.setattr(gemm, "_conv_driver", lambda *a: shifts.append(int(a[5][31])) or real(*a))
    rng = np.random.default_rng(6)
    for hw, groups in [((4, 2 * lanes), 1), ((3, lanes + 5), 2)]:
        x = rng.integers(-4, 5, (2, 12) + hw).astype(dtype)
        w = rng.integers(-4, 5, (20, 12 // groups, 1, 1)).astype(dtype)
        b = rng.integers(-4, 5, 20).astype(dtype)
        expected = reference.conv2d(x, w, b, groups=groups)
        raw = np.empty(x.size + 2 * lanes, dtype)
        first = (-raw.ctypes.data % 64) // raw.itemsize
        for off in range(lanes):
            xs = raw[first + off:first + off + x.size].reshape(x.shape)
            xs[...] = x
            for ahead_from, threads in [(gemm._AHEAD_PLANE_BYTES, 1), (0, 2)]:
                monkeypatch.setattr(gemm, "_AHEAD_PLANE_BYTES", ahead_from)
                shifts.clear()
                with numbaconv.num_threads(threads):
                    got = numbaconv.conv2d(xs, w, b, groups=groups, algorithm="gemm")
                assert np.array_equal(got, expected), (hw, off)
                whole = hw[0] * hw[1] % lanes == 0
                assert shifts == [(lanes - off) % lanes if whole else 0]


def _assert_call_and_plan_give(expected, x, w, b, algorithm, **kw):
    """``conv2d`` and a plan of it, forced to ``algorithm``, write ``expected``'s bits into a
    NaN-filled ``out``, on 1 and 2 threads."""
    plan = numbaconv.plan_conv2d(w, b, **kw, algorithm=algorithm)
    for threads in (1, 2):
        with numbaconv.num_threads(threads):
            out = np.full_like(expected, np.nan)
            numbaconv.conv2d(x, w, b, **kw, algorithm=algorithm, out=out)
            assert np.array_equal(out, expected), (x.shape, w.shape, kw, threads)
            out[...] = np.nan
            assert np.array_equal(plan(x, out=out), expected), (x.shape, w.shape, kw, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_1x1_passes_over_micro_tiles_equal_the_reference(dtype):
    """A 1x1 tile runs its micro-tiles in passes over its panels: four at a time for short K,
    as many as hold 512 KiB of weights for long K (the pass sizes are checked); the
    reference's bits for calls and plans, uneven last passes, groups, 1 and 2 threads."""
    from numbaconv.kernels import gemm
    lanes = 64 // np.dtype(dtype).itemsize
    nr, isz = gemm.NV * lanes, np.dtype(dtype).itemsize
    assert gemm._plain_mt_step(12, nr, isz) == 4
    long_step = gemm._plain_mt_step(520, nr, isz)
    assert long_step == (512 << 10) // (gemm.MR * 520 * isz) and 256 // gemm.MR > long_step
    rng = np.random.default_rng(16)
    for cin, cout, groups in [(12, 76, 1), (12, 76, 2), (520, 256, 1)]:
        x = rng.integers(-4, 5, (2, cin, 3, 2 * lanes + 3)).astype(dtype)
        w = rng.integers(-4, 5, (cout, cin // groups, 1, 1)).astype(dtype)
        b = rng.integers(-4, 5, cout).astype(dtype)
        _assert_call_and_plan_give(reference.conv2d(x, w, b, groups=groups), x, w, b, "gemm",
                                   groups=groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_narrow_last_panels_equal_the_reference(dtype):
    """An image's last panel with at most one vector of valid pixels runs a micro-kernel one
    vector wide: read in place from one output row (14x14 and 5x7 maps), packed across rows
    (12x3), the 1x1 input itself (35 pixels), strided; the reference's bits for calls and
    plans, 1 and 2 threads, two images and two groups."""
    lanes = 64 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(17)
    for hw, k, kw in [((14, 14), 3, dict(padding=1)), ((5, 7), 3, dict(padding=1)),
                      ((12, 3), 3, dict(padding=1)), ((5, 7), 1, {}),
                      ((27, 27), 3, dict(padding=1, stride=2, groups=2)),
                      ((2 * lanes + 1, 4), 3, dict(padding=(1, 0), groups=2))]:
        groups = kw.get("groups", 1)
        x = rng.integers(-4, 5, (2, 6) + hw).astype(dtype)
        w = rng.integers(-4, 5, (20, 6 // groups, k, k)).astype(dtype)
        b = rng.integers(-4, 5, 20).astype(dtype)
        _assert_call_and_plan_give(reference.conv2d(x, w, b, **kw), x, w, b, "gemm", **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_large_weights_meet_all_panels_per_k_block(dtype):
    """Tiles whose weights outgrow L2 run each K block against all their panels before the
    next (the planner's tiles for these shapes are checked to be such tiles, with several
    panels); the reference's bits for calls and plans, 1 and 2 threads, stride 1 and 2."""
    from numbaconv.kernels import gemm
    isz = np.dtype(dtype).itemsize
    nr = gemm.NV * 64 // isz
    rng = np.random.default_rng(18)
    active = []
    for x_shape, w_shape, kw in [((2, 256, 8, 9), (256, 256, 3, 3), dict(padding=1)),
                                 ((1, 384, 15, 13), (264, 384, 3, 3), dict(padding=1, stride=2))]:
        n, cin, h, wd = x_shape
        cout, _, kh, kwd = w_shape
        s, p = kw.get("stride", 1), kw["padding"]
        oh, ow = (h + 2 * p - kh) // s + 1, (wd + 2 * p - kwd) // s + 1
        plan = gemm._plan(n, cin, h, wd, cout, oh, ow, kh, kwd, 1, s, s, p, p, 1, 1, isz)
        n_mt, n_pan = -(-cout // gemm.MR), -(-(oh * ow) // nr)
        most_mt = -(-n_mt // plan.n_mb)
        active.append(most_mt * gemm.MR * cin * kh * kwd * isz > gemm._A_STREAM_BYTES
                      and -(-n_pan // plan.n_pb) > 1)
        x = rng.integers(-4, 5, x_shape).astype(dtype)
        w = rng.integers(-4, 5, w_shape).astype(dtype)
        b = rng.integers(-4, 5, cout).astype(dtype)
        _assert_call_and_plan_give(reference.conv2d(x, w, b, **kw), x, w, b, "gemm", **kw)
    assert active[0] and (active[1] or isz == 8)   # float64: one panel per tile there


def test_transposed_direct_geometry_kept_per_layer_is_never_another_layers():
    """The transposed direct kernel keeps each layer's tables between calls: a sequence of
    layers that differ from the first in one parameter each (padding, output padding, stride,
    dilation, groups, input width, batch, dtype, thread count), each called twice and
    interleaved, gives the reference's bits on integer data every time, and repeated calls
    reuse the kept tables."""
    from numbaconv.kernels import transposed
    base = dict(x_shape=(1, 16, 9, 10), w_shape=(16, 8, 3, 3), stride=2, padding=1,
                transposed=True)
    changes = [{}, dict(padding=0), dict(output_padding=1), dict(stride=3),
               dict(dilation=2), dict(groups=2, w_shape=(16, 4, 3, 3)),
               dict(x_shape=(1, 16, 9, 11)), dict(x_shape=(2, 16, 9, 10)),
               dict(dtype="float64")]
    rng = np.random.default_rng(21)
    transposed._direct_geometry.cache_clear()
    work = []
    for change in changes:
        case = Case(**{**base, **change})
        x, w, b = case.arrays(rng)
        work.append((case, x, w, b, _reference(case, x, w, b)))
    for _ in range(2):
        for threads in (1, 2):
            with numbaconv.num_threads(threads):
                for case, x, w, b, expected in work:
                    assert np.array_equal(_call("direct", case, x, w, b), expected), case
    info = transposed._direct_geometry.cache_info()
    assert info.misses == 2 * len(changes) and info.hits == 2 * len(changes)


def test_transposed_direct_both_loop_orders_equal_the_reference(monkeypatch, request):
    """The strided transposed direct kernel runs its channel blocks innermost when a run's input
    rows outgrow L2 (reached here on a real size, and forced on every corner case): integer
    data, bits of the reference, for one and two threads."""
    from numbaconv.kernels import transposed
    algo = next(a for a in KERNELS if a.name == "direct" and a.transposed)
    orders = []
    real = transposed._rows_outer
    monkeypatch.setattr(transposed, "_rows_outer", lambda *a: orders.append(real(*a)) or
                        orders[-1])
    # the choice is made with the call's other geometry, which is kept per layer shape
    transposed._direct_geometry.cache_clear()
    request.addfinalizer(transposed._direct_geometry.cache_clear)
    rng = np.random.default_rng(11)
    # 2 images x 48 rows x 96 channels of 64-wide padded rows: 1.2 MB per run, 5 channel blocks
    big = Case((2, 96, 48, 48), (96, 40, 2, 2), stride=2, transposed=True)
    corner = [Case((1, 64, 9, 11), (64, 24, 3, 3), stride=2, padding=1, groups=2,
                   transposed=True)] + [c for c in CASES if c.transposed]
    checked = 0
    for forced, cases in [(False, [big]), (True, corner)]:
        if forced:
            monkeypatch.setattr(transposed, "_rows_outer",
                                lambda ncb, *a: orders.append(ncb > 1) or orders[-1])
            transposed._direct_geometry.cache_clear()
        for case in cases:
            if algo.why_not(case.problem) or max(case.problem.stride) == 1:
                continue
            x, w, b = case.arrays(rng)
            expected = _reference(case, x, w, b)
            orders.clear()
            for threads in (1, 2):
                with numbaconv.num_threads(threads):
                    assert np.array_equal(_call("direct", case, x, w, b), expected), case
            checked += orders == [True, True]
    assert checked >= 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_streaming_stores_change_no_bits(dtype, monkeypatch):
    """The direct kernel stores large results non-temporally, on flat pixel rows padded to whole
    vectors (forced here for small results and any padding): the reference's bits for 1 and 2
    threads, with 8 and 4 channels per tile, groups, column stride 2, dilation, bands that end
    inside a vector row; widths that are not whole vectors and results that do not start on a
    vector boundary store as usual, with the same bits. Unforced, rows that the padding would
    lengthen by more than 5% store as usual too."""
    from numbaconv.kernels import direct
    lanes = 64 // np.dtype(dtype).itemsize
    pad = direct._STREAM_PAD
    monkeypatch.setattr(direct, "_STREAM_BYTES", 0)
    big = np.empty(16 * 512 + 64, dtype)
    row = big[(-big.ctypes.data % 64) // big.itemsize:][:16 * 512].reshape(1, 16, 1, 512)
    assert direct._streams(row, False, lanes, 516)            # 5x5 on 512 wide: 528, 2.3% more
    # conv1's 7x7 s2 (float32: 115 -> 128, 11% more; float64: 59 -> 64)
    assert not direct._streams(row[..., :7 * lanes], False, lanes, 7 * lanes + 3)
    assert not direct._streams(row, True, lanes, 516)          # the row-reuse kernel: never
    monkeypatch.setattr(direct, "_STREAM_PAD", 4.0)
    streamed = []
    real = direct._streams
    monkeypatch.setattr(direct, "_streams", lambda *a: streamed.append(real(*a)) or real(*a))
    rng = np.random.default_rng(14)
    for x_shape, w_shape, kw, streams in [
            ((2, 6, 13, 2 * lanes), (16, 6, 5, 5), dict(padding=2), True),
            ((1, 8, 9, 2 * lanes), (8, 4, 3, 3), dict(padding=1, groups=2), True),
            ((1, 3, 11, 4 * lanes + 2), (8, 3, 3, 3), dict(padding=(1, 0), stride=(1, 2)), True),
            ((1, 4, 10, lanes), (6, 4, 3, 3), dict(padding=2, dilation=2), True),
            ((1, 4, 7, lanes + 3), (8, 4, 3, 3), dict(padding=1), False)]:
        x = rng.integers(-4, 5, x_shape).astype(dtype)
        w = rng.integers(-4, 5, w_shape).astype(dtype)
        b = rng.integers(-4, 5, w_shape[0]).astype(dtype)
        expected = reference.conv2d(x, w, b, **kw)
        raw = np.empty(expected.size + 64, dtype)
        first = (-raw.ctypes.data % 64) // raw.itemsize
        for skip, threads in [(0, 1), (0, 2), (1, 2)]:     # aligned twice, then misaligned
            out = raw[first + skip:first + skip + expected.size].reshape(expected.shape)
            out[...] = np.nan
            with numbaconv.num_threads(threads):
                streamed.clear()
                got = numbaconv.conv2d(x, w, b, **kw, algorithm="direct", out=out)
            assert got is out and np.array_equal(out, expected)
            assert streamed == [streams and skip == 0]
    assert pad == 1.05


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_partial_sums_of_other_threads_start_on_a_vector(dtype):
    """The partial-sum buffer a work item on an unexpected thread allocates for itself (as
    the band buffer) starts on a vector boundary, as the micro-kernel's aligned accesses need."""
    from numbaconv.kernels import direct
    like = np.zeros(1, dtype)
    for n in (1, 5, 100, 6144, 100001):
        buf = direct._aligned_empty(n, like, 64 // like.itemsize)
        assert buf.size == n and buf.dtype == dtype and buf.ctypes.data % 64 == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_tap_blocks_change_no_bits(dtype, monkeypatch):
    """The direct kernel runs a tile's taps in blocks of input channels, for all its channel
    blocks at a time, with partial sums kept between blocks (forced here for small layers, a
    block of one channel or of a few, stride 1 too): the reference's bits for 1 and 2
    threads, through calls and plans (blocked weights), with 8, 4 and 1 channels per tile,
    groups, stride 2 and 3, dilation and uneven last blocks. Unforced, strided layers whose
    channels' input segments outgrow L1 get blocks while their weights stay small."""
    from numbaconv.kernels import direct
    real = direct._tap_block
    lanes = 64 // np.dtype(dtype).itemsize
    tq = direct._V8 * lanes
    blocks = []
    s2_c128 = real(128, 3, 3, 2, 2, 1, 1, 29, tq, 16, 8, lanes, 4)
    assert 0 < s2_c128 < 128 * 9 and s2_c128 % 9 == 0
    assert real(128, 3, 3, 1, 1, 1, 1, 30, tq, 16, 8, lanes, 4) == 0       # stride 1
    assert real(512, 3, 3, 2, 2, 1, 1, 8, tq, 32, 8, lanes, 4) == 0        # 4.7 MB of weights
    assert real(4, 3, 3, 2, 2, 1, 1, 29, tq, 16, 8, lanes, 4) == 0         # fits L1 as it is
    monkeypatch.setattr(direct, "_TAP_BLOCK_PHASES", 1)
    monkeypatch.setattr(direct, "_tap_block", lambda *a: blocks.append(real(*a)) or blocks[-1])
    rng = np.random.default_rng(15)
    for budget in (1, 700):
        monkeypatch.setattr(direct, "_TAP_BLOCK_BYTES", budget)
        blocked = 0
        for x_shape, w_shape, kw in [
                ((2, 7, 12, 2 * lanes + 3), (24, 7, 3, 3), dict(padding=1, stride=2)),
                ((1, 5, 9, lanes + 5), (16, 5, 3, 3), dict(padding=1)),
                ((1, 6, 13, 17), (12, 3, 3, 3), dict(padding=2, dilation=2, groups=2)),
                ((1, 4, 15, 2 * lanes), (10, 4, 5, 5), dict(padding=2, stride=(2, 3))),
                ((1, 6, 11, 19), (6, 2, 3, 3), dict(padding=1, stride=2, groups=3))]:
            x = rng.integers(-4, 5, x_shape).astype(dtype)
            w = rng.integers(-4, 5, w_shape).astype(dtype)
            b = rng.integers(-4, 5, w_shape[0]).astype(dtype)
            expected = reference.conv2d(x, w, b, **kw)
            plan = numbaconv.plan_conv2d(w, b, **kw, algorithm="direct")
            for threads in (1, 2):
                with numbaconv.num_threads(threads):
                    blocks.clear()
                    got = numbaconv.conv2d(x, w, b, **kw, algorithm="direct")
                    assert np.array_equal(got, expected)
                    assert np.array_equal(plan(x), expected)
                taps = w_shape[1] * w_shape[2] * w_shape[3]
                assert blocks and all(k == 0 or (k < taps and k % (w_shape[2] * w_shape[3]) == 0)
                                      for k in blocks), (blocks, w_shape)
                blocked += any(blocks)
        assert blocked >= 8, blocked     # a work item with one channel block runs unblocked


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_direct_output_prefetch_changes_no_bits(dtype, monkeypatch):
    """The transposed direct kernel prefetches its output rows for writing when the result is
    large (forced here for every size): the reference's bits, for 1 and 2 threads, with two
    groups, a partial channel block and stride 3."""
    from numbaconv.kernels import transposed
    monkeypatch.setattr(transposed, "_PREFETCH_OUT_BYTES", 0)
    rng = np.random.default_rng(13)
    for cg_out, groups, k, stride in [(5, 2, 3, 2), (24, 1, 2, 2), (16, 1, 4, 3)]:
        kw = dict(stride=stride, padding=1 if k > 2 else 0, groups=groups)
        w = rng.integers(-4, 5, (6 * groups, cg_out, k, k)).astype(dtype)
        b = rng.integers(-4, 5, cg_out * groups).astype(dtype)
        x = rng.integers(-4, 5, (2, 6 * groups, 19, 21)).astype(dtype)
        expected = reference.conv_transpose2d(x, w, b, **kw)
        for threads in (1, 2):
            with numbaconv.num_threads(threads):
                got = numbaconv.conv_transpose2d(x, w, b, **kw, algorithm="direct")
                assert np.array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_gemm_channel_blocks_and_packed_panels_equal_the_reference(dtype,
                                                                            monkeypatch):
    """The transposed GEMM runs its input channels in blocks whose partial sums wait in its
    column buffer when the weights outgrow L2 (forced here on small arrays), and reads panels
    packed once in plans: masked last pixel and lane blocks (9 pixels, 5*3*2 = 30 and 90
    columns; 2 pixels and 6 columns, less than one block), a last channel block of 4, two
    groups; the reference's bits for 1 and 2 threads, with real data the same bits in every
    mode."""
    from numbaconv.kernels import transposed
    blocks = []
    real = transposed._gemm_kernel
    monkeypatch.setattr(transposed, "_gemm_kernel",
                        lambda *a: (lambda *b: blocks.append(b[-2]) or real(*a)(*b)))
    rng = np.random.default_rng(12)
    checked = 0
    for cg_out, groups, hw in [(5, 2, (3, 3)), (15, 1, (3, 3)), (1, 1, (1, 2))]:
        kw = dict(stride=2, padding=1, groups=groups)
        w = rng.integers(-4, 5, (20 * groups, cg_out, 3, 2)).astype(dtype)
        b = rng.integers(-4, 5, cg_out * groups).astype(dtype)
        x = rng.integers(-4, 5, (2, 20 * groups) + hw).astype(dtype)
        expected = reference.conv_transpose2d(x, w, b, **kw)
        wr, xr = rng.standard_normal(w.shape).astype(dtype), rng.standard_normal(x.shape)
        got = {}
        for limit in (transposed._GEMM_BLOCK_BYTES, 1):
            monkeypatch.setattr(transposed, "_GEMM_BLOCK_BYTES", limit)
            plan = numbaconv.plan_conv_transpose2d(w, b, **kw, algorithm="gemm")
            for threads in (1, 2):
                with numbaconv.num_threads(threads):
                    blocks.clear()
                    assert np.array_equal(numbaconv.conv_transpose2d(
                        x, w, b, **kw, algorithm="gemm"), expected)
                    assert np.array_equal(plan(x), expected)
                    assert blocks == ([20, 20] if limit > 1 else [8, 20])
                    got[limit, threads] = (
                        numbaconv.conv_transpose2d(xr.astype(dtype), wr, b, **kw,
                                                   algorithm="gemm"),
                        numbaconv.plan_conv_transpose2d(wr, b, **kw, algorithm="gemm")(
                            xr.astype(dtype)))
        first = got[transposed._GEMM_BLOCK_BYTES, 1][0]
        assert all(np.array_equal(a, first) for pair in got.values() for a in pair)
        checked += 1
    assert checked == 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_gemm_panels_shifted_to_vector_boundaries_equal_the_reference(dtype,
                                                                                monkeypatch):
    """Weights read in place at every offset from a vector boundary: a narrower first column
    panel aligns the others (the shift each offset gets is checked) where the weight rows are
    whole vectors; the reference's bits, with channel blocks, two images, 1 and 2 threads."""
    from numbaconv.kernels import transposed
    lanes = 64 // np.dtype(dtype).itemsize
    shifts = []
    real = transposed._gemm_kernel
    monkeypatch.setattr(transposed, "_gemm_kernel",
                        lambda *a: (lambda *b: shifts.append(b[-1]) or real(*a)(*b)))
    monkeypatch.setattr(transposed, "_GEMM_BLOCK_BYTES", 1)
    rng = np.random.default_rng(15)
    for cg_out, k in [(2 * lanes // 4, 2), (5, 2)]:         # J = 2 lanes, then 20 columns
        kw = dict(stride=2, padding=0)
        w = rng.integers(-4, 5, (20, cg_out, k, k)).astype(dtype)
        b = rng.integers(-4, 5, cg_out).astype(dtype)
        x = rng.integers(-4, 5, (2, 20, 3, 5)).astype(dtype)
        expected = reference.conv_transpose2d(x, w, b, **kw)
        raw = np.empty(w.size + 2 * lanes, dtype)
        first = (-raw.ctypes.data % 64) // raw.itemsize
        for off in range(lanes):
            ws = raw[first + off:first + off + w.size].reshape(w.shape)
            ws[...] = w
            for threads in (1, 2):
                shifts.clear()
                with numbaconv.num_threads(threads):
                    got = numbaconv.conv_transpose2d(x, ws, b, **kw, algorithm="gemm")
                assert np.array_equal(got, expected), (cg_out, off)
                whole = cg_out * k * k % lanes == 0
                assert shifts == [(lanes - off) % lanes if whole else 0]


@pytest.mark.parametrize("m, n, k", [(128, 784, 1152), (1024, 196, 512), (32, 784, 192),
                                     (13, 70, 9), (256, 33, 600)])
def test_gemm_blocks_share_the_work_evenly_and_keep_the_sum(m, n, k):
    """The plain GEMM (channels-last 1x1 layers, im2col, transposed channels-last) on integer
    data (exact in any order), and its tiles: within the cache bounds, at least eight when the
    matrix has that many micro-tiles, and, for products of a million multiply-adds or more, the
    two halves prange gives two threads within 20% of each other (cut by cache size alone, 128 x
    784 x 1152 went 4 tiles against 3)."""
    from numbaconv.kernels import gemm
    rng = np.random.default_rng(m + n + k)
    a, b, c0 = (rng.integers(-4, 5, s).astype(np.float32) for s in ((m, k), (k, n), (m, n)))
    c = c0.copy()
    gemm.gemm(a, b, c)
    assert np.array_equal(c, c0 + a.astype(np.float64) @ b.astype(np.float64))

    mc, nc, kc = gemm._gemm_blocks(m, n, k, 4)
    nr = gemm.NV * gemm._VBYTES // 4
    assert mc % gemm.MR == 0 and nc % nr == 0 and kc <= k
    assert mc * kc * 4 <= max(gemm._A_BLOCK_BYTES, gemm.MR * kc * 4)
    assert nc * kc * 4 <= max(gemm._B_BLOCK_BYTES, nr * kc * 4)
    padded = lambda size, unit: -(-size // unit) * unit
    work = [padded(min(mc, m - i), gemm.MR) * padded(min(nc, n - j), nr)
            for i in range(0, m, mc) for j in range(0, n, nc)]
    assert len(work) >= min(8, -(-m // gemm.MR) * -(-n // nr))
    if m * n * k >= 1 << 20:  # below that a tile's fixed cost outweighs its arithmetic
        half = -(-len(work) // 2)
        first, second = sum(work[:half]), sum(work[half:])
        assert max(first, second) <= 1.2 * min(first, second)
