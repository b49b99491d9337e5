"""Layers: torch's constructors, errors, initialisation, repr, state_dict, calls and costs.

Comparisons with torch use integer-valued weights and inputs small enough that every partial sum
is exact, so results must be equal, not close. Torch is optional (``pytest.importorskip``).
"""

import math

import numpy as np
import pytest

import numbaconv
from numbaconv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------- the seed examples

def test_seed_parameter_counts():
    assert Conv2d(3, 10, 5).num_params == 760
    assert Conv2d(3, 10, 5, bias=False).num_params == 750
    assert Conv2d(3, 10, 1).num_params == 40
    assert Conv2d(3, 10, 1, bias=False).num_params == 30
    assert Conv2d(1, 32, 5, padding=1).num_params == 832
    assert Conv2d(8, 32, 3, padding=1).num_params == 2336
    # two 3x3 layers see as far as one 5x5 with fewer parameters
    assert Conv2d(32, 32, 5, padding=2).num_params == 25632
    assert 2 * Conv2d(32, 32, 3, padding=1).num_params == 18496
    # a 1x1 reduction before the 3x3
    assert Conv2d(256, 512, 3, padding=1).num_params == 1180160
    assert Conv2d(256, 32, 1).num_params + Conv2d(32, 512, 3, padding=1).num_params == 156192


def test_seed_output_shapes():
    assert Conv2d(32, 512, 3, padding="same").output_shape((32, 128, 128)) == (512, 128, 128)
    assert Conv2d(32, 512, 5, padding=1, stride=2).output_shape((32, 128, 128)) == (512, 63, 63)
    up = ConvTranspose2d(in_channels=32, out_channels=16, kernel_size=3, stride=2, padding=1)
    assert up.output_shape((32, 128, 128)) == (16, 255, 255)
    assert Conv2d(3, 96, 11, stride=4).output_shape((256, 3, 227, 227)) == (256, 96, 55, 55)
    assert Conv2d(512, 32, 1).output_shape((1, 512, 227, 227)) == (1, 32, 227, 227)
    d1, d2 = Conv2d(1, 64, 4, 2, 1), Conv2d(64, 128, 4, 2, 1)   # MNIST discriminator
    assert d2.output_shape(d1.output_shape((1, 1, 28, 28))) == (1, 128, 7, 7)
    assert d2.weight.shape == (128, 64, 4, 4)


def test_seed_worked_example_exactly():
    # Conv2d(3, 2, 3, stride=2, padding=1) with the cs231n weights, biases and input.
    conv = Conv2d(in_channels=3, out_channels=2, kernel_size=3, stride=2, padding=1, bias=True)
    w0 = [[[-1, -1, 0], [1, 1, 1], [1, 1, 0]], [[1, 1, -1], [0, 0, 0], [1, 1, -1]],
          [[0, -1, 0], [-1, 0, -1], [1, 0, 1]]]
    w1 = [[[-1, 0, 0], [1, 1, 1], [-1, -1, 0]], [[1, -1, -1], [-1, 1, -1], [1, -1, 0]],
          [[1, -1, 0], [0, 1, 1], [1, 0, 1]]]
    conv.load_state_dict({"weight": np.array([w0, w1]), "bias": np.array([1, 0])})
    x = np.array([[[1, 2, 0, 1, 2], [1, 0, 2, 2, 0], [2, 0, 0, 2, 2], [0, 0, 2, 2, 0],
                   [2, 2, 2, 1, 2]],
                  [[2, 0, 0, 1, 1], [1, 0, 2, 1, 2], [2, 0, 2, 2, 1], [0, 2, 0, 0, 1],
                   [1, 2, 1, 2, 0]],
                  [[0, 0, 2, 1, 2], [0, 1, 0, 2, 0], [1, 1, 0, 0, 2], [0, 0, 0, 1, 1],
                   [0, 1, 2, 0, 2]]], np.float32)
    expected = [[[[7, 9, 10], [0, 6, 10], [2, 5, 2]], [[4, 4, 4], [5, 1, 2], [2, 6, 0]]]]
    y = conv(x[None])
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(conv(x), expected[0])     # unbatched


def test_issue_example_costs():
    up = ConvTranspose2d(3, 1, kernel_size=2, stride=2)
    assert (up.macs((1, 3, 2, 2)), up.bias_adds((1, 3, 2, 2)), up.flops((1, 3, 2, 2))) == \
        (48, 16, 96)
    assert up.output_shape((1, 3, 2, 2)) == (1, 1, 4, 4)


# ---------------------------------------------------------------------- construction

@pytest.mark.parametrize("make,error,message", [
    (lambda: Conv2d(6, 8, 3, groups=4), ValueError,
     r"Conv2d: in_channels must be divisible by groups, got in_channels=6 and groups=4"),
    (lambda: ConvTranspose2d(8, 6, 3, groups=4), ValueError,
     r"ConvTranspose2d: out_channels must be divisible by groups, got out_channels=6"),
    (lambda: Conv2d(0, 8, 3), ValueError, r"in_channels must be >= 1, got 0"),
    (lambda: Conv2d(3.0, 8, 3), TypeError, r"in_channels must be an int, got 3.0"),
    (lambda: Conv2d(3, 8, 0), ValueError, r"kernel_size must be >= 1"),
    (lambda: Conv2d(3, 8, (3, 3, 3)), ValueError, r"kernel_size must be an int or a tuple of 2"),
    (lambda: Conv2d(3, 8, 3, stride=0), ValueError, r"stride must be >= 1"),
    (lambda: Conv2d(3, 8, 3, padding=-1), ValueError, r"padding must be non-negative"),
    (lambda: Conv2d(3, 8, 3, padding="full"), ValueError,
     r"padding must be an int, a tuple, 'valid', 'same' or 'same_tf', got 'full'"),
    (lambda: Conv2d(3, 8, 3, stride=2, padding="same"), ValueError,
     r"padding='same' requires stride 1"),
    (lambda: ConvTranspose2d(3, 8, 3, padding="same"), ValueError,
     r"padding='same' is not supported for transposed convolution"),
    (lambda: Conv2d(3, 8, 3, groups=0), ValueError, r"groups must be >= 1, got 0"),
    (lambda: Conv2d(3, 8, 3, padding_mode="mirror"), ValueError,
     r"padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\)"),
    (lambda: ConvTranspose2d(3, 8, 3, padding_mode="mirror"), ValueError,
     r"padding_mode must be one of"),
    (lambda: ConvTranspose2d(3, 8, 3, stride=2, output_padding=2), ValueError,
     r"output_padding must be smaller than either stride or dilation"),
    (lambda: Conv2d(3, 8, 3, bias=None), TypeError, r"bias must be True or False, got None"),
    (lambda: Conv2d(3, 8, 3, dtype="float16"), TypeError,
     r"dtype must be float32 or float64, got 'float16'"),
    (lambda: Conv2d(3, 8, 3, device="cuda"), ValueError, r"device must be None or 'cpu'"),
    (lambda: Conv1d(3, 8, (3, 3)), ValueError, r"kernel_size must be an int or a tuple of 1"),
])
def test_bad_constructor_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_attributes_and_defaults():
    conv = Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(1, 2), groups=2)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.padding_mode) == \
        (4, 8, (3, 5), (2, 1), (1, 2), (1, 1), 2, "zeros")
    assert conv.weight.shape == (8, 2, 3, 5) and conv.bias.shape == (8,)
    assert conv.weight.dtype == conv.bias.dtype == np.float32 and conv.weight.flags.c_contiguous
    up = ConvTranspose2d(4, 6, 3, groups=2, dtype=np.float64, device="cpu")
    assert up.weight.shape == (4, 3, 3, 3) and up.weight.dtype == np.float64
    assert Conv2d(1, 1, 3, padding=((0, 1), (1, 1))).padding == ((0, 1), (1, 1))
    assert Conv2d(1, 1, 3, padding=((1, 1), (2, 2))).padding == (1, 2)


def test_initialisation_bounds_and_seeding():
    for layer in (Conv2d(64, 128, 3, rng=0), ConvTranspose2d(16, 32, 4, groups=4, rng=0),
                  Conv1d(3, 300, 7, rng=0)):
        bound = 1 / math.sqrt(layer.fan_in())
        assert np.abs(layer.bias).max() <= bound
        assert np.abs(layer.weight).max() <= bound
        assert np.abs(layer.weight).max() > 0.99 * bound      # spread over the whole interval
        assert abs(float(layer.weight.mean())) < 0.05 * bound
    a, b = Conv2d(3, 8, 3, rng=7), Conv2d(3, 8, 3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert not np.array_equal(a.weight, Conv2d(3, 8, 3, rng=8).weight)
    a.reset_parameters(7)
    np.testing.assert_array_equal(a.weight, b.weight)


@pytest.mark.parametrize("make", [
    lambda nn: nn.Conv2d(6, 8, (3, 5), groups=2),
    lambda nn: nn.ConvTranspose2d(6, 8, 4, groups=2),
    lambda nn: nn.Conv1d(3, 5, 7),
    lambda nn: nn.ConvTranspose1d(4, 2, 3),
])
def test_fan_in_and_bound_as_torch(make):
    torch = _torch()
    module = make(torch.nn)
    fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
    layer = getattr(numbaconv, type(module).__name__).from_torch(module)
    assert layer.fan_in() == fan_in
    # torch's own draw respects the same bound (kaiming_uniform with a=sqrt(5))
    bound = 1 / math.sqrt(fan_in)
    assert float(module.weight.detach().abs().max()) <= bound
    assert float(module.bias.detach().abs().max()) <= bound


# ---------------------------------------------------------------------- repr and state_dict

REPR_CASES = [
    ("Conv2d", (3, 64, 3), {}),
    ("Conv2d", (3, 64, 3), dict(padding=1, bias=False)),
    ("Conv2d", (16, 33, (3, 5)), dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1))),
    ("Conv2d", (8, 8, 3), dict(padding="same", groups=8, padding_mode="reflect")),
    ("Conv2d", (8, 8, 3), dict(padding="valid", padding_mode="circular")),
    ("Conv1d", (16, 33, 3), dict(stride=2)),
    ("ConvTranspose2d", (16, 33, 3), dict(stride=2, padding=1, output_padding=1, groups=1)),
    ("ConvTranspose2d", (8, 4, (3, 5)), dict(stride=(2, 1), dilation=2, groups=4, bias=False)),
    ("ConvTranspose1d", (4, 2, 3), dict(stride=3, padding=1, output_padding=2)),
]


@pytest.mark.parametrize("name,args,kwargs", REPR_CASES)
def test_repr_matches_torch(name, args, kwargs):
    torch = _torch()
    assert repr(getattr(numbaconv, name)(*args, **kwargs)) == \
        repr(getattr(torch.nn, name)(*args, **kwargs))


def test_repr_without_torch():
    assert repr(Conv2d(3, 64, 3, padding=1, bias=False)) == \
        "Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)"
    assert repr(ConvTranspose2d(16, 33, 3, stride=2, output_padding=1, groups=1)) == \
        "ConvTranspose2d(16, 33, kernel_size=(3, 3), stride=(2, 2), output_padding=(1, 1))"
    assert repr(Conv2d(8, 8, 3, padding="same", padding_mode="reflect")) == \
        "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=same, padding_mode=reflect)"


@pytest.mark.parametrize("name,args,kwargs", REPR_CASES)
def test_state_dict_round_trip_with_torch(name, args, kwargs):
    torch = _torch()
    module = getattr(torch.nn, name)(*args, **kwargs).double()
    layer = getattr(numbaconv, name)(*args, **kwargs, dtype="float64", rng=1)
    # torch -> numbaconv: the parameters straight from a torch state_dict (tensors)
    missing, unexpected = layer.load_state_dict(module.state_dict())
    assert missing == unexpected == []
    state = layer.state_dict()
    assert list(state) == list(module.state_dict())
    for key, value in module.state_dict().items():
        assert state[key].shape == tuple(value.shape)
        np.testing.assert_array_equal(state[key], value.numpy())
    # numbaconv -> torch: fresh values, loaded by torch's own load_state_dict (strict)
    layer.reset_parameters(2)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    for key, value in module.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), layer.state_dict()[key])


def test_state_dict_of_a_parameter_that_requires_grad():
    torch = _torch()
    module = torch.nn.Conv2d(2, 3, 3)
    layer = Conv2d(2, 3, 3)
    layer.load_state_dict({"weight": module.weight, "bias": module.bias})   # Parameters
    np.testing.assert_array_equal(layer.weight, module.weight.detach().numpy())


def test_state_dict_rules():
    layer = Conv2d(2, 3, 3, rng=0)
    state = layer.state_dict(prefix="conv1.")
    assert list(state) == ["conv1.weight", "conv1.bias"] and state["conv1.weight"] is layer.weight
    before = layer.weight.copy()
    with pytest.raises(KeyError, match=r"missing keys \['bias'\], unexpected keys \['b'\]"):
        layer.load_state_dict({"weight": np.zeros((3, 2, 3, 3)), "b": np.zeros(3)})
    with pytest.raises(ValueError, match=r"size mismatch for bias: copying a parameter of shape "
                                         r"\(4,\), the shape in this Conv2d is \(3,\)"):
        layer.load_state_dict({"weight": np.zeros((3, 2, 3, 3)), "bias": np.zeros(4)})
    np.testing.assert_array_equal(layer.weight, before)       # nothing loaded on failure
    missing, unexpected = layer.load_state_dict({"weight": np.ones((3, 2, 3, 3))}, strict=False)
    assert (missing, unexpected) == (["bias"], [])
    assert layer.weight.dtype == np.float32 and (layer.weight == 1).all()
    with pytest.raises(KeyError, match=r"unexpected keys \['bias'\]"):
        Conv2d(2, 3, 3, bias=False).load_state_dict({"weight": np.zeros((3, 2, 3, 3)),
                                                      "bias": np.zeros(3)})


# ---------------------------------------------------------------------- calling

CALL_CASES = [
    ("Conv2d", (3, 4, 3), dict(padding=1), (2, 3, 7, 6)),
    ("Conv2d", (4, 6, (2, 3)), dict(stride=(2, 1), dilation=(1, 2), groups=2, bias=False),
     (1, 4, 9, 8)),
    ("Conv2d", (3, 4, 4), dict(padding="same", padding_mode="reflect"), (1, 3, 6, 7)),
    ("Conv2d", (3, 4, 3), dict(padding=(2, 1), padding_mode="replicate", stride=2),
     (1, 3, 6, 7)),
    ("Conv2d", (3, 4, 3), dict(padding=2, padding_mode="circular"), (3, 5, 6)),
    ("Conv1d", (2, 3, 3), dict(padding=1, padding_mode="reflect"), (2, 2, 9)),
    ("Conv1d", (2, 4, 5), dict(stride=2, groups=2), (2, 2, 17)),
    ("ConvTranspose2d", (4, 2, 3), dict(stride=2, padding=1, output_padding=1), (1, 4, 5, 4)),
    ("ConvTranspose2d", (4, 6, 2), dict(stride=2, groups=2, dilation=2, bias=False), (4, 3, 3)),
    ("ConvTranspose1d", (3, 2, 4), dict(stride=3, padding=1), (2, 3, 6)),
]


@pytest.mark.parametrize("name,args,kwargs,shape", CALL_CASES)
def test_call_equals_torch_exactly(name, args, kwargs, shape):
    torch = _torch()
    rng = np.random.default_rng(3)
    module = getattr(torch.nn, name)(*args, **kwargs).double()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.integers(-4, 5, tuple(p.shape)).astype(np.float64)))
    x = rng.integers(-4, 5, shape).astype(np.float32)
    expected = module(torch.from_numpy(x.astype(np.float64))).detach().numpy()
    layer = getattr(numbaconv, name).from_torch(module, dtype="float32")
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == expected.shape == layer.output_shape(shape)
    np.testing.assert_array_equal(y, expected)


def test_transposed_call_with_output_size():
    up = ConvTranspose2d(2, 3, 3, stride=2, padding=1, rng=0)
    x = np.ones((1, 2, 5, 5), np.float32)
    assert up(x).shape == (1, 3, 9, 9)
    assert up(x, output_size=(10, 10)).shape == (1, 3, 10, 10)
    assert up.output_shape(x.shape, output_size=(10, 10)) == (1, 3, 10, 10)
    with pytest.raises(ValueError, match=r"output_size \(12, 12\) is not reachable"):
        up(x, output_size=(12, 12))


def test_padding_mode_limits_as_torch():
    with pytest.raises(ValueError, match="padding_mode='reflect' needs padding smaller than the "
                                         "input size"):
        Conv2d(1, 1, 5, padding=3, padding_mode="reflect")(np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="padding_mode='circular' needs padding no larger"):
        Conv1d(1, 1, 9, padding=4, padding_mode="circular")(np.ones((1, 1, 3)))


def test_reassigned_and_modified_weights_are_used():
    conv = Conv2d(2, 3, 3, padding=1, rng=0)
    x = np.arange(2 * 5 * 5, dtype=np.float32).reshape(1, 2, 5, 5) % 7
    first = conv(x)
    np.testing.assert_array_equal(first, numbaconv.conv2d(x, conv.weight, conv.bias, padding=1))
    conv.weight = np.ones((3, 2, 3, 3))                   # reassigned: converted to float32
    assert conv.weight.dtype == np.float32
    second = conv(x)
    np.testing.assert_array_equal(second, numbaconv.conv2d(x, np.ones((3, 2, 3, 3), np.float32),
                                                           conv.bias, padding=1))
    conv.weight[0] = 2                                    # modified in place
    conv.bias = None
    third = conv(x)
    np.testing.assert_array_equal(third[0, 0], 2 * third[0, 1])
    np.testing.assert_array_equal(third, numbaconv.conv2d(x, conv.weight, None, padding=1))
    assert conv.num_params == 54 and "bias=False" in repr(conv)
    with pytest.raises(ValueError, match=r"Conv2d: weight must have shape \(3, 2, 3, 3\), got "
                                         r"\(3, 2, 3\)"):
        conv.weight = np.ones((3, 2, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        conv.bias = np.ones(2)


# ---------------------------------------------------------------------- shapes and costs

def test_costs_follow_the_formulas():
    conv = Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
    shape = (2, 8, 15, 15)
    out = conv.output_shape(shape)
    assert out == (2, 16, 8, 8)
    assert conv.macs(shape) == 2 * 16 * 8 * 8 * (8 // 2) * 9
    assert conv.flops(shape) == 2 * conv.macs(shape)
    assert conv.bias_adds(shape) == math.prod(out)
    assert conv.macs(shape[1:]) * 2 == conv.macs(shape)          # unbatched means batch 1
    assert conv.output_shape(shape[1:]) == out[1:]
    up = ConvTranspose1d(4, 6, 3, stride=2, groups=2, bias=False)
    assert up.output_shape((1, 4, 10)) == (1, 6, 21)
    assert up.macs((1, 4, 10)) == 4 * 10 * (6 // 2) * 3                # on the input grid
    assert up.bias_adds((1, 4, 10)) == 0
    problem = conv.problem(shape)
    assert str(problem) == "mb2ic8ih15iw15oc16g2kh3kw3sh2sw2ph1pw1b"


@pytest.mark.parametrize("layer,shape,message", [
    (Conv2d(3, 8, 3), (1, 4, 8, 8), r"Conv2d\(3, 8, .*\) expects 3 input channels, got input of "
                                    r"shape \(1, 4, 8, 8\)"),
    (Conv2d(3, 8, 5), (1, 3, 4, 4), r"kernel size \(5, 5\) .* is larger than the padded input "
                                    r"size \(4, 4\)"),
    (Conv2d(3, 8, 3), (3, 8), r"takes inputs of shape \(N, C, \*spatial\) or \(C, \*spatial\) "
                              r"with 2 spatial dimension\(s\), got \(3, 8\)"),
    (Conv2d(3, 8, 3), (1, 3, 8), r"expects 3 input channels, got input of shape \(1, 3, 8\)"),
    (ConvTranspose2d(3, 8, 3, padding=2), (1, 3, 1, 1), r"crops away the whole output"),
    (Conv1d(3, 8, 3), (1, 3, 8.0), r"input_shape must be a tuple of ints"),
])
def test_impossible_inputs(layer, shape, message):
    with pytest.raises((ValueError, TypeError), match=message):
        layer.output_shape(shape)


def test_output_size_only_for_transposed_layers():
    with pytest.raises(TypeError, match="output_size applies to transposed layers only"):
        Conv2d(1, 1, 1).output_shape((1, 1, 2, 2), output_size=(2, 2))
