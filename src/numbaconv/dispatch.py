"""Which algorithm computes a convolution: an ordered table, a small rule, and the reasons.

Every algorithm is an :class:`Algorithm` entry of :data:`ALGORITHMS`, most specialised first and
the reference last. Each answers :meth:`Algorithm.why_not` with ``None`` (it can compute the
problem) or a sentence saying why it cannot. ``algorithm='auto'`` applies :func:`auto_choice`;
a forced algorithm that cannot handle the problem raises :class:`UnsupportedAlgorithm` carrying the
reason. Tests iterate over this table, so a newly registered algorithm is tested with no new code.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _threads, reference
from .kernels import depthwise, im2col, transposed
from .problem import ConvProblem


class UnsupportedAlgorithm(ValueError):
    """A forced algorithm cannot compute the given problem; the message says why."""


@dataclass(frozen=True)
class Algorithm:
    """One way to compute a convolution.

    Attributes
    ----------
    name : str
        What users pass as ``algorithm=``.
    transposed : bool
        Whether it computes transposed (True) or forward (False) convolutions.
    summary : str
        One line for tables and ``explain``.
    exact : bool
        Whether its result equals the reference bit for bit whenever every partial sum is exactly
        representable (integer-valued data of small magnitude). Winograd/FFT-like methods are not.
    run : callable
        ``run(problem, x, w, b, out)`` with batched C-contiguous arrays of ``problem.dtype``,
        ``b`` an array or None; writes every element of ``out``.
    limits : callable, optional
        ``limits(problem) -> str or None``: the algorithm-specific reason it cannot compute a
        problem of its kind.
    spatial_dims : tuple of int
        The numbers of spatial dimensions it computes.
    """

    name: str
    transposed: bool
    summary: str
    run: Callable
    exact: bool = True
    limits: Optional[Callable] = None
    spatial_dims: tuple = (2,)

    def why_not(self, problem: ConvProblem):
        """``None`` if this algorithm can compute ``problem``, else the reason it cannot."""
        if problem.transposed != self.transposed:
            kind = "transposed" if self.transposed else "forward"
            return f"computes {kind} convolutions only"
        if problem.nd not in self.spatial_dims:
            return f"computes {' or '.join(map(str, self.spatial_dims))}-d convolutions only"
        return self.limits(problem) if self.limits else None


def _reference_run(problem, x, w, b, out):
    if problem.transposed:
        reference.conv_transpose_nd(problem, x, w, b, out)
    else:
        reference.conv_nd(problem, x, w, b, out)


def _reference(transposed):
    return Algorithm(
        name="reference", transposed=transposed, run=_reference_run, spatial_dims=(1, 2, 3),
        summary="pure NumPy, fixed summation order; the oracle of the others (slow)")


def _geometry(problem):
    """The ints every 2-d kernel takes after its arrays: strides, top/left pads, dilations."""
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = problem.stride, problem.padding, problem.dilation
    return sh, sw, pt, pl, dh, dw


def _bias(problem, b):
    return b if b is not None else np.zeros(problem.out_channels, dtype=problem.dtype)


def _im2col_run(problem, x, w, b, out):
    with _threads.blas_single_threaded():
        im2col.conv2d_im2col(x, w, _bias(problem, b), out, *_geometry(problem), problem.groups)


def _depthwise_run(problem, x, w, b, out):
    depthwise.conv2d_depthwise(x, w, _bias(problem, b), out, *_geometry(problem))


def _depthwise_limits(problem):
    if not problem.is_depthwise:
        return (f"computes depthwise convolutions only (groups == in_channels), got "
                f"groups={problem.groups}, in_channels={problem.in_channels}")
    return None


def _transposed_direct_run(problem, x, w, b, out):
    transposed.conv_transpose2d_direct(x, w, _bias(problem, b), out, *_geometry(problem),
                                       problem.groups)


def _transposed_gemm_run(problem, x, w, b, out):
    transposed.conv_transpose2d_gemm(x, w, _bias(problem, b), out, *_geometry(problem),
                                     problem.groups)


ALGORITHMS = (
    Algorithm(
        name="depthwise", transposed=False, run=_depthwise_run, limits=_depthwise_limits,
        summary="one stencil pass per channel plane, vectorised along rows; any channel "
                "multiplier, stride, dilation"),
    Algorithm(
        name="im2col", transposed=False, run=_im2col_run,
        summary="patches of a few output rows copied into a workspace (capped, 64 MiB by "
                "default), then one BLAS GEMM per tile; 1x1 stride-1 is a GEMM with no copy"),
    Algorithm(
        name="direct", transposed=True, run=_transposed_direct_run,
        summary="gather by stride phase (no multiplies on stuffed zeros), 16 output-channel x "
                "pixel accumulators in registers"),
    Algorithm(
        name="gemm", transposed=True, run=_transposed_gemm_run,
        summary="register-tiled GEMM of input pixels by (C_out, kH, kW) weight columns, then "
                "col2im; for small images with many channels"),
    _reference(False),
    _reference(True),
)


def names():
    """Names accepted by ``algorithm=``, besides ``'auto'``."""
    return tuple(dict.fromkeys(a.name for a in ALGORITHMS))


def candidates(problem):
    """``{name: reason or None}`` for every algorithm of the problem's kind, in table order."""
    return {a.name: a.why_not(problem) for a in ALGORITHMS if a.transposed == problem.transposed}


def auto_choice(problem):
    """The algorithm ``'auto'`` picks for ``problem`` (the first in table order that can run it)."""
    for a in ALGORITHMS:
        if a.why_not(problem) is None:
            return a.name
    raise AssertionError(f"no algorithm for {problem}")  # the reference handles everything


def get(name, problem):
    """The :class:`Algorithm` called ``name`` for ``problem``'s kind, checked to support it."""
    if name == "auto":
        name = auto_choice(problem)
    if name not in names():
        raise ValueError(f"algorithm must be 'auto' or one of {names()}, got {name!r}")
    for a in ALGORITHMS:
        if a.name == name and a.transposed == problem.transposed:
            reason = a.why_not(problem)
            if reason:
                raise UnsupportedAlgorithm(f"algorithm {name!r} cannot compute {problem}: {reason}")
            return a
    kind = "transposed" if problem.transposed else "forward"
    raise UnsupportedAlgorithm(f"algorithm {name!r} has no {kind} convolution")
