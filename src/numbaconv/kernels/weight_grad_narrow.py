"""Weight gradient of a 2-D convolution with narrow groups (depthwise layers, ResNeXt's groups of
4 channels), NCHW, read in place: no copies, no im2col rows.

``dW[co, ci, ky, kx] = sum_n sum_{oy, ox} dY[n, co, oy, ox] * x[n, g*C_in/groups + ci,
oy*sh - pt + ky*dh, ox*sw - pl + kx*dw]``: for each tap, a dot product of the ``dY`` plane with
the input pixels the tap saw. One pass over a ``dY`` plane serves whole kernel rows, as many as
:data:`ACCUMULATORS` vector registers hold (a 3x3 kernel in one pass): each vector of a
``dY`` row is loaded once and multiplied into one accumulator per tap, with the tap's input
vector read by a masked load from the input row ``oy*sh - pt + ky*dh``. Column stride 2 loads
two vectors and keeps their even lanes (one permute). Input lanes outside the image load as
zeros and are multiplied like the zero padding of torch and the reference (so an Inf or NaN in
``dY`` makes such a tap NaN); lanes past the end of the ``dY`` row are not added (merge-masked
FMAs). Lane masks come from a table indexed by the vector's first column
(:func:`~numbaconv.kernels.ir_vectors.lane_mask_table`): one load in place of a dozen scalar
operations per tap.

A parallel task owns an output channel and one input channel of its group: its taps'
accumulators run over the images, rows and vectors in that order, then their lanes are summed
pairwise; the result does not depend on the number of threads.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from numbaconv._jit import parallel_kernel, vector_bytes
from numbaconv.kernels.ir_vectors import Vectors, lane_mask_table, lane_sum, mask_bits, switch

__all__ = ["conv2d_narrow_weight_grad", "supports"]

_VBYTES = vector_bytes()


#: Vector accumulators of one pass over a dY plane: whole kernel rows, as many as fit.
ACCUMULATORS = 16 if _VBYTES == 64 else 9
#: Kernel widths compiled (one variant each per column stride; each costs compile time: the 14
#: variants of widths 1 to 7 took 7 s more than these 8, for both dtypes). Even widths take the
#: im2col path.
WIDTHS = (1, 3, 5, 7)


def supports(kw, stride_w):
    """Whether the kernel computes this kernel width and column stride (1, or 2 by even lanes of
    vector pairs)."""
    return kw in WIDTHS and stride_w in (1, 2)


def rows_per_pass(kw):
    """Kernel rows whose taps one pass over a dY plane accumulates."""
    return max(1, ACCUMULATORS // kw)


def _emit_pass(context, builder, aty, args, kw, sw):
    """IR of one pass (see :func:`_pass`) for kernel width ``kw`` and column stride ``sw``."""
    (x, xb, xn, h, wd, g, gb, gn, nb, oh, ow, sh, pt, ky0, nrows, dh, tcol, mtab, moff, out,
     ooff) = args[:21]
    vec = Vectors(context, builder, aty[0])
    b = builder
    lanes, i64 = vec.lanes, vec.i64
    rmax = rows_per_pass(kw)

    def c64(n):
        return ir.Constant(i64, n)

    xb, xn, h, wd, gb, gn, nb, oh, ow, sh, pt, ky0, nrows, dh, moff, ooff = (
        vec.as64(v) for v in (xb, xn, h, wd, gb, gn, nb, oh, ow, sh, pt, ky0, nrows, dh, moff,
                              ooff))
    zero = ir.Constant(vec.vty, [0.0] * lanes)
    ity = ir.IntType(lanes)
    i1v = ir.VectorType(ir.IntType(1), lanes)
    accs = [[cgutils.alloca_once(b, vec.vty) for _ in range(kw)] for _ in range(rmax)]
    for r in range(rmax):
        for kx in range(kw):
            b.store(zero, accs[r][kx])
    cols = [b.load(vec.ptr(aty[16], tcol, c64(kx))) for kx in range(kw)]
    nvec = b.sdiv(b.add(ow, c64(lanes - 1)), c64(lanes))
    evens = list(range(0, 2 * lanes, 2))

    def table(tab, j):
        return mask_bits(b, b.load(vec.ptr(aty[17], tab, b.add(moff, j))), lanes)

    def image(n):
        """The rows of image ``n``."""
        xbn = b.add(xb, b.mul(n, xn))
        gbn = b.add(gb, b.mul(n, gn))
        with cgutils.for_range(b, oh) as row_loop:
            oy = row_loop.index
            top = b.add(b.sub(b.mul(oy, sh), pt), b.mul(ky0, dh))
            rows, inside = [], []
            for r in range(rmax):
                iy = b.add(top, b.mul(c64(r), dh))
                inside.append(b.and_(b.icmp_signed(">=", iy, c64(0)),
                                     b.icmp_signed("<", iy, h)))
                rows.append(b.add(xbn, b.mul(b.select(inside[r], iy, c64(0)), wd)))
            grow = b.add(gbn, b.mul(oy, ow))
            with cgutils.for_range(b, nvec) as vec_loop:
                o0 = b.mul(vec_loop.index, c64(lanes))
                left = b.sub(ow, o0)                           # >= 1
                full = b.icmp_signed(">=", left, c64(lanes))
                part = b.sub(b.shl(ir.Constant(ity, 1),
                                   b.trunc(b.select(full, c64(0), left), ity)),
                             ir.Constant(ity, 1))
                dbits = b.select(full, ir.Constant(ity, -1), part)
                dmask = b.bitcast(dbits, i1v)
                dv = vec.load(vec.ptr(aty[5], g, b.add(grow, o0)), mask=dmask)
                # per tap column: the first input column and the masks of the input lanes inside
                # the row (the others load as zeros, the padding)
                starts, loads = [], []
                for kx in range(kw):
                    s = b.add(b.mul(o0, c64(sw)), cols[kx])
                    starts.append(s)
                    loads.append([table(mtab, b.add(s, c64(i * lanes))) for i in range(sw)])

                def add(r, kx, xv):
                    a = b.load(accs[r][kx])
                    b.store(b.select(dmask, vec.fma(dv, xv, a), a), accs[r][kx])

                for r in range(rmax):
                    with b.if_then(b.icmp_signed("<", c64(r), nrows), likely=True):
                        with b.if_else(inside[r], likely=True) as (in_image, padding_row):
                            with in_image:
                                for kx in range(kw):
                                    p = b.add(rows[r], starts[kx])
                                    part = [vec.load(vec.ptr(aty[0], x,
                                                             b.add(p, c64(i * lanes))),
                                                     mask=loads[kx][i]) for i in range(sw)]
                                    add(r, kx, part[0] if sw == 1 else
                                        vec.shuffle(part[0], part[1], evens))
                            with padding_row:
                                # zero padding times dY, as the reference and torch multiply it
                                # (an Inf or NaN in dY makes the tap NaN)
                                for kx in range(kw):
                                    add(r, kx, zero)

    with cgutils.for_range(b, nb) as image_loop:
        image(image_loop.index)
    for r in range(rmax):
        with b.if_then(b.icmp_signed("<", c64(r), nrows)):
            for kx in range(kw):
                b.store(lane_sum(b, b.load(accs[r][kx])),
                        vec.ptr(aty[19], out, b.add(ooff, c64(r * kw + kx))))


_VARIANTS = [(k, s) for k in WIDTHS for s in (1, 2)]


@intrinsic
def _pass(typingctx, x, xb, xn, h, wd, g, gb, gn, nb, oh, ow, sh, pt, ky0, nrows, dh, tcol,
          mtab, moff, out, ooff, kw, sw):
    """For the kernel rows ``ky0 + r``, ``r < nrows`` (at most :func:`rows_per_pass`), and
    columns ``kx < kw``: ``out[ooff + r*kw + kx] = sum_{n, oy, ox} g[gb + n*gn + oy*ow + ox] *
    x[xb + n*xn + (oy*sh - pt + (ky0 + r)*dh)*wd + ox*sw + tcol[kx]]`` over ``n < nb`` (``x`` is
    zero outside the ``h`` x ``wd`` plane): lane ``ox % L`` of a vector accumulator per tap over
    images, rows and vectors ascending, then the lanes pairwise. ``mtab[moff + j]`` holds the
    lanes of a vector from column ``j`` inside the row as bits. ``(kw, sw)`` must be supported
    (:func:`supports`)."""
    sig = types.void(x, xb, xn, h, wd, g, gb, gn, nb, oh, ow, sh, pt, ky0, nrows, dh, tcol, mtab,
                     moff, out, ooff, kw, sw)

    def codegen(context, builder, signature, args):
        switch(builder, args[21:23], _VARIANTS, "dwg_pass",
               lambda k, s: _emit_pass(context, builder, signature.args, args, k, s))
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def _driver(x, g, dw, cout, groups, kh, kw, rmax, sh, sw, pt, dh, tcol, oh, ow, mtab, moff):
    nb, cin, h, wd = x.shape
    cg = cin // groups
    cog = cout // groups
    taps = kh * kw
    xf = x.reshape(-1)
    for task in prange(cout * cg):
        co = task // cg
        ci = co // cog * cg + task % cg         # an input channel of co's group
        for ky0 in range(0, kh, rmax):
            _pass(xf, ci * h * wd, cin * h * wd, h, wd, g, co * oh * ow, cout * oh * ow, nb,
                  oh, ow, sh, pt, ky0, min(rmax, kh - ky0), dh, tcol, mtab, moff, dw,
                  task * taps + ky0 * kw, kw, sw)


def conv2d_narrow_weight_grad(x, grad_out, weight_shape, stride_h, stride_w, pad_top, pad_left,
                              dil_h, dil_w, groups):
    """Weight gradient of a grouped convolution, one dot product per (output channel, input
    channel of its group, tap); meant for depthwise and other narrow groups.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    grad_out : ndarray, shape (N, C_out, OH, OW)
        C-contiguous, one dtype (float32 or float64); ``OH``/``OW`` may be smaller than the
        forward output (rows and columns past them contribute nothing).
    weight_shape : (C_out, C_in / groups, kH, kW)
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups : int
        Geometry (see :func:`supports`).

    Returns
    -------
    ndarray, shape ``weight_shape``
        ``dW[co, ci, ky, kx] = sum_{n, oy, ox} grad_out[n, co, oy, ox] * x[n, g*C_in/groups + ci,
        oy*stride_h - pad_top + ky*dil_h, ox*stride_w - pad_left + kx*dil_w]`` (``g`` the group
        of ``co``; zero outside ``x``): each tap's products go to lane ``ox % L`` of its
        accumulator over ``n``, ``oy`` and ``ox`` ascending, then the ``L`` lanes are summed
        pairwise.
    """
    nb, cin, h, wd = x.shape
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    cout, _, kh, kw = weight_shape
    dw = np.zeros(weight_shape, dtype=x.dtype)
    if not (nb and oh and ow):
        return dw
    key = (x.dtype, wd, ow, kw, stride_w, pad_left, dil_w)
    plan = _plans.get(key)
    if plan is None:
        lanes = _VBYTES // x.itemsize       # the mask table's vectors
        tcol = (np.arange(kw) * dil_w - pad_left).astype(np.int64)
        lo = min(0, int(tcol.min()))
        hi = -(-ow // lanes) * lanes * stride_w + max(0, int(tcol.max())) + lanes + 1
        mtab, moff = lane_mask_table(wd, lanes, lo, hi)
        plan = tcol, mtab, moff
        if len(_plans) >= 256:
            _plans.clear()
        _plans[key] = plan
    tcol, mtab, moff = plan
    _driver(x, grad_out.reshape(-1), dw.reshape(-1), cout, groups, kh, kw, rows_per_pass(kw),
            stride_h, stride_w, pad_top, dil_h, tcol, oh, ow, mtab, moff)
    return dw


_plans = {}  # per-geometry tap and mask tables
