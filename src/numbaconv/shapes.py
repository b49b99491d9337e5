r"""Shape, parameter and cost arithmetic of convolution layers (no arrays involved).

Every function works for any number of spatial dimensions: sizes given as an int describe one
dimension and give an int back; sizes given as tuples give tuples back.

Forward convolution, per spatial dimension, with input size :math:`i`, kernel :math:`k`, stride
:math:`s`, padding :math:`p_{lo}, p_{hi}` and dilation :math:`d`:

.. math::
    o = \left\lfloor \frac{i + p_{lo} + p_{hi} - d (k - 1) - 1}{s} \right\rfloor + 1

Transposed convolution, with output padding :math:`a`:

.. math::
    o = (i - 1) s - p_{lo} - p_{hi} + d (k - 1) + a + 1

Examples
--------
>>> conv_output_size(128, 5, stride=2, padding=1)
63
>>> conv_transpose_output_size((128, 128), 3, stride=2, padding=1)
(255, 255)
>>> conv_output_size(227, 11, stride=4)
55
>>> receptive_field([3, 3])
5
>>> num_params(3, 10, 5)
760
"""

import math
from typing import NamedTuple

from . import _args


def _dims(size):
    """(tuple of sizes, whether the caller gave a bare int)."""
    if isinstance(size, (tuple, list)):
        return tuple(size), False
    return (size,), True


def _result(values, scalar):
    return values[0] if scalar else tuple(values)


def conv_output_size(in_size, kernel_size, stride=1, padding=0, dilation=1):
    """Spatial output size of a forward convolution.

    Parameters
    ----------
    in_size : int or tuple of int
        Input spatial size(s).
    kernel_size, stride, dilation : int or tuple of int
    padding : int, tuple, tuple of (low, high) pairs, ``'valid'`` or ``'same'``

    Raises
    ------
    ValueError
        If the dilated kernel does not fit in the padded input (output size < 1).
    """
    sizes, scalar = _dims(in_size)
    nd = len(sizes)
    kernel = _args.int_tuple(kernel_size, nd, "kernel_size", 1)
    stride = _args.int_tuple(stride, nd, "stride", 1)
    dilation = _args.int_tuple(dilation, nd, "dilation", 1)
    pads = _args.conv_padding(padding, nd, kernel, stride, dilation)
    out = []
    for i, k, s, (lo, hi), d in zip(sizes, kernel, stride, pads, dilation):
        o = (i + lo + hi - d * (k - 1) - 1) // s + 1
        if o < 1:
            raise ValueError(f"kernel size {k} (dilated extent {d * (k - 1) + 1}) is larger than "
                             f"the padded input size {i + lo + hi}: output size would be {o}")
        out.append(o)
    return _result(out, scalar)


def conv_transpose_output_size(in_size, kernel_size, stride=1, padding=0, output_padding=0,
                               dilation=1):
    """Spatial output size of a transposed convolution (see the module docstring)."""
    sizes, scalar = _dims(in_size)
    nd = len(sizes)
    kernel = _args.int_tuple(kernel_size, nd, "kernel_size", 1)
    stride = _args.int_tuple(stride, nd, "stride", 1)
    dilation = _args.int_tuple(dilation, nd, "dilation", 1)
    extra = _args.int_tuple(output_padding, nd, "output_padding", 0)
    pads = _args.transposed_padding(padding, nd)
    out = []
    for i, k, s, (lo, hi), d, a in zip(sizes, kernel, stride, pads, dilation, extra):
        o = (i - 1) * s - lo - hi + d * (k - 1) + a + 1
        if o < 1:
            raise ValueError(f"padding ({lo}, {hi}) crops away the whole output: output size "
                             f"would be {o}")
        out.append(o)
    return _result(out, scalar)


def transposed_output_padding(in_size, output_size, kernel_size, stride=1, padding=0,
                              dilation=1):
    """The ``output_padding`` that makes a transposed convolution produce ``output_size``.

    As in ``torch.nn.ConvTranspose2d.forward(input, output_size)``: the requested size must lie
    between the size with no output padding and that size plus ``stride - 1``.
    """
    sizes, scalar = _dims(in_size)
    targets, _ = _dims(output_size)
    nd = len(sizes)
    if len(targets) != nd:
        raise ValueError(f"output_size must have {nd} spatial entries, got {output_size!r}")
    smallest, _ = _dims(conv_transpose_output_size(tuple(sizes), kernel_size, stride, padding,
                                                   0, dilation))
    stride = _args.int_tuple(stride, nd, "stride", 1)
    extra = []
    for want, low, s in zip(targets, smallest, stride):
        if not low <= want <= low + s - 1:
            raise ValueError(f"output_size {tuple(targets)} is not reachable: each size must lie "
                             f"in [{low}, {low + s - 1}] for this input, stride and padding")
        extra.append(want - low)
    return _result(extra, scalar)


def same_padding(in_size, kernel_size, stride=1, dilation=1):
    """Padding ``(low, high)`` per dimension that gives output size ``ceil(in_size / stride)``.

    The total pad is ``max((o - 1) * s + d * (k - 1) + 1 - i, 0)`` with ``o = ceil(i / s)``; when it
    is odd the extra element goes to the high side (bottom/right). For stride 1 this is torch's
    ``padding='same'`` (total ``d * (k - 1)``, independent of the input size); for larger strides
    it is TensorFlow's ``'SAME'``.

    >>> same_padding(10, 4)
    (1, 2)
    >>> same_padding((224, 224), 3, stride=2)
    ((0, 1), (0, 1))
    """
    sizes, scalar = _dims(in_size)
    nd = len(sizes)
    kernel = _args.int_tuple(kernel_size, nd, "kernel_size", 1)
    stride = _args.int_tuple(stride, nd, "stride", 1)
    dilation = _args.int_tuple(dilation, nd, "dilation", 1)
    pads = []
    for i, k, s, d in zip(sizes, kernel, stride, dilation):
        o = -(-i // s)
        total = max((o - 1) * s + d * (k - 1) + 1 - i, 0)
        pads.append((total // 2, total - total // 2))
    return _result(pads, scalar)


def receptive_field(layers):
    """Receptive field of a stack of layers (convolutions, or poolings described the same way).

    Parameters
    ----------
    layers : sequence
        One entry per layer, first layer first: a kernel size (int or tuple), or a tuple
        ``(kernel_size, stride)`` / ``(kernel_size, stride, dilation)``, or a dict with keys
        ``kernel_size`` and optionally ``stride`` and ``dilation``.

    Returns
    -------
    int or tuple of int
        Size of the input region that one output element depends on:
        ``1 + sum_l d_l * (k_l - 1) * prod_{m < l} s_m``.

    >>> receptive_field([3, 3])
    5
    >>> receptive_field([(7, 2), (3, 2), 3])
    19
    """
    entries = []
    for layer in layers:
        if isinstance(layer, dict):
            entry = (layer["kernel_size"], layer.get("stride", 1), layer.get("dilation", 1))
        elif isinstance(layer, (tuple, list)):
            if not 1 <= len(layer) <= 3:
                raise ValueError(f"receptive_field: a layer is (kernel_size, stride[, dilation]), "
                                 f"got {layer!r}")
            entry = (tuple(layer) + (1, 1))[:3]
        else:
            entry = (layer, 1, 1)
        entries.append(entry)
    if not entries:
        raise ValueError("receptive_field needs at least one layer")
    lengths = {len(v) for entry in entries for v in entry if isinstance(v, (tuple, list))}
    if len(lengths) > 1:
        raise ValueError(f"receptive_field: layers mix kernels of {sorted(lengths)} dimensions")
    scalar = not lengths
    nd = lengths.pop() if lengths else 1
    rf, jump = [1] * nd, [1] * nd
    for k, s, d in entries:
        ks = _args.int_tuple(k, nd, "kernel_size", 1)
        ss = _args.int_tuple(s, nd, "stride", 1)
        ds = _args.int_tuple(d, nd, "dilation", 1)
        for a in range(nd):
            rf[a] += ds[a] * (ks[a] - 1) * jump[a]
            jump[a] *= ss[a]
    return _result(rf, scalar)


def num_params(in_channels, out_channels, kernel_size, groups=1, bias=True, nd=2):
    """Learnable parameters of a convolution layer, forward or transposed (same count).

    ``in_channels * out_channels / groups * prod(kernel_size)`` weights, plus ``out_channels``
    biases. An int ``kernel_size`` means a square (cubic, ...) kernel of ``nd`` dimensions.

    >>> num_params(1, 32, 5), num_params(8, 32, 3), num_params(3, 10, 5, bias=False)
    (832, 2336, 750)
    """
    groups = _args.groups_arg(groups)
    for name, c in (("in_channels", in_channels), ("out_channels", out_channels)):
        if c % groups:
            raise ValueError(f"{name} must be divisible by groups, got {name}={c} and "
                             f"groups={groups}")
    kernel = _args.int_tuple(kernel_size, nd if not isinstance(kernel_size, (tuple, list))
                             else len(kernel_size), "kernel_size", 1)
    return in_channels * (out_channels // groups) * math.prod(kernel) + (out_channels if bias
                                                                          else 0)


class LayerCost(NamedTuple):
    """Shape and arithmetic cost of one convolution layer on one input shape."""

    output_shape: tuple
    params: int
    macs: int
    """Multiply-accumulates of the weight products."""
    flops: int
    """``2 * macs``; the bias adds are not included."""
    bias_adds: int


def conv_cost(input_shape, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
              bias=True, transposed=False, output_padding=0, nd=2):
    """Output shape, parameters, MACs, FLOPs and bias adds of a convolution layer.

    Parameters
    ----------
    input_shape : tuple of int
        ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)``.
    out_channels : int
    kernel_size, stride, dilation, output_padding : int or tuple of int
    padding : as for the convolution functions
    groups : int
    bias : bool
    transposed : bool
        Cost of a transposed convolution, counted on the input grid:
        ``N * C_in * prod(in_spatial) * C_out / groups * prod(kernel)`` MACs.
    nd : int
        Spatial dimensions, when ``kernel_size`` is an int (a tuple gives its own length).

    >>> conv_cost((1, 3, 2, 2), 1, 2, stride=2, transposed=True)
    LayerCost(output_shape=(1, 1, 4, 4), params=13, macs=48, flops=96, bias_adds=16)
    """
    from .problem import ConvProblem

    shape = tuple(input_shape)
    nd = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else nd
    if len(shape) == nd + 1:
        unbatched, shape = True, (1,) + shape
    elif len(shape) == nd + 2:
        unbatched = False
    else:
        raise ValueError(f"input_shape must be (N, C, *spatial) or (C, *spatial) with {nd} "
                         f"spatial dimensions, got {tuple(input_shape)}")
    kernel = _args.int_tuple(kernel_size, nd, "kernel_size", 1)
    groups = _args.groups_arg(groups)
    if transposed:
        weight_shape = (shape[1], out_channels // groups) + kernel
        if out_channels % groups:
            raise ValueError(f"out_channels must be divisible by groups, got out_channels="
                             f"{out_channels} and groups={groups}")
        problem = ConvProblem.for_conv_transpose(shape, weight_shape, bias=bias, stride=stride,
                                                 padding=padding, output_padding=output_padding,
                                                 groups=groups, dilation=dilation)
    else:
        if shape[1] % groups:
            raise ValueError(f"in_channels must be divisible by groups, got in_channels="
                             f"{shape[1]} and groups={groups}")
        weight_shape = (out_channels, shape[1] // groups) + kernel
        problem = ConvProblem.for_conv(shape, weight_shape, bias=bias, stride=stride,
                                       padding=padding, dilation=dilation, groups=groups)
    out_shape = problem.output_shape[1:] if unbatched else problem.output_shape
    return LayerCost(out_shape, problem.params, problem.macs, problem.flops, problem.bias_adds)
