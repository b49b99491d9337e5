"""The transposed kernel for one input or one output channel per group (depthwise layers, their
input gradients, single-channel up-sampling), called directly and through the dispatch table.

Integer data in [-4, 4] make every sum exact, so each geometry must equal the reference bit for
bit. Output widths cover one to several steps of 4 vectors (float32 and float64 lanes) and their
partial last vectors; paddings beyond the kernel's reach give negative column shifts and rows
with no taps at all; the two column phases of stride 2 start on either parity. Geometries with
both strides 2, no dilation and a 3x3, 4x4 or 5x5 kernel run on the cycle step (two output rows per
step) and, forced, on the general step too: both must give the reference and the same bits.
"""

import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, reference
from numbaconv.dispatch import UnsupportedAlgorithm
from numbaconv.kernels import depthwise_transposed

# (N, C_in, C_out/groups, groups, H, W, (kH, kW), (sh, sw), (pt, pb, pl, pr), (dh, dw))
GEOMETRIES = [
    (1, 3, 1, 3, 5, 7, (3, 3), (2, 2), (1, 0, 1, 0), (1, 1)),
    (2, 4, 1, 4, 6, 56, (3, 3), (2, 2), (1, 0, 1, 0), (1, 1)),     # 112-wide rows: one step
    (1, 2, 1, 2, 3, 70, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),     # two steps (float32)
    (1, 2, 2, 2, 4, 150, (5, 5), (2, 2), (2, 1, 2, 1), (1, 1)),    # several steps, multiplier 2
    (1, 6, 1, 3, 5, 17, (3, 3), (2, 2), (1, 0, 1, 0), (1, 1)),     # two inputs per group
    (2, 16, 1, 2, 4, 9, (3, 3), (2, 2), (0, 1, 0, 1), (1, 1)),     # eight inputs per group
    (1, 1, 5, 1, 6, 33, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1)),     # one channel in, five out
    (1, 7, 1, 1, 5, 20, (2, 3), (2, 2), (0, 0, 0, 1), (1, 1)),     # seven channels in, one out
    (1, 3, 1, 3, 7, 9, (3, 3), (3, 2), (2, 1, 1, 0), (2, 1)),      # row stride 3, row dilation
    (1, 3, 1, 3, 7, 40, (3, 3), (2, 1), (1, 1, 1, 1), (1, 1)),     # column stride 1
    (1, 3, 3, 3, 4, 18, (3, 5), (1, 2), (1, 1, 2, 2), (1, 2)),     # column dilation 2
    (1, 2, 1, 2, 4, 12, (3, 3), (2, 2), (4, 3, 5, 4), (1, 1)),     # padding beyond the reach
    (1, 2, 1, 2, 5, 8, (3, 3), (2, 2), (0, 0, 0, 0), (1, 1)),      # no padding: odd widths
    (1, 2, 1, 2, 5, 30, (1, 1), (2, 2), (0, 1, 0, 1), (1, 1)),     # 1x1: every other column
    (3, 5, 1, 5, 2, 1, (3, 3), (2, 2), (1, 0, 1, 0), (1, 1)),      # one input column
    (1, 2, 1, 2, 3, 64, (3, 3), (2, 2), (1, 1, 0, 0), (1, 1)),     # steps end on the row end
    (1, 3, 1, 3, 6, 21, (5, 5), (2, 2), (6, 5, 7, 6), (1, 1)),     # 5x5, beyond the reach
    (2, 5, 1, 5, 7, 7, (5, 5), (2, 2), (2, 1, 2, 1), (1, 1)),      # EfficientNet's 7 -> 14
    (1, 4, 1, 4, 5, 21, (4, 4), (2, 2), (2, 0, 1, 2), (1, 1)),     # 4x4, uneven padding
    (1, 2, 1, 2, 4, 9, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),      # 2x2: rows by tap tables
]


def _takes_cycle_step(geom):
    (kh, kw), (sh, sw), _, (dh, dw) = geom[6:]
    return (sh, sw, dh, dw) == (2, 2, 1, 1) and kh == kw and kh in (3, 4, 5)


# the general step also runs the geometries the cycle step takes, forced
CASES = [(g, "auto") for g in GEOMETRIES] + [(g, "general") for g in GEOMETRIES
                                             if _takes_cycle_step(g)]


def _watch_steps(monkeypatch, which):
    """Force the general step if ``which`` says so; returns the list the cycle driver's calls
    are recorded in, so a test can tell which step ran."""
    calls = []
    if which == "general":
        monkeypatch.setattr(depthwise_transposed, "CYCLE_KERNELS", ())
    driver = depthwise_transposed._cycle_driver
    monkeypatch.setattr(depthwise_transposed, "_cycle_driver",
                        lambda *args: (calls.append(args[4]), driver(*args)))
    return calls


def _arrays(geom, dtype, seed):
    n, cin, cg_out, groups, h, w, (kh, kw) = geom[:7]
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (n, cin, h, w)).astype(dtype)
    wt = rng.integers(-4, 5, (cin, cg_out, kh, kw)).astype(dtype)
    b = rng.integers(-4, 5, cg_out * groups).astype(dtype)
    return x, wt, b


def _kwargs(geom):
    (sh, sw), (pt, pb, pl, pr), (dh, dw) = geom[7:]
    return dict(stride=(sh, sw), padding=((pt, pb), (pl, pr)), dilation=(dh, dw),
                groups=geom[3])


def _run(geom, x, w, b, threads=None):
    (sh, sw), (pt, _, pl, _), (dh, dw) = geom[7:]
    expected_shape = reference.conv_transpose2d(x, w, b, **_kwargs(geom)).shape
    out = np.full(expected_shape, np.nan, dtype=x.dtype)  # exposes unwritten cells
    with numbaconv.num_threads(threads or numbaconv.get_num_threads()):
        depthwise_transposed.conv_transpose2d_narrow(x, w, b, out, sh, sw, pt, pl, dh, dw,
                                                     geom[3])
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom,which", CASES, ids=str)
def test_kernel_equals_the_reference(geom, which, dtype, monkeypatch):
    cycle_calls = _watch_steps(monkeypatch, which)
    x, w, b = _arrays(geom, dtype, seed=len(str(geom)))
    copies = x.copy(), w.copy(), b.copy()
    out = _run(geom, x, w, b)
    np.testing.assert_array_equal(out, reference.conv_transpose2d(x, w, b, **_kwargs(geom)))
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)
    assert bool(cycle_calls) == (which == "auto" and _takes_cycle_step(geom))


@pytest.mark.parametrize("geom", [g for g in GEOMETRIES if _takes_cycle_step(g)], ids=str)
def test_cycle_and_general_steps_give_the_same_bits(geom, monkeypatch):
    """Both steps sum each output in the same order, so a layer's bits do not depend on which
    one ran (tiles of a layer, forced and automatic choices)."""
    rng = np.random.default_rng(3)
    n, cin, cg_out, groups, h, wd, (kh, kw) = geom[:7]
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((n, cin, h, wd)).astype(dtype)
        w = rng.standard_normal((cin, cg_out, kh, kw)).astype(dtype)
        b = rng.standard_normal(cg_out * groups).astype(dtype)
        cycle = _run(geom, x, w, b)
        with monkeypatch.context() as m:
            m.setattr(depthwise_transposed, "CYCLE_KERNELS", ())
            general = _run(geom, x, w, b)
        assert cycle.tobytes() == general.tobytes()


@pytest.mark.parametrize("geom", GEOMETRIES[1:6] + GEOMETRIES[6:8] + GEOMETRIES[-1:], ids=str)
def test_kernel_same_bits_on_one_and_two_threads(geom):
    rng = np.random.default_rng(2)
    n, cin, cg_out, groups, h, wd, (kh, kw) = geom[:7]
    x = rng.standard_normal((n, cin, h, wd)).astype(np.float32)
    w = rng.standard_normal((cin, cg_out, kh, kw)).astype(np.float32)
    b = rng.standard_normal(cg_out * groups).astype(np.float32)
    assert _run(geom, x, w, b, threads=1).tobytes() == _run(geom, x, w, b, threads=2).tobytes()


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
@pytest.mark.parametrize("which", ["auto", "general"])
def test_an_infinite_weight_reaches_only_the_outputs_its_tap_reaches(which, monkeypatch):
    """Masked lanes are not multiplied: tap (0, 0) of a stride-2 layer reaches the odd output
    rows and columns only, so the even ones stay finite, as in the reference (both steps)."""
    cycle_calls = _watch_steps(monkeypatch, which)
    geom = GEOMETRIES[0]
    x, w, b = _arrays(geom, np.float32, seed=5)
    w[0, 0, 0, 0] = np.inf
    out = _run(geom, x, w, b)
    expected = reference.conv_transpose2d(x, w, b, **_kwargs(geom))
    np.testing.assert_array_equal(out, expected)
    assert np.isfinite(out[0, 0, ::2, :]).all() and np.isfinite(out[0, 0, :, ::2]).all()
    assert not np.isfinite(out[0, 0, 1::2, 1::2]).all()
    assert bool(cycle_calls) == (which == "auto")


def test_auto_takes_it_for_strided_layers_with_one_channel_per_group():
    for x_shape, w_shape, groups in [((1, 96, 56, 56), (96, 1, 3, 3), 96),
                                     ((1, 64, 56, 56), (64, 1, 3, 3), 32),
                                     ((1, 1, 64, 64), (1, 16, 4, 4), 1),
                                     ((1, 32, 64, 64), (32, 1, 4, 4), 1)]:
        choice = numbaconv.explain(x_shape, w_shape, stride=2, padding=1, groups=groups,
                                   transposed=True).choice
        assert choice == "depthwise", (x_shape, w_shape, groups)
    # stride-1 depthwise layers stay with the forward depthwise kernel on flipped weights, and
    # stride-1 single-channel layers with the forward direct kernel (faster there)
    problem = numbaconv.explain((1, 8, 9, 9), (8, 1, 3, 3), padding=1, groups=8,
                                transposed=True).problem
    assert dispatch.rule(problem) == "depthwise"
    assert numbaconv.explain((1, 1, 64, 64), (1, 16, 3, 3), padding=1,
                             transposed=True).choice == "direct"


@pytest.mark.parametrize("w_shape,groups,stride,reason", [
    ((4, 2, 3, 3), 2, 2, "one input or one output channel per group"),
    ((4, 1, 3, 3), 4, (2, 3), "column strides 1 and 2"),
])
def test_forcing_it_elsewhere_names_the_rule(w_shape, groups, stride, reason):
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(UnsupportedAlgorithm, match=reason):
        numbaconv.conv_transpose2d(x, np.zeros(w_shape, np.float32), stride=stride,
                                   groups=groups, algorithm="depthwise")


def test_one_geometry_in_both_dtypes():
    """Per-geometry tables are kept between calls; the lanes (so the step and mask table)
    differ by dtype."""
    geom = GEOMETRIES[2]
    for dtype in (np.float64, np.float32, np.float64):
        x, w, b = _arrays(geom, dtype, seed=7)
        np.testing.assert_array_equal(_run(geom, x, w, b),
                                      reference.conv_transpose2d(x, w, b, **_kwargs(geom)))
