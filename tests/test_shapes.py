"""Shape, parameter and cost arithmetic, including every worked example of the seed notes."""

import numpy as np
import pytest

from numbaconv import shapes
from numbaconv.problem import ConvProblem


@pytest.mark.parametrize("args,params", [
    ((3, 10, 5), 760),          # Conv2d(3, 10, 5, bias=True)
    ((1, 32, 5), 832),          # Conv2d(1, 32, 5, padding=1)
    ((8, 32, 3), 2336),         # Conv2d(8, 32, 3, padding=1)
    ((32, 32, 5), 25632),       # the 5x5 "large kernel" layer
    ((256, 512, 3), 1180160),   # Conv2d(256, 512, 3)
    ((256, 32, 1), 8224),       # 1x1 reduction ...
    ((32, 512, 3), 147968),     # ... then 3x3
])
def test_seed_parameter_counts(args, params):
    assert shapes.num_params(*args) == params


def test_seed_parameter_counts_without_bias_and_1x1():
    assert shapes.num_params(3, 10, 5, bias=False) == 750
    assert shapes.num_params(3, 10, 1) == 40
    assert shapes.num_params(3, 10, 1, bias=False) == 30


def test_seed_small_kernels_beat_large_kernel_in_parameters():
    two_3x3 = 2 * shapes.num_params(32, 32, 3)
    one_5x5 = shapes.num_params(32, 32, 5)
    assert two_3x3 == 18496 < one_5x5 == 25632
    assert shapes.receptive_field([3, 3]) == shapes.receptive_field([5]) == 5


def test_seed_output_sizes():
    # (128 - 5 + 2) / 2 + 1 = 63, floored: Conv2d(32, 512, 5, padding=1, stride=2) on 128x128
    assert shapes.conv_output_size((128, 128), 5, stride=2, padding=1) == (63, 63)
    cost = shapes.conv_cost((32, 128, 128), 512, 5, stride=2, padding=1)
    assert cost.output_shape == (512, 63, 63)
    # ConvTranspose2d(32, 16, 3, stride=2, padding=1) on 128x128: 2*(128-1) - 2 + 3 = 255
    assert shapes.conv_transpose_output_size((128, 128), 3, stride=2, padding=1) == (255, 255)
    cost = shapes.conv_cost((32, 128, 128), 16, 3, stride=2, padding=1, transposed=True)
    assert cost.output_shape == (16, 255, 255)
    # AlexNet conv1: (227 - 11) / 4 + 1 = 55
    assert shapes.conv_output_size(227, 11, stride=4) == 55
    # padding='same' keeps the size: Conv2d(32, 512, 3, padding='same') on 32x128x128
    assert shapes.conv_cost((32, 128, 128), 512, 3, padding="same").output_shape == (512, 128, 128)
    # 1x1 reduction keeps the spatial size: 512 -> 32 channels at 227x227
    assert shapes.conv_cost((1, 512, 227, 227), 32, 1).output_shape == (1, 32, 227, 227)


def test_seed_mnist_discriminator_shapes():
    # nn.Conv2d(1, 64, 4, 2, 1) then nn.Conv2d(64, 128, 4, 2, 1) on 28x28
    assert shapes.conv_output_size(28, 4, stride=2, padding=1) == 14
    assert shapes.conv_output_size(14, 4, stride=2, padding=1) == 7
    assert shapes.num_params(64, 128, 4) == 64 * 128 * 16 + 128


def test_dilated_output_size_formula():
    # the dilated kernel spans d*(k-1)+1 = 5: (7 + 2 - 5) / 1 + 1 = 5
    assert shapes.conv_output_size(7, 3, padding=1, dilation=2) == 5
    assert shapes.conv_output_size((10, 9), (3, 2), stride=(2, 3), padding=((0, 1), (2, 0)),
                                   dilation=(1, 2)) == (5, 3)


def test_same_padding():
    assert shapes.same_padding(10, 3) == (1, 1)
    assert shapes.same_padding(10, 4) == (1, 2)          # odd total: extra at the end
    assert shapes.same_padding(10, 3, dilation=2) == (2, 2)
    assert shapes.same_padding(224, 3, stride=2) == (0, 1)  # TensorFlow's rule for stride 2
    assert shapes.same_padding(7, 1, stride=2) == (0, 0)
    for i in range(1, 30):
        for k in range(1, 6):
            for s in range(1, 4):
                for d in range(1, 3):
                    pad = shapes.same_padding(i, k, stride=s, dilation=d)
                    assert shapes.conv_output_size(i, k, s, (pad,), d) == -(-i // s)


def test_transposed_sizes_and_output_padding():
    assert shapes.conv_transpose_output_size(4, 4, stride=2, padding=1) == 8
    assert shapes.conv_transpose_output_size(2, 2, stride=2) == 4
    assert shapes.conv_transpose_output_size(5, 3, stride=3, padding=1, output_padding=2,
                                             dilation=2) == 17
    assert shapes.transposed_output_padding(128, 256, 3, stride=2, padding=1) == 1
    assert shapes.transposed_output_padding((4, 4), (8, 12), 4, stride=(2, 3), padding=1) == (0, 1)
    with pytest.raises(ValueError, match="output_size"):
        shapes.transposed_output_padding(128, 257, 3, stride=2, padding=1)
    # transposed conv inverts the conv size map whenever stride divides evenly
    for i in range(1, 20):
        o = shapes.conv_output_size(i, 3, stride=2, padding=1)
        back = shapes.conv_transpose_output_size(o, 3, stride=2, padding=1)
        assert back in (i, i - 1)


def test_receptive_field():
    assert shapes.receptive_field([3]) == 3
    assert shapes.receptive_field([3, 3, 3]) == 7
    assert shapes.receptive_field([(3, 1, 2)]) == 5               # dilated 3x3
    assert shapes.receptive_field([(7, 2), (3, 2), 3]) == 19      # 7 + 2*2 + 2*4
    assert shapes.receptive_field([((3, 5), 1), ((3, 1), (2, 1))]) == (5, 5)
    assert shapes.receptive_field([{"kernel_size": 11, "stride": 4}, {"kernel_size": 5}]) == 27
    with pytest.raises(ValueError):
        shapes.receptive_field([])


def test_costs_macs_flops_bias():
    # ConvTranspose2d(3, 1, 2, stride=2) on 1x3x2x2: 48 MACs on the input grid + 16 bias adds
    cost = shapes.conv_cost((1, 3, 2, 2), 1, 2, stride=2, transposed=True)
    assert (cost.macs, cost.flops, cost.bias_adds, cost.params) == (48, 96, 16, 13)
    # AlexNet conv1 on 227x227: 96 * 55 * 55 * 3 * 11 * 11 MACs
    cost = shapes.conv_cost((1, 3, 227, 227), 96, 11, stride=4)
    assert cost.macs == 96 * 55 * 55 * 363 and cost.flops == 2 * cost.macs
    assert cost.bias_adds == 96 * 55 * 55 and cost.params == 34944
    # depthwise: one input channel per output channel
    cost = shapes.conv_cost((1, 144, 56, 56), 144, 3, padding=1, groups=144, bias=False)
    assert cost.macs == 144 * 56 * 56 * 9 and cost.bias_adds == 0 and cost.params == 1296
    # 1-d with a tuple kernel, unbatched
    cost = shapes.conv_cost((4, 100), 8, (5,), stride=2)
    assert cost.output_shape == (8, 48) and cost.macs == 8 * 48 * 4 * 5


def test_problem_descriptor_and_derived_shapes():
    p = ConvProblem.for_conv((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert str(p) == "mb1ic64ih56iw56oc64kh3kw3ph1pw1"
    assert p.output_shape == (1, 64, 56, 56) and p.weight_shape == (64, 64, 3, 3)
    t = ConvProblem.for_conv_transpose((2, 8, 5, 5), (8, 2, 3, 3), stride=2, padding=1,
                                       output_padding=1, groups=2, bias=True, dtype="float64")
    assert str(t) == "deconv_mb2ic8ih5iw5oc4g2kh3kw3sh2sw2ph1pw1oph1opw1b_float64"
    assert t.output_shape == (2, 4, 10, 10)
    assert t.macs == 2 * 8 * 25 * 2 * 9


@pytest.mark.parametrize("call,match", [
    (lambda: shapes.conv_output_size(4, 7), "larger than the padded input"),
    (lambda: shapes.conv_output_size(4, 3, stride=0), "stride must be >= 1"),
    (lambda: shapes.conv_output_size(4, 3, padding=-1), "padding must be non-negative"),
    (lambda: shapes.conv_output_size(4, 3.0), "kernel_size must be an int"),
    (lambda: shapes.conv_transpose_output_size(1, 1, padding=1), "crops away"),
    (lambda: shapes.num_params(3, 10, 3, groups=2), "divisible by groups"),
    (lambda: shapes.conv_cost((3, 8), 4, 3, nd=2), "input_shape must be"),
])
def test_shape_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_problems_are_remembered_by_argument_values_and_types():
    """Repeated calls share one immutable problem; values that compare equal but are treated
    differently (a bool stride, a list, a NumPy integer) get their own entries; invalid
    arguments raise on every call."""
    from numbaconv import problem as problem_module

    make = ConvProblem.for_conv
    first = make((1, 8, 9, 9), (16, 8, 3, 3), stride=2, padding=1, dtype="float32")
    assert make((1, 8, 9, 9), (16, 8, 3, 3), stride=2, padding=1, dtype="float32") is first
    assert make((1, 8, 9, 9), (16, 8, 3, 3), stride=(2, 2), padding=1) == first
    key = problem_module._memo_key
    assert len({key(1), key(True), key(1.0), key(np.int64(1)), key("1"), key((1,)),
                key([1]), key(np.float32)}) == 8
    assert key(object()) is None and key((1, object())) is None
    for _ in range(2):
        with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
            make((1, 8, 9, 9), (16, 3, 3, 3), groups=3)
    flag = ConvProblem.for_conv((1, 8, 9, 9), (16, 8, 3, 3), bias=np.True_)
    assert flag.bias is True and flag == ConvProblem.for_conv((1, 8, 9, 9), (16, 8, 3, 3),
                                                              bias=True)
