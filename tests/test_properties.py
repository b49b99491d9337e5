"""Property-based tests: random valid configurations against the reference, random invalid ones
must raise ValueError/TypeError and nothing else.

Profiles (tests/conftest.py): ``ci`` (default) runs a few thousand examples in all;
``HYPOTHESIS_PROFILE=long`` runs many more.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbaconv
from numbaconv import dispatch, reference
from numbaconv.problem import ConvProblem

EXAMPLES = settings(max_examples=max(1500, settings.default.max_examples), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@st.composite
def configurations(draw):
    """A valid conv1d/conv2d/conv_transpose1d/2d call on small integer-valued arrays."""
    nd = draw(st.sampled_from([1, 2, 2]))
    transposed = draw(st.booleans())
    groups = draw(st.integers(1, 4))
    depthwise = draw(st.booleans())
    cin_g = 1 if depthwise else draw(st.integers(1, 3))
    cout_g = draw(st.integers(1, 3))
    kernel = tuple(draw(st.lists(st.integers(1, 5), min_size=nd, max_size=nd)))
    stride = tuple(draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd)))
    dilation = tuple(draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd)))
    size = tuple(draw(st.lists(st.integers(1, 14), min_size=nd, max_size=nd)))
    batch = draw(st.integers(0, 3))
    form = draw(st.sampled_from(["int", "tuple", "pairs", "same", "valid"]))
    if form == "int":
        padding = draw(st.integers(0, 4))
    elif form == "tuple":
        padding = tuple(draw(st.lists(st.integers(0, 4), min_size=nd, max_size=nd)))
    elif form == "pairs":
        padding = tuple((draw(st.integers(0, 4)), draw(st.integers(0, 4))) for _ in range(nd))
    elif form == "same" and not transposed:
        padding = "same"
        stride = (1,) * nd
    else:
        padding = "valid"
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x_shape = (batch, groups * cin_g) + size
    if transposed:
        w_shape = (groups * cin_g, cout_g) + kernel
        kwargs["output_padding"] = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        make = ConvProblem.for_conv_transpose
    else:
        w_shape = (groups * cout_g, cin_g) + kernel
        make = ConvProblem.for_conv
    try:
        problem = make(x_shape if batch else (1,) + x_shape[1:], w_shape, **kwargs)
    except ValueError:
        from hypothesis import assume
        assume(False)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    order = draw(st.sampled_from(["C", "F", "view"]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return nd, transposed, x_shape, w_shape, kwargs, dtype, order, bias, seed, problem


def _layout(a, order):
    if order == "F":
        return np.asfortranarray(a)
    if order == "view" and a.ndim:
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., 1::2] = a
        return big[..., 1::2]
    return a


FUNCS = {(1, False): (numbaconv.conv1d, reference.conv1d),
         (2, False): (numbaconv.conv2d, reference.conv2d),
         (1, True): (numbaconv.conv_transpose1d, reference.conv_transpose1d),
         (2, True): (numbaconv.conv_transpose2d, reference.conv_transpose2d)}


@EXAMPLES
@given(configurations())
def test_every_algorithm_equals_the_reference_on_integer_data(config):
    nd, transposed, x_shape, w_shape, kwargs, dtype, order, bias, seed, problem = config
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, x_shape).astype(dtype)
    w = rng.integers(-4, 5, w_shape).astype(dtype)
    b = rng.integers(-4, 5, problem.out_channels).astype(dtype) if bias else None
    ours, theirs = FUNCS[nd, transposed]
    expected = theirs(x, w, b, **kwargs)
    before = (x.copy(), w.copy())
    lifted = problem.lifted_to_2d() if nd == 1 else problem
    # the exact algorithms (inexact ones have their own bound in test_algorithms/test_winograd)
    names = ["auto"] + [a.name for a in dispatch.ALGORITHMS
                        if a.transposed == transposed and a.exact and a.why_not(lifted) is None]
    for name in names:
        result = ours(_layout(x, order), _layout(w, order),
                      None if b is None else _layout(b, order), **kwargs, algorithm=name,
                      exact=True)
        assert result.dtype == dtype
        assert np.array_equal(result, expected), f"{name} on {lifted}"
    assert np.array_equal(x, before[0]) and np.array_equal(w, before[1])


_ANY_INT = st.integers(-3, 6)


@st.composite
def arbitrary_calls(draw):
    """Calls with arbitrary (mostly invalid) shapes and hyper-parameters."""
    nd = draw(st.sampled_from([1, 2]))
    transposed = draw(st.booleans())
    x_shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=5)))
    w_shape = tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=5)))

    def hyper():
        return draw(st.one_of(_ANY_INT, st.lists(_ANY_INT, min_size=0, max_size=3).map(tuple),
                              st.sampled_from([1.5, "same", "valid", "full", None, True])))
    kwargs = dict(stride=hyper(), padding=draw(st.one_of(
        _ANY_INT, st.sampled_from(["same", "valid", "x", ((1, 2), (3,)), ((1, -1), (0, 0))]),
        st.lists(_ANY_INT, max_size=3).map(tuple))), dilation=hyper(), groups=hyper())
    if transposed:
        kwargs["output_padding"] = hyper()
    bias_len = draw(st.one_of(st.none(), st.integers(0, 7)))
    return nd, transposed, x_shape, w_shape, kwargs, bias_len


@EXAMPLES
@given(arbitrary_calls())
def test_invalid_arguments_raise_value_or_type_error_only(call):
    nd, transposed, x_shape, w_shape, kwargs, bias_len = call
    x = np.ones(x_shape, np.float32)
    w = np.ones(w_shape, np.float32)
    b = None if bias_len is None else np.ones(bias_len, np.float32)
    ours, theirs = FUNCS[nd, transposed]
    try:
        expected = theirs(x, w, b, **kwargs)
    except (ValueError, TypeError) as err:
        with pytest.raises(type(err)):
            ours(x, w, b, **kwargs)
        return
    assert np.array_equal(ours(x, w, b, **kwargs), expected)
