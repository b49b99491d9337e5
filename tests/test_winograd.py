"""Winograd F(4x4, 3x3): its error bound on real layers, the exact= switch, and its edges.

The table-driven tests (test_algorithms.py) already hold it to its bound on every 3x3 stride-1
case of the grid, NaN-prefilled outputs, 1 vs 2 threads and concurrent calls.
"""

from dataclasses import replace

import numba
import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, reference
from numbaconv.dispatch import UnsupportedAlgorithm
from numbaconv.kernels import winograd
from numbaconv.kernels.scratch import buffer

from cases import Case
from error_bounds import summation_bound, winograd_bound

# ResNet / VGG / U-Net 3x3 layers (batch 1, a smaller spatial size where the full one is slow
# for the float64 reference).
LAYERS = [
    Case((1, 64, 56, 56), (64, 64, 3, 3), padding=1),
    Case((1, 128, 28, 28), (128, 128, 3, 3), padding=1),
    Case((2, 256, 14, 14), (256, 256, 3, 3), padding=1, bias=False),
    Case((1, 32, 64, 64), (16, 32, 3, 3), padding="valid"),
    Case((1, 96, 30, 30), (48, 96, 3, 3), padding=1, dtype="float64"),
    Case((1, 64, 33, 33), (64, 64, 3, 3), padding=2, dilation=2),            # DeepLab-style
    Case((2, 16, 19, 23), (24, 16, 3, 3), padding=((3, 1), (0, 2)), dilation=(3, 2)),
]


@pytest.mark.parametrize("case", LAYERS, ids=str)
def test_real_layers_within_the_bound(case, rng):
    x, w, b = case.arrays(rng, kind="normal")
    saved = x.copy(), w.copy()
    got = numbaconv.conv2d(x, w, b, **case.kwargs, algorithm="winograd")
    want = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                            None if b is None else b.astype(np.float64), **case.kwargs)
    error = np.abs(got - want)
    assert (error <= winograd_bound(case, x, w, b)).all()
    # the bound is not vacuous: the error is of the order of an exact kernel's rounding
    assert error.max() <= 64 * summation_bound(case, x, w, b).max()
    assert np.array_equal(x, saved[0]) and np.array_equal(w, saved[1])


def test_chunking_does_not_change_the_bits(monkeypatch, rng):
    """Chunks of tile rows are a matter of cache use only: every tile's sums are the same."""
    case = Case((2, 8, 30, 22), (12, 8, 3, 3), padding=1)
    x, w, b = case.arrays(rng, kind="normal")
    whole = numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd")
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 1)   # one tile row per chunk
    assert winograd.tile_rows_per_chunk(2, 30, 22, 8, 12, 4) == 1
    assert np.array_equal(numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd"), whole)


@pytest.mark.parametrize("shape", [(1, 16, 70, 30), (3, 8, 21, 45), (2, 24, 64, 17)])
def test_pipeline_and_stages_give_the_same_bits(shape, monkeypatch, rng):
    """Many tile rows run as one pipeline per thread (each thread's chunks through all three
    stages), few run stage by stage: which thread computes a tile never changes its sums, for
    1 or 2 threads; an Inf/NaN met by a pipeline hands the call to an exact kernel."""
    n, c, h, wd = shape
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((c + 4, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c + 4).astype(np.float32)
    assert n * -(-h // winograd.TILE) >= winograd._PIPELINE_ROWS * 2
    piped = numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd")
    with numbaconv.num_threads(1):
        assert np.array_equal(numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd"), piped)
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 1)            # one tile row per chunk
    assert np.array_equal(numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd"), piped)
    monkeypatch.setattr(winograd, "_PIPELINE_ROWS", 10 ** 9)     # stage by stage
    assert np.array_equal(numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd"), piped)
    monkeypatch.undo()
    x, w, b = (np.round(4 * a).astype(np.float32) for a in (x, w, b))  # exact sums
    x[-1, -1, h - 2, wd // 2] = np.nan
    got = numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd")
    assert np.array_equal(got, reference.conv2d(x, w, b, padding=1), equal_nan=True)
    assert np.isnan(got).sum() == (c + 4) * 9


def test_wide_weights_go_stage_by_stage_with_the_same_bits(monkeypatch, rng):
    """A pipeline reads all the transformed weights once per chunk in each thread; where that
    outweighs handing the chunks between threads, the stages run instead. Which way a call goes
    never changes its bits."""
    def row_and_weight_bytes(cin, cout, out_w):
        ntp = -(-out_w // winograd.TILE) + 1
        return 36 * (cin + cout) * ntp * 4, 36 * cin * cout * 4

    def stages(n, cin, cout, out_h, out_w):
        rows = winograd.tile_rows_per_chunk(n, out_h, out_w, cin, cout, 4)
        staged = winograd.tile_rows_per_chunk(n, out_h, out_w, cin, cout, 4,
                                              winograd._STAGE_CHUNK_BYTES)
        total = n * -(-out_h // winograd.TILE)
        return winograd._stages_pay(total, rows, staged, 2,
                                    *row_and_weight_bytes(cin, cout, out_w))

    assert stages(4, 256, 256, 17, 17)        # DeepLab's C256 33x33 dilation 2: 4 phases
    assert stages(8, 256, 256, 14, 14) and stages(8, 512, 512, 7, 7)
    assert not stages(1, 64, 64, 224, 224) and not stages(8, 64, 64, 56, 56)
    x = rng.standard_normal((1, 96, 64, 4)).astype(np.float32)
    w = rng.standard_normal((96, 96, 3, 3)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    ran = []
    real = winograd._by_stages
    monkeypatch.setattr(winograd, "_by_stages", lambda *a: ran.append(1) or real(*a))
    got = {}
    for staged in (True, False):
        monkeypatch.setattr(winograd, "_stages_pay", lambda *a, staged=staged: staged)
        ran.clear()
        got[staged] = numbaconv.conv2d(x, w, b, padding=1, algorithm="winograd")
        assert bool(ran) == (staged or numba.config.NUMBA_NUM_THREADS * 8 > 16)
    assert np.array_equal(got[True], got[False])


def test_exact_true_excludes_it(rng):
    x = rng.integers(-4, 5, (1, 64, 48, 48)).astype(np.float32)
    w = rng.integers(-4, 5, (64, 64, 3, 3)).astype(np.float32)
    assert numbaconv.explain(x, w, padding=1).choice == "winograd"
    explained = numbaconv.explain(x, w, padding=1, exact=True)
    assert explained.choice != "winograd" and "exact=True" in explained.reasons["winograd"]
    with pytest.raises(UnsupportedAlgorithm, match="exact=True"):
        numbaconv.conv2d(x, w, padding=1, algorithm="winograd", exact=True)
    exact = numbaconv.conv2d(x, w, padding=1, exact=True)
    assert np.array_equal(exact, reference.conv2d(x, w, padding=1))
    # conv1d/conv3d and the channels-last path take the switch as well
    assert numbaconv.conv3d(x[:, :, None], w[:, :, None], padding=(0, 1, 1), exact=True).shape \
        == (1, 64, 1, 48, 48)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    yl = numbaconv.conv2d(xl, w, padding=1, data_format="NHWC", weight_format="OIHW", exact=True)
    assert np.array_equal(yl.transpose(0, 3, 1, 2), exact)


def test_dilated_phases_are_the_stride_one_algorithm(rng):
    """Dilation d: each of the d x d output phases is the undilated convolution of the matching
    decimated input, bit for bit (same tiles, same sums)."""
    x = rng.standard_normal((1, 8, 21, 18)).astype(np.float32)
    w = rng.standard_normal((5, 8, 3, 3)).astype(np.float32)
    y = numbaconv.conv2d(x, w, padding=2, dilation=2, algorithm="winograd")
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for a in range(2):
        for b in range(2):
            phase = numbaconv.conv2d(np.ascontiguousarray(xp[:, :, a::2, b::2]), w,
                                     algorithm="winograd")
            assert np.array_equal(y[:, :, a::2, b::2], phase[:, :, :y[:, :, a::2].shape[2],
                                                             :y[:, :, :, b::2].shape[3]])


def test_auto_uses_it_only_where_it_pays():
    assert dispatch.auto_choice(Case((1, 64, 56, 56), (64, 64, 3, 3), padding=1).problem) \
        == "winograd"
    # 16 tiles: transforming the weights would cost more than the multiplications saved
    assert dispatch.auto_choice(Case((1, 256, 14, 14), (256, 256, 3, 3), padding=1).problem) \
        != "winograd"
    assert dispatch.auto_choice(Case((1, 3, 224, 224), (64, 3, 3, 3), padding=1).problem) \
        != "winograd"
    assert dispatch.auto_choice(Case((1, 64, 28, 28), (64, 64, 3, 3), padding=1).problem) \
        != "winograd"
    # dilated: judged by one stride-1 phase (DeepLab's 17-wide phases use 60% of their tiles'
    # outputs, with 120 tiles in all: yes; C64 28x28 phases: too little work; dilation 4: 42%)
    dilated = Case((1, 256, 33, 33), (256, 256, 3, 3), padding=2, dilation=2).problem
    assert dispatch.auto_choice(dilated) == "winograd"
    assert dispatch.auto_choice(Case((1, 256, 33, 33), (256, 256, 3, 3), padding=4,
                                     dilation=4).problem) != "winograd"
    # 14x14 maps (61%): from 48 tiles (batch 3) with 192 to 512 channels, else from 100
    # (batch 5); 16 with prepared weights
    c256 = Case((3, 256, 14, 14), (256, 256, 3, 3), padding=1).problem
    assert dispatch.auto_choice(c256) == "winograd"
    assert dispatch.auto_choice(replace(c256, batch=2)) != "winograd"
    assert dispatch.auto_choice(replace(c256, batch=1), prepared=True) == "winograd"
    c128 = Case((4, 128, 14, 14), (128, 128, 3, 3), padding=1).problem
    assert dispatch.auto_choice(c128) != "winograd"
    assert dispatch.auto_choice(replace(c128, batch=5)) == "winograd"
    # 7x7 maps (51%): C512 from batch 8 (48 tiles); C1024's transformed weights (151 MB)
    # outweigh them
    c512 = Case((8, 512, 7, 7), (512, 512, 3, 3), padding=1).problem
    assert dispatch.auto_choice(c512) == "winograd"
    assert dispatch.auto_choice(replace(c512, batch=7)) != "winograd"
    assert dispatch.auto_choice(Case((8, 1024, 7, 7), (1024, 1024, 3, 3),
                                     padding=1).problem) != "winograd"
    assert dispatch.auto_choice(Case((1, 64, 56, 56), (64, 64, 3, 3), padding=2,
                                     dilation=2).problem) != "winograd"
    assert dispatch.auto_choice(Case((1, 128, 56, 56), (128, 128, 3, 3), padding=2,
                                     dilation=2).problem) == "winograd"
    assert dispatch.auto_choice(Case((1, 128, 56, 56), (128, 128, 3, 3), padding=2,
                                     dilation=2).problem, exact=True) != "winograd"
    assert next(a for a in dispatch.ALGORITHMS if a.name == "winograd").why_not(dilated) is None
    for refused in [Case((1, 64, 56, 56), (64, 64, 3, 3), stride=2, padding=1),
                    Case((1, 64, 56, 56), (64, 32, 3, 3), groups=2, padding=1),
                    Case((1, 64, 56, 56), (64, 64, 5, 5), padding=2)]:
        algo = next(a for a in dispatch.ALGORITHMS if a.name == "winograd")
        assert algo.why_not(refused.problem) is not None
        assert dispatch.auto_choice(refused.problem) != "winograd"


@pytest.mark.parametrize("where", ["input-inf", "input-nan", "weight-inf", "weight-nan"])
def test_non_finite_values_propagate_as_in_the_reference(where, rng):
    """The transforms would smear an Inf or NaN over whole tiles (inf - inf = NaN); such data is
    handed to an exact kernel, so the result equals the reference's, NaN for NaN."""
    x = rng.integers(-4, 5, (1, 16, 20, 20)).astype(np.float32)
    w = rng.integers(-4, 5, (16, 16, 3, 3)).astype(np.float32)
    kind, value = where.split("-")
    target = x if kind == "input" else w
    target.reshape(-1)[target.size // 3] = np.inf if value == "inf" else np.nan
    got = numbaconv.conv2d(x, w, padding=1, algorithm="winograd")
    with np.errstate(invalid="ignore"):   # inf * 0 in the reference
        want = reference.conv2d(x, w, padding=1)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.isfinite(want).any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weight_transform_reports_the_largest_weight(dtype, rng):
    """The weight transform returns max|w| (what the overflow check scales by), Inf for an
    infinite weight and NaN for a NaN, wherever it sits (a partial last vector included);
    NaN wins over Inf."""
    w = rng.standard_normal((7, 5, 3, 3)).astype(dtype)        # 35 kernels: a partial vector
    u, largest = winograd.transform_weights(w)
    assert largest == np.abs(w).max()
    for spots, value, expect in [((0,), np.inf, np.inf), ((-1,), -np.inf, np.inf),
                                 ((-1,), np.nan, None), ((3, -2), (np.inf, np.nan), None)]:
        bad = w.copy()
        for spot, v in zip(spots, np.broadcast_to(value, len(spots))):
            bad.reshape(-1)[spot] = v
        _, got = winograd.transform_weights(bad)
        assert (np.isnan(got) if expect is None else got == expect), (spots, value, got)
    _, none = winograd.transform_weights(np.zeros((4, 0, 3, 3), dtype))
    assert none == 0


def test_empty_and_tiny_problems(rng):
    for x_shape, pad in [((0, 4, 8, 8), 1), ((1, 4, 3, 3), 0), ((1, 4, 1, 1), 1), ((1, 4, 2, 9), 1)]:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
        got = numbaconv.conv2d(x, w, padding=pad, algorithm="winograd")
        want = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=pad)
        case = Case(x_shape, (5, 4, 3, 3), padding=pad, bias=False)
        assert got.shape == want.shape
        if got.size:
            assert (np.abs(got - want) <= winograd_bound(case, x, w, None)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_near_overflow_go_to_an_exact_kernel(dtype, rng):
    """Transforms scale values by up to 10^2 and 19^2: data whose transformed values could
    overflow (while the direct sums stay finite) is computed by an exact kernel instead."""
    big = np.finfo(dtype).max / 1e4
    x = rng.integers(-4, 5, (1, 8, 12, 12)).astype(dtype)
    x[0, 0, 5, 5] = big
    w = np.zeros((4, 8, 3, 3), dtype)
    w[:, 0, 1, 1] = 1
    got = numbaconv.conv2d(x, w, padding=1, algorithm="winograd")
    want = reference.conv2d(x, w, padding=1)
    assert np.isfinite(want).all() and np.array_equal(got, want)


def test_dilated_temporaries_kept_between_calls_start_clean(rng):
    """The dilated path keeps its padded copy, phases and phase results between calls (scratch
    buffers): whatever an earlier call left in them must not reach a result (finite values: a
    NaN would send the call to an exact kernel)."""
    for slot in ("winograd.padded", "winograd.phases", "winograd.phase_result"):
        buffer(slot, 1 << 16, np.float32)[:] = 1e6
    for case in (Case((1, 8, 13, 11), (8, 8, 3, 3), padding=2, dilation=2),
                 Case((2, 8, 30, 27), (8, 8, 3, 3), padding=(3, 1), dilation=3)):
        x, w, b = case.arrays(rng, kind="normal")
        got = numbaconv.conv2d(x, w, b, **case.kwargs, algorithm="winograd")
        want = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                                b.astype(np.float64), **case.kwargs)
        assert (np.abs(got - want) <= winograd_bound(case, x, w, b)).all()
