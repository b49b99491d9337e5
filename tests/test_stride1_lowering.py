"""Stride-1 transposed convolutions on the forward kernels (numbaconv.stride1_lowering): the
identity itself, which kernel actually runs, the rule, and the gradients' ``exact``. The
transposed algorithms' results on the whole case grid are checked in test_algorithms.py."""

import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, grad, reference, stride1_lowering
from numbaconv.dispatch import UnsupportedAlgorithm
from numbaconv.kernels import direct, transposed
from numbaconv.problem import ConvProblem

from cases import Case, stride1_transposed_cases
from error_bounds import winograd_bound


def _problem(x_shape, w_shape, **kw):
    return ConvProblem.for_conv_transpose(x_shape, w_shape, **kw)


@pytest.mark.parametrize("case", stride1_transposed_cases(), ids=str)
def test_forward_problem_with_flipped_weights_is_the_transposed_convolution(case, rng):
    """The identity the module rests on, checked on the reference implementations alone."""
    forward = stride1_lowering.forward_problem(case.problem)
    if forward is None:
        assert "padding" in stride1_lowering.why_not(case.problem)
        return
    assert forward.output_shape == case.problem.output_shape and not forward.transposed
    x, w, b = case.arrays(rng)
    kept = w.copy()
    flipped = stride1_lowering.flipped_weights(w, case.groups)
    assert np.array_equal(w, kept)
    g = case.groups
    by_numpy = np.swapaxes(w.reshape((g, -1) + w.shape[1:]), 1, 2)[..., ::-1, ::-1].reshape(
        flipped.shape)
    assert np.array_equal(flipped, by_numpy)
    (pt, pb), (pl, pr) = forward.padding
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    assert np.array_equal(
        reference.conv2d(padded, flipped, b, dilation=case.dilation, groups=g),
        reference.conv_transpose2d(x, w, b, **case.kwargs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", [(3, 3), (1, 1), (2, 2)])
def test_flipped_weights_across_block_edges(kernel, dtype, rng):
    """3x3 kernels move as reversed vectors, 1x1 weights by register-tile transposes: channel
    counts that end mid-block and mid-tile, grouped and not."""
    for cin, cog, groups in ((37, 21, 1), (34, 40, 2), (16, 16, 1), (3, 50, 3)):
        w = rng.standard_normal((cin, cog) + kernel).astype(dtype)
        got = stride1_lowering.flipped_weights(w, groups)
        want = np.swapaxes(w.reshape((groups, -1) + w.shape[1:]), 1, 2)[..., ::-1, ::-1]
        assert np.array_equal(got, want.reshape(got.shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flipped_weights_of_empty_and_grouped_kernels(dtype):
    w = np.arange(4 * 3 * 2 * 5, dtype=dtype).reshape(4, 3, 2, 5)
    for groups in (1, 2, 4):
        got = stride1_lowering.flipped_weights(w, groups)
        cig = 4 // groups
        assert got.shape == (3 * groups, cig, 2, 5)
        for r in range(3 * groups):
            gi, o = divmod(r, 3)
            for i in range(cig):
                assert np.array_equal(got[r, i], w[gi * cig + i, o, ::-1, ::-1])
    assert stride1_lowering.flipped_weights(np.zeros((2, 0, 3, 3), dtype), 1).shape == (0, 2, 3, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spatial", [(5,), (2, 5), (3, 2, 4)])
def test_flipped_depthwise_weights_are_a_reversed_copy(dtype, spatial):
    """Depthwise weights take a NumPy path (only their taps turn): a new C-contiguous array."""
    w = np.arange(6 * int(np.prod(spatial)), dtype=dtype).reshape((6, 1) + spatial)
    kept = w.copy()
    got = stride1_lowering.flipped_weights(w, 6)
    assert got.shape == w.shape and got.dtype == w.dtype and got.flags.c_contiguous
    assert not np.shares_memory(got, w) and np.array_equal(w, kept)
    assert np.array_equal(got, w[(slice(None),) * 2 + (slice(None, None, -1),) * len(spatial)])
    # the same through the general kernel (one input channel per group, two groups of three)
    general = stride1_lowering.flipped_weights(w.reshape((2, 3) + spatial), 2)
    assert np.array_equal(general.reshape(got.shape), got)


def test_why_not_names_stride_and_padding():
    assert stride1_lowering.why_not(_problem((1, 2, 5, 5), (2, 3, 3, 3), padding=2)) is None
    assert "stride 1" in stride1_lowering.why_not(_problem((1, 2, 5, 5), (2, 3, 3, 3), stride=2))
    # beyond the kernel's reach (2 for 3x3, 4 with dilation 2; output padding extends the high side)
    assert "reach" in stride1_lowering.why_not(_problem((1, 2, 9, 9), (2, 3, 3, 3), padding=3))
    assert stride1_lowering.why_not(_problem((1, 2, 9, 9), (2, 3, 3, 3), padding=4,
                                             dilation=2)) is None
    assert stride1_lowering.why_not(_problem(
        (1, 2, 9, 9), (2, 3, 3, 3), padding=((4, 5), (0, 0)), dilation=2,
        output_padding=(1, 0))) is None
    with pytest.raises(UnsupportedAlgorithm, match="stride 1 only"):
        numbaconv.conv_transpose2d(np.ones((1, 2, 5, 5)), np.ones((2, 3, 3, 3)), stride=2,
                                   algorithm="winograd")


def test_direct_runs_the_forward_kernel_exactly_where_it_lowers(monkeypatch, rng):
    calls = []
    real_forward, real_transposed = direct.conv2d_direct, transposed.conv_transpose2d_direct
    monkeypatch.setattr(direct, "conv2d_direct",
                        lambda *a: calls.append("forward") or real_forward(*a))
    monkeypatch.setattr(transposed, "conv_transpose2d_direct",
                        lambda *a: calls.append("transposed") or real_transposed(*a))
    x = rng.integers(-4, 5, (2, 6, 9, 11)).astype(np.float32)
    w = rng.integers(-4, 5, (6, 4, 3, 3)).astype(np.float32)
    for kw, kind in [(dict(padding=1), "forward"), (dict(padding=(2, 0)), "forward"),
                     (dict(padding=3), "transposed"), (dict(stride=2, padding=1), "transposed"),
                     (dict(padding=1, groups=2), "forward")]:
        calls.clear()
        got = numbaconv.conv_transpose2d(x, w if "groups" not in kw else w[:, :2], None, **kw,
                                         algorithm="direct")
        want = reference.conv_transpose2d(x, w if "groups" not in kw else w[:, :2], None, **kw)
        assert calls == [kind], kw
        assert np.array_equal(got, want), kw


def test_auto_takes_the_forward_rule_for_winograd_and_depthwise():
    def auto(x_shape, w_shape, exact=False, **kw):
        return dispatch.auto_choice(_problem(x_shape, w_shape, **kw), exact)

    assert auto((1, 64, 56, 56), (64, 64, 3, 3), padding=1) == "winograd"
    assert auto((1, 64, 56, 56), (64, 64, 3, 3), padding=1, exact=True) == "direct"
    assert auto((1, 64, 56, 56), (64, 64, 3, 3), padding=1, stride=2) == "direct"
    assert auto((1, 144, 56, 56), (144, 1, 3, 3), padding=1, groups=144) == "depthwise"
    # strided depthwise: the transposed depthwise kernel (no forward lowering)
    assert auto((1, 144, 56, 56), (144, 1, 3, 3), padding=1, groups=144, stride=2) == "depthwise"
    # small layers keep the transposed rule (gemm for narrow inputs)
    assert auto((1, 512, 7, 7), (512, 512, 3, 3), padding=1) == "gemm"


def test_input_gradient_passes_exact_on(rng):
    x = rng.integers(-4, 5, (1, 8, 12, 12)).astype(np.float32)
    w = rng.integers(-4, 5, (6, 8, 3, 3)).astype(np.float32)
    dy = rng.integers(-4, 5, (1, 6, 12, 12)).astype(np.float32)
    exact = grad.conv2d_input(x.shape, w, dy, padding=1)
    assert np.array_equal(exact, reference.conv_transpose2d(dy, w, padding=1))
    fast = grad.conv2d_input(x.shape, w, dy, padding=1, algorithm="winograd")
    as_transposed = Case(dy.shape, w.shape, bias=False, padding=1, transposed=True)
    assert np.all(np.abs(fast - exact) <= winograd_bound(as_transposed, dy, w, None))
    assert not np.array_equal(fast, exact)   # Winograd did run: it rounds even integer data
    with pytest.raises(UnsupportedAlgorithm, match="exact=True"):
        grad.conv2d_input(x.shape, w, dy, padding=1, algorithm="winograd", exact=True)
    dx, dw, db = grad.conv2d_vjp(x, w, dy, padding=1, exact=True)
    assert np.array_equal(dx, exact)


def test_transposed_direct_stays_size_invariant_with_strides(rng):
    """The README's claim for transposed direct (no longer flagged size-invariant, since stride 1
    runs the forward direct kernel): with stride > 1, tiles cut by numbaconv.dask give the
    whole-image bits on random data."""
    da = pytest.importorskip("dask.array")
    import numbaconv.dask as ncd

    x = rng.standard_normal((2, 6, 13, 17)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 4)).astype(np.float32)
    for kw in [dict(stride=2, padding=1), dict(stride=(3, 2), padding=(0, 2), output_padding=1)]:
        whole = numbaconv.conv_transpose2d(x, w, **kw, algorithm="direct")
        for tile in [(4, 5), (13, 3)]:
            lazy = ncd.conv_transpose2d(da.from_array(x, chunks=(1, 6) + tile), w, **kw,
                                        algorithm="direct")
            assert np.array_equal(lazy.compute(scheduler="sync"), whole), (kw, tile)


@pytest.mark.parametrize("nd", [1, 3])
def test_every_input_gradient_takes_exact(nd, rng):
    x = rng.integers(-4, 5, (1, 2) + (5,) * nd).astype(np.float32)
    w = rng.integers(-4, 5, (3, 2) + (3,) * nd).astype(np.float32)
    dy = rng.integers(-4, 5, (1, 3) + (5,) * nd).astype(np.float32)
    conv_input = getattr(grad, f"conv{nd}d_input")
    transposed_input = getattr(grad, f"conv_transpose{nd}d_input")
    vjp = getattr(grad, f"conv{nd}d_vjp")
    want = conv_input(x.shape, w, dy, padding=1)
    assert np.array_equal(conv_input(x.shape, w, dy, padding=1, exact=True), want)
    assert np.array_equal(vjp(x, w, dy, padding=1, exact=True)[0], want)
    # the transposed layer's input gradient is a forward convolution
    wt = np.ascontiguousarray(np.swapaxes(w, 0, 1))
    assert np.array_equal(transposed_input(x.shape, wt, dy, padding=1, exact=True),
                          transposed_input(x.shape, wt, dy, padding=1))
