"""padding_mode ('reflect', 'replicate', 'circular') and TensorFlow's 'same' (padding='same_tf')
for conv1d/conv2d."""

import numpy as np
import pytest

import numbaconv
from numbaconv import reference, shapes

MODES = ["reflect", "replicate", "circular"]
CONFIGS = [  # (x_shape, w_shape, kwargs)
    ((2, 3, 9, 8), (4, 3, 3, 3), dict(padding=(2, 1))),
    ((1, 4, 7, 11), (6, 2, 3, 5), dict(padding=2, stride=(2, 1), groups=2)),
    ((1, 3, 12, 10), (3, 1, 3, 3), dict(padding="same", dilation=2, groups=3)),
    ((2, 2, 6, 6), (5, 2, 4, 2), dict(padding="same")),
    ((1, 1, 5, 9), (2, 1, 5, 5), dict(padding=(2, 4), stride=2)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", CONFIGS)
def test_padding_modes_equal_torch_exactly_on_integer_data(mode, x_shape, w_shape, kwargs, rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(-4, 5, x_shape).astype(np.float64)
    w = rng.integers(-4, 5, w_shape).astype(np.float64)
    b = rng.integers(-4, 5, w_shape[0]).astype(np.float64)
    layer = torch.nn.Conv2d(x_shape[1], w_shape[0], w_shape[2:], padding_mode=mode,
                            dtype=torch.float64, **kwargs)
    layer.weight.data, layer.bias.data = torch.tensor(w), torch.tensor(b)
    want = layer(torch.tensor(x)).detach().numpy()
    for algorithm in ("auto", "direct", "gemm", "im2col", "reference"):
        y = numbaconv.conv2d(x, w, b, padding_mode=mode, algorithm=algorithm, **kwargs)
        assert np.array_equal(y, want), algorithm


@pytest.mark.parametrize("mode", MODES)
def test_conv1d_padding_modes(mode, rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(-4, 5, (2, 3, 10)).astype(np.float64)
    w = rng.integers(-4, 5, (4, 3, 3)).astype(np.float64)
    layer = torch.nn.Conv1d(3, 4, 3, padding=2, dilation=2, bias=False, padding_mode=mode,
                            dtype=torch.float64)
    layer.weight.data = torch.tensor(w)
    y = numbaconv.conv1d(x, w, padding=2, dilation=2, padding_mode=mode)
    assert np.array_equal(y, layer(torch.tensor(x)).detach().numpy())


def test_padding_modes_by_hand():
    x = np.array([[[1.0, 2.0, 3.0]]])
    w = np.ones((1, 1, 1))
    pad = dict(padding=2)
    assert numbaconv.conv1d(x, w, padding_mode="reflect", **pad).tolist() == \
        [[[3, 2, 1, 2, 3, 2, 1]]]
    assert numbaconv.conv1d(x, w, padding_mode="replicate", **pad).tolist() == \
        [[[1, 1, 1, 2, 3, 3, 3]]]
    assert numbaconv.conv1d(x, w, padding_mode="circular", **pad).tolist() == \
        [[[2, 3, 1, 2, 3, 1, 2]]]
    assert numbaconv.conv1d(x, w, padding_mode="zeros", **pad).tolist() == \
        [[[0, 0, 1, 2, 3, 0, 0]]]


def test_padding_mode_errors_and_inputs_unchanged():
    x = np.ones((1, 1, 3, 3))
    w = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="padding_mode='reflect' needs padding smaller"):
        numbaconv.conv2d(x, w, padding=3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='circular' needs padding no larger"):
        numbaconv.conv2d(x, w, padding=4, padding_mode="circular")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        numbaconv.conv2d(x, w, padding=1, padding_mode="mirror")
    xr = np.arange(9.0).reshape(1, 1, 3, 3)
    copy = xr.copy()
    numbaconv.conv2d(xr, w, padding=1, padding_mode="reflect")
    assert np.array_equal(xr, copy)


@pytest.mark.parametrize("size", [1, 5, 7, 8, 13, 224])
@pytest.mark.parametrize("k, s, d", [(1, 1, 1), (3, 2, 1), (4, 2, 1), (5, 3, 2), (7, 4, 1),
                                     (2, 5, 3)])
def test_same_tf_is_tensorflows_rule(size, k, s, d, rng):
    """Output ceil(size / stride), pads as numbaconv.shapes.same_padding, values as the explicit
    asymmetric padding (integer data: exact)."""
    x = rng.integers(-4, 5, (1, 2, size, size + 1)).astype(np.float32)
    w = rng.integers(-4, 5, (3, 2, k, k)).astype(np.float32)
    y = numbaconv.conv2d(x, w, stride=s, dilation=d, padding="same_tf")
    assert y.shape[2:] == (-(-size // s), -(-(size + 1) // s))
    pads = shapes.same_padding((size, size + 1), k, stride=s, dilation=d)
    assert np.array_equal(y, reference.conv2d(x, w, stride=s, dilation=d, padding=pads))
    # TensorFlow's documented total pad for one dimension
    total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
    assert pads[0] == (total // 2, total - total // 2)


def test_same_tf_with_padding_mode_and_in_explain():
    x = np.arange(49.0).reshape(1, 1, 7, 7)
    w = np.ones((1, 1, 3, 3))
    y = numbaconv.conv2d(x, w, stride=2, padding="same_tf", padding_mode="replicate")
    assert y.shape == (1, 1, 4, 4)
    assert numbaconv.explain(x.shape, w.shape, stride=2, padding="same_tf").problem.padding == \
        ((1, 1), (1, 1))


def test_same_tf_is_refused_where_the_input_size_is_unknown():
    with pytest.raises(ValueError, match="depends on the input size"):
        numbaconv.Conv2d(1, 1, 3, stride=2, padding="same_tf")
