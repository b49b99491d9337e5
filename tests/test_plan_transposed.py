"""Transposed plans (numbaconv.plan_conv_transpose2d): the bits of conv_transpose2d for the
algorithm the plan names, prepared forms made once, copies, errors, pickling."""

import pickle

import numpy as np
import pytest

import numbaconv
from numbaconv import stride1_lowering
from numbaconv.dispatch import UnsupportedAlgorithm

from cases import random_cases, stride1_transposed_cases, transposed_corner_cases

CASES = (transposed_corner_cases() + stride1_transposed_cases()[:24]
         + random_cases(20, True, seed=5))


def _plan_args(case):
    kw = dict(case.kwargs)
    return dict(stride=kw["stride"], padding=kw["padding"], output_padding=kw["output_padding"],
                groups=kw["groups"], dilation=kw["dilation"])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_plan_gives_conv_transpose2d_bits_for_its_algorithm(case, rng):
    x, w, b = case.arrays(rng, kind="normal")
    kept = (x.copy(), w.copy())
    names = [n for n, why in numbaconv.explain(x, w, b, transposed=True, **case.kwargs)
             .reasons.items() if why is None and n != "reference"]
    for algorithm in ["auto"] + names:
        plan = numbaconv.plan_conv_transpose2d(w, b, **_plan_args(case), algorithm=algorithm)
        chosen = plan.algorithm_for(x.shape, x.dtype)
        assert algorithm in ("auto", chosen)
        want = numbaconv.conv_transpose2d(x, w, b, **case.kwargs, algorithm=chosen)
        for _ in range(2):   # the first call prepares, the second takes the remembered path
            assert np.array_equal(plan(x), want, equal_nan=True), (algorithm, chosen)
        assert np.array_equal(plan(x[0]), want[0], equal_nan=True)
        out = np.empty_like(want)
        assert plan(x, out=out) is out and np.array_equal(out, want, equal_nan=True)
    assert np.array_equal(x, kept[0]) and np.array_equal(w, kept[1])


def test_stride1_plan_flips_once_and_takes_winograd_where_a_forward_plan_does(rng, monkeypatch):
    flips = []
    real = stride1_lowering.flipped_weights
    monkeypatch.setattr(stride1_lowering, "flipped_weights",
                        lambda *a: flips.append(1) or real(*a))
    w = rng.standard_normal((256, 256, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 256, 14, 14)).astype(np.float32)
    plan = numbaconv.plan_conv_transpose2d(w, padding=1)
    # 14x14 at batch 1: Winograd with the weights transformed in advance, not in a plain call
    assert plan.algorithm_for(x.shape) == "winograd"
    assert numbaconv.explain(x, w, padding=1, transposed=True).choice == "gemm"
    want = numbaconv.conv_transpose2d(x, w, padding=1, algorithm="winograd")
    flips.clear()
    for _ in range(3):
        assert np.array_equal(plan(x), want)
    assert np.array_equal(plan(x[:, :, :9]), numbaconv.conv_transpose2d(
        x[:, :, :9], w, padding=1, algorithm=plan.algorithm_for((1, 256, 9, 14))))
    assert len(flips) == 1
    exact = numbaconv.plan_conv_transpose2d(w, padding=1, exact=True)
    assert exact.algorithm_for(x.shape) == "gemm"


def test_strided_direct_plan_packs_its_weight_blocks_once(rng, monkeypatch):
    from numbaconv.kernels import transposed
    made = []

    class Counted(transposed.PackedWeights):
        def __init__(self, *args):
            made.append(self)
            super().__init__(*args)

    monkeypatch.setattr(transposed, "PackedWeights", Counted)
    # 24 output channels per group: 8-channel tiles; 16: 16-channel tiles (both packings)
    for cg_out, groups in [(24, 1), (16, 2)]:
        made.clear()
        w = rng.integers(-4, 5, (4 * groups, cg_out, 4, 4)).astype(np.float32)
        b = rng.integers(-4, 5, cg_out * groups).astype(np.float32)
        kw = dict(stride=2, padding=1, groups=groups)
        plan = numbaconv.plan_conv_transpose2d(w, b, **kw, algorithm="direct")
        for x in [rng.integers(-4, 5, (2, 4 * groups, 20, 24)).astype(np.float32),
                  rng.integers(-4, 5, (1, 4 * groups, 9, 33)).astype(np.float64)]:
            want = numbaconv.conv_transpose2d(x, w, b, **kw, algorithm="direct")
            for _ in range(2):
                assert np.array_equal(plan(x), want)
        assert len(made) == 2    # one per computation dtype, each packed for its tile width
        assert [len(p._blocks) for p in made] == [1, 1]
        # Inf in the weights: the columns beside the padding are recomputed as in a plain call
        w[0, 0, 1, 2] = np.inf
        plan = numbaconv.plan_conv_transpose2d(w, b, **kw, algorithm="direct")
        x = rng.integers(-4, 5, (1, 4 * groups, 18, 18)).astype(np.float32)
        want = numbaconv.conv_transpose2d(x, w, b, **kw, algorithm="direct")
        assert np.isnan(want).any() and np.isinf(want).any()
        assert np.array_equal(plan(x), want, equal_nan=True)


def test_plan_keeps_its_own_copies(rng):
    w = rng.integers(-4, 5, (4, 3, 3, 3)).astype(np.float32)
    b = rng.integers(-4, 5, 3).astype(np.float32)
    x = rng.integers(-4, 5, (1, 4, 6, 6)).astype(np.float32)
    for kw in [dict(padding=1), dict(stride=2, padding=1)]:
        plan = numbaconv.plan_conv_transpose2d(w, b, **kw)
        want = numbaconv.conv_transpose2d(x, w, b, **kw)
        w2, b2 = w.copy(), b.copy()
        w[...] = 0
        b[...] = 0
        assert np.array_equal(plan(x), want)
        w[...], b[...] = w2, b2
        assert not plan.weight.flags.writeable and not plan.bias.flags.writeable


def test_plan_follows_the_computation_dtype(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x = rng.standard_normal((2, 4, 7, 7))
    plan = numbaconv.plan_conv_transpose2d(w, padding=1)
    got = plan(x)
    assert got.dtype == np.float64
    assert np.array_equal(got, numbaconv.conv_transpose2d(x, w, padding=1))
    assert plan(x.astype(np.float32)).dtype == np.float32


def test_plan_pickles_with_weights_and_arguments(rng):
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    plan = numbaconv.plan_conv_transpose2d(w, None, 1, 1, groups=2, algorithm="direct")
    plan(x)
    again = pickle.loads(pickle.dumps(plan))
    assert np.array_equal(again(x), plan(x))
    assert "ConvTranspose2dPlan" in repr(again) and again.groups == 2


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(algorithm="fft"), ValueError, "algorithm must be"),
    (dict(algorithm="tune"), ValueError, "algorithm must be"),
    (dict(stride=2, algorithm="winograd"), UnsupportedAlgorithm, "stride 1"),
    (dict(padding=1, algorithm="winograd", exact=True), UnsupportedAlgorithm, "exact=True"),
    (dict(padding=1, algorithm="depthwise"), UnsupportedAlgorithm, "depthwise"),
    (dict(exact=1), TypeError, "exact must be a bool"),
    (dict(padding="same"), ValueError, "'same' is not supported"),
    (dict(stride=2, output_padding=2), ValueError, "output_padding"),
    (dict(bias=np.zeros(4)), ValueError, "bias must have shape"),
    (dict(groups=3), ValueError, "groups"),
])
def test_bad_arguments_raise_at_plan_time(kwargs, error, match):
    w = np.ones((4, 3, 3, 3), np.float32)
    kwargs = dict(kwargs)
    bias = kwargs.pop("bias", None)
    with pytest.raises(error, match=match):
        numbaconv.plan_conv_transpose2d(w, bias, **kwargs)


def test_bad_inputs_raise_at_call_time():
    plan = numbaconv.plan_conv_transpose2d(np.ones((4, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="input channels"):
        plan(np.ones((1, 5, 6, 6), np.float32))
    with pytest.raises(ValueError, match="shape"):
        plan(np.ones((6, 6), np.float32))
    with pytest.raises(ValueError, match="weight must have 4 dimensions"):
        numbaconv.plan_conv_transpose2d(np.ones((4, 3, 3), np.float32))


def test_layer_plan(rng):
    layer = numbaconv.ConvTranspose2d(4, 6, 4, stride=2, padding=1, rng=rng)
    x = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    assert np.array_equal(layer.plan()(x), layer(x))
    layer = numbaconv.ConvTranspose2d(4, 6, 3, padding=1, groups=2, rng=rng)
    assert np.array_equal(layer.plan(algorithm="direct")(x), numbaconv.conv_transpose2d(
        x, layer.weight, layer.bias, padding=1, groups=2, algorithm="direct"))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        numbaconv.ConvTranspose2d(4, 6, 3, padding=1, padding_mode="reflect").plan()
