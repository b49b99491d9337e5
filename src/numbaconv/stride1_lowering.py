"""Stride-1 transposed convolutions as forward convolutions of the flipped weights.

With stride 1 a transposed convolution is an ordinary one: input pixel ``i`` reaches output
``o = i - p_lo + d*k`` through tap ``k``, so output ``o`` gathers the inputs
``i = o - (d(K-1) - p_lo) + d*k'`` through tap ``K-1-k'`` of the kernel flipped in every spatial
dimension. Per dimension (kernel ``K``, dilation ``d``, transposed padding ``(lo, hi)``, output
padding ``a``):

    conv_transpose(x, w, padding=(lo, hi), output_padding=a)
        == conv(x, flip(w), padding=(d(K-1) - lo, d(K-1) - hi + a))

with ``flip(w)[g*C_out/g + o, i, k] = w[g*C_in/g + i, o, K-1-k]`` (weights re-laid out from
(C_in, C_out/groups, kH, kW) to (C_out, C_in/groups, kH, kW) group by group). Both paddings must
be non-negative: ``lo <= d(K-1)`` and ``hi <= d(K-1) + a``, which every padding up to the kernel's
reach satisfies (larger ones crop the full result more than the kernel reaches, rare and left to
the transposed kernels).

That lets stride-1 transposed layers (decoders, and every input gradient of a stride-1
convolution, see :mod:`numbaconv.grad`) run on the forward kernels: Winograd for 3x3 layers, the
depthwise kernel, the direct kernel. Each call flips the weights into a kept scratch buffer (15-17
us for C128 3x3 weights on 2 threads; a plain reversal for depthwise weights); a
transposed plan (:mod:`numbaconv.plan_transposed`) flips them once.
"""

import functools

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ._jit import parallel_kernel
from .kernels.gemm import _lanes
from .kernels.ir_vectors import Vectors
from .kernels.transpose import tile_transpose
from .kernels.scratch import buffer
from .problem import ConvProblem


def why_not(problem):
    """``None`` if ``problem`` (transposed) runs as a forward convolution, else the reason."""
    if problem.stride != (1,) * problem.nd:
        return f"computes stride 1 only (as a forward convolution), got stride {problem.stride}"
    for (lo, hi), k, d, a in zip(problem.padding, problem.kernel_size, problem.dilation,
                                 problem.output_padding):
        reach = d * (k - 1)
        if lo > reach or hi > reach + a:
            return (f"computes paddings up to the kernel's reach dilation*(kernel-1) only (as a "
                    f"forward convolution), got padding {problem.padding}")
    return None


@functools.lru_cache(maxsize=256)
def forward_problem(problem):
    """The forward :class:`ConvProblem` computing the transposed ``problem``, or None when
    :func:`why_not` gives a reason."""
    if why_not(problem) is not None:
        return None
    pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi + a)
                 for (lo, hi), k, d, a in zip(problem.padding, problem.kernel_size,
                                              problem.dilation, problem.output_padding))
    return ConvProblem(problem.batch, problem.in_channels, problem.out_channels, problem.in_size,
                       problem.kernel_size, problem.stride, pads, problem.dilation,
                       problem.groups, False, None, problem.dtype, problem.bias)


_FLIP_BLOCK = 16   # kernels per side of the square blocks the flip copies at once


@intrinsic
def _reversed_kernel(typingctx, src, soff, dst, doff, taps_):
    """``dst[doff + t] = src[soff + taps - 1 - t]`` for ``t < taps`` (a compile-time constant).
    Up to one vector register's elements: one masked load, one permute, one masked store, where
    a scalar copy spends a load and a store per tap; more (narrower vectors): scalar copies."""
    if not isinstance(taps_, types.IntegerLiteral):
        return None
    taps = taps_.literal_value
    sig = types.void(src, soff, dst, doff, taps_)

    def codegen(context, builder, signature, args):
        e = Vectors(context, builder, signature.args[0])
        sp = e.ptr(signature.args[0], args[0], args[1])
        dp = e.ptr(signature.args[2], args[2], args[3])
        if taps > e.lanes:
            for t in range(taps):
                value = builder.load(builder.gep(sp, [ir.Constant(e.i64, taps - 1 - t)]))
                builder.store(value, builder.gep(dp, [ir.Constant(e.i64, t)]))
            return context.get_dummy_value()
        mask = e.mask(taps, e.lanes)
        v = e.load(sp, mask)
        rev = e.shuffle(v, v, [taps - 1 - t if t < taps else t for t in range(e.lanes)])
        e.store(rev, dp, mask)
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def _flip(wf, cin, cog, taps, groups, of):
    """``out[g*cog + o, i, t] = w[g*cig + i, o, taps - 1 - t]`` for ``w`` (C_in, cog, taps) flat
    in ``wf``, ``out`` (groups*cog, cig, taps) flat in ``of``.

    A transpose of the channel axes, by square blocks of kernels whose rows stay in cache on
    both sides. A 3x3 kernel moves as one reversed vector (2 threads: C128 weights 15-17 us,
    C256 54-64, C512 238-271, where nine scalar copies took 52, 198, 811); 1x1 weights are a
    plain transpose, by register tiles (C256 35 -> 12 us); other kernels go tap by tap."""
    cig = cin // groups
    lanes = _lanes(of)
    blk = _FLIP_BLOCK
    nob = (cog + blk - 1) // blk
    step = cog * taps
    for item in prange(groups * nob):
        g = item // nob
        o0 = (item - g * nob) * blk
        for i0 in range(0, cig, blk):
            n = min(cig, i0 + blk) - i0
            if taps == 1:   # a plain transpose of the channel axes, by register tiles
                for o1 in range(o0, min(cog, o0 + blk), lanes):
                    for i1 in range(i0, i0 + n, lanes):
                        tile_transpose(wf, (g * cig + i1) * cog + o1, cog, of,
                                       (g * cog + o1) * cig + i1, cig, min(lanes, i0 + n - i1),
                                       min(lanes, cog - o1))
                continue
            for o in range(o0, min(cog, o0 + blk)):
                src = ((g * cig + i0) * cog + o) * taps + taps - 1   # last tap of kernel (i0, o)
                dst = ((g * cog + o) * cig + i0) * taps
                if taps == 9:
                    for i in range(n):
                        _reversed_kernel(wf, src + i * step - 8, of, dst + i * 9, 9)
                else:
                    for i in range(n):
                        for t in range(taps):
                            of[dst + i * taps + t] = wf[src + i * step - t]


def flipped_weights(w, groups):
    """The forward weights of transposed weights ``w`` (C_in, C_out/groups, kH, kW): (C_out,
    C_in/groups, kH, kW), every kernel turned by 180 degrees, in this thread's scratch buffer
    (valid until its next call, or a new array).

    Depthwise weights (one channel per group each way) are only reversed in space: a NumPy copy
    of the reversed view, 1.4 us for MobileNetV2's C144 3x3 weights where the blocked kernel's
    parallel launch and scratch lookup took 5.2."""
    cin, cog = w.shape[:2]
    if cog == 1 and cin == groups:
        return np.ascontiguousarray(w[(slice(None), slice(None)) + (slice(None, None, -1),)
                                      * (w.ndim - 2)])
    out = buffer("stride1.flipped", w.size, w.dtype)
    if w.size:
        _flip(w.reshape(-1), cin, cog, w.size // (cin * cog), groups, out)
    return out.reshape((groups * cog, cin // groups) + w.shape[2:])


def lowered(forward_run):
    """A transposed algorithm's ``run`` that computes a stride-1 problem with ``forward_run`` (a
    forward algorithm's ``run``) on the flipped weights."""
    def run(problem, x, w, b, out):
        forward_run(forward_problem(problem), x, flipped_weights(w, problem.groups), b, out)
    run.__name__ = run.__qualname__ = f"lowered_{forward_run.__name__.lstrip('_')}"
    return run
