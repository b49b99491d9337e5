"""Depthwise 2-D convolution, forward, NCHW: ``groups == C_in``, ``C_out = m * C_in``.

Output channel ``co`` reads input channel ``co // m``; every output plane is a 2-D stencil
(``kH * kW`` taps, any stride, dilation and padding) over one input plane, with 1 multiply-add
per tap and output, so the kernel is bound by loads and by per-row overheads, not by FLOPs.

3x3 and 5x5 kernels with stride 1 or 2, 7x7 with stride 1 (dilation 1, left padding ``k // 2``:
the MobileNet, EfficientNet and ConvNeXt layers) run on :mod:`numbaconv.kernels.depthwise_rows`
where the CPU has 32 vector registers (AVX-512): it shifts vectors in registers or shares loads
between output rows instead of reloading them per tap (1.5-2x faster there); everything else
runs on the flat passes below.

Strategy: *flat passes*. If an input plane (or a zero-padded copy of it) and the outputs share
one row pitch, then every tap ``(ky, kx)`` reads the input at a fixed offset from the output
index, across row ends too. A whole block of rows is then one long contiguous loop
``out[i] = b + sum_t w_t * in[i + off_t]``, which LLVM vectorises with full-width vectors and
no per-row remainder; :func:`_pass` holds the loops with 9, 3 and 1 taps written out (weights
and offsets in registers, one store per output for up to 9 taps; more taps chain passes).

Two tilings use it (tiles are (image, input channel, block of output rows); their
boundaries depend on the shape only, and each output is summed by one thread in a fixed order,
so results do not depend on the thread count):

* ``same`` (stride 1 and output width == input width >= 32, i.e. 'same'-width padding, the
  common MobileNet/EfficientNet case): x and out have the same pitch, so row runs are one flat pass
  straight from x into out, with no copies. Kernel rows that fall into the top/bottom padding
  are left out of a run (their contribution ``w * 0`` is added to the bias, so Inf/NaN
  weights still give NaN exactly like multiplying the zero padding). The few border columns,
  whose reads wrapped into the neighbouring row, are then recomputed through a small
  zero-padded *transposed* copy, so that their flat pass runs down the columns.
* ``fill`` (everything else, e.g. stride 2, and planes narrower than 32, where the border
  work of ``same`` costs more than it saves): the rows a tile needs are copied into a
  zero-padded buffer split into ``sh * sw`` stride phases (phase (py, px) holds padded rows
  py, py + sh, ... and columns px, px + sw, ...; stride 2 de-interleaves a row in one loop),
  so every tap of a strided convolution reads a contiguous window of one phase; a flat pass
  over the buffer (sized for L1), then a copy into out.

Implementation notes: array views passed to helpers own no reference
(:func:`numbaconv.kernels.unowned.unowned`), since reference-count updates are atomics that both
threads would contend for; indices are cast to unsigned so that Numba drops its negative-index
wraparound, which would stop vectorisation; short loops are written inline rather than as helper
calls (a call with array arguments costs more than copying a short row); tile coordinates are
counted, not divided; all passes go through one call site of :func:`_pass` (each call site would
inline another copy of its loops: compile time); and the per-shape parameters are built once in
Python and cached.
"""

import numpy as np
from numba import prange

from numbaconv import _threads
from numbaconv._jit import kernel, parallel_kernel, prefer_wide_vectors
from numbaconv.kernels import depthwise_rows
from numbaconv.kernels.unowned import unowned as _unowned

__all__ = ["conv2d_depthwise"]

_u = np.uint64  # index cast: unsigned indices skip the negative-index wraparound

# parameter slots of the int64 array handed to the compiled code
_C, _H, _W, _M, _OH, _OW, _KH, _KW, _SH, _SW, _DH, _DW, _PT, _PL, _R, _EXT, _WQ, _PLANE, \
    _MODE = range(19)
_MODE_FILL, _MODE_SAME = 0, 1


@kernel
def _pass(acc, abase, buf, bbase, offs, w, wb, tlo, thi, n, bias):
    """acc[abase + i] = bias + sum_{t in [tlo, thi)} w[wb + t] * buf[bbase + offs[t] + i],
    for i in [0, n), taps summed in order. Chunks of 9, 3 or 1 taps, each one loop; the
    first chunk starts from the bias, later ones from acc."""
    prefer_wide_vectors()
    if n <= 0:
        return
    if thi <= tlo:
        for i in range(n):
            acc[_u(abase + i)] = bias
        return
    t = tlo
    while t < thi:
        g = 9 if thi - t >= 9 else (3 if thi - t >= 3 else 1)
        if g == 9:
            if t == tlo:
                o0 = bbase + offs[t + 0]; w0 = w[wb + t + 0]
                o1 = bbase + offs[t + 1]; w1 = w[wb + t + 1]
                o2 = bbase + offs[t + 2]; w2 = w[wb + t + 2]
                o3 = bbase + offs[t + 3]; w3 = w[wb + t + 3]
                o4 = bbase + offs[t + 4]; w4 = w[wb + t + 4]
                o5 = bbase + offs[t + 5]; w5 = w[wb + t + 5]
                o6 = bbase + offs[t + 6]; w6 = w[wb + t + 6]
                o7 = bbase + offs[t + 7]; w7 = w[wb + t + 7]
                o8 = bbase + offs[t + 8]; w8 = w[wb + t + 8]
                for i in range(n):
                    s = bias + w0 * buf[_u(o0 + i)]
                    s += w1 * buf[_u(o1 + i)]
                    s += w2 * buf[_u(o2 + i)]
                    s += w3 * buf[_u(o3 + i)]
                    s += w4 * buf[_u(o4 + i)]
                    s += w5 * buf[_u(o5 + i)]
                    s += w6 * buf[_u(o6 + i)]
                    s += w7 * buf[_u(o7 + i)]
                    s += w8 * buf[_u(o8 + i)]
                    acc[_u(abase + i)] = s
            else:
                o0 = bbase + offs[t + 0]; w0 = w[wb + t + 0]
                o1 = bbase + offs[t + 1]; w1 = w[wb + t + 1]
                o2 = bbase + offs[t + 2]; w2 = w[wb + t + 2]
                o3 = bbase + offs[t + 3]; w3 = w[wb + t + 3]
                o4 = bbase + offs[t + 4]; w4 = w[wb + t + 4]
                o5 = bbase + offs[t + 5]; w5 = w[wb + t + 5]
                o6 = bbase + offs[t + 6]; w6 = w[wb + t + 6]
                o7 = bbase + offs[t + 7]; w7 = w[wb + t + 7]
                o8 = bbase + offs[t + 8]; w8 = w[wb + t + 8]
                for i in range(n):
                    s = acc[_u(abase + i)] + w0 * buf[_u(o0 + i)]
                    s += w1 * buf[_u(o1 + i)]
                    s += w2 * buf[_u(o2 + i)]
                    s += w3 * buf[_u(o3 + i)]
                    s += w4 * buf[_u(o4 + i)]
                    s += w5 * buf[_u(o5 + i)]
                    s += w6 * buf[_u(o6 + i)]
                    s += w7 * buf[_u(o7 + i)]
                    s += w8 * buf[_u(o8 + i)]
                    acc[_u(abase + i)] = s
        elif g == 3:
            if t == tlo:
                o0 = bbase + offs[t + 0]; w0 = w[wb + t + 0]
                o1 = bbase + offs[t + 1]; w1 = w[wb + t + 1]
                o2 = bbase + offs[t + 2]; w2 = w[wb + t + 2]
                for i in range(n):
                    s = bias + w0 * buf[_u(o0 + i)]
                    s += w1 * buf[_u(o1 + i)]
                    s += w2 * buf[_u(o2 + i)]
                    acc[_u(abase + i)] = s
            else:
                o0 = bbase + offs[t + 0]; w0 = w[wb + t + 0]
                o1 = bbase + offs[t + 1]; w1 = w[wb + t + 1]
                o2 = bbase + offs[t + 2]; w2 = w[wb + t + 2]
                for i in range(n):
                    s = acc[_u(abase + i)] + w0 * buf[_u(o0 + i)]
                    s += w1 * buf[_u(o1 + i)]
                    s += w2 * buf[_u(o2 + i)]
                    acc[_u(abase + i)] = s
        else:
            if t == tlo:
                o0 = bbase + offs[t + 0]; w0 = w[wb + t + 0]
                for i in range(n):
                    s = bias + w0 * buf[_u(o0 + i)]
                    acc[_u(abase + i)] = s
            else:
                o0 = bbase + offs[t + 0]; w0 = w[wb + t + 0]
                for i in range(n):
                    s = acc[_u(abase + i)] + w0 * buf[_u(o0 + i)]
                    acc[_u(abase + i)] = s
        t += g


@kernel
def _work(xf, wf, b, of, offs, prm, zero, buf_o, acc_o, toffs_o, tlo, thi):
    """Tiles [tlo, thi) of the flattened (image, input channel, row block) grid.

    Every flat pass of a tile goes through the one call of :func:`_pass` below (a "job"
    loop): each call site would get its own inlined copy of the pass loops, and compile time
    grows with every copy."""
    prefer_wide_vectors()
    buf = _unowned(buf_o)
    acc = _unowned(acc_o)
    toffs = _unowned(toffs_o)
    C = prm[_C]
    H = prm[_H]
    W = prm[_W]
    m = prm[_M]
    OH = prm[_OH]
    OW = prm[_OW]
    kH = prm[_KH]
    kW = prm[_KW]
    sh = prm[_SH]
    sw = prm[_SW]
    dh = prm[_DH]
    dw = prm[_DW]
    pt = prm[_PT]
    pl = prm[_PL]
    R = prm[_R]
    ext = prm[_EXT]
    Wq = prm[_WQ]
    plane = prm[_PLANE]
    fill = prm[_MODE] == _MODE_FILL
    ntaps = kH * kW
    nrb = (OH + R - 1) // R
    zi = tlo - tlo  # a zero Numba does not type as a literal (no extra specialisations)
    # fill mode: column ranges of the stride phases (divisions are slow: once per call)
    qlos = np.empty(sw, dtype=np.int64)
    qhis = np.empty(sw, dtype=np.int64)
    for px in range(sw):
        qlos[px] = max(min(-((px - pl) // sw), Wq), 0)
        qhis[px] = max(min((W - 1 + pl - px) // sw + 1, Wq), qlos[px])
    pe = pl % 2
    qe = min(pl // 2, Wq)
    qo = min((pl + 1) // 2, Wq)
    ke = min(Wq - qe, (W + 1) // 2)
    ko = min(Wq - qo, W // 2)
    kk = min(ke, ko)
    # same mode: right border width; border sides (one block if the borders meet)
    pr = (kW - 1) * dw - pl
    nsides = 1 if W - pr <= pl else 2
    rb = tlo % nrb
    ci = (tlo // nrb) % C
    n = tlo // nrb // C
    for t in range(tlo, thi):
        if t > tlo:  # next tile (counting: divisions are slow)
            rb += 1
            if rb == nrb:
                rb = 0
                ci += 1
                if ci == C:
                    ci = 0
                    n += 1
        oy0 = rb * R
        oy1 = min(oy0 + R, OH)
        r = oy1 - oy0
        xbase = (n * C + ci) * H * W
        if fill:
            # phase-split, zero-padded copy of the input rows of this tile. The copies write
            # the same columns of every row, so the columns left of and right of them stay
            # zero from the first tile on; only rows outside the input are zeroed per tile
            # (zeroing whole buffers per tile took 15% of a stride-2 layer's time).
            if t == tlo:
                for q in range(sh * sw * plane):
                    buf[_u(q)] = 0.0
            for py in range(sh):
                # phase rows qy whose input row (oy0 + qy) * sh + py - pt is in [0, H)
                qlo_y = max(0, -((oy0 * sh + py - pt) // sh))
                qhi_y = min(r + ext, (H - 1 - oy0 * sh - py + pt) // sh + 1)
                for px in range(sw):
                    base = (py * sw + px) * plane
                    for q in range(base, base + min(qlo_y, r + ext) * Wq):
                        buf[_u(q)] = 0.0
                    for q in range(base + max(qhi_y, 0) * Wq, base + (r + ext) * Wq):
                        buf[_u(q)] = 0.0
                if sw == 2:
                    # even and odd columns in one loop: wide loads and shuffles
                    for qy in range(qlo_y, qhi_y):
                        srow = xbase + ((oy0 + qy) * sh + py - pt) * W
                        de = (py * 2 + pe) * plane + qy * Wq + qe
                        do = (py * 2 + 1 - pe) * plane + qy * Wq + qo
                        for u in range(kk):
                            ev = xf[_u(srow + 2 * u)]
                            od = xf[_u(srow + 2 * u + 1)]
                            buf[_u(de + u)] = ev
                            buf[_u(do + u)] = od
                        if ke > kk:
                            buf[_u(de + kk)] = xf[_u(srow + 2 * kk)]
                    continue
                for px in range(sw):
                    # phase columns [qlo, qhi) hold input columns, the rest is padding
                    qlo = qlos[px]
                    qhi = qhis[px]
                    for qy in range(qlo_y, qhi_y):
                        src = xbase + ((oy0 + qy) * sh + py - pt) * W + px - pl
                        row = (py * sw + px) * plane + qy * Wq
                        if sw == 1:
                            for q in range(qlo, qhi):
                                buf[_u(row + q)] = xf[_u(src + q)]
                        else:
                            for q in range(qlo, qhi):
                                buf[_u(row + q)] = xf[_u(src + q * sw)]
        # same mode, border blocks: transposed copies have Hs rows per column
        Hs = r + (kH - 1) * dh
        ilo = min(max(0, pt - oy0), Hs)
        ihi = max(min(Hs, H + pt - oy0), ilo)
        for j in range(m):
            co = ci * m + j
            wb = co * ntaps
            bias = b[co]
            obase = (n * C * m + co) * OH * OW
            oy = oy0
            side = 0
            done = False
            while not done:
                # choose the next job: destination, source, taps, length, start value
                if fill:
                    # the whole tile: flat pass over the padded rows (pitch Wq); the length
                    # is rounded up to whole vectors, the extra results land in scratch slack
                    kind = 0
                    dst = acc
                    dbase = zi
                    src_ = buf
                    sbase = zi
                    ofs = offs
                    ta = zi
                    tb = ntaps
                    nn = ((r - 1) * Wq + OW + 15) & ~15
                    start_value = bias
                    done = True
                elif oy < oy1:
                    # a run of rows [oy, oe) whose kernel rows [kylo, kyhi) stay inside x:
                    # one flat pass straight from x into out (x and out share the pitch W)
                    kylo = 0
                    while kylo < kH and oy + kylo * dh - pt < 0:
                        kylo += 1
                    kyhi = kH
                    while kyhi > kylo and oy + (kyhi - 1) * dh - pt >= H:
                        kyhi -= 1
                    oe = oy + 1
                    while oe < oy1:
                        if kylo > 0 and oe + (kylo - 1) * dh - pt >= 0:
                            break
                        if kylo < kH and oe + kylo * dh - pt < 0:
                            break
                        if kyhi < kH and oe + kyhi * dh - pt < H:
                            break
                        if kyhi > kylo and oe + (kyhi - 1) * dh - pt >= H:
                            break
                        oe += 1
                    # the padding rows left out contribute w * 0: nothing, unless w is
                    # Inf or NaN, so add exactly that to the start value
                    start_value = bias
                    for ky in range(kH):
                        if ky < kylo or ky >= kyhi:
                            for kx in range(kW):
                                start_value += wf[_u(wb + ky * kW + kx)] * zero
                    # start after the left border columns and end before the right ones:
                    # then all reads stay inside the plane (border outputs are redone below)
                    kind = 1
                    start = oy * W + pl
                    dst = of
                    dbase = obase + start
                    src_ = xf
                    sbase = xbase + start
                    ofs = offs
                    ta = kylo * kW
                    tb = kyhi * kW
                    nn = oe * W - pr - start
                    oy = oe
                elif side < nsides:
                    # border columns [c0, c1) of rows [oy0, oy1): a zero-padded, transposed
                    # (column-major) copy of their input, so the flat pass runs down columns
                    if nsides == 1:
                        c0 = zi
                        c1 = W
                    elif side == 0:
                        c0 = zi
                        c1 = pl
                    else:
                        c0 = W - pr
                        c1 = W
                    side += 1
                    if c1 <= c0:
                        continue
                    for jj in range(c1 - c0 + (kW - 1) * dw):
                        xc = c0 - pl + jj
                        col = jj * Hs
                        if xc < 0 or xc >= W:
                            for i in range(Hs):
                                buf[_u(col + i)] = 0.0
                        else:
                            for i in range(ilo):
                                buf[_u(col + i)] = 0.0
                            src = xbase + (oy0 - pt) * W + xc
                            for i in range(ilo, ihi):
                                buf[_u(col + i)] = xf[_u(src + i * W)]
                            for i in range(ihi, Hs):
                                buf[_u(col + i)] = 0.0
                    for ky in range(kH):
                        for kx in range(kW):
                            toffs[ky * kW + kx] = kx * dw * Hs + ky * dh
                    kind = 2
                    dst = acc
                    dbase = zi
                    src_ = buf
                    sbase = zi
                    ofs = toffs
                    ta = zi
                    tb = ntaps
                    nn = ((c1 - c0 - 1) * Hs + r + 15) & ~15
                    start_value = bias
                else:
                    break
                _pass(dst, dbase, src_, sbase, ofs, wf, wb, ta, tb, nn, start_value)
                if kind == 0:
                    ob = obase + oy0 * OW
                    for rr in range(r):
                        o = ob + rr * OW
                        a = rr * Wq
                        for q in range(OW):
                            of[_u(o + q)] = acc[_u(a + q)]
                elif kind == 2:
                    for cc in range(c1 - c0):
                        o = obase + oy0 * W + c0 + cc
                        a = cc * Hs
                        for i in range(r):
                            of[_u(o + i * W)] = acc[_u(a + i)]


@parallel_kernel
def _driver(xf, wf, b, of, offs, prm, zero, nthreads, ntiles, nbuf, nacc):
    # one contiguous range of tiles per thread, each with its own scratch buffers
    for p in prange(nthreads):
        prefer_wide_vectors()
        buf = np.empty(nbuf, dtype=xf.dtype)
        acc = np.empty(nacc, dtype=xf.dtype)
        toffs = np.empty(prm[_KH] * prm[_KW], dtype=np.int64)
        _work(_unowned(xf), _unowned(wf), _unowned(b), _unowned(of), _unowned(offs), prm, zero,
              buf, acc, toffs, p * ntiles // nthreads, (p + 1) * ntiles // nthreads)


# testing hook: "rows" (the default where it applies), "same" or "fill" (flat passes; "same"
# falls back to "fill" where it cannot run)
_force_path = None


def conv2d_depthwise(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Depthwise 2-D convolution into ``out`` (``groups == C``, ``C_out = m * C``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input; float32 or float64, C-contiguous.
    w : ndarray, shape (C * m, 1, kH, kW)
        Weights, same dtype, C-contiguous. Output channel ``co`` reads input channel
        ``co // m``.
    b : ndarray, shape (C * m,)
        Bias, same dtype (pass zeros for no bias).
    out : ndarray, shape (N, C * m, OH, OW)
        Written completely; same dtype, C-contiguous. ``OH``/``OW`` imply the bottom/right
        padding.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w : int
        Strides (>= 1), top/left zero padding (>= 0) and dilations (>= 1).

    Returns
    -------
    None

    Notes
    -----
    ``out[n, co, oy, ox] = b[co] + sum_{ky, kx} w[co, 0, ky, kx] *
    x[n, co // m, oy*stride_h - pad_top + ky*dil_h, ox*stride_w - pad_left + kx*dil_w]``,
    with the zero padding multiplied like data (an Inf/NaN weight on a padded tap gives NaN,
    as in the reference). Arguments are not validated (the front end does that). ``x``, ``w``
    and ``b`` are only read. The summation order is fixed per shape (bias first, then taps
    row-major), independent of the number of threads.
    """
    if out.size == 0:
        return
    if _force_path in (None, "rows") and depthwise_rows.supports(
            w.shape[2], w.shape[3], stride_h, stride_w, pad_left, dil_h, dil_w):
        depthwise_rows.conv2d_depthwise_rows(x, w, b, out, stride_h, pad_top)
        return
    key = (x.shape, w.shape, out.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
           x.itemsize, _force_path)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) >= 256:
            _plans.clear()
        plan = _plans[key] = _plan(x.shape, w.shape, out.shape, stride_h, stride_w, pad_top,
                                   pad_left, dil_h, dil_w, x.itemsize)
    prm, offs, ntiles, nbuf, nacc = plan
    _driver(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), offs, prm, x.dtype.type(0),
            min(_threads.numba_count(), ntiles), ntiles, nbuf, nacc)


_plans = {}  # per-shape parameters (building them costs more than a small convolution)


def _plan(xshape, wshape, oshape, sh, sw, pad_top, pad_left, dh, dw, itemsize):
    N, C, H, W = xshape
    Cout, _, kH, kW = wshape
    OH, OW = oshape[2], oshape[3]
    ky = np.arange(kH).reshape(-1, 1)
    kx = np.arange(kW).reshape(1, -1)
    # the direct path's per-plane border work only pays off on wider planes
    same = sh == 1 and sw == 1 and OW == W and W >= 32
    if _force_path == "same":
        same = sh == 1 and sw == 1 and OW == W
    if _force_path == "fill" or not same:
        mode = _MODE_FILL
        Wq = OW + ((kW - 1) * dw) // sw
        ext = ((kH - 1) * dh) // sh
        # rows per tile: phase buffer and accumulators within about 32 KB of L1
        R = max(1, min(OH, (32768 // itemsize) // (Wq * (1 + sh * sw)) - ext))
        plane = (R + ext) * Wq
        offs = ((((ky * dh) % sh) * sw + (kx * dw) % sw) * plane
                + ((ky * dh) // sh) * Wq + (kx * dw) // sw)
        nbuf = sh * sw * plane + 64  # slack for the rounded-up pass length
        nacc = R * Wq + 64
    else:
        mode = _MODE_SAME
        Wq = ext = plane = 0
        R = max(1, min(OH, 4096 // W))
        offs = (ky * dh - pad_top) * W + kx * dw - pad_left
        # transposed border blocks: up to R + ext rows by W + ext columns
        nbuf = nacc = (R + (kH - 1) * dh) * (W + (kW - 1) * dw) + 64
    prm = np.array([C, H, W, Cout // C, OH, OW, kH, kW, sh, sw, dh, dw, pad_top, pad_left,
                    R, ext, Wq, plane, mode], dtype=np.int64)
    ntiles = N * C * ((OH + R - 1) // R)
    return prm, offs.reshape(-1).astype(np.int64), ntiles, nbuf, nacc
