"""padding_mode ('reflect', 'replicate', 'circular') and TensorFlow's 'same' (padding='same_tf')
for conv1d, conv2d and conv3d, and padding modes of transposed convolution (their adjoints)."""

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


# ---------------------------------------------------------------- conv3d

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("data_format", ["NCDHW", "NDHWC"])
def test_conv3d_padding_modes_equal_torch(mode, data_format, rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(-4, 5, (2, 4, 5, 6, 7)).astype(np.float64)
    w = rng.integers(-4, 5, (6, 2, 3, 3, 2)).astype(np.float64)
    layer = torch.nn.Conv3d(4, 6, (3, 3, 2), padding=(1, 2, 1), stride=(1, 2, 1), groups=2,
                            padding_mode=mode, bias=False, dtype=torch.float64)
    layer.weight.data = torch.tensor(w)
    want = layer(torch.tensor(x)).detach().numpy()
    kwargs = dict(padding=(1, 2, 1), stride=(1, 2, 1), groups=2, padding_mode=mode)
    if data_format == "NCDHW":
        y = numbaconv.conv3d(x, w, **kwargs)
    else:
        y = numbaconv.conv3d(x.transpose(0, 2, 3, 4, 1), w.transpose(2, 3, 4, 1, 0),
                             data_format="NDHWC", **kwargs).transpose(0, 4, 1, 2, 3)
    assert np.array_equal(y, want)


# ---------------------------------------------------------------- transposed convolution

TRANSPOSED = [  # (nd, input shape (N, C_in, *spatial), weight shape (C_in, C_out/G, *k), kwargs)
    (2, (2, 6, 5, 6), (6, 2, 3, 3), dict(stride=2, padding=1, output_padding=1, groups=2)),
    (2, (1, 4, 6, 7), (4, 3, 3, 3), dict(stride=1, padding=2)),
    (2, (1, 4, 3, 4), (4, 2, 3, 2), dict(stride=3, padding=(1, 1), dilation=2, output_padding=2)),
    (2, (2, 3, 4, 4), (3, 5, 4, 4), dict(stride=2, padding=((1, 2), (2, 0)))),
    (1, (2, 4, 7), (4, 3, 5), dict(stride=2, padding=3, dilation=1, output_padding=1)),
    (3, (1, 4, 3, 4, 3), (4, 2, 3, 3, 3), dict(stride=(1, 2, 2), padding=(1, 2, 1),
                                               output_padding=(0, 1, 0), groups=2)),
]
_CONV = {1: numbaconv.conv1d, 2: numbaconv.conv2d, 3: numbaconv.conv3d}
_CONV_T = {1: numbaconv.conv_transpose1d, 2: numbaconv.conv_transpose2d,
           3: numbaconv.conv_transpose3d}
_REF_T = {1: reference.conv_transpose1d, 2: reference.conv_transpose2d,
          3: reference.conv_transpose3d}


def _conv_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k != "output_padding"}


@pytest.mark.parametrize("mode", MODES + ["zeros"])
@pytest.mark.parametrize("nd, x_shape, w_shape, kwargs", TRANSPOSED)
def test_transposed_padding_modes_are_the_adjoint_of_the_convolution(nd, x_shape, w_shape,
                                                                     kwargs, mode, rng):
    """<conv(u, w; mode), v> == <u, conv_transpose(v, w; mode)> exactly on integers; the result
    is torch's gradient of the padded convolution, equals the reference and the channels-last
    path, and zeros is the usual transposed convolution."""
    v = rng.integers(-4, 5, x_shape).astype(np.float64)
    w = rng.integers(-4, 5, w_shape).astype(np.float64)
    y = _CONV_T[nd](v, w, padding_mode=mode, **kwargs)
    assert np.array_equal(y, _REF_T[nd](v, w, padding_mode=mode, **kwargs))
    if mode == "zeros":
        assert np.array_equal(y, _REF_T[nd](v, w, **kwargs))
    u = rng.integers(-4, 5, y.shape).astype(np.float64)
    cu = _CONV[nd](u, w, padding_mode=mode, **_conv_kwargs(kwargs))
    assert cu.shape == v.shape
    assert np.sum(cu * v) == np.sum(u * y)
    perm = (0,) + tuple(range(2, nd + 2)) + (1,)
    back = (0, nd + 1) + tuple(range(1, nd + 1))
    y_last = _CONV_T[nd](v.transpose(perm), w, padding_mode=mode, **kwargs,
                         data_format=("NWC", "NHWC", "NDHWC")[nd - 1],
                         weight_format=("IOW", "IOHW", "IODHW")[nd - 1])
    assert np.array_equal(y_last.transpose(back), y)
    torch = pytest.importorskip("torch")
    ut = torch.tensor(u, requires_grad=True)
    pairs = numbaconv._args.explicit_padding(kwargs["padding"], nd)
    flat = tuple(p for lo_hi in reversed(pairs) for p in lo_hi)  # torch.pad: last axis first
    padded = torch.nn.functional.pad(ut, flat, mode="constant" if mode == "zeros" else mode)
    conv = (None, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
            torch.nn.functional.conv3d)[nd]
    c = _conv_kwargs(kwargs)
    conv(padded, torch.tensor(w), stride=c["stride"], dilation=c.get("dilation", 1),
         groups=c.get("groups", 1)).backward(torch.tensor(v))
    assert np.array_equal(ut.grad.numpy(), y)


def test_transposed_padding_mode_bias_output_size_and_out(rng):
    v = rng.integers(-4, 5, (1, 4, 6, 6)).astype(np.float32)
    w = rng.integers(-4, 5, (4, 3, 3, 3)).astype(np.float32)
    b = np.array([1.0, -2.0, 3.0], np.float32)
    kw = dict(stride=2, padding=1, padding_mode="reflect")
    y = numbaconv.conv_transpose2d(v, w, b, output_size=(12, 12), **kw)
    assert y.shape == (1, 3, 12, 12) and y.dtype == np.float32
    no_bias = numbaconv.conv_transpose2d(v, w, output_padding=1, **kw)
    assert np.array_equal(y, no_bias + b[:, None, None])
    assert np.array_equal(y, reference.conv_transpose2d(v, w, b, output_padding=1, **kw))
    out = np.empty_like(y)
    assert numbaconv.conv_transpose2d(v, w, b, output_padding=1, out=out, **kw) is out
    assert np.array_equal(out, y)
    unbatched = numbaconv.conv_transpose2d(v[0], w, b, output_padding=1, **kw)
    assert np.array_equal(unbatched, y[0])
    y64 = numbaconv.conv_transpose2d(v, w, b.astype(np.float64), output_padding=1, **kw)
    assert y64.dtype == np.float64 and np.array_equal(y64, y)


def test_transposed_padding_mode_errors_and_inputs_unchanged():
    v = np.arange(8.0).reshape(1, 2, 2, 2)
    w = np.ones((2, 1, 3, 3))
    copies = v.copy(), w.copy()
    # the unpadded output is 4x4: padding 1 leaves 2x2 (reflect needs padding < 2)
    numbaconv.conv_transpose2d(v, w, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='reflect' needs padding smaller than "
                                         "the output size"):
        numbaconv.conv_transpose2d(v, w, padding=((2, 0), (0, 0)), padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode='circular' needs padding no larger"):
        numbaconv.conv_transpose2d(v, w, padding=((0, 0), (3, 0)), padding_mode="circular")
    with pytest.raises(ValueError, match="leaves no output"):
        numbaconv.conv_transpose2d(v, w, padding=3, padding_mode="replicate")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        numbaconv.conv_transpose2d(v, w, padding=1, padding_mode="mirror")
    with pytest.raises(ValueError, match=r"bias must have shape \(1,\)"):
        numbaconv.conv_transpose2d(v, w, np.ones(2), padding=1, padding_mode="circular")
    with pytest.raises(ValueError, match="out must be a writeable float64 array"):
        numbaconv.conv_transpose2d(v, w, padding=1, padding_mode="circular",
                                   out=np.empty((1, 1, 3, 3)))
    assert np.array_equal(v, copies[0]) and np.array_equal(w, copies[1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("nd", [1, 2])
def test_transposed_layer_with_padding_mode_forward_and_backward(nd, mode, rng):
    """Forward: the functional call. Backward on integers, exactly: dx is the convolution of
    grad_output with the mode (the adjoint's adjoint); dw satisfies <dw, w2> == <g, y(x, w2)>
    for any w2 (the layer is linear in w); db sums grad_output."""
    cls = numbaconv.ConvTranspose2d if nd == 2 else numbaconv.ConvTranspose1d
    layer = cls(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, padding_mode=mode,
                dtype=np.float64)
    layer.weight = rng.integers(-4, 5, layer.weight.shape).astype(np.float64)
    layer.bias = rng.integers(-4, 5, 6).astype(np.float64)
    assert f"padding_mode={mode}" in repr(layer)
    x = rng.integers(-4, 5, (2, 4) + (5,) * nd).astype(np.float64)
    y = layer(x)
    ct = numbaconv.conv_transpose2d if nd == 2 else numbaconv.conv_transpose1d
    hyper = dict(stride=2, padding=1, output_padding=1, groups=2, padding_mode=mode)
    assert np.array_equal(y, ct(x, layer.weight, layer.bias, **hyper))
    g = rng.integers(-4, 5, y.shape).astype(np.float64)
    dx, dw, db = layer.backward(g)
    conv = numbaconv.conv2d if nd == 2 else numbaconv.conv1d
    assert np.array_equal(dx, conv(g, layer.weight, stride=2, padding=1, groups=2,
                                   padding_mode=mode))
    w2 = rng.integers(-4, 5, layer.weight.shape).astype(np.float64)
    assert np.sum(dw * w2) == np.sum(g * ct(x, w2, **hyper))
    assert np.array_equal(db, g.sum(axis=(0,) + tuple(range(2, nd + 2))))
