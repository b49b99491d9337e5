r"""The reference implementation: plain NumPy, written to be read, and the oracle of every kernel.

The functions have the same signatures and results as :mod:`numbaconv`'s public functions and
accept any number of spatial dimensions (1, 2 or 3) in :func:`conv_nd` and :func:`conv_transpose_nd`.

Summation order (fixed, so results are reproducible to the bit)
----------------------------------------------------------------
Each output element starts at zero; the weight products are added one at a time, the input
channel of the group outermost and the kernel offsets in row-major order innermost
(``for ci: for ky: for kx:``); each product is rounded, then added and rounded (no fused
multiply-add); the bias is added last. The transposed convolution uses the same order over
``(ci, ky, kx)`` for the contributions that reach an output element.

Examples
--------
>>> import numpy as np
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> w = np.ones((1, 1, 2, 2))
>>> conv2d(x, w, stride=2)
array([[[[10., 18.],
         [42., 50.]]]])
"""

import itertools

import numpy as np

from . import padding_modes
from ._front import output_array, prepare

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "conv_nd", "conv_transpose_nd", "conv2d_weight_grad"]


def conv_nd(problem, x, w, b, out):
    """Forward convolution of a validated problem, written into ``out``.

    ``x`` (N, C_in, \\*in_size), ``w`` (C_out, C_in / groups, \\*kernel), ``b`` (C_out,) or None,
    ``out`` (N, C_out, \\*out_size): arrays of ``problem.dtype``.
    """
    nd = problem.nd
    padded = np.pad(x, ((0, 0), (0, 0)) + problem.padding)
    cin_g = problem.in_channels // problem.groups
    cout_g = problem.out_channels // problem.groups
    acc = np.zeros(problem.output_shape, dtype=problem.dtype)
    trailing = (None,) * nd
    for g in range(problem.groups):
        outputs = slice(g * cout_g, (g + 1) * cout_g)
        for ci in range(cin_g):
            channel = g * cin_g + ci
            for offset in itertools.product(*(range(k) for k in problem.kernel_size)):
                # the input elements that kernel offset `offset` meets, one per output element
                window = padded[(slice(None), channel) + tuple(
                    slice(k * d, k * d + (o - 1) * s + 1, s)
                    for k, d, o, s in zip(offset, problem.dilation, problem.out_size,
                                          problem.stride))]
                weights = w[(outputs, ci) + offset]
                acc[:, outputs] += weights[(None, slice(None)) + trailing] * window[:, None]
    if b is not None:
        acc += b[(slice(None),) + trailing]
    out[...] = acc
    return out


def conv_transpose_nd(problem, x, w, b, out):
    """Transposed convolution of a validated problem, written into ``out``.

    ``x`` (N, C_in, \\*in_size), ``w`` (C_in, C_out / groups, \\*kernel), ``b`` (C_out,) or None,
    ``out`` (N, C_out, \\*out_size). Input element ``i`` with kernel offset ``k`` lands on the
    uncropped output position ``i * stride + k * dilation``; the padding then crops ``low``
    elements at the start of each dimension, and ``output_padding`` extends the end.
    """
    nd = problem.nd
    cin_g = problem.in_channels // problem.groups
    cout_g = problem.out_channels // problem.groups
    full = tuple(max((i - 1) * s + d * (k - 1) + 1, lo + o)
                 for i, s, d, k, (lo, _), o in zip(problem.in_size, problem.stride,
                                                   problem.dilation, problem.kernel_size,
                                                   problem.padding, problem.out_size))
    acc = np.zeros((problem.batch, problem.out_channels) + full, dtype=problem.dtype)
    trailing = (None,) * nd
    for g in range(problem.groups):
        outputs = slice(g * cout_g, (g + 1) * cout_g)
        for ci in range(cin_g):
            channel = g * cin_g + ci
            for offset in itertools.product(*(range(k) for k in problem.kernel_size)):
                targets = tuple(slice(k * d, k * d + (i - 1) * s + 1, s)
                                for k, d, i, s in zip(offset, problem.dilation, problem.in_size,
                                                      problem.stride))
                weights = w[(channel, slice(None)) + offset]
                acc[(slice(None), outputs) + targets] += (
                    weights[(None, slice(None)) + trailing] * x[:, channel][:, None])
    crop = tuple(slice(lo, lo + o) for (lo, _), o in zip(problem.padding, problem.out_size))
    result = acc[(slice(None), slice(None)) + crop]
    if b is not None:
        result = result + b[(slice(None),) + trailing]
    out[...] = result
    return out


def _forward(func, nd, input, weight, bias, stride, padding, dilation, groups, out):
    prepared = prepare(func, nd, input, weight, bias, transposed=False, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)
    result, batched = output_array(prepared, out)
    conv_nd(prepared.problem, prepared.x, prepared.w, prepared.b, batched)
    return result


def _transposed(func, nd, fn, input, weight, bias, hyper, padding_mode, out):
    """The body of ``conv_transpose{nd}d`` (``fn``); ``hyper`` its keyword arguments."""
    if padding_mode != "zeros":
        return padding_modes.transposed_call(fn, func, nd, False, input, weight, bias, hyper,
                                             padding_mode, out)
    prepared = prepare(func, nd, input, weight, bias, transposed=True, **hyper)
    result, batched = output_array(prepared, out)
    conv_transpose_nd(prepared.problem, prepared.x, prepared.w, prepared.b, batched)
    return result


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, out=None):
    """Reference :func:`numbaconv.conv1d`."""
    return _forward("conv1d", 1, input, weight, bias, stride, padding, dilation, groups, out)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, out=None):
    """Reference :func:`numbaconv.conv2d`."""
    return _forward("conv2d", 2, input, weight, bias, stride, padding, dilation, groups, out)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, out=None):
    """Reference 3-D convolution, same semantics as ``torch.nn.functional.conv3d``."""
    return _forward("conv3d", 3, input, weight, bias, stride, padding, dilation, groups, out)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", out=None):
    """Reference :func:`numbaconv.conv_transpose1d`."""
    return _transposed("conv_transpose1d", 1, conv_transpose1d, input, weight, bias, dict(
        stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation, output_size=output_size), padding_mode, out)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", out=None):
    """Reference :func:`numbaconv.conv_transpose2d`."""
    return _transposed("conv_transpose2d", 2, conv_transpose2d, input, weight, bias, dict(
        stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation, output_size=output_size), padding_mode, out)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", out=None):
    """Reference 3-D transposed convolution (``torch.nn.functional.conv_transpose3d``)."""
    return _transposed("conv_transpose3d", 3, conv_transpose3d, input, weight, bias, dict(
        stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation, output_size=output_size), padding_mode, out)


def conv2d_weight_grad(x, grad_out, weight_shape, stride, pad, dilation, groups):
    """Gradient of a 2-d convolution with respect to its weight, for the tests of the kernels.

    ``x`` (N, C_in, H, W) and ``grad_out`` (N, C_out, OH, OW) arrays of one dtype; ``pad`` the
    (top, left) padding (bottom/right follow from ``OH, OW``). For each kernel offset the input
    samples it meets form a (N, C_in, OH, OW) view of the zero-padded input, contracted with
    ``grad_out`` over ``(n, oy, ox)`` per group by ``np.einsum`` (its own loops, no BLAS).
    """
    n, c_in, h, w = x.shape
    c_out, c_in_g, kh, kw = weight_shape
    oh, ow = grad_out.shape[2:]
    (sh, sw), (pt, pl), (dh, dw) = stride, pad, dilation
    need_h = (oh - 1) * sh + (kh - 1) * dh + 1
    need_w = (ow - 1) * sw + (kw - 1) * dw + 1
    padded = np.zeros((n, c_in, max(need_h, pt + h), max(need_w, pl + w)), dtype=x.dtype)
    padded[:, :, pt:pt + h, pl:pl + w] = x
    result = np.zeros(weight_shape, dtype=x.dtype)
    c_out_g = c_out // groups
    for ky, kx in itertools.product(range(kh), range(kw)):
        taps = padded[:, :, ky * dh: ky * dh + (oh - 1) * sh + 1: sh,
                      kx * dw: kx * dw + (ow - 1) * sw + 1: sw]
        for g in range(groups):
            result[g * c_out_g:(g + 1) * c_out_g, :, ky, kx] = np.einsum(
                "nopq,nipq->oi", grad_out[:, g * c_out_g:(g + 1) * c_out_g],
                taps[:, g * c_in_g:(g + 1) * c_in_g])
    return result
