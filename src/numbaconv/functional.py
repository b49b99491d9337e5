"""Public convolution functions: validate, normalise, dispatch, run.

The front ends never loop over pixels: they turn the arguments into a
:class:`~numbaconv.problem.ConvProblem` and contiguous arrays, ask :mod:`numbaconv.dispatch` for
an algorithm and hand it plain arrays.
"""

import numpy as np

from . import (_args, _threads, depth_lowering, dispatch, layouts, output_pool, padding_modes,
               tuning)
from ._front import as_array, compute_dtype, copy_out, output_array, output_padding_for, prepare
from .problem import ConvProblem

_ALGORITHM_DOC = """algorithm : str, optional
        ``'auto'`` (default), ``'tune'`` (time every exact algorithm on the first call of each
        problem and use the fastest from then on, see :mod:`numbaconv.tuning`) or the name of an
        algorithm (see :func:`explain` and ``numbaconv.dispatch.ALGORITHMS``); a forced
        algorithm that cannot compute the problem raises
        :class:`~numbaconv.dispatch.UnsupportedAlgorithm` with the reason.
    exact : bool, optional
        Only algorithms whose result equals the reference bit for bit whenever every partial sum
        is exact (integer-valued data): ``'auto'`` then never picks ``'winograd'``, and forcing it
        raises. Default False: ``'auto'`` may use Winograd for 3x3 stride-1 layers; its error is
        bounded (see :mod:`numbaconv.kernels.winograd`) and the README gives measured figures."""


def _run(prepared, algorithm, out, exact=False):
    runs = prepared.runs
    if runs is not None and out is None:
        remembered = runs.get((algorithm, exact, id(dispatch.ALGORITHMS)))
        if remembered is not None:
            # a repeated call: the algorithm and the output's form as the first time (2.5 us
            # less per call than choosing them again)
            run, shape, dtype, batched_shape = remembered
            result = np.empty(shape, dtype)
            _threads.call(run, prepared.problem, prepared.x, prepared.w, prepared.b,
                          result.reshape(batched_shape))
            return result
    result, batched = output_array(prepared, out)
    problem, x, w, b = prepared.problem, prepared.x, prepared.w, prepared.b
    if problem.nd == 1:
        # 1-d runs through the 2-d kernels with a unit height: reshapes of contiguous arrays
        problem = problem.lifted_to_2d()
        x = x.reshape(x.shape[:2] + (1,) + x.shape[2:])
        w = w.reshape(w.shape[:2] + (1,) + w.shape[2:])
        batched = batched.reshape(problem.output_shape)
    if problem.nd == 3 and algorithm != "reference":
        # 3-d runs as one batched 2-d convolution per kernel depth offset
        if problem.batch:
            with _threads.launch():
                depth_lowering.run(problem, x, w, b, batched,
                                   "auto" if algorithm == "tune" else algorithm, exact)
        return result
    if algorithm == "tune":
        chosen = _tuned(problem, x, w, b, batched)
    else:
        chosen = dispatch.get(algorithm, problem, exact)
    if problem.batch:
        _threads.call(chosen.run, problem, x, w, b, batched)
        if (runs is not None and out is None and prepared.problem.nd == 2
                and algorithm != "tune" and result.nbytes < output_pool.MIN_BYTES):
            if len(runs) >= 16:
                runs.clear()
            runs[algorithm, exact, id(dispatch.ALGORITHMS)] = (chosen.run, result.shape,
                                                                result.dtype, batched.shape)
    return result


def _tuned(problem, x, w, b, out):
    """The algorithm :mod:`numbaconv.tuning` finds fastest for ``problem`` (timing the exact
    kernels on these arrays the first time), or ``auto``'s when there is nothing to time."""
    names = [a.name for a in dispatch.ALGORITHMS
             if a.name != "reference" and a.exact and a.why_not(problem) is None]
    if not problem.batch or len(names) < 2:
        return dispatch.get("auto", problem)

    def run(name):
        with _threads.launch():
            dispatch.get(name, problem).run(problem, x, w, b, out)

    return dispatch.get(tuning.choose(problem, run, names), problem)


def _layout_call(func, nd, transposed, fn, input, weight, bias, hyper, data_format,
                 weight_format, algorithm, out):
    """``fn`` on channels-last data and/or TensorFlow-ordered weights (see
    :mod:`numbaconv.layouts`): native channels-last kernels where they apply, the rest
    transposed around the channels-first kernels."""
    data_last, weight_tf = layouts.formats(func, nd, transposed, data_format, weight_format)
    x, w = as_array(input, "input"), as_array(weight, "weight")
    if weight_tf:
        if w.ndim != nd + 2:
            raise ValueError(f"{func}: weight must have {nd + 2} dimensions, got shape {w.shape}")
        w_std = layouts.to_torch_weight(w, nd)
    else:
        w_std = w
    if not data_last:
        return fn(x, w_std, bias, **hyper, algorithm=algorithm, out=out)
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"{func}: channels-last input must have shape (N, *spatial, C) or "
                         f"(*spatial, C) with {nd} spatial dimension(s), got shape {x.shape}")
    xb = x[None] if x.ndim == nd + 1 else x
    native = _channels_last_native(func, nd, transposed, x, w_std, bias, hyper, algorithm, out)
    if native is not None:
        return native
    if (not transposed and hyper.get("padding_mode", "zeros") == "zeros"
            and algorithm in ("auto", "gemm")
            and layouts.is_pointwise_problem(nd, xb.shape, w_std.shape, hyper["stride"],
                                             hyper["padding"], hyper["dilation"],
                                             hyper["groups"])):
        return layouts.pointwise(func, nd, x, w, bias, weight_tf, out)
    if weight_tf:
        w_std = layouts.torch_weight_copy(w, nd)
    y = layouts.to_channels_last(
        fn(layouts.to_channels_first(xb, nd), w_std, bias, **hyper, algorithm=algorithm), nd)
    return copy_out(func, y[0] if x.ndim == nd + 1 else y, out)


def _channels_last_native(func, nd, transposed, x, w_std, bias, hyper, algorithm, out):
    """A channels-last call on a native channels-last kernel (1-D and 2-D depthwise with
    multiplier 1 for 'auto'/'depthwise', the implicit GEMM for 'auto'/'gemm', 1-D and 2-D groups
    of few channels for 'auto', transposed convolution as stride phases on that GEMM for
    'auto'/'gemm'), or None.

    Padding modes other than zeros pad a channels-last copy first (one copy, as channels-first
    does)."""
    if algorithm not in ("auto", "gemm", "depthwise"):
        return None
    if x.ndim not in (nd + 1, nd + 2) or w_std.ndim != nd + 2:
        return None  # the general path reports the shapes
    if transposed:
        return _channels_last_transposed(func, nd, x, w_std, bias, hyper, algorithm, out)
    stride, padding = hyper["stride"], hyper["padding"]
    mode = hyper.get("padding_mode", "zeros")
    padding_modes.check_mode(mode, func)
    if mode != "zeros":
        pairs = _args.conv_padding(padding, nd, w_std.shape[2:],
                                   _args.int_tuple(stride, nd, "stride", 1),
                                   _args.int_tuple(hyper["dilation"], nd, "dilation", 1),
                                   x.shape[x.ndim - nd - 1:-1])
        x = padding_modes.pad(x, pairs, mode, func, first_axis=x.ndim - nd - 1)
        padding = 0
    xb = x[None] if x.ndim == nd + 1 else x
    problem = layouts.native_problem(nd, xb.shape, w_std.shape, stride, padding,
                                     hyper["dilation"], hyper["groups"])
    if problem is None:
        return None
    if nd < 3 and layouts.is_depthwise(problem) and algorithm in ("auto", "depthwise"):
        return layouts.depthwise(func, nd, problem, x, w_std, bias, out)
    dtype = compute_dtype((("input", x), ("weight", w_std), ("bias", bias)))
    if algorithm in ("auto", "gemm") and layouts.dense_pays(problem, dtype):
        return layouts.dense(func, nd, problem, x, w_std, bias, out)
    if nd < 3 and algorithm == "auto" and layouts.is_small_grouped(problem, dtype):
        return layouts.small_grouped(func, nd, problem, x, w_std, bias, out)
    return None


def _channels_last_transposed(func, nd, x, w_std, bias, hyper, algorithm, out):
    """A channels-last transposed call on the native stride-phase kernel, or None."""
    if algorithm not in ("auto", "gemm"):
        return None
    xb = x[None] if x.ndim == nd + 1 else x
    problem = layouts.native_problem(nd, xb.shape, w_std.shape, hyper["stride"], hyper["padding"],
                                     hyper["dilation"], hyper["groups"], transposed=True,
                                     output_padding=hyper["output_padding"],
                                     output_size=hyper["output_size"])
    dtype = compute_dtype((("input", x), ("weight", w_std), ("bias", bias)))
    if problem is None or not layouts.dense_pays(problem, dtype):
        return None
    return layouts.transposed_dense(func, nd, problem, x, w_std, bias, out)


def _conv_transpose(func, nd, fn, input, weight, bias, hyper, padding_mode, data_format,
                    weight_format, algorithm, out):
    """The body of ``conv_transpose{nd}d`` (``fn``): padding modes, layouts, then the kernels."""
    if padding_mode != "zeros":
        return _transposed_mode(func, nd, fn, input, weight, bias,
                                dict(hyper, data_format=data_format, weight_format=weight_format,
                                     algorithm=algorithm), padding_mode, out)
    if data_format != layouts.first_format(nd) or weight_format is not None:
        return _layout_call(func, nd, True, fn, input, weight, bias, hyper, data_format,
                            weight_format, algorithm, out)
    exact = hyper.pop("exact")
    prepared = prepare(func, nd, input, weight, bias, transposed=True, **hyper)
    return _run(prepared, algorithm, out, exact)


def _transposed_mode(func, nd, fn, input, weight, bias, hyper, mode, out):
    """A transposed call with ``padding_mode`` other than zeros (see
    :func:`numbaconv.padding_modes.transposed_call`)."""
    padding_modes.check_mode(mode, func)
    data_last, _ = layouts.formats(func, nd, True, hyper["data_format"], hyper["weight_format"])
    return padding_modes.transposed_call(fn, func, nd, data_last, input, weight, bias, hyper,
                                         mode, out)


def _padded(func, nd, input, weight, stride, padding, dilation, padding_mode):
    """``(input, padding)`` to convolve: unchanged for zero padding; for other modes the input
    padded by that mode and zero padding."""
    padding_modes.check_mode(padding_mode, func)
    if padding_mode == "zeros":
        return input, padding
    x, w = as_array(input, "input"), as_array(weight, "weight")
    if x.ndim not in (nd + 1, nd + 2) or w.ndim != nd + 2:
        return input, padding  # prepare() reports the shapes
    pairs = _args.conv_padding(padding, nd, w.shape[2:], _args.int_tuple(stride, nd, "stride", 1),
                               _args.int_tuple(dilation, nd, "dilation", 1), x.shape[-nd:])
    return padding_modes.pad(x, pairs, padding_mode, func), 0


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", data_format="NCHW", weight_format=None, algorithm="auto",
           exact=False, out=None):
    r"""2-D convolution (cross-correlation) over an input of several planes.

    Same semantics, argument forms and result as ``torch.nn.functional.conv2d``:

    .. math::
        \text{out}(n, c_o, y, x) = \text{bias}(c_o) + \sum_{c_i, k_y, k_x}
        \text{weight}(c_o, c_i, k_y, k_x)\,
        \text{input}(n, g\,C_{in}/G + c_i,\; y s_h - p_t + k_y d_h,\; x s_w - p_l + k_x d_w)

    where :math:`g` is the group of output channel :math:`c_o`, :math:`c_i` runs over the
    :math:`C_{in}/G` input channels of that group, and input positions outside the image count as
    zero. The output size per spatial dimension is

    .. math::
        H_{out} = \left\lfloor \frac{H + p_t + p_b - d_h (k_h - 1) - 1}{s_h} \right\rfloor + 1

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W) or (C_in, H, W)
        Any array NumPy accepts, CPU torch tensors included (read without copying when
        possible). Never modified.
    weight : array_like, shape (C_out, C_in / groups, kH, kW)
    bias : array_like, shape (C_out,), optional
    stride : int or (int, int)
    padding : int, (int, int), ((top, bottom), (left, right)), 'valid', 'same' or 'same_tf'
        ``'same'`` (stride 1 only) pads ``dilation * (k - 1)`` in total per dimension, the odd
        element at the bottom/right, as torch does. ``'same_tf'`` is TensorFlow's ``'SAME'`` for
        any stride: ``H_out = ceil(H / s_h)``, total pad ``max((H_out - 1) s_h + d_h (k_h - 1) + 1
        - H, 0)``, the odd element at the bottom/right.
    padding_mode : 'zeros', 'reflect', 'replicate' or 'circular'
        What the padding holds, as ``torch.nn.Conv2d``'s ``padding_mode`` (modes other than
        zeros pad a copy of the input, then convolve without padding).
    data_format : 'NCHW' or 'NHWC'
        Layout of ``input`` and of the result; with ``'NHWC'``, (N, H, W, C) or (H, W, C).
    weight_format : 'OIHW', 'HWIO' or None
        Layout of ``weight``: torch's (C_out, C_in / groups, kH, kW) or TensorFlow's
        (kH, kW, C_in / groups, C_out); None means the one that matches ``data_format``.
        See :mod:`numbaconv.layouts`.
    dilation : int or (int, int)
    groups : int
        Input and output channels are split into ``groups`` independent groups; both counts must
        be divisible by it. ``groups == C_in`` is a depthwise convolution.
    {algorithm}
    out : numpy.ndarray, optional
        Receives the result: the output shape, the computation dtype, C-contiguous, writeable,
        not overlapping the inputs.

    Returns
    -------
    numpy.ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        float64 if any operand is float64, integer or bool, else float32 (float16 counts as
        float32).

    Raises
    ------
    ValueError, TypeError
        For invalid arguments, before any computation; the message names the argument and rule.

    Examples
    --------
    >>> import numpy as np, numbaconv
    >>> x = np.ones((1, 3, 8, 8), np.float32)
    >>> w = np.ones((4, 3, 3, 3), np.float32)
    >>> numbaconv.conv2d(x, w, padding=1).shape
    (1, 4, 8, 8)
    >>> float(numbaconv.conv2d(x, w, padding="same")[0, 0, 4, 4])
    27.0
    """
    if data_format != "NCHW" or weight_format is not None:
        return _layout_call("conv2d", 2, False, conv2d, input, weight, bias,
                            dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                                 padding_mode=padding_mode, exact=exact), data_format,
                            weight_format,
                            algorithm, out)
    input, padding = _padded("conv2d", 2, input, weight, stride, padding, dilation, padding_mode)
    prepared = prepare("conv2d", 2, input, weight, bias, transposed=False, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)
    return _run(prepared, algorithm, out, exact)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", data_format="NCW", weight_format=None, algorithm="auto",
           exact=False, out=None):
    """1-D convolution, as ``torch.nn.functional.conv1d``.

    ``input`` (N, C_in, L) or (C_in, L); ``weight`` (C_out, C_in / groups, k); ``padding`` an int,
    ``(p,)``, ``((left, right),)``, ``'valid'`` or ``'same'``. Computed by the 2-D algorithms on a
    unit-height image; see :func:`conv2d` for the rest.

    >>> import numpy as np, numbaconv
    >>> numbaconv.conv1d(np.arange(5.0)[None], np.ones((1, 1, 2)))
    array([[1., 3., 5., 7.]])
    """
    if data_format != "NCW" or weight_format is not None:
        return _layout_call("conv1d", 1, False, conv1d, input, weight, bias,
                            dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                                 padding_mode=padding_mode, exact=exact), data_format,
                            weight_format,
                            algorithm, out)
    input, padding = _padded("conv1d", 1, input, weight, stride, padding, dilation, padding_mode)
    prepared = prepare("conv1d", 1, input, weight, bias, transposed=False, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)
    return _run(prepared, algorithm, out, exact)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", data_format="NCHW",
                     weight_format=None, algorithm="auto", exact=False, out=None):
    r"""2-D transposed convolution ("deconvolution"), as ``torch.nn.functional.conv_transpose2d``.

    The adjoint of :func:`conv2d` with respect to its input: every input element scatters
    ``input(n, c_i, y, x) * weight(c_i, j, k_y, k_x)`` onto output channel ``g * C_out / G + j``
    at position ``(y s_h - p_t + k_y d_h, x s_w - p_l + k_x d_w)``; positions outside the output
    are dropped. The output size per spatial dimension is

    .. math::
        H_{out} = (H - 1) s_h - p_t - p_b + d_h (k_h - 1) + a_h + 1

    Parameters
    ----------
    input : array_like, shape (N, C_in, H, W) or (C_in, H, W)
    weight : array_like, shape (C_in, C_out / groups, kH, kW)
        torch's layout for transposed convolution.
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or (int, int)
    padding : int, (int, int) or ((top, bottom), (left, right))
        Removes that many rows/columns from the borders of the full result (``'same'`` is refused).
    output_padding : int or (int, int)
        :math:`a`: extra rows/columns at the bottom/right, smaller than stride or dilation.
    groups : int
    output_size : tuple of int, optional
        Requested (H_out, W_out) (or the full (N, C_out, H_out, W_out)); sets ``output_padding``
        as ``torch.nn.ConvTranspose2d.forward`` does.
    padding_mode : 'zeros', 'reflect', 'replicate' or 'circular'
        torch accepts only zeros here. Other modes give the adjoint of :func:`conv2d` with that
        ``padding_mode`` (and the same stride, padding, dilation and groups): the full result
        (``padding=0``) is computed and each of its border rows/columns is added onto the output
        row/column that the convolution's padding copies (its mirror image, the edge, or the
        row/column ``H_out`` away), then the bias is added. With zeros this is the usual crop.
        Output size as above; reflect needs padding smaller than the output size, circular no
        larger.
    {algorithm}
    out : numpy.ndarray, optional
        As in :func:`conv2d`.

    Returns
    -------
    numpy.ndarray, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)

    Examples
    --------
    >>> import numpy as np, numbaconv
    >>> x = np.ones((1, 32, 128, 128), np.float32)
    >>> w = np.ones((32, 16, 3, 3), np.float32)
    >>> numbaconv.conv_transpose2d(x, w, stride=2, padding=1).shape
    (1, 16, 255, 255)
    >>> numbaconv.conv_transpose2d(x, w, stride=2, padding=1, output_size=(256, 256)).shape
    (1, 16, 256, 256)
    """
    return _conv_transpose("conv_transpose2d", 2, conv_transpose2d, input, weight, bias, dict(
        stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation, output_size=output_size, exact=exact), padding_mode, data_format,
        weight_format, algorithm, out)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", data_format="NCW",
                     weight_format=None, algorithm="auto", exact=False, out=None):
    """1-D transposed convolution, as ``torch.nn.functional.conv_transpose1d``.

    ``input`` (N, C_in, L) or (C_in, L); ``weight`` (C_in, C_out / groups, k). See
    :func:`conv_transpose2d`.

    >>> import numpy as np, numbaconv
    >>> numbaconv.conv_transpose1d(np.ones((1, 3)), np.ones((1, 1, 2)), stride=2)
    array([[1., 1., 1., 1., 1., 1.]])
    """
    return _conv_transpose("conv_transpose1d", 1, conv_transpose1d, input, weight, bias, dict(
        stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation, output_size=output_size, exact=exact), padding_mode, data_format,
        weight_format, algorithm, out)


for _f in (conv2d, conv1d, conv_transpose2d, conv_transpose1d):
    _f.__doc__ = _f.__doc__.replace("{algorithm}", _ALGORITHM_DOC)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           padding_mode="zeros", data_format="NCDHW", weight_format=None, algorithm="auto",
           exact=False, out=None):
    """3-D convolution, as ``torch.nn.functional.conv3d``.

    ``input`` (N, C_in, D, H, W) or (C_in, D, H, W); ``weight`` (C_out, C_in / groups, kD, kH, kW);
    arguments per spatial dimension as in :func:`conv2d` (``padding`` also ``'valid'``,
    ``'same'``, ``'same_tf'`` or three ``(low, high)`` pairs; ``padding_mode`` as in
    :func:`conv2d`). Computed as one batched 2-D
    convolution per kernel depth offset (:mod:`numbaconv.depth_lowering`); ``algorithm`` names the
    2-D algorithm (or ``'reference'`` for the 3-D reference). ``data_format='NDHWC'`` takes and
    returns (N, D, H, W, C) arrays, with weights in TensorFlow's ``'DHWIO'`` layout by default
    (``weight_format='OIDHW'`` for torch's); see :mod:`numbaconv.layouts`.

    >>> import numpy as np, numbaconv
    >>> numbaconv.conv3d(np.ones((1, 2, 4, 5, 6)), np.ones((3, 2, 3, 3, 3)), padding=1).shape
    (1, 3, 4, 5, 6)
    """
    if data_format != "NCDHW" or weight_format is not None:
        return _layout_call("conv3d", 3, False, conv3d, input, weight, bias,
                            dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                                 padding_mode=padding_mode, exact=exact), data_format,
                            weight_format, algorithm, out)
    input, padding = _padded("conv3d", 3, input, weight, stride, padding, dilation, padding_mode)
    prepared = prepare("conv3d", 3, input, weight, bias, transposed=False, stride=stride,
                       padding=padding, dilation=dilation, groups=groups)
    return _run(prepared, algorithm, out, exact)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, padding_mode="zeros", data_format="NCDHW",
                     weight_format=None, algorithm="auto", exact=False, out=None):
    """3-D transposed convolution, as ``torch.nn.functional.conv_transpose3d``.

    ``input`` (N, C_in, D, H, W) or (C_in, D, H, W); ``weight`` (C_in, C_out / groups, kD, kH,
    kW); see :func:`conv_transpose2d`. Computed as one batched 2-D transposed convolution per
    kernel depth offset. ``data_format='NDHWC'``: (N, D, H, W, C) data, weights by default in
    TensorFlow's ``'DHWOI'`` layout (kD, kH, kW, C_out / groups, C_in).

    >>> import numpy as np, numbaconv
    >>> numbaconv.conv_transpose3d(np.ones((1, 2, 3, 4, 5)), np.ones((2, 4, 2, 2, 2)),
    ...                            stride=2).shape
    (1, 4, 6, 8, 10)
    """
    return _conv_transpose("conv_transpose3d", 3, conv_transpose3d, input, weight, bias, dict(
        stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation, output_size=output_size, exact=exact), padding_mode, data_format,
        weight_format, algorithm, out)


def convolve(problem, input, weight, bias=None, *, algorithm="auto", exact=False, out=None):
    """Run the convolution a :class:`~numbaconv.problem.ConvProblem` describes on these arrays.

    The problem's stride, padding, dilation, groups (and output padding) are passed to
    :func:`conv2d` / :func:`conv_transpose2d` (1-d: :func:`conv1d` / :func:`conv_transpose1d`);
    the arrays are validated against them as usual. Benchmarks and the command line use it.
    """
    fn = {(1, False): conv1d, (2, False): conv2d, (1, True): conv_transpose1d,
          (2, True): conv_transpose2d}.get((problem.nd, problem.transposed))
    if fn is None:
        raise ValueError(f"no {problem.nd}-d convolution function for {problem}")
    if problem.transposed:
        return fn(input, weight, bias, problem.stride, problem.padding, problem.output_padding,
                  problem.groups, problem.dilation, algorithm=algorithm, exact=exact, out=out)
    return fn(input, weight, bias, problem.stride, problem.padding, problem.dilation,
              problem.groups, algorithm=algorithm, exact=exact, out=out)


class Explanation:
    """What ``algorithm='auto'`` picks for a problem and why the others do or do not apply.

    Attributes
    ----------
    problem : ConvProblem
        The problem as the kernels see it (1-d problems lifted to 2-d).
    choice : str
        The algorithm ``'auto'`` runs.
    reasons : dict
        ``{name: None or reason}`` for every algorithm of the problem's kind.
    """

    def __init__(self, problem, choice, reasons):
        self.problem, self.choice, self.reasons = problem, choice, reasons

    def __repr__(self):
        lines = [f"{self.problem}: auto picks {self.choice!r}"]
        for name, reason in self.reasons.items():
            mark = "*" if name == self.choice else " "
            lines.append(f" {mark} {name:<12} {'can run' if reason is None else reason}")
        return "\n".join(lines)


def explain(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
            transposed=False, output_padding=0, output_size=None, dtype=None, exact=False):
    """Which algorithm ``'auto'`` would pick for these arguments, and why not the others.

    Takes the arguments of :func:`conv2d` (or :func:`conv_transpose2d` with
    ``transposed=True``; 1-D shapes work too). ``input`` and ``weight`` may be arrays or just
    their shapes (tuples of ints); ``bias`` may be an array or a bool; ``dtype`` overrides the
    computation dtype (default: from the arrays, float32 for shapes).

    >>> import numbaconv
    >>> numbaconv.explain((1, 64, 56, 56), (64, 64, 3, 3), padding=1).choice in numbaconv.algorithms()
    True
    """
    def shape_of(value, name):
        if isinstance(value, tuple) and all(isinstance(v, (int, np.integer)) for v in value):
            return value, None
        array = as_array(value, name)
        return array.shape, array

    x_shape, x = shape_of(input, "input")
    w_shape, w = shape_of(weight, "weight")
    has_bias = bool(bias) if isinstance(bias, bool) else bias is not None
    if dtype is None:
        arrays = [("input", x), ("weight", w)]
        dtype = compute_dtype(arrays) if any(a is not None for _, a in arrays) else "float32"
    nd = len(w_shape) - 2
    if len(x_shape) == nd + 1:
        x_shape = (1,) + tuple(x_shape)
    if transposed:
        if output_size is not None:
            output_padding = output_padding_for(output_size, nd, x_shape, w_shape, stride,
                                                 padding, dilation)
        problem = ConvProblem.for_conv_transpose(
            x_shape, w_shape, bias=has_bias, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, dilation=dilation, dtype=dtype)
    else:
        problem = ConvProblem.for_conv(x_shape, w_shape, bias=has_bias, stride=stride,
                                       padding=padding, dilation=dilation, groups=groups,
                                       dtype=dtype)
    if problem.nd == 1:
        problem = problem.lifted_to_2d()
    return Explanation(problem, dispatch.auto_choice(problem, exact),
                       dispatch.candidates(problem, exact))


def algorithms():
    """Names accepted by ``algorithm=`` besides ``'auto'``."""
    return dispatch.names()
