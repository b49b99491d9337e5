r"""Gradients of the convolutions, with the semantics of ``torch.nn.grad``.

For ``y = conv2d(x, w, b, stride, padding, dilation, groups)`` and a gradient ``dy`` of a loss
with respect to ``y``:

* ``conv2d_input(x.shape, w, dy, ...)`` is :math:`\partial L/\partial x`: the transposed
  convolution of ``dy`` with ``w`` (run by numbaconv's transposed kernels), cropped or extended to
  ``x.shape`` (input rows and columns that no output reads get 0);
* ``conv2d_weight(x, w.shape, dy, ...)`` is :math:`\partial L/\partial w`, a GEMM whose reduction
  runs over the batch and the output pixels (:mod:`numbaconv.kernels.weight_grad`), parallel
  over blocks of the gradient only, so the result does not depend on the thread count;
* ``bias_grad(dy)`` is :math:`\partial L/\partial b = \sum_{n, y, x} dy`.

``conv_transpose2d_input`` / ``conv_transpose2d_weight`` are the same for
``y = conv_transpose2d(x, w, ...)`` (its input gradient is an ordinary convolution of ``dy``),
the ``1d`` functions run through the 2-d ones, the ``3d`` ones as 2-d gradients per kernel
depth offset, and the ``*_vjp`` functions return all three gradients at once. Every padding
form the forward functions accept works here too, asymmetric and ``'same'`` included. Arguments
are validated like the forward ones; inputs are never modified.

The input gradient of a stride-1 convolution is a stride-1 transposed convolution, which runs as
the forward convolution of the flipped weights (:mod:`numbaconv.stride1_lowering`): ``'auto'``
may then take Winograd for large 3x3 layers, as the forward call does; ``exact=True`` keeps it to
the exact kernels.

>>> import numpy as np, numbaconv
>>> x = np.ones((1, 1, 4, 4), np.float32); w = np.ones((1, 1, 3, 3), np.float32)
>>> dy = np.ones((1, 1, 2, 2), np.float32)
>>> numbaconv.grad.conv2d_input(x.shape, w, dy)[0, 0]
array([[1., 2., 2., 1.],
       [2., 4., 4., 2.],
       [2., 4., 4., 2.],
       [1., 2., 2., 1.]], dtype=float32)
>>> numbaconv.grad.conv2d_weight(x, w.shape, dy)[0, 0]
array([[4., 4., 4.],
       [4., 4., 4.],
       [4., 4., 4.]], dtype=float32)
"""

import numbers

import numpy as np

from . import _threads, depth_lowering, functional, reference
from ._front import _operand, as_array, compute_dtype
from .kernels import weight_grad
from .problem import ConvProblem

__all__ = ["conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight", "conv3d_input",
           "conv3d_weight", "conv_transpose1d_input", "conv_transpose1d_weight",
           "conv_transpose2d_input", "conv_transpose2d_weight", "conv_transpose3d_input",
           "conv_transpose3d_weight", "bias_grad", "conv1d_vjp", "conv2d_vjp", "conv3d_vjp",
           "conv_transpose1d_vjp", "conv_transpose2d_vjp", "conv_transpose3d_vjp",
           "WEIGHT_ALGORITHMS"]

#: Algorithms of the weight gradient, for ``algorithm=`` of the ``*_weight`` functions.
WEIGHT_ALGORITHMS = ("gemm", "reference")


def _shape_arg(value, name, nd):
    shape = tuple(value) if isinstance(value, (tuple, list)) else None
    if shape is None or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                for v in shape):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    if len(shape) not in (nd + 1, nd + 2):
        raise ValueError(f"{name} must have {nd + 2} entries (N, C, *spatial) or {nd + 1} "
                         f"(unbatched), got {shape}")
    return tuple(int(v) for v in shape)


def _grad_output(func, g, problem, unbatched):
    """``g`` batched, contiguous, in the problem's dtype; checked against the output shape."""
    want = problem.output_shape[1:] if unbatched else problem.output_shape
    if g.shape != want:
        raise ValueError(f"{func}: grad_output must have the shape of the forward output {want}, "
                         f"got {g.shape}")
    return _operand(g, problem.dtype, "grad_output").reshape(problem.output_shape)


def _problem(func, nd, input_shape, weight_shape, transposed, dtype, stride, padding, dilation,
             groups, output_padding=0):
    if len(weight_shape) != nd + 2:
        raise ValueError(f"{func}: weight must have {nd + 2} dimensions, got shape "
                         f"{tuple(weight_shape)}")
    unbatched = len(input_shape) == nd + 1
    batched = (1,) + tuple(input_shape) if unbatched else tuple(input_shape)
    if transposed:
        problem = ConvProblem.for_conv_transpose(
            batched, weight_shape, stride=stride, padding=padding, output_padding=output_padding,
            groups=groups, dilation=dilation, dtype=dtype)
    else:
        problem = ConvProblem.for_conv(batched, weight_shape, stride=stride, padding=padding,
                                       dilation=dilation, groups=groups, dtype=dtype)
    return problem, unbatched


def _input_grad(func, nd, input_size, weight, grad_output, transposed, stride, padding,
                dilation, groups, output_padding, algorithm, exact):
    input_size = _shape_arg(input_size, "input_size", nd)
    w = as_array(weight, "weight")
    g = as_array(grad_output, "grad_output")
    dtype = compute_dtype((("weight", w), ("grad_output", g)))
    problem, unbatched = _problem(func, nd, input_size, w.shape, transposed, dtype, stride,
                                  padding, dilation, groups, output_padding)
    gb = _grad_output(func, g, problem, unbatched)
    w = _operand(w, dtype, "weight")
    plain = (all(k == 1 for k in problem.kernel_size) and all(s == 1 for s in problem.stride)
             and all(p == (0, 0) for p in problem.padding) and problem.groups == 1)
    if plain and not transposed and algorithm == "auto":
        # 1x1, stride 1, unpadded: dx = W^T dy, a forward 1x1 convolution (a plain GEMM)
        result = _CONV[nd](gb, np.ascontiguousarray(np.swapaxes(w, 0, 1)), None)
    elif not transposed:
        # conv_transpose2d(dy, w) covers input rows -lo ... (O-1)s + d(k-1) - lo; choose its high
        # padding (or output padding) so that it ends exactly at the last input row
        pads, extra = [], []
        for i, o, k, s, d, (lo, _) in zip(problem.in_size, problem.out_size,
                                           problem.kernel_size, problem.stride,
                                           problem.dilation, problem.padding):
            reach = (o - 1) * s + d * (k - 1) + 1 - lo
            pads.append((lo, max(0, reach - i)))
            extra.append(max(0, i - reach))
        result = _TRANSPOSED[nd](gb, w, None, problem.stride, tuple(pads), tuple(extra),
                                 problem.groups, problem.dilation, algorithm=algorithm, exact=exact)
    else:
        # the adjoint of a transposed convolution is a convolution; it reaches at least as far
        result = _CONV[nd](gb, w, None, problem.stride, problem.padding, problem.dilation,
                           problem.groups, algorithm=algorithm, exact=exact)
        crop = (slice(None), slice(None)) + tuple(slice(0, i) for i in problem.in_size)
        if result.shape[2:] != problem.in_size:
            result = np.ascontiguousarray(result[crop])
    return result[0] if unbatched else result


def _weight_grad(func, nd, input, weight_size, grad_output, transposed, stride, padding,
                 dilation, groups, output_padding, algorithm):
    if algorithm != "auto" and algorithm not in WEIGHT_ALGORITHMS:
        raise ValueError(f"{func}: algorithm must be 'auto' or one of {WEIGHT_ALGORITHMS}, got "
                         f"{algorithm!r}")
    x = as_array(input, "input")
    g = as_array(grad_output, "grad_output")
    weight_size = _shape_arg(weight_size, "weight_size", nd)
    if len(weight_size) != nd + 2:
        raise ValueError(f"{func}: weight_size must have {nd + 2} entries, got {weight_size}")
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"{func}: input must have {nd + 2} dimensions (N, C, *spatial) or "
                         f"{nd + 1}, got shape {x.shape}")
    dtype = compute_dtype((("input", x), ("grad_output", g)))
    problem, unbatched = _problem(func, nd, x.shape, weight_size, transposed, dtype, stride,
                                  padding, dilation, groups, output_padding)
    gb = _grad_output(func, g, problem, unbatched)
    xb = _operand(x, dtype, "input").reshape(problem.input_shape)
    if transposed:
        # y[n, co, i*s - p + k*d] += x[n, ci, i] w[ci, co, k]: the weight gradient of the
        # forward convolution of dy (as input) producing x (as output gradient)
        fwd_in, fwd_grad = gb, xb
    else:
        fwd_in, fwd_grad = xb, gb
    if nd == 3:
        return _weight_grad_3d(fwd_in, fwd_grad, tuple(weight_size), problem, algorithm)
    (pt, _), (pl, _) = ((0, 0),) * (2 - nd) + tuple(problem.padding)
    sh, sw = ((1,) * (2 - nd)) + tuple(problem.stride)
    dh, dw = ((1,) * (2 - nd)) + tuple(problem.dilation)
    lift = (lambda a: a.reshape(a.shape[:2] + (1,) + a.shape[2:])) if nd == 1 else (lambda a: a)
    shape2d = lift(np.empty((0,) * 2 + tuple(weight_size[2:]))).shape[2:]
    w_shape = tuple(weight_size[:2]) + shape2d
    if algorithm == "reference":
        dw_ = reference.conv2d_weight_grad(lift(fwd_in), lift(fwd_grad), w_shape, (sh, sw),
                                           (pt, pl), (dh, dw), problem.groups)
    else:
        with _threads.launch():
            dw_ = weight_grad.conv2d_weight_grad(lift(fwd_in), lift(fwd_grad), w_shape, sh, sw,
                                                 pt, pl, dh, dw, problem.groups)
    return dw_.reshape(weight_size)


def _weight_grad_3d(fwd_in, fwd_grad, w_shape, problem, algorithm):
    """3-d weight gradient as the 2-d one per kernel depth offset (as
    :mod:`numbaconv.depth_lowering` computes the forward pass): for offset ``kd`` the input
    depth slices each output depth reads, and the output gradient's depth slices, are stacked as
    the batch of one 2-d weight gradient. Summed over (image, output depth), then pixels."""
    n = fwd_in.shape[0]
    od = fwd_grad.shape[2]
    k_d = w_shape[2]
    (p_d, _), (pt, _), (pl, _) = problem.padding
    (s_d, sh, sw), (d_d, dh, dw) = problem.stride, problem.dilation
    xt = np.ascontiguousarray(fwd_in.transpose(0, 2, 1, 3, 4))
    gt = np.ascontiguousarray(fwd_grad.transpose(0, 2, 1, 3, 4))
    gt = gt.reshape((n * od,) + gt.shape[2:])
    plane_w = w_shape[:2] + w_shape[3:]
    result = np.empty(w_shape, dtype=fwd_in.dtype)
    for kd in range(k_d):
        slices = depth_lowering.depth_slices(xt, od, s_d, p_d, kd * d_d)
        if algorithm == "reference":
            part = reference.conv2d_weight_grad(slices, gt, plane_w, (sh, sw), (pt, pl), (dh, dw),
                                                problem.groups)
        else:
            with _threads.launch():
                part = weight_grad.conv2d_weight_grad(slices, gt, plane_w, sh, sw, pt, pl, dh, dw,
                                                      problem.groups)
        result[:, :, kd] = part
    return result


def bias_grad(grad_output):
    """``dL/db[c] = sum_{n, *spatial} grad_output[n, c, ...]`` for a batched
    ``(N, C, *spatial)`` gradient (NumPy's pairwise sum: fixed order)."""
    g = as_array(grad_output, "grad_output")
    if g.ndim < 3:
        raise ValueError(f"grad_output must be batched, (N, C, *spatial), got shape {g.shape}")
    dtype = compute_dtype((("grad_output", g),))
    return g.astype(dtype, copy=False).sum(axis=(0,) + tuple(range(2, g.ndim)))


def conv2d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                 algorithm="auto", exact=False):
    """Gradient of :func:`numbaconv.conv2d` with respect to its input.

    Parameters
    ----------
    input_size : tuple of int
        Shape of the forward input, ``(N, C_in, H, W)`` or ``(C_in, H, W)``.
    weight : array_like, shape (C_out, C_in / groups, kH, kW)
    grad_output : array_like, shape of the forward output
    stride, padding, dilation, groups
        As in the forward call.
    algorithm : str
        A transposed-convolution algorithm (``'auto'``, ``'direct'``, ``'gemm'``,
        ``'reference'``; for stride 1 also ``'depthwise'`` and ``'winograd'``, see
        :mod:`numbaconv.stride1_lowering`).
    exact : bool
        As in :func:`numbaconv.conv2d`: True keeps ``'auto'`` off Winograd (which it may take for
        large 3x3 stride-1 layers), so the gradient equals the reference bit for bit on integer
        data.

    Returns
    -------
    numpy.ndarray, shape ``input_size``
        ``dx[n, g*C_in/G + ci, iy, ix] = sum_{co in g, ky, kx} w[co, ci, ky, kx] *
        dy[n, co, oy, ox]`` over the outputs with ``oy*s_h - p_t + ky*d_h = iy`` (and the same for
        columns).
    """
    return _input_grad("conv2d_input", 2, input_size, weight, grad_output, False, stride,
                       padding, dilation, groups, 0, algorithm, exact)


def conv2d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                  algorithm="auto"):
    """Gradient of :func:`numbaconv.conv2d` with respect to its weight.

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W) or (C_in, H, W)
    weight_size : tuple of int, ``(C_out, C_in / groups, kH, kW)``
    grad_output : array_like, shape of the forward output
    stride, padding, dilation, groups
        As in the forward call.
    algorithm : str
        ``'auto'`` or one of :data:`WEIGHT_ALGORITHMS`.

    Returns
    -------
    numpy.ndarray, shape ``weight_size``
        ``dw[co, ci, ky, kx] = sum_{n, oy, ox} dy[n, co, oy, ox] *
        x[n, g*C_in/G + ci, oy*s_h - p_t + ky*d_h, ox*s_w - p_l + kx*d_w]`` (zero padding),
        summed over ``n``, then output pixels in row-major order.
    """
    return _weight_grad("conv2d_weight", 2, input, weight_size, grad_output, False, stride,
                        padding, dilation, groups, 0, algorithm)


def conv1d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                 algorithm="auto", exact=False):
    """Gradient of :func:`numbaconv.conv1d` with respect to its input; see :func:`conv2d_input`."""
    return _input_grad("conv1d_input", 1, input_size, weight, grad_output, False, stride,
                       padding, dilation, groups, 0, algorithm, exact)


def conv1d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                  algorithm="auto"):
    """Gradient of :func:`numbaconv.conv1d` with respect to its weight; see
    :func:`conv2d_weight`."""
    return _weight_grad("conv1d_weight", 1, input, weight_size, grad_output, False, stride,
                        padding, dilation, groups, 0, algorithm)


def conv_transpose2d_input(input_size, weight, grad_output, stride=1, padding=0,
                           output_padding=0, groups=1, dilation=1, *, algorithm="auto",
                           exact=False):
    """Gradient of :func:`numbaconv.conv_transpose2d` with respect to its input: the forward
    convolution of ``grad_output`` with the same weight (algorithm: a forward one)."""
    return _input_grad("conv_transpose2d_input", 2, input_size, weight, grad_output, True,
                       stride, padding, dilation, groups, output_padding, algorithm, exact)


def conv_transpose2d_weight(input, weight_size, grad_output, stride=1, padding=0,
                            output_padding=0, groups=1, dilation=1, *, algorithm="auto"):
    """Gradient of :func:`numbaconv.conv_transpose2d` with respect to its weight
    ``(C_in, C_out / groups, kH, kW)``: ``dw[ci, co, ky, kx] = sum_{n, iy, ix} x[n, ci, iy, ix] *
    dy[n, g*C_out/G + co, iy*s_h - p_t + ky*d_h, ix*s_w - p_l + kx*d_w]``."""
    return _weight_grad("conv_transpose2d_weight", 2, input, weight_size, grad_output, True,
                        stride, padding, dilation, groups, output_padding, algorithm)


def conv_transpose1d_input(input_size, weight, grad_output, stride=1, padding=0,
                           output_padding=0, groups=1, dilation=1, *, algorithm="auto",
                           exact=False):
    """Gradient of :func:`numbaconv.conv_transpose1d` with respect to its input."""
    return _input_grad("conv_transpose1d_input", 1, input_size, weight, grad_output, True,
                       stride, padding, dilation, groups, output_padding, algorithm, exact)


def conv_transpose1d_weight(input, weight_size, grad_output, stride=1, padding=0,
                            output_padding=0, groups=1, dilation=1, *, algorithm="auto"):
    """Gradient of :func:`numbaconv.conv_transpose1d` with respect to its weight."""
    return _weight_grad("conv_transpose1d_weight", 1, input, weight_size, grad_output, True,
                        stride, padding, dilation, groups, output_padding, algorithm)


def conv3d_input(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                 algorithm="auto", exact=False):
    """Gradient of :func:`numbaconv.conv3d` with respect to its input; see :func:`conv2d_input`."""
    return _input_grad("conv3d_input", 3, input_size, weight, grad_output, False, stride,
                       padding, dilation, groups, 0, algorithm, exact)


def conv3d_weight(input, weight_size, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
                  algorithm="auto"):
    """Gradient of :func:`numbaconv.conv3d` with respect to its weight (one 2-d weight gradient
    per kernel depth offset); see :func:`conv2d_weight`."""
    return _weight_grad("conv3d_weight", 3, input, weight_size, grad_output, False, stride,
                        padding, dilation, groups, 0, algorithm)


def conv_transpose3d_input(input_size, weight, grad_output, stride=1, padding=0,
                           output_padding=0, groups=1, dilation=1, *, algorithm="auto",
                           exact=False):
    """Gradient of :func:`numbaconv.conv_transpose3d` with respect to its input."""
    return _input_grad("conv_transpose3d_input", 3, input_size, weight, grad_output, True,
                       stride, padding, dilation, groups, output_padding, algorithm, exact)


def conv_transpose3d_weight(input, weight_size, grad_output, stride=1, padding=0,
                            output_padding=0, groups=1, dilation=1, *, algorithm="auto"):
    """Gradient of :func:`numbaconv.conv_transpose3d` with respect to its weight."""
    return _weight_grad("conv_transpose3d_weight", 3, input, weight_size, grad_output, True,
                        stride, padding, dilation, groups, output_padding, algorithm)


def _bias_of(grad_output, unbatched_ndim):
    """:func:`bias_grad` of a batched or an unbatched (``unbatched_ndim`` dimensions) gradient."""
    g = as_array(grad_output, "grad_output")
    return bias_grad(g[None] if g.ndim == unbatched_ndim else g)


def _vjp(input_fn, weight_fn, nd, input, weight, grad_output, hyper, bias, exact):
    x, w = as_array(input, "input"), as_array(weight, "weight")
    return (input_fn(x.shape, w, grad_output, *hyper, exact=exact),
            weight_fn(x, w.shape, grad_output, *hyper),
            _bias_of(grad_output, nd + 1) if bias else None)


def conv2d_vjp(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
               bias=True, exact=False):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of :func:`numbaconv.conv2d` (``dL/dbias`` is None
    when ``bias`` is false); ``exact`` as in :func:`conv2d_input`.

    >>> import numpy as np, numbaconv
    >>> x, w = np.ones((2, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32)
    >>> dx, dw, db = numbaconv.grad.conv2d_vjp(x, w, np.ones((2, 4, 6, 6), np.float32))
    >>> dx.shape, dw.shape, db.tolist()
    ((2, 3, 8, 8), (4, 3, 3, 3), [72.0, 72.0, 72.0, 72.0])
    """
    return _vjp(conv2d_input, conv2d_weight, 2, input, weight, grad_output,
                (stride, padding, dilation, groups), bias, exact)


def conv1d_vjp(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
               bias=True, exact=False):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of :func:`numbaconv.conv1d`."""
    return _vjp(conv1d_input, conv1d_weight, 1, input, weight, grad_output,
                (stride, padding, dilation, groups), bias, exact)


def conv_transpose2d_vjp(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                         groups=1, dilation=1, *, bias=True, exact=False):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of :func:`numbaconv.conv_transpose2d`."""
    return _vjp(conv_transpose2d_input, conv_transpose2d_weight, 2, input, weight, grad_output,
                (stride, padding, output_padding, groups, dilation), bias, exact)


def conv_transpose1d_vjp(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                         groups=1, dilation=1, *, bias=True, exact=False):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of :func:`numbaconv.conv_transpose1d`."""
    return _vjp(conv_transpose1d_input, conv_transpose1d_weight, 1, input, weight, grad_output,
                (stride, padding, output_padding, groups, dilation), bias, exact)


def conv3d_vjp(input, weight, grad_output, stride=1, padding=0, dilation=1, groups=1, *,
               bias=True, exact=False):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of :func:`numbaconv.conv3d`."""
    return _vjp(conv3d_input, conv3d_weight, 3, input, weight, grad_output,
                (stride, padding, dilation, groups), bias, exact)


def conv_transpose3d_vjp(input, weight, grad_output, stride=1, padding=0, output_padding=0,
                         groups=1, dilation=1, *, bias=True, exact=False):
    """``(dL/dinput, dL/dweight, dL/dbias)`` of :func:`numbaconv.conv_transpose3d`."""
    return _vjp(conv_transpose3d_input, conv_transpose3d_weight, 3, input, weight, grad_output,
                (stride, padding, output_padding, groups, dilation), bias, exact)


_CONV = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}
_TRANSPOSED = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d,
               3: functional.conv_transpose3d}
