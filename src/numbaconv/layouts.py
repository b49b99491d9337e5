"""Channels-last data (``'NHWC'``, ``'NWC'``) and TensorFlow weight layouts.

``data_format='NHWC'`` takes and returns (N, H, W, C) arrays (``'NWC'``: (N, L, C); ``'NDHWC'``:
(N, D, H, W, C)). Weights default to TensorFlow's layout for that format: ``'HWIO'`` (kH, kW,
C_in/groups, C_out) for convolution and ``'HWOI'`` (kH, kW, C_out/groups, C_in) for transposed
convolution (``'WIO'`` / ``'WOI'`` in 1-D, ``'DHWIO'`` / ``'DHWOI'`` in 3-D); torch's ``'OIHW'`` /
``'IOHW'`` (``'OIW'`` / ``'IOW'``, ``'OIDHW'`` / ``'IODHW'``) are accepted too.

Native channels-last kernels, used by ``algorithm='auto'`` (and the named algorithm):

* 1-D, 2-D and 3-D convolution with at least half a register tile of output channels per
  group (32 float32 / 16 float64; ``'gemm'``): :mod:`numbaconv.kernels.conv_nhwc`, an implicit
  GEMM with pixels as rows that reads the input, the HWIO weights and the output as they lie
  (1x1 layers included).
* 1-D, 2-D and 3-D transposed convolution under the same condition (``'gemm'``):
  :mod:`numbaconv.kernels.conv_transpose_nhwc`, one stride-1 convolution per stride phase of
  the output on that implicit GEMM, written in place on the phase's grid; without groups and
  with at most 256 input pixels, one GEMM over the weights as they lie plus a strided add per
  tap.
* Depthwise 1-D and 2-D convolution (``groups == C_in == C_out``; ``'auto'``,
  ``'depthwise'``) and grouped 1-D and 2-D convolution with few channels per group,
  ``C_in/G == C_out/G`` of 2 to 16 (ResNeXt) or ``C_in/G == 1`` with a channel multiplier of 2
  to 16 (``'auto'``):
  :mod:`numbaconv.kernels.grouped_nhwc`, each tap and input channel a vector multiply-add
  across output channels (a shuffle spreads each group's input over its output lanes), no
  padding copy.
* Other 1x1 (x1), stride-1, unpadded, ungrouped convolutions: one GEMM
  ``(N*D*H*W, C_in) @ (C_in, C_out)`` on the arrays as they lie.

Padding modes pad a channels-last copy first. Everything else (other group shapes with few
output channels, other algorithms) is transposed to channels-first by a
blocked transpose kernel, computed by the usual kernels, and transposed back.
"""

import numpy as np

from . import _threads
from ._front import (_CHECK_FROM, _operand, bias_vector, check_fits, compute_dtype,
                     output_padding_for)
from .kernels import conv_nhwc, conv_transpose_nhwc, gemm, grouped_nhwc, transpose
from .problem import ConvProblem

_DATA = {1: ("NCW", "NWC"), 2: ("NCHW", "NHWC"), 3: ("NCDHW", "NDHWC")}
_WEIGHTS = {(1, False): ("OIW", "WIO"), (2, False): ("OIHW", "HWIO"),
            (3, False): ("OIDHW", "DHWIO"),
            (1, True): ("IOW", "WOI"), (2, True): ("IOHW", "HWOI"), (3, True): ("IODHW", "DHWOI")}


def first_format(nd):
    """The channels-first ``data_format`` name for ``nd`` spatial dimensions."""
    return _DATA[nd][0]


def formats(func, nd, transposed, data_format, weight_format):
    """Validate ``(data_format, weight_format)``; returns whether data and weights are
    channels-last / TensorFlow-ordered."""
    first, last = _DATA[nd]
    if data_format not in (first, last):
        raise ValueError(f"{func}: data_format must be {first!r} or {last!r}, got "
                         f"{data_format!r}")
    torch_w, tf_w = _WEIGHTS[nd, transposed]
    if weight_format is None:
        weight_format = tf_w if data_format == last else torch_w
    if weight_format not in (torch_w, tf_w):
        raise ValueError(f"{func}: weight_format must be {torch_w!r} or {tf_w!r}, got "
                         f"{weight_format!r}")
    return data_format == last, weight_format == tf_w


def to_torch_weight(w, nd):
    """A TensorFlow-ordered weight as torch orders it (a view): (k..., A, B) -> (B, A, k...)."""
    return w.transpose((nd + 1, nd) + tuple(range(nd)))


def torch_weight_copy(w, nd):
    """A TensorFlow-ordered weight as a contiguous torch-ordered copy: (k..., A, B) -> (A, B,
    k...), by two blocked transposes (NumPy's copy of the reversed view walks one side with a
    large stride: several ms for a DCGAN layer's 8 MB)."""
    if not (w.dtype in (np.float32, np.float64) and w.flags.c_contiguous and w.ndim == nd + 2
            and w.flags.writeable):
        return np.ascontiguousarray(to_torch_weight(w, nd))
    kernel, (a, b) = w.shape[:nd], w.shape[nd:]
    taps = int(np.prod(kernel))
    tab = transpose.swap_last_two(w.reshape(taps, a, b))                   # (taps, B, A)
    return transpose.swap_last_two(tab.reshape(1, taps, b * a)).reshape((b, a) + kernel)


def channels_first(x, nd):
    """(N, *spatial, C) -> (N, C, *spatial), a view."""
    return x.transpose((0, nd + 1) + tuple(range(1, nd + 1)))


def channels_last(y, nd):
    """(N, C, *spatial) -> (N, *spatial, C), a view."""
    return y.transpose((0,) + tuple(range(2, nd + 2)) + (1,))


def _swapped(a, nd, from_last):
    """A contiguous copy of ``a`` with the channel axis moved (blocked transpose kernel for
    contiguous float arrays, NumPy otherwise)."""
    if a.dtype in (np.float32, np.float64) and a.flags.c_contiguous and a.ndim == nd + 2:
        n = a.shape[0]
        if a.shape[-1 if from_last else 1] == 1:  # one channel: the same memory order
            return a.reshape((n, 1) + a.shape[1:-1] if from_last else (n,) + a.shape[2:] + (1,))
        if from_last:
            c, rest = a.shape[-1], a.shape[1:-1]
            return transpose.swap_last_two(a.reshape(n, -1, c)).reshape((n, c) + rest)
        c, rest = a.shape[1], a.shape[2:]
        return transpose.swap_last_two(a.reshape(n, c, -1)).reshape((n,) + rest + (c,))
    return np.ascontiguousarray(channels_first(a, nd) if from_last else channels_last(a, nd))


def to_channels_first(x, nd):
    """(N, *spatial, C) -> a contiguous (N, C, *spatial) copy."""
    return _swapped(x, nd, True)


def to_channels_last(y, nd):
    """(N, C, *spatial) -> a contiguous (N, *spatial, C) copy."""
    return _swapped(y, nd, False)


def pointwise(func, nd, x, w, b, weight_tf, out):
    """The channels-last 1x1 convolution as one GEMM, or None if ``w`` is not 1x1 ungrouped.

    ``x`` (N, *spatial, C_in) or unbatched; ``w`` 1x1 in its given layout."""
    k_in = w.shape[nd] if weight_tf else w.shape[1]
    c_out = w.shape[nd + 1] if weight_tf else w.shape[0]
    if any(k != 1 for k in (w.shape[:nd] if weight_tf else w.shape[2:])) or x.shape[-1] != k_in:
        return None
    dtype = compute_dtype((("input", x), ("weight", w), ("bias", b)))
    rows = int(np.prod(x.shape[:-1]))
    a = _operand(x, dtype, "input").reshape(rows, k_in)
    wm = w.reshape(k_in, c_out) if weight_tf else w.reshape(c_out, k_in).T
    wm = np.ascontiguousarray(wm, dtype=dtype)
    shape = x.shape[:-1] + (c_out,)
    if out is None:
        check_fits(rows * c_out * dtype.itemsize, f"the output {shape} ({dtype})")
        result = np.empty(shape, dtype=dtype)
    else:
        if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"{func}: out must be a C-contiguous {dtype} array of shape {shape}, "
                             f"got {out.dtype} {out.shape}")
        result = out
    c = result.reshape(rows, c_out)
    bias = bias_vector(func, b, dtype, c_out)
    c[...] = 0 if bias is None else bias
    if rows:
        with _threads.launch():
            gemm.gemm(a, wm, c)
    return result


def is_pointwise_problem(nd, x_shape, w_torch_shape, stride, padding, dilation, groups):
    """Whether a channels-last forward call is a plain 1x1 GEMM (no stride, no padding)."""
    if len(w_torch_shape) != nd + 2 or any(k != 1 for k in w_torch_shape[2:]):
        return False
    batched = x_shape if len(x_shape) == nd + 2 else (1,) + tuple(x_shape)
    try:
        problem = ConvProblem.for_conv((batched[0], batched[-1]) + tuple(batched[1:-1]),
                                       w_torch_shape, stride=stride, padding=padding,
                                       dilation=dilation, groups=groups)
    except (ValueError, TypeError):
        return False  # the general path raises the proper error
    return (problem.groups == 1 and all(s == 1 for s in problem.stride)
            and all(p == (0, 0) for p in problem.padding))


def native_problem(nd, x_shape, w_torch_shape, stride, padding, dilation, groups,
                   transposed=False, output_padding=0, output_size=None):
    """The ConvProblem of a channels-last call (1-D lifted to 2-D), or None when the
    arguments are invalid (the general path then reports the error)."""
    if len(w_torch_shape) != nd + 2 or len(x_shape) not in (nd + 1, nd + 2):
        return None
    batched = x_shape if len(x_shape) == nd + 2 else (1,) + tuple(x_shape)
    first = (batched[0], batched[-1]) + tuple(batched[1:-1])
    try:
        if transposed:
            if output_size is not None:
                output_padding = output_padding_for(output_size, nd, first, w_torch_shape,
                                                    stride, padding, dilation)
            problem = ConvProblem.for_conv_transpose(
                first, w_torch_shape, stride=stride, padding=padding,
                output_padding=output_padding, groups=groups, dilation=dilation)
        else:
            problem = ConvProblem.for_conv(first, w_torch_shape, stride=stride, padding=padding,
                                           dilation=dilation, groups=groups)
    except (ValueError, TypeError):
        return None
    return problem.lifted_to_2d() if nd == 1 else problem


def is_depthwise(problem):
    """Whether the native channels-last depthwise kernel computes ``problem`` (multiplier 1)."""
    return problem.groups == problem.in_channels == problem.out_channels > 1


def is_small_grouped(problem, dtype):
    """Whether the native channels-last kernel for few channels per group computes ``problem``
    (a 2-D problem or a 1-D one's 2-D form; ``(C_in/G, C_out/G)`` one of
    :data:`numbaconv.kernels.grouped_nhwc.SHAPES`)."""
    if problem.nd != 2 or problem.groups == 1:
        return False
    return grouped_nhwc.supports(problem.in_channels // problem.groups,
                                 problem.out_channels // problem.groups,
                                 np.dtype(dtype).itemsize)


def dense_pays(problem, dtype):
    """Whether the channels-last implicit GEMM suits ``problem``: enough output channels per
    group to fill half a register tile (smaller groups leave most of each tile idle; they are
    computed channels-first)."""
    nr = conv_nhwc.NV * gemm._VBYTES // np.dtype(dtype).itemsize
    return problem.out_channels // problem.groups >= nr // 2


def _result(func, shape, dtype, out, operands):
    if out is None:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes >= _CHECK_FROM:  # the message is built only then: formatting costs microseconds
            check_fits(nbytes, f"the output {shape} ({dtype})")
        return np.empty(shape, dtype=dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError(f"{func}: out must be a writeable C-contiguous {dtype} array of "
                         f"shape {shape}, got {out.dtype} {out.shape}")
    if any(np.may_share_memory(out, a) for a in operands):
        raise ValueError(f"{func}: out must not overlap the input, weight or bias")
    return out


def dense(func, nd, problem, x, w_torch, b, out):
    """A channels-last convolution on the native implicit-GEMM kernel
    (:mod:`numbaconv.kernels.conv_nhwc`); ``x`` (N, *spatial, C) or unbatched, ``w_torch`` in
    torch's layout, ``problem`` its 2-D form (1-D, 2-D) or the 3-D problem."""
    dtype = compute_dtype((("input", x), ("weight", w_torch), ("bias", b)))
    xb = _operand(x if x.ndim == nd + 2 else x[None], dtype, "input")
    x5, out_size, shape = _as_3d(nd, problem, x, xb)
    w = w_torch.reshape(w_torch.shape[:2] + (1,) * (3 - nd) + w_torch.shape[2:])
    # DHWIO as given by TensorFlow-ordered callers is a view here: no copy then
    dhwio = _operand(w.transpose(2, 3, 4, 1, 0), dtype, "weight")
    bias = bias_vector(func, b, dtype, problem.out_channels)
    lead = 3 - problem.nd
    result = _result(func, shape, dtype, out, [a for a in (xb, dhwio, bias) if a is not None])
    if result.size:
        with _threads.launch():
            conv_nhwc.conv3d_ndhwc(
                x5, dhwio, bias, result.reshape((problem.batch,) + out_size
                                                + (problem.out_channels,)),
                (1,) * lead + problem.stride, ((0, 0),) * lead + problem.padding,
                (1,) * lead + problem.dilation, problem.groups)
    return result


def _as_3d(nd, problem, x, xb):
    """``xb`` (batched input) as (N, D, H, W, C): unit depth (and height, for 1-D) in front of
    its spatial axes; the output size as three entries; the shape of the result to return
    (unbatched if ``x`` is). ``problem`` is the 2-D form of a 1-D problem."""
    unit = 3 - nd
    x5 = xb.reshape(xb.shape[:1] + (1,) * unit + xb.shape[1:])
    out_size = (1,) * (3 - problem.nd) + problem.out_size
    shape = (problem.batch,) + out_size[unit:] + (problem.out_channels,)
    return x5, out_size, shape if x.ndim == nd + 2 else shape[1:]


def transposed_dense(func, nd, problem, x, w_torch, b, out):
    """A channels-last transposed convolution as stride-phase convolutions on the native
    implicit GEMM (:mod:`numbaconv.kernels.conv_transpose_nhwc`); ``x`` (N, *spatial, C) or
    unbatched, ``w_torch`` (C_in, C_out/groups, *kernel), ``problem`` as for :func:`dense`."""
    dtype = compute_dtype((("input", x), ("weight", w_torch), ("bias", b)))
    xb = _operand(x if x.ndim == nd + 2 else x[None], dtype, "input")
    x5, out_size, shape = _as_3d(nd, problem, x, xb)
    # regathered by the kernel (a blocked transpose for torch's and TensorFlow's layouts), so
    # no contiguous copy here; a read-only array would be a separate Numba specialisation
    w = np.asarray(w_torch, dtype=dtype)
    w = w if w.flags.writeable else w.copy(order="K")
    w = w.reshape(w.shape[:2] + (1,) * (3 - nd) + w.shape[2:])
    bias = bias_vector(func, b, dtype, problem.out_channels)
    lead = 3 - problem.nd
    result = _result(func, shape, dtype, out, [a for a in (xb, w, bias) if a is not None])
    if result.size:
        few = (problem.groups == 1 and problem.batch * int(np.prod(problem.in_size))
               <= conv_transpose_nhwc.FEW_PIXELS)
        with _threads.launch():
            args = (x5, w, bias, result.reshape((problem.batch,) + out_size
                                                + (problem.out_channels,)),
                    (1,) * lead + problem.stride,
                    (0,) * lead + tuple(lo for lo, _ in problem.padding),
                    (1,) * lead + problem.dilation)
            if few:
                conv_transpose_nhwc.conv_transpose3d_ndhwc_few_pixels(*args)
            else:
                conv_transpose_nhwc.conv_transpose3d_ndhwc(*args, problem.groups)
    return result


def small_grouped(func, nd, problem, x, w_torch, b, out):
    """The channels-last 1-D or 2-D grouped convolution with few channels per group on its
    native kernel; ``x`` (N, *spatial, C_in) or unbatched, ``w_torch`` (C_out, C_in/G,
    *kernel), ``problem`` its 2-D form (1-D as unit height)."""
    dtype = compute_dtype((("input", x), ("weight", w_torch), ("bias", b)))
    xb = _operand(x if x.ndim == nd + 2 else x[None], dtype, "input")
    x4 = xb.reshape(xb.shape[:1] + (1,) * (2 - nd) + xb.shape[1:])
    w4 = np.asarray(w_torch).reshape(w_torch.shape[:2] + (1,) * (2 - nd) + w_torch.shape[2:])
    w = _operand(w4.transpose(2, 3, 1, 0), dtype, "weight")   # HWIO
    bias = bias_vector(func, b, dtype, problem.out_channels)
    bias = np.zeros(problem.out_channels, dtype) if bias is None else bias
    oh, ow = problem.out_size
    shape = (problem.batch,) + problem.out_size[2 - nd:] + (problem.out_channels,)
    shape = shape if x.ndim == nd + 2 else shape[1:]
    result = _result(func, shape, dtype, out, (xb, w, bias))
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = problem.stride, problem.padding, problem.dilation
    with _threads.launch():
        grouped_nhwc.conv2d_grouped_nhwc(x4, w, bias, result.reshape(
            (problem.batch, oh, ow, problem.out_channels)), sh, sw, pt, pl, dh, dw)
    return result


def depthwise(func, nd, problem, x, w_torch, b, out):
    """The channels-last 1-D or 2-D depthwise convolution (multiplier 1) on the few-channels
    kernel: :func:`small_grouped`."""
    return small_grouped(func, nd, problem, x, w_torch, b, out)
