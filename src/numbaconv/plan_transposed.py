"""2-D transposed convolutions with fixed weights, prepared once for many calls.

:func:`plan_conv_transpose2d` is :func:`numbaconv.plan_conv2d` for
:func:`numbaconv.conv_transpose2d`: a :class:`ConvTranspose2dPlan` gives what
``conv_transpose2d`` gives with the same arguments and the algorithm
:meth:`~ConvTranspose2dPlan.algorithm_for` names, bit for bit.

Stride-1 layers that run as forward convolutions of the flipped weights (transposed ``direct``,
``winograd`` and ``depthwise``, see :mod:`numbaconv.stride1_lowering`) keep the flipped weights in
a :class:`~numbaconv.plan.Conv2dPlan`, which prepares them further (Winograd's transformed
weights, the direct kernel's tile choice): a call neither flips nor transforms them again, and
``'auto'`` takes Winograd on the layers a forward plan would (``prepared`` in
:func:`numbaconv.dispatch.rule`). Other layers on the transposed ``direct`` kernel (strides
above 1) read its weight blocks packed once (:class:`numbaconv.kernels.transposed.PackedWeights`)
instead of copying them per call, and transposed ``gemm`` reads its weights as panels packed once,
each tile's weights one contiguous stream. The plan holds copies: changing the arrays it was made
from does not change it.
"""

import numpy as np

from . import _args, _threads, dispatch, stride1_lowering
from ._front import as_array, compute_dtype, output_array, prepare
from .functional import conv_transpose2d
from .kernels import transposed
from .plan import Conv2dPlan, _Plan
from .problem import ConvProblem

__all__ = ["ConvTranspose2dPlan", "plan_conv_transpose2d"]

# transposed algorithms that run a stride-1 layer as the forward algorithm of the same name
_LOWERED = ("direct", "winograd", "depthwise")
# transposed algorithms whose kernels read weights packed once (transposed.PackedWeights)
_PACKED = ("direct", "gemm")


class ConvTranspose2dPlan(_Plan):
    """``conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups,
    dilation)`` for fixed ``weight`` and ``bias``; made by :func:`plan_conv_transpose2d`.

    Call it as ``plan(input, out=None)`` with ``input`` of shape (N, C_in, H, W) or
    (C_in, H, W). Any input size, batch and dtype; the computation dtype follows
    :func:`numbaconv.conv_transpose2d`'s rule over input, weight and bias.

    Attributes
    ----------
    weight : numpy.ndarray, shape (C_in, C_out / groups, kH, kW)
        The plan's own read-only copy of the weights.
    bias : numpy.ndarray, shape (C_out,), or None
        Likewise.
    stride, padding, output_padding, groups, dilation, algorithm, exact
        As given to :func:`plan_conv_transpose2d`.
    """

    _ARGS = ("stride", "padding", "output_padding", "groups", "dilation", "algorithm", "exact")

    def __init__(self, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                 dilation=1, *, algorithm="auto", exact=False):
        func = "plan_conv_transpose2d"
        w, b, dtype = self._checked(func, weight, bias, "C_in, C_out / groups, kH, kW",
                                    algorithm, ("auto",), _transposed_names(), exact)
        groups = _args.groups_arg(groups)
        # the hyperparameters checked now, on the smallest input whose output is not empty, so
        # that a bad one fails here rather than on the first call
        pads = _args.transposed_padding(padding, 2)
        trial = ConvProblem.for_conv_transpose(
            (1, w.shape[0]) + tuple(1 + lo + hi for lo, hi in pads), w.shape,
            bias=b is not None, stride=stride, padding=padding, output_padding=output_padding,
            groups=groups, dilation=dilation, dtype=dtype)
        # a forced algorithm's limits depend on the kernel, stride, padding, groups and
        # exactness only
        if algorithm != "auto":
            dispatch.get(algorithm, trial, exact, prepared=True)
        if b is not None and b.shape != (trial.out_channels,):
            raise ValueError(f"{func}: bias must have shape ({trial.out_channels},) (one value "
                             f"per output channel), got {b.shape}")
        self._weight, self._bias = self._keep(w, b, dtype)
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.groups, self.dilation = groups, dilation
        self.algorithm, self.exact = algorithm, exact
        forward = stride1_lowering.forward_problem(trial)
        # the forward padding depends on kernel, dilation, padding and output padding only
        self._forward_padding = None if forward is None else forward.padding
        self._forward = {}  # algorithm name -> Conv2dPlan of the flipped weights
        self._packed = {}   # dtype -> the direct kernel's packed weights
        self._seen = {}     # (input shape, dtype) -> callable(input)

    def _problem(self, input_shape, dtype):
        dt = compute_dtype((("input", np.empty(0, dtype)), ("weight", self.weight),
                            ("bias", self.bias)))
        return ConvProblem.for_conv_transpose(
            input_shape, self.weight.shape, bias=self.bias is not None, stride=self.stride,
            padding=self.padding, output_padding=self.output_padding, groups=self.groups,
            dilation=self.dilation, dtype=dt)

    def algorithm_for(self, input_shape, dtype=np.float32):
        """The name of the (transposed) algorithm a call with an input of ``input_shape``
        (N, C_in, H, W) and ``dtype`` runs."""
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise ValueError(f"input_shape must be (N, C_in, H, W), got {input_shape!r}")
        return dispatch.get(self.algorithm, self._problem(shape, dtype), self.exact,
                            prepared=True).name

    def __call__(self, input, *, out=None):
        """The transposed convolution of ``input`` (N, C_in, H, W) or (C_in, H, W) with the
        plan's weights: (N, C_out, H_out, W_out) or (C_out, H_out, W_out), into ``out`` if given
        (the output shape, the computation dtype, C-contiguous, writeable, not overlapping the
        input)."""
        if out is None and type(input) is np.ndarray:
            seen = self._seen.get((input.shape, input.dtype))
            if seen is not None:
                return seen(input)
        x = as_array(input, "input")
        if x.ndim not in (3, 4):
            raise ValueError(f"ConvTranspose2dPlan: input must have shape (N, C_in, H, W) or "
                             f"(C_in, H, W), got {x.shape}")
        problem = self._problem(x.shape if x.ndim == 4 else (1,) + x.shape, x.dtype)
        run = self._runner(dispatch.get(self.algorithm, problem, self.exact, prepared=True).name)
        if out is None and type(input) is np.ndarray:
            if len(self._seen) >= 16:
                self._seen.clear()
            self._seen[input.shape, input.dtype] = run
        return run(x, out)

    def _runner(self, name):
        """``run(input, out=None)`` with the algorithm ``name``: a forward plan of the flipped
        weights for the stride-1 ones that have it, else ``conv_transpose2d``."""
        if name in _LOWERED and self._forward_padding is not None:
            forward = self._forward.get(name)
            if forward is None:
                flipped = stride1_lowering.flipped_weights(self._weight, self.groups)
                forward = self._forward[name] = Conv2dPlan(
                    flipped, self._bias, 1, self._forward_padding, self.dilation, self.groups,
                    algorithm=name, exact=self.exact)
            return lambda x, out=None: forward(x, out=out)
        if name in _PACKED:
            return lambda x, out=None: self._run_packed(name, x, out)
        kwargs = dict(stride=self.stride, padding=self.padding,
                      output_padding=self.output_padding, groups=self.groups,
                      dilation=self.dilation, algorithm=name, exact=self.exact)
        return lambda x, out=None: conv_transpose2d(x, self._weight, self._bias, **kwargs,
                                                    out=out)

    def _run_packed(self, name, x, out=None):
        """``conv_transpose2d(x, ..., algorithm=name, out=out)`` (``direct`` on layers that do
        not run as forward convolutions, or ``gemm``) on weights packed once per computation
        dtype for that kernel."""
        prepared = prepare("ConvTranspose2dPlan", 2, x, self._weight, self._bias,
                           transposed=True, stride=self.stride, padding=self.padding,
                           dilation=self.dilation, groups=self.groups,
                           output_padding=self.output_padding)
        result, batched = output_array(prepared, out)
        problem = prepared.problem
        if problem.batch:
            dt = prepared.w.dtype
            packed = self._packed.get(dt)
            if packed is None:
                packed = self._packed[dt] = transposed.PackedWeights(prepared.w, self.groups)
            _threads.call(dispatch.get(name, problem, self.exact, prepared=True).run,
                          problem, prepared.x, packed, prepared.b, batched)
        return result


def plan_conv_transpose2d(weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                          dilation=1, *, algorithm="auto", exact=False):
    """A :class:`ConvTranspose2dPlan`: :func:`numbaconv.conv_transpose2d` with these weights and
    hyperparameters, prepared once for repeated calls.

    Parameters are :func:`numbaconv.conv_transpose2d`'s without ``input``, ``output_size``,
    ``padding_mode``, the layouts and ``out`` (zero padding, channels-first data, PyTorch's
    weight layout); ``algorithm`` is ``'auto'`` or a transposed algorithm's name. The plan copies
    ``weight`` and ``bias``; invalid arguments raise here, not at the first call.

    Examples
    --------
    >>> import numpy as np, numbaconv
    >>> w = np.ones((3, 4, 3, 3), np.float32)
    >>> up = numbaconv.plan_conv_transpose2d(w, padding=1)
    >>> x = np.ones((2, 3, 8, 8), np.float32)
    >>> np.array_equal(up(x), numbaconv.conv_transpose2d(x, w, padding=1))
    True
    >>> up.algorithm_for(x.shape)     # 8 pixels wide: the transposed GEMM
    'gemm'
    """
    return ConvTranspose2dPlan(weight, bias, stride, padding, output_padding, groups, dilation,
                               algorithm=algorithm, exact=exact)


def _transposed_names():
    return tuple(dict.fromkeys(a.name for a in dispatch.ALGORITHMS
                               if a.transposed and 2 in a.spatial_dims))
