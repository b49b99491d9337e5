"""2-D convolutions with fixed weights, prepared once for many calls.

A layer in a network convolves many inputs with the same weights. :func:`plan_conv2d` takes the
weights, bias and hyperparameters once and returns a :class:`Conv2dPlan`, a callable that gives
what :func:`numbaconv.conv2d` gives with the same arguments and algorithm, bit for bit, while
doing the weight work of an algorithm only once (transposed convolutions:
:mod:`numbaconv.plan_transposed`):

* ``gemm``: the weights packed into the micro-kernel's ``[8-row panel][k][8]`` layout (a plain
  call reads them unpacked, since one pass over the weights per call would cost more than the
  packed layout saves); on small maps whose pixels fill the GEMM's 32-pixel panels poorly
  (7x7, 14x14) and kernels larger than 1x1, packed in blocks of output channels instead for
  :mod:`numbaconv.kernels.small_maps`, which puts the channels in the vector lanes (same sums
  in the same order, so the same bits);
* ``winograd``: the transformed weights ``U`` (36 x C_out x C_in), which a plain call computes
  every time (for C256 that is 9.4 MB written per call);
* the other algorithms read the weights as they are; the plan only skips the validation of
  weight and bias.

With that work done once, ``'auto'`` in a plan takes Winograd on more layers than in a plain
call (``prepared`` in :func:`numbaconv.dispatch.rule`: 14x14 maps at batch 1, 7x7 maps from
batch 3); :meth:`Conv2dPlan.algorithm_for` tells which algorithm runs. The plan holds copies:
changing the arrays it was made from does not change it (make a new plan after updating
weights). Prepared forms are built on the first call that needs them, one per
algorithm and computation dtype, so the first call with a new input shape or dtype may cost
one pass over the weights more than later ones.
"""

import numpy as np

from . import _args, _threads, dispatch, output_pool, padding_modes, tuning
from ._aligned import copy_aligned
from ._front import as_array, compute_dtype, output_array, prepare
from .dispatch import _geometry
from .functional import _padded
from .kernels import direct, gemm, small_maps, winograd
from .problem import ConvProblem

__all__ = ["Conv2dPlan", "plan_conv2d"]


class _GemmWeights:
    """The GEMM's weights in the two layouts its kernels read, each packed on first use: row
    panels (:func:`numbaconv.kernels.gemm.pack_weights`) and, for small maps, channel blocks
    (:func:`numbaconv.kernels.small_maps.pack_weights`)."""

    __slots__ = ("w", "groups", "_panels", "_channels")

    def __init__(self, w, groups):
        self.w, self.groups = w, groups
        self._panels = self._channels = None

    def panels(self):
        if self._panels is None:
            self._panels = gemm.pack_weights(self.w, self.groups)
        return self._panels

    def channels(self):
        if self._channels is None:
            self._channels = small_maps.pack_weights(self.w)
        return self._channels


def _prepare_gemm(w, groups):
    return _GemmWeights(w, groups)


def _run_gemm(problem, x, prepared, b, out):
    sh, sw, pt, pl, dh, dw = _geometry(problem)
    _, _, kh, kw = problem.weight_shape
    _, cout, oh, ow = problem.output_shape
    if small_maps.pays(kh, kw, sw, problem.groups, oh, ow, cout, x.itemsize):
        small_maps.conv2d_small_maps(x, prepared.channels(), b, out, kh, kw, sh, pt, pl, dh, dw)
    else:
        gemm.conv2d_implicit_gemm_packed(x, prepared.panels(), b, out, sh, sw, pt, pl, dh, dw)


def _prepare_winograd(w, groups):
    return winograd.prepare_weights(w)


def _run_winograd(problem, x, prepared, b, out):
    (pt, _), (pl, _) = problem.padding
    if problem.dilation == (1, 1):
        return winograd.conv2d_winograd(x, prepared, b, out, pt, pl)
    return winograd.conv2d_winograd_dilated(x, prepared, b, out, problem.padding,
                                            problem.dilation)


def _prepare_direct(w, groups):
    return direct.pack_weights_direct(w, groups)


def _run_direct(problem, x, packed, b, out):
    direct.conv2d_direct_packed(x, packed, b, out, *_geometry(problem))


# algorithm name -> (prepare(w, groups), run(problem, x, prepared, b, out)); a run that returns
# False could not use its inexact method on this data (Inf/NaN or overflow risk): the plan then
# runs auto's exact choice, as the plain call does
_PREPARED = {
    "gemm": (_prepare_gemm, _run_gemm),
    "winograd": (_prepare_winograd, _run_winograd),
    "direct": (_prepare_direct, _run_direct),
}


class _Plan:
    """What the plans share: pickling of weights and arguments only (prepared forms and
    remembered runs are rebuilt on first use, so a pickled plan, sent to dask workers say, is
    about the size of its weights) and a repr; ``_ARGS`` names the constructor's arguments after
    weight and bias."""

    _ARGS = ()

    @staticmethod
    def _checked(func, weight, bias, layout, algorithm, special, names, exact):
        """``(w, b, dtype)``: weight and bias as arrays and their computation dtype, after the
        checks every plan makes (4-d weight of ``layout``, ``algorithm`` one of ``special`` or
        ``names``, ``exact`` a bool)."""
        w = as_array(weight, "weight")
        b = None if bias is None else as_array(bias, "bias")
        dtype = compute_dtype((("weight", w), ("bias", b)))
        if w.ndim != 4:
            raise ValueError(f"{func}: weight must have 4 dimensions ({layout}), got shape "
                             f"{w.shape}")
        if not isinstance(algorithm, str) or algorithm not in special + names:
            raise ValueError(f"{func}: algorithm must be {', '.join(map(repr, special))} or one "
                             f"of {names}, got {algorithm!r}")
        if not isinstance(exact, bool):
            raise TypeError(f"{func}: exact must be a bool, got {exact!r}")
        return w, b, dtype

    def _keep(self, w, b, dtype):
        """The plan's own C-contiguous copies of ``w`` and ``b`` in ``dtype``; users see them as
        the read-only ``weight`` and ``bias`` (the kernels take writeable arrays: a read-only
        one is a separate Numba type, and the front end would copy it per call)."""
        # from a cache line: NumPy puts large arrays 16 bytes past one, and every vector load
        # along a weight row would straddle two lines (ResNet-50's 3x3 C512 7x7 through `dot`,
        # 2 threads, float32: 200 GFLOP/s on such weights, 233 on aligned ones)
        w = copy_aligned(w, dtype)
        b = None if b is None else np.array(b, dtype=dtype, copy=True)
        self.weight = _read_only(w)
        self.bias = None if b is None else _read_only(b)
        return w, b

    def __getstate__(self):
        return dict(weight=self.weight, bias=self.bias,
                    **{name: getattr(self, name) for name in self._ARGS})

    def __setstate__(self, state):
        state = dict(state)
        self.__init__(state.pop("weight"), state.pop("bias"), **state)

    def __repr__(self):
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._ARGS)
        bias = "None" if self.bias is None else self.bias.shape
        return (f"{type(self).__name__}(weight {self.weight.shape} {self.weight.dtype}, "
                f"bias={bias}, {args})")


class Conv2dPlan(_Plan):
    """``conv2d(input, weight, bias, stride, padding, dilation, groups, ...)`` for fixed
    ``weight`` and ``bias``; made by :func:`plan_conv2d`.

    Call it as ``plan(input, out=None)`` with ``input`` of shape (N, C_in, H, W) or
    (C_in, H, W): the result is that of :func:`numbaconv.conv2d` run with the algorithm
    :meth:`algorithm_for` names, bit for bit. Any input size, batch and dtype; the computation
    dtype follows :func:`numbaconv.conv2d`'s rule over input, weight and bias.

    Attributes
    ----------
    weight : numpy.ndarray, shape (C_out, C_in / groups, kH, kW)
        The plan's own read-only copy of the weights.
    bias : numpy.ndarray, shape (C_out,), or None
        Likewise.
    stride, padding, dilation, groups, padding_mode, algorithm, exact
        As given to :func:`plan_conv2d`.
    """

    _ARGS = ("stride", "padding", "dilation", "groups", "padding_mode", "algorithm", "exact")

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 padding_mode="zeros", algorithm="auto", exact=False):
        w, b, dtype = self._checked("plan_conv2d", weight, bias, "C_out, C_in / groups, kH, kW",
                                    algorithm, ("auto", "tune"), _forward_names(), exact)
        padding_modes.check_mode(padding_mode, "plan_conv2d")
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)):
            raise TypeError(f"plan_conv2d: groups must be an int, got {groups!r}")
        # the hyperparameters checked now, on the smallest input the kernel fits, so that a bad
        # one fails here rather than on the first call
        kh, kw = w.shape[2:]
        dil = _args.int_tuple(dilation, 2, "dilation", 1)
        trial = ConvProblem.for_conv((1, w.shape[1] * int(groups), (kh - 1) * dil[0] + 1,
                                      (kw - 1) * dil[1] + 1), w.shape, bias=b is not None,
                                     stride=stride, padding=padding, dilation=dilation,
                                     groups=int(groups), dtype=dtype)
        # a forced algorithm's limits depend on the kernel, stride, groups and exactness only
        if algorithm != "tune":
            dispatch.get(algorithm, trial, exact, prepared=True)
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"plan_conv2d: bias must have shape ({w.shape[0]},) (one value per "
                             f"output channel), got {b.shape}")
        w, b = self._keep(w, b, dtype)
        self._weights, self._biases = {dtype: w}, {dtype: b}
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.padding_mode = int(groups), padding_mode
        self.algorithm, self.exact = algorithm, exact
        self._prepared = {}  # (algorithm name, dtype) -> prepared weights
        self._tuned = {}  # problem -> fastest algorithm name, with algorithm='tune'
        self._seen = {}  # (input shape, dtype) -> (run, result shape and dtype, batched shape)

    def _operands(self, x):
        """The weight and bias in the computation dtype of a call with input ``x``."""
        dtype = compute_dtype((("input", x), ("weight", self.weight), ("bias", self.bias)))
        if dtype not in self._weights:
            self._weights[dtype] = copy_aligned(self.weight, dtype)
            self._biases[dtype] = None if self.bias is None else self.bias.astype(dtype)
        return self._weights[dtype], self._biases[dtype]

    def _problem(self, input):
        x, padding = _padded("Conv2dPlan", 2, as_array(input, "input"), self.weight,
                             self.stride, self.padding, self.dilation, self.padding_mode)
        w, b = self._operands(x)
        return prepare("Conv2dPlan", 2, x, w, b, transposed=False, stride=self.stride,
                       padding=padding, dilation=self.dilation, groups=self.groups)

    def algorithm_for(self, input_shape, dtype=np.float32):
        """The name of the algorithm a call with an input of ``input_shape`` (N, C_in, H, W)
        and ``dtype`` runs; with ``algorithm='tune'``, ``'tune'`` until a call has timed the
        candidates for that input."""
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise ValueError(f"input_shape must be (N, C_in, H, W), got {input_shape!r}")
        padding = self.padding
        if self.padding_mode != "zeros":
            pairs = _args.conv_padding(padding, 2, self.weight.shape[2:],
                                       _args.int_tuple(self.stride, 2, "stride", 1),
                                       _args.int_tuple(self.dilation, 2, "dilation", 1),
                                       shape[2:])
            shape = shape[:2] + tuple(s + lo + hi for s, (lo, hi) in zip(shape[2:], pairs))
            padding = 0
        dt = compute_dtype((("input", np.empty(0, dtype)), ("weight", self.weight),
                            ("bias", self.bias)))
        problem = ConvProblem.for_conv(shape, self.weight.shape, bias=self.bias is not None,
                                       stride=self.stride, padding=padding,
                                       dilation=self.dilation, groups=self.groups, dtype=dt)
        if self.algorithm == "tune":
            return self._tuned.get(problem, "tune")
        return dispatch.get(self.algorithm, problem, self.exact, prepared=True).name

    def __call__(self, input, *, out=None):
        """The convolution of ``input`` (N, C_in, H, W) or (C_in, H, W) with the plan's weights:
        (N, C_out, H_out, W_out) or (C_out, H_out, W_out), into ``out`` if given (the output
        shape, the computation dtype, C-contiguous, writeable, not overlapping the input)."""
        if out is None and type(input) is np.ndarray:
            # a repeated input form: what the first call of that form worked out (a few
            # microseconds of checks and choices less; they matter on small layers)
            seen = self._seen.get((input.shape, input.dtype))
            if seen is not None and input.flags.c_contiguous and input.flags.writeable:
                run, shape, dtype, batched_shape = seen
                result = np.empty(shape, dtype)
                _threads.call(run, input.reshape(batched_shape[:1] + input.shape[-3:]),
                              result.reshape(batched_shape))
                return result
        prepared = self._problem(input)
        problem = prepared.problem
        result, batched = output_array(prepared, out)
        if not problem.batch:
            return result
        if self.algorithm == "tune" and problem not in self._tuned:
            self._tuned[problem] = self._tune(problem, prepared.x, prepared.w, prepared.b,
                                              batched)
        run = self._runner(problem, prepared.w, prepared.b)
        _threads.call(run, prepared.x, batched)
        if (out is None and type(input) is np.ndarray and self.padding_mode == "zeros"
                and prepared.x.dtype == input.dtype and result.nbytes < output_pool.MIN_BYTES):
            if len(self._seen) >= 16:
                self._seen.clear()
            self._seen[input.shape, input.dtype] = (run, result.shape, result.dtype,
                                                    batched.shape)
        return result

    def _tune(self, problem, x, w, b, out):
        """The fastest algorithm for ``problem`` on its prepared weights, timed on ``x``."""
        names = [name for name, reason in dispatch.candidates(problem, self.exact).items()
                 if reason is None and name != "reference"]
        runners = {name: self._runner(problem, w, b, name) for name in names}

        def run(name):
            _threads.call(runners[name], x, out)

        return tuning.fastest(run, names)

    def _runner(self, problem, w, b, name=None):
        """``run(x, out)`` computing ``problem`` with the weights ``w`` and bias ``b`` (the
        plan's, in the computation dtype): the algorithm ``name`` (default: the plan's choice)
        on its prepared weights."""
        if name is None:
            name = self._tuned[problem] if self.algorithm == "tune" else self.algorithm
        chosen = dispatch.get(name, problem, self.exact, prepared=True)
        entry = _PREPARED.get(chosen.name)
        if entry is None:
            return lambda x, out: chosen.run(problem, x, w, b, out)
        key = (chosen.name, w.dtype)
        ready = self._prepared.get(key)
        if ready is None:
            ready = self._prepared[key] = entry[0](w, self.groups)
        bias = b if b is not None else np.zeros(problem.out_channels, dtype=problem.dtype)
        fallback = dispatch.get("auto", problem, exact=True)

        def run(x, out):
            if entry[1](problem, x, ready, bias, out) is False:
                # Inf/NaN in the data: the exact kernel auto would pick, as conv2d does
                fallback.run(problem, x, w, b, out)
        return run


def plan_conv2d(weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                padding_mode="zeros", algorithm="auto", exact=False):
    """A :class:`Conv2dPlan`: :func:`numbaconv.conv2d` with these weights and hyperparameters,
    prepared once for repeated calls.

    Parameters are :func:`numbaconv.conv2d`'s (without ``input``, the layouts and ``out``);
    ``algorithm`` is ``'auto'``, a forward algorithm's name or ``'tune'``: the first call of
    each input shape and dtype then times every algorithm that can run it (on its prepared
    weights; Winograd too unless ``exact``) and the plan keeps the fastest for later calls (in
    the plan only, not in :mod:`numbaconv.tuning`'s table). The plan copies ``weight`` and
    ``bias``; invalid arguments raise here, not at the first call.

    Examples
    --------
    >>> import numpy as np, numbaconv
    >>> w = np.ones((4, 3, 3, 3), np.float32)
    >>> conv = numbaconv.plan_conv2d(w, padding=1)
    >>> x = np.ones((2, 3, 8, 8), np.float32)
    >>> np.array_equal(conv(x), numbaconv.conv2d(x, w, padding=1))
    True
    """
    return Conv2dPlan(weight, bias, stride, padding, dilation, groups,
                      padding_mode=padding_mode, algorithm=algorithm, exact=exact)


def _forward_names():
    return tuple(dict.fromkeys(a.name for a in dispatch.ALGORITHMS
                               if not a.transposed and 2 in a.spatial_dims))


def _read_only(a):
    view = a.view()
    view.flags.writeable = False
    return view

