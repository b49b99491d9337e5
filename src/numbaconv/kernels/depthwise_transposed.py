"""Strided transposed convolution with narrow groups (depthwise layers and their input
gradients), NCHW, by output rows gathered from the input rows that reach them.

Output column ``ox = stride_w*u + q`` (phase ``q``) receives, from input row ``iy``, the taps
``kx`` with ``(q + pad_left - kx*dil_w) % stride_w == 0`` at input column ``ix = u + c``,
``c = (q + pad_left - kx*dil_w) // stride_w``: so for a fixed phase every tap is one contiguous
run of the input row, read with a masked vector load (lanes with ``ix`` outside the row are
neither read nor added). The input rows of output row ``oy`` are the ``iy = (oy + pad_top -
ky*dil_h) / stride_h`` that are whole numbers inside the image. A call builds, once, a table of
the taps of every (output row, phase): input offset ``iy*W + c``, shift ``c`` and weight index
``ky*kW + kx``.

One step computes up to 4 vectors of ``u`` for the phases of one output row in registers (the
bias, then each input channel of the group, each tap in the table's order: one FMA per tap and
vector) and writes them: with ``stride_w == 2`` the two phases' vectors are interleaved by two
permutes into contiguous output vectors. No zero-stuffed input, no padded copy, no staging row:
a stride-2 depthwise layer costs the multiply-adds of the forward one plus the interleave.
Masked lanes keep their accumulator (a merge-masked FMA), so an Inf or NaN weight reaches
exactly the outputs its tap reaches.

With both strides 2, no dilation and a 3x3, 4x4 or 5x5 kernel, a step covers the two output rows
of a row cycle instead (see the cycle step below): one masked load then feeds up to four taps.

Work is split into contiguous runs of (image, output channel, output row or row cycle), one per
thread; every output element is computed by one step in a fixed order, whatever the thread
count, and both steps sum in the same order (same bits).
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from numbaconv import _threads
from numbaconv._jit import kernel, parallel_kernel, vector_bytes
from numbaconv.kernels.ir_vectors import Vectors, lane_mask_table, mask_bits, switch
from numbaconv.kernels.unowned import unowned as _unowned

__all__ = ["conv_transpose2d_narrow", "supports"]

_VBYTES = vector_bytes()
STEP_VECTORS = (1, 2, 4)   # vectors of phase pixels per step and phase, compiled
VARIANTS = [(v, p) for v in STEP_VECTORS for p in (1, 2)]


def supports(stride_w):
    """Whether the kernel computes this column stride (phases interleave in registers)."""
    return stride_w in (1, 2)


def _emit_step(context, builder, aty, args, nvec, phases):
    """IR of one step (see :func:`_step`): ``nvec`` vectors per phase, ``phases`` phases."""
    (x, xb, xstep, cgin, w, wb, wstep, toff, tsh, tw, s0, n0, s1, n1, mtab, moff, u0, out, ob,
     ow, bias) = args[:21]
    vec = Vectors(context, builder, aty[0])
    b = builder
    lanes, i64 = vec.lanes, vec.i64

    def c64(n):
        return ir.Constant(i64, n)

    xb, xstep, cgin, wb, wstep, moff, u0, ob, ow = (
        vec.as64(v) for v in (xb, xstep, cgin, wb, wstep, moff, u0, ob, ow))
    starts = [vec.as64(s0), vec.as64(s1)]
    counts = [vec.as64(n0), vec.as64(n1)]
    tab_ty = aty[7]

    def entry(arr, i):
        return b.load(vec.ptr(tab_ty, arr, i))

    accs = [[cgutils.alloca_once(b, vec.vty) for _ in range(nvec)] for _ in range(phases)]
    bv = vec.splat(bias)
    for row in accs:
        for a in row:
            b.store(bv, a)
    with cgutils.for_range(b, cgin) as ci_loop:
        ci = ci_loop.index
        xci = b.add(xb, b.mul(ci, xstep))
        wci = b.add(wb, b.mul(ci, wstep))
        for q in range(phases):
            with cgutils.for_range(b, counts[q]) as t_loop:
                t = b.add(starts[q], t_loop.index)
                off, shift = entry(toff, t), entry(tsh, t)
                wv = vec.splat(b.load(vec.ptr(aty[4], w, b.add(wci, entry(tw, t)))))
                for v in range(nvec):
                    first = b.add(u0, c64(v * lanes))
                    col = b.add(first, shift)
                    # lanes l with 0 <= col + l < wd: one load from the mask table
                    m = mask_bits(b, b.load(vec.ptr(aty[14], mtab, b.add(moff, col))), lanes)
                    xv = vec.load(vec.ptr(aty[0], x, b.add(b.add(xci, off), first)), mask=m)
                    acc = b.load(accs[q][v])
                    b.store(b.select(m, vec.fma(xv, wv, acc), acc), accs[q][v])
    for v in range(nvec):
        first = b.add(u0, c64(v * lanes))
        if phases == 1:
            vals, starts_o = [b.load(accs[0][v])], [first]
        else:
            ev, od = b.load(accs[0][v]), b.load(accs[1][v])
            inter = [i // 2 + (i % 2) * lanes for i in range(2 * lanes)]
            vals = [vec.shuffle(ev, od, inter[:lanes]), vec.shuffle(ev, od, inter[lanes:])]
            o2 = b.mul(first, c64(2))
            starts_o = [o2, b.add(o2, c64(lanes))]
        for val, o in zip(vals, starts_o):
            vec.store(val, vec.ptr(aty[17], out, b.add(ob, o)), vec.mask(b.sub(ow, o), lanes))


@intrinsic
def _step(typingctx, x, xb, xstep, cgin, w, wb, wstep, toff, tsh, tw, s0, n0, s1, n1, mtab,
          moff, u0, out, ob, ow, bias, nvec, phases):
    """Output columns ``ox = phases*u + q`` for ``u`` in ``[u0, u0 + nvec*lanes)`` (and
    ``ox < ow``) of one output row starting at ``out[ob]``::

        out[ob + ox] = bias + sum_ci sum_t w[wb + ci*wstep + tw[t]] *
                       x[xb + ci*xstep + toff[t] + u]        (lane bit set in mtab)

    over ``ci < cgin`` and the taps ``t`` of phase ``q`` (``s0 .. s0 + n0 - 1`` for phase 0,
    ``s1 .. s1 + n1 - 1`` for phase 1), summed in that order; ``mtab[moff + j]`` holds the lanes
    ``l`` with ``0 <= j + l < W`` as bits (see
    :func:`~numbaconv.kernels.ir_vectors.lane_mask_table`), ``j = u + tsh[t]`` for the vector's
    first ``u``. ``(nvec, phases)`` must be one of :data:`VARIANTS`."""
    sig = types.void(x, xb, xstep, cgin, w, wb, wstep, toff, tsh, tw, s0, n0, s1, n1, mtab, moff,
                     u0, out, ob, ow, bias, nvec, phases)

    def codegen(context, builder, signature, args):
        switch(builder, args[21:23], VARIANTS, "dwt_step",
               lambda v, p: _emit_step(context, builder, signature.args, args, v, p))
        return context.get_dummy_value()

    return sig, codegen


@kernel
def _plane_bases(plane, cin, cout, groups, hw, khw):
    """Output plane ``plane`` (image-major): its channel ``co``, the flat index of the first
    input plane of its group and of its first weight (input channel 0 of the group)."""
    cg_in = cin // groups
    cg_out = cout // groups
    co = plane % cout
    g = co // cg_out
    xb = (plane // cout * cin + g * cg_in) * hw
    return co, xb, (g * cg_in * cg_out + co - g * cg_out) * khw


@parallel_kernel
def _driver(x4, w4, b_o, out4, prm, toff_o, tsh_o, tw_o, tstart_o, tcount_o, mtab_o, nthreads):
    xf_o = x4.reshape(x4.size)
    wf_o = w4.reshape(w4.size)
    of_o = out4.reshape(out4.size)
    cin, h, wd, cout, groups, oh, ow, khw, sw, nvec, moff = prm[0], prm[1], prm[2], prm[3], \
        prm[4], prm[5], prm[6], prm[7], prm[8], prm[9], prm[10]
    cg_in = cin // groups
    cg_out = cout // groups
    nu = -(-ow // sw)
    step_u = nvec * (_VBYTES // x4.itemsize)
    nrows = (of_o.size // (oh * ow)) * oh
    for t in prange(nthreads):
        xf = _unowned(xf_o)
        wf = _unowned(wf_o)
        bf = _unowned(b_o)
        of = _unowned(of_o)
        toff = _unowned(toff_o)
        tsh = _unowned(tsh_o)
        tw = _unowned(tw_o)
        tstart = _unowned(tstart_o)
        tcount = _unowned(tcount_o)
        mtab = _unowned(mtab_o)
        lo = t * nrows // nthreads
        hi = (t + 1) * nrows // nthreads
        for plane in range(lo // oh, -(-hi // oh)):
            # the rows of this plane in [lo, hi)
            co, xb, wb = _plane_bases(plane, cin, cout, groups, h * wd, khw)
            bias = bf[co]
            for y in range(max(0, lo - plane * oh), min(oh, hi - plane * oh)):
                e0 = y * 2
                ob = (plane * oh + y) * ow
                for u0 in range(0, nu, step_u):
                    _step(xf, xb, h * wd, cg_in, wf, wb, cg_out * khw, toff, tsh, tw,
                          tstart[e0], tcount[e0], tstart[e0 + 1], tcount[e0 + 1], mtab, moff,
                          u0, of, ob, ow, bias, nvec, sw)


# --- both strides 2: a step computes the two output rows of one row cycle -----------------------
#
# With ``stride == 2`` and no dilation, write ``oy + pad_top = 2*i' + r`` and ``ox + pad_left =
# 2*u' + p``: output pixel (r, p) of cycle (i', u') takes taps ``ky = r + 2*j``, ``kx = p + 2*i``
# from input pixel ``(i' - j, u' - i)``. So one masked load of input row ``i' - j`` at shift
# ``i`` serves the up to four (r, p) accumulators of its vector: the loads of a cycle's two
# output rows and two phases are shared instead of made per tap. Per accumulator the taps still
# come in (ky, kx) order, channel by channel: the same sums, in the same order, as the general
# step above (same bits).

CYCLE_KERNELS = (3, 4, 5)               # kernel sizes (square) the cycle step is compiled for
CYCLE_VARIANTS = [(v, k) for v in STEP_VECTORS for k in CYCLE_KERNELS]


def _emit_cycle(context, builder, aty, args, nvec, k):
    """IR of one cycle step (see :func:`_cycle_step`)."""
    (x, xb, xstep, cgin, w, wb, wstep, ip, h, wd, u0, mtab, moff, out, ob, oh, ow, pt, pl,
     omtab, omoff, bias) = args[:22]
    vec = Vectors(context, builder, aty[0])
    b = builder
    lanes, i64 = vec.lanes, vec.i64

    def c64(n):
        return ir.Constant(i64, n)

    xb, xstep, cgin, wb, wstep, ip, h, wd, u0, moff, ob, oh, ow, pt, pl, omoff = (
        vec.as64(v) for v in (xb, xstep, cgin, wb, wstep, ip, h, wd, u0, moff, ob, oh, ow, pt,
                              pl, omoff))
    half = (k + 1) // 2                 # input rows (and column shifts) a cycle reads
    masks = [[mask_bits(b, b.load(vec.ptr(aty[11], mtab, b.add(moff, b.add(u0, c64(
        v * lanes - i))))), lanes) for v in range(nvec)] for i in range(half)]
    accs = [[[cgutils.alloca_once(b, vec.vty) for _ in range(nvec)] for _ in range(2)]
            for _ in range(2)]
    bv = vec.splat(bias)
    for plane in accs:
        for row in plane:
            for a in row:
                b.store(bv, a)
    with cgutils.for_range(b, cgin) as ci_loop:
        ci = ci_loop.index
        xci = b.add(xb, b.mul(ci, xstep))
        wci = b.add(wb, b.mul(ci, wstep))
        for j in range(half):
            iy = b.sub(ip, c64(j))
            inside = b.and_(b.icmp_signed(">=", iy, c64(0)), b.icmp_signed("<", iy, h))
            with b.if_then(inside):
                xrow = b.add(xci, b.add(b.mul(iy, wd), u0))
                for i in range(half):
                    taps = [(r, p, (r + 2 * j) * k + p + 2 * i) for r in range(2)
                            for p in range(2) if r + 2 * j < k and p + 2 * i < k]
                    wvs = [(r, p, vec.splat(b.load(vec.ptr(aty[4], w, b.add(wci, c64(t))))))
                           for r, p, t in taps]
                    for v in range(nvec):
                        m = masks[i][v]
                        xv = vec.load(vec.ptr(aty[0], x, b.add(xrow, c64(v * lanes - i))),
                                      mask=m)
                        for r, p, wv in wvs:
                            acc = b.load(accs[r][p][v])
                            b.store(b.select(m, vec.fma(xv, wv, acc), acc), accs[r][p][v])
    inter = [i // 2 + (i % 2) * lanes for i in range(2 * lanes)]
    for r in range(2):
        oy = b.sub(b.add(b.mul(ip, c64(2)), c64(r)), pt)
        inside = b.and_(b.icmp_signed(">=", oy, c64(0)), b.icmp_signed("<", oy, oh))
        with b.if_then(inside):
            orow = b.add(ob, b.mul(oy, ow))
            for v in range(nvec):
                ev, od = b.load(accs[r][0][v]), b.load(accs[r][1][v])
                o = b.sub(b.mul(b.add(u0, c64(v * lanes)), c64(2)), pl)
                for half_v, at in ((inter[:lanes], o), (inter[lanes:], b.add(o, c64(lanes)))):
                    m = mask_bits(b, b.load(vec.ptr(aty[19], omtab, b.add(omoff, at))), lanes)
                    vec.store(vec.shuffle(ev, od, half_v), vec.ptr(aty[13], out, b.add(orow, at)),
                              m)


@intrinsic
def _cycle_step(typingctx, x, xb, xstep, cgin, w, wb, wstep, ip, h, wd, u0, mtab, moff, out, ob,
                oh, ow, pt, pl, omtab, omoff, bias, nvec, k):
    """Output rows ``oy = 2*ip + r - pt`` (``r`` 0, 1; rows outside ``[0, oh)`` not written),
    columns ``ox = 2*u + p - pl`` (``p`` 0, 1) for ``u`` in ``[u0, u0 + nvec*lanes)`` of the
    output plane at ``out[ob]`` (``oh x ow``), stride 2 both ways, no dilation, ``k x k``
    kernel::

        out[ob + oy*ow + ox] = bias + sum_ci sum_(j, i) w[wb + ci*wstep + ky*k + kx] *
                               x[xb + ci*xstep + (ip - j)*wd + u - i]

    with ``ky = r + 2*j < k``, ``kx = p + 2*i < k``, input row ``ip - j`` in ``[0, h)`` and
    column ``u - i`` in ``[0, wd)`` (lane bits of ``mtab[moff + col]``); output lanes masked by
    ``omtab[omoff + ox]`` (``0 <= ox < ow``). ``(nvec, k)`` must be one of
    :data:`CYCLE_VARIANTS`."""
    sig = types.void(x, xb, xstep, cgin, w, wb, wstep, ip, h, wd, u0, mtab, moff, out, ob, oh,
                     ow, pt, pl, omtab, omoff, bias, nvec, k)

    def codegen(context, builder, signature, args):
        switch(builder, args[22:24], CYCLE_VARIANTS, "dwt_cycle",
               lambda v, kk: _emit_cycle(context, builder, signature.args, args, v, kk))
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def _cycle_driver(x4, w4, b_o, out4, prm, mtab_o, omtab_o, nthreads):
    xf_o = x4.reshape(x4.size)
    wf_o = w4.reshape(w4.size)
    of_o = out4.reshape(out4.size)
    cin, h, wd, cout, groups, oh, ow, k, pt, pl, nvec, moff, omoff, ncyc = prm[0], prm[1], \
        prm[2], prm[3], prm[4], prm[5], prm[6], prm[7], prm[8], prm[9], prm[10], prm[11], \
        prm[12], prm[13]
    cg_in = cin // groups
    cg_out = cout // groups
    ip_lo = pt // 2
    u_lo = pl // 2
    u_hi = (ow - 1 + pl) // 2 + 1
    step_u = nvec * (_VBYTES // x4.itemsize)
    nplanes = of_o.size // (oh * ow)
    nsteps = nplanes * ncyc
    for t in prange(nthreads):
        xf = _unowned(xf_o)
        wf = _unowned(wf_o)
        bf = _unowned(b_o)
        of = _unowned(of_o)
        mtab = _unowned(mtab_o)
        omtab = _unowned(omtab_o)
        lo = t * nsteps // nthreads
        hi = (t + 1) * nsteps // nthreads
        for plane in range(lo // ncyc, -(-hi // ncyc)):
            # the cycles of this plane in [lo, hi)
            co, xb, wb = _plane_bases(plane, cin, cout, groups, h * wd, k * k)
            bias = bf[co]
            first = plane * ncyc - ip_lo                   # ip of the plane's first cycle
            for ip in range(max(ip_lo, lo - first), min(ip_lo + ncyc, hi - first)):
                for u0 in range(u_lo, u_hi, step_u):
                    _cycle_step(xf, xb, h * wd, cg_in, wf, wb, cg_out * k * k, ip, h, wd, u0,
                                mtab, moff, of, plane * oh * ow, oh, ow, pt, pl, omtab, omoff,
                                bias, nvec, k)


def _tap_table(h, wd, kh, kw, sh, sw, pt, pl, dh, dwl, oh):
    """Taps of every (output row, column phase): flat arrays (input offset ``iy*wd + c``,
    shift ``c``, weight index ``ky*kw + kx``) and per (row, phase) the first entry and count
    (phase 1 empty when ``sw == 1``)."""
    cols = []
    for q in range(sw):
        cols.append([(kx, (q + pl - kx * dwl) // sw) for kx in range(kw)
                     if (q + pl - kx * dwl) % sw == 0])
    toff, tsh, tw = [], [], []
    tstart = np.zeros(2 * oh, np.int64)
    tcount = np.zeros(2 * oh, np.int64)
    for oy in range(oh):
        rows = [(ky, (oy + pt - ky * dh) // sh) for ky in range(kh)
                if (oy + pt - ky * dh) % sh == 0 and 0 <= (oy + pt - ky * dh) // sh < h]
        for q in range(sw):
            tstart[2 * oy + q] = len(toff)
            for ky, iy in rows:
                for kx, c in cols[q]:
                    toff.append(iy * wd + c)
                    tsh.append(c)
                    tw.append(ky * kw + kx)
            tcount[2 * oy + q] = len(toff) - tstart[2 * oy + q]
    as_array = lambda v: np.array(v or [0], np.int64)   # noqa: E731 (never empty: typed arrays)
    return as_array(toff), as_array(tsh), as_array(tw), tstart, tcount


def conv_transpose2d_narrow(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                            groups):
    """Transposed 2-D convolution of narrow groups (see :func:`supports`) into ``out``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_in, C_out // groups, kH, kW)
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        All C-contiguous, one dtype (float32 or float64); ``out`` is written completely.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups : int
        ``stride_w`` 1 or 2; ``OH``/``OW`` imply the bottom/right padding and output padding.

    Notes
    -----
    ``out[n, co, oy, ox] = b[co] + sum w[ci, co % (C_out/groups), ky, kx] * x[n, ci, iy, ix]``
    over the input channels ``ci`` of the group of ``co`` and the ``(ky, kx, iy, ix)`` with
    ``oy == iy*stride_h - pad_top + ky*dil_h``, ``ox == ix*stride_w - pad_left + kx*dil_w``;
    summed bias first, then channel by channel, taps by rows then columns.
    """
    if out.size == 0:
        return
    n, cin, h, wd = x.shape
    _, cg_out, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    key = (x.dtype, x.shape, w.shape, out.shape, stride_h, stride_w, pad_top, pad_left, dil_h,
           dil_w, groups)
    if stride_h == stride_w == 2 and dil_h == dil_w == 1 and kh == kw and kh in CYCLE_KERNELS:
        key = ("cycle",) + key
        plan = _plans.get(key)
        if plan is None:
            plan = _cycle_plan(x.itemsize, wd, kh, out.shape, pad_top, pad_left, cin, h, groups)
            _remember(key, plan)
        nsteps = out.shape[0] * out.shape[1] * plan[0][_NCYC]
        _cycle_driver(x, w, b, out, *plan, max(1, min(_threads.numba_count(), nsteps)))
        return
    plan = _plans.get(key)
    if plan is None:
        lanes = _VBYTES // x.itemsize
        nu = -(-ow // stride_w)                         # phase pixels of an output row
        # the fewest vectors covering them, else the most
        nvec = next((v for v in STEP_VECTORS if v * lanes >= nu), STEP_VECTORS[-1])
        taps = _tap_table(h, wd, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, oh)
        step = nvec * lanes
        span = -(-nu // step) * step                    # u covered by the steps
        shifts = taps[1]
        mtab, moff = lane_mask_table(wd, lanes, min(0, int(shifts.min())),
                                 span + max(0, int(shifts.max())) + 1)
        prm = np.array([cin, h, wd, out.shape[1], groups, oh, ow, kh * kw, stride_w, nvec, moff],
                       np.int64)
        plan = (prm,) + taps + (mtab,)
        _remember(key, plan)
    nrows = out.shape[0] * out.shape[1] * oh
    _driver(x, w, b, out, *plan, max(1, min(_threads.numba_count(), nrows)))


def _cycle_plan(itemsize, wd, k, out_shape, pad_top, pad_left, cin, h, groups):
    """Parameters and lane-mask tables of the cycle step for one geometry."""
    lanes = _VBYTES // itemsize
    oh, ow = out_shape[2], out_shape[3]
    u_lo = pad_left // 2
    nu = (ow - 1 + pad_left) // 2 + 1 - u_lo          # column cycles of an output row
    nvec = next((v for v in STEP_VECTORS if v * lanes >= nu), STEP_VECTORS[-1])
    step = nvec * lanes
    span = -(-nu // step) * step
    mtab, moff = lane_mask_table(wd, lanes, u_lo - (k + 1) // 2 + 1, u_lo + span + 1)
    omtab, omoff = lane_mask_table(ow, lanes, 2 * u_lo - pad_left,
                                   2 * (u_lo + span) - pad_left + 1)
    ncyc = (oh - 1 + pad_top) // 2 - pad_top // 2 + 1  # row cycles of an output plane
    prm = np.array([cin, h, wd, out_shape[1], groups, oh, ow, k, pad_top, pad_left, nvec, moff,
                    omoff, ncyc], np.int64)
    return prm, mtab, omtab


_NCYC = 13  # index of the row-cycle count in the cycle step's parameters


def _remember(key, plan):
    if len(_plans) >= 256:
        _plans.clear()
    _plans[key] = plan


_plans = {}  # per-geometry parameters and tables
