"""Every invalid argument raises ValueError/TypeError before any work, naming argument and rule."""

import numpy as np
import pytest

import numbaconv
from numbaconv import reference

X = np.zeros((1, 4, 8, 8), np.float32)
W = np.zeros((6, 2, 3, 3), np.float32)    # groups=2 weight
WT = np.zeros((4, 3, 3, 3), np.float32)   # transposed weight


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(weight=np.zeros((6, 3, 3, 3)), groups=2), ValueError, r"weight.shape\[1\] \* groups"),
    (dict(groups=3), ValueError, "in_channels must be divisible by groups"),
    (dict(weight=np.zeros((5, 2, 3, 3))), ValueError, "out_channels must be divisible by groups"),
    (dict(groups=0), ValueError, "groups must be >= 1"),
    (dict(groups=2.0), TypeError, "groups must be an int"),
    (dict(bias=np.zeros(5)), ValueError, r"bias must have shape \(6,\)"),
    (dict(bias=np.zeros((6, 1))), ValueError, "bias must have shape"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=(1, 0)), ValueError, "stride must be >= 1"),
    (dict(stride=(1, 1, 1)), ValueError, "stride must be an int or a tuple of 2 ints"),
    (dict(stride=1.5), TypeError, "stride must be an int"),
    (dict(stride=True), TypeError, "stride must be an int"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding=((1, -1), (0, 0))), ValueError, "padding must be non-negative"),
    (dict(padding=(1, 2, 3)), ValueError, "padding must be an int, a tuple of 2"),
    (dict(padding=((1, 2, 3), (0, 0))), ValueError, r"\(low, high\) pair"),
    (dict(padding="full"), ValueError, "padding must be an int, a tuple, 'valid', 'same' or 'same_tf'"),
    (dict(padding="same", stride=2), ValueError, "padding='same' requires stride 1"),
    (dict(weight=np.zeros((6, 2, 9, 3))), ValueError,
     r"kernel size \(9, 3\).*larger than the padded input size \(8, 8\).*output size \(0, 6\)"),
    (dict(weight=np.zeros((6, 2, 5, 5)), dilation=3), ValueError, r"dilated extent \(13, 13\)"),
    (dict(input=np.zeros((4, 8))), ValueError, "input must have shape"),
    (dict(input=np.zeros((1, 1, 4, 8, 8))), ValueError, "input must have shape"),
    (dict(weight=np.zeros((6, 2, 3))), ValueError, "weight must have 4 dimensions"),
    (dict(weight=np.zeros((6, 2, 0, 3))), ValueError, "kernel size must be >= 1"),
    (dict(input=np.zeros((1, 4, 0, 8))), ValueError, "input spatial size must be >= 1"),
    (dict(input=np.zeros((1, 4, 8, 8), complex)), TypeError, "complex"),
    (dict(algorithm="fastest"), ValueError, "algorithm must be 'auto', 'tune' or one of"),
])
def test_conv2d_errors(kwargs, error, match):
    args = dict(input=X, weight=W, groups=2)
    args.update(kwargs)
    for fn in (numbaconv.conv2d, reference.conv2d):
        if fn is reference.conv2d:
            args.pop("algorithm", None)
            if "algorithm" in kwargs:
                continue
        with pytest.raises(error, match=match):
            fn(**args)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(padding="same"), ValueError, "'same' is not supported for transposed"),
    (dict(output_padding=2, stride=2), ValueError, "output_padding must be >= 0 and smaller"),
    (dict(output_padding=1), ValueError, "smaller than either stride or dilation"),
    (dict(output_padding=-1, stride=2), ValueError, "output_padding must be >= 0"),
    (dict(weight=np.zeros((3, 3, 3, 3))), ValueError, r"weight.shape\[0\]"),
    (dict(groups=3), ValueError, "in_channels must be divisible by groups"),
    (dict(padding=3, weight=np.zeros((4, 3, 1, 1)), input=np.zeros((1, 4, 2, 2))), ValueError,
     "crops away the whole output"),
    (dict(bias=np.zeros(4)), ValueError, r"bias must have shape \(3,\)"),
    (dict(output_size=(20, 20)), ValueError, "not reachable"),
    (dict(output_size=(10,)), ValueError, "output_size must have 2 spatial entries"),
])
def test_conv_transpose2d_errors(kwargs, error, match):
    args = dict(input=X, weight=WT)
    args.update(kwargs)
    for fn in (numbaconv.conv_transpose2d, reference.conv_transpose2d):
        with pytest.raises(error, match=match):
            fn(**args)


def test_conv1d_errors():
    x, w = np.zeros((1, 2, 10)), np.zeros((3, 2, 3))
    with pytest.raises(ValueError, match="tuple of 1"):
        numbaconv.conv1d(x, w, padding=(1, 2))  # 1-d asymmetric padding is ((1, 2),)
    with pytest.raises(ValueError, match="input must have shape"):
        numbaconv.conv1d(np.zeros((1, 1, 2, 10)), w)


def test_errors_come_before_any_work(monkeypatch):
    """Validation raises before a kernel runs: a failing algorithm would show if it ran."""
    from numbaconv import dispatch

    def boom(*args):
        raise AssertionError("a kernel ran on invalid arguments")

    monkeypatch.setattr(dispatch, "ALGORITHMS",
                        tuple(a.__class__(**{**a.__dict__, "run": boom})
                              for a in dispatch.ALGORITHMS))
    with pytest.raises(ValueError, match="bias"):
        numbaconv.conv2d(X, W, np.zeros(5), groups=2)


def test_output_that_cannot_fit_raises_memory_error_before_allocating():
    x, w = np.ones((1, 1, 2, 2), np.float32), np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(MemoryError, match=r"output \(1, 1, 1000003, 1000003\).*GiB"):
        numbaconv.conv_transpose2d(x, w, stride=10**6)
    big = np.lib.stride_tricks.as_strided(np.ones(1, np.float32), (1, 1, 400000, 400000),
                                          (0, 0, 0, 0))  # 640 GB of input, 4 bytes of memory
    with pytest.raises(MemoryError, match="contiguous float32 copy of the input needs"):
        numbaconv.conv2d(big, w, padding=1)
