"""Forward 2-D convolution for few output pixels: dot products along K, vectorised over K.

For a layer such as ResNet-50's last 3x3 (512 channels, 7x7 output), the implicit GEMM's tiles
(output pixels in the vector lanes, 32 per tile) cover 49 pixels at 77%, and its weights, read once
per 32 pixels, are the bulk of the memory traffic. Here the vector lanes run along the reduction
instead: ``out[n, co, p] = b[co] + sum_k W[co, k] * P[p, k]`` with ``W`` the weights as they lie
(``(C_out, K)``, ``K = (ci, ky, kx)``, contiguous rows) and ``P`` the im2col rows of the output
pixels (one contiguous, zero-padded row of ``K`` values per pixel). A register tile of ``MR``
weight rows by ``NR`` pixels (5 x 5 with 512-bit vectors: 25 accumulators, each a vector of partial
sums) loads ``MR + NR`` vectors per ``MR * NR`` fused multiply-adds, then each accumulator is
summed across its lanes. The tiles cover any pixel count in steps of ``NR`` (49 pixels: 10 tiles,
one pixel of 50 computed twice). Against 3 x 7 tiles, whose 10 loads feed 21 FMAs instead of 25
(the loads are what holds this loop below the FMA peak here), alternating processes, 6 rounds,
float32, 2 threads: ResNet-50's 3x3 C512 7x7 164 -> 172 GFLOP/s at batch 1 (5 of 6 rounds faster),
159 -> 171 at batch 8 (6 of 6); 3x3 C512 6x6 and 1x1 C2048->512 4x4 gained too (4 rounds).

Summation order of one output: lane ``l`` accumulates ``k = l, l + lanes, l + 2 lanes, ...``
(FMAs in ascending ``k``), the lanes are added pairwise (halves, then quarters, ...), then the
bias is added. It depends on ``K`` only, not on the image size, the tiling or the thread count.
Integer-valued data gives the reference's result exactly; otherwise the result is within the
usual forward error bound.

Work: the threads split the weight-row tiles between them; pixels are taken in chunks whose
``P`` rows fit in about 1 MiB (all of them for the small layers this is for), and each thread
builds its own copy of a chunk's rows (twice the copying, but no rows handed between cores; see
the README on threads), then runs its tiles against every pixel tile of the chunk.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbaconv import _threads
from numbaconv._jit import kernel, parallel_kernel, vector_bytes
from numbaconv.kernels.gemm import _lanes
from numbaconv.kernels.ir_vectors import Vectors
from numbaconv.kernels.scratch import aligned
from numbaconv.kernels.unowned import unowned as _unowned

__all__ = ["conv2d_dot"]

_VBYTES = vector_bytes()
_u = np.uint64  # index cast: unsigned indices skip Numba's negative-index wraparound
# register tile: MR weight rows x NR pixels of vector accumulators, plus MR + 1 loaded vectors
MR, NR = (5, 5) if _VBYTES == 64 else (2, 5)
_CHUNK_BYTES = 1 << 20  # P rows of one pixel chunk (L2)
# K block per weight row. The tile's rows of it (40 KiB) outgrow L1, yet 4 and 6 KiB blocks ran
# 1-5% slower on 3x3 C512 7x7 at batch 1 and 8 (interleaved, 15-25 rounds)
_KC_BYTES = 8192

_NIMG, _CIN, _H, _W, _COUT, _OH, _OW, _KH, _KW, _SH, _SW, _PT, _PL, _DH, _DW, _K, _KP, \
    _NPC, _KC = range(19)


@intrinsic
def _tile(typingctx, wf, wrows, pf, prows, k0, kn, acc, first):
    """``acc[i, j] (+)= sum_{k0 <= k < k0 + kn} wf[wrows[i] + k] * pf[prows[j] + k]`` for
    ``i < MR``, ``j < NR``, one vector of partial sums per ``(i, j)`` (lane ``l`` takes
    ``k = k0 + l, k0 + l + lanes, ...``; lanes past ``k0 + kn`` read nothing). ``acc`` holds
    ``MR * NR`` vectors; with ``first`` they start from zero instead of their contents."""
    sig = types.void(wf, wrows, pf, prows, k0, kn, acc, first)

    def codegen(context, builder, signature, args):
        wf_v, wrows_v, pf_v, prows_v, k0_v, kn_v, acc_v, first_v = args
        aty = signature.args
        vec = Vectors(context, builder, aty[0])
        b = builder
        i64, lanes = vec.i64, vec.lanes
        c64 = lambda n: ir.Constant(i64, n)  # noqa: E731
        k0_v, kn_v = vec.as64(k0_v), vec.as64(kn_v)

        def row_ptr(arr_i, rows_i, arr_v, rows_v, i):
            off = b.add(b.load(vec.ptr(aty[rows_i], rows_v, c64(i))), k0_v)
            return vec.ptr(aty[arr_i], arr_v, off)

        wptr = [row_ptr(0, 1, wf_v, wrows_v, i) for i in range(MR)]
        pptr = [row_ptr(2, 3, pf_v, prows_v, j) for j in range(NR)]
        aptr = [[vec.ptr(aty[6], acc_v, c64((i * NR + j) * lanes)) for j in range(NR)]
                for i in range(MR)]
        zero = ir.Constant(vec.vty, [0.0] * lanes)
        start = [[b.select(first_v, zero, vec.load(a)) for a in row] for row in aptr]
        nfull = b.sdiv(kn_v, c64(lanes))

        def step(cur, off, mask):
            wv = [vec.load(b.gep(p, [off]), mask=mask) for p in wptr]
            new = [[None] * NR for _ in range(MR)]
            for j in range(NR):
                pv = vec.load(b.gep(pptr[j], [off]), mask=mask)
                for i in range(MR):
                    new[i][j] = vec.fma(wv[i], pv, cur[i][j])
            return new

        fn = b.function
        pre = b.block
        hdr = fn.append_basic_block("dot_hdr")
        body = fn.append_basic_block("dot_body")
        tail = fn.append_basic_block("dot_tail")
        store = fn.append_basic_block("dot_store")
        after = fn.append_basic_block("dot_after")
        rest = b.sub(kn_v, b.mul(nfull, c64(lanes)))
        b.branch(hdr)

        b.position_at_end(hdr)
        s = b.phi(i64)
        s.add_incoming(c64(0), pre)
        acc = [[b.phi(vec.vty) for _ in range(NR)] for _ in range(MR)]
        for i in range(MR):
            for j in range(NR):
                acc[i][j].add_incoming(start[i][j], pre)
        b.cbranch(b.icmp_signed("<", s, nfull), body, after)

        b.position_at_end(body)
        new = step(acc, b.mul(s, c64(lanes)), None)
        s.add_incoming(b.add(s, c64(1)), body)
        for i in range(MR):
            for j in range(NR):
                acc[i][j].add_incoming(new[i][j], body)
        b.branch(hdr)

        # the last kn % lanes values, if any: masked loads
        b.position_at_end(after)
        b.cbranch(b.icmp_signed(">", rest, c64(0)), tail, store)
        b.position_at_end(tail)
        last = step(acc, b.mul(nfull, c64(lanes)), vec.mask(rest, lanes))
        b.branch(store)

        b.position_at_end(store)
        final = [[b.phi(vec.vty) for _ in range(NR)] for _ in range(MR)]
        for i in range(MR):
            for j in range(NR):
                final[i][j].add_incoming(acc[i][j], after)
                final[i][j].add_incoming(last[i][j], tail)
        for i in range(MR):
            for j in range(NR):
                b.store(final[i][j], b.bitcast(aptr[i][j], vec.vty.as_pointer()),
                        align=vec.isz)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _sums(typingctx, acc, res):
    """``res[t] = `` the lanes of vector ``t`` of ``acc`` added pairwise (halves, quarters,
    ...), for the ``MR * NR`` vectors of a tile."""
    sig = types.void(acc, res)

    def codegen(context, builder, signature, args):
        acc_v, res_v = args
        aty = signature.args
        vec = Vectors(context, builder, aty[0])
        b = builder
        for t in range(MR * NR):
            v = vec.load(vec.ptr(aty[0], acc_v, ir.Constant(vec.i64, t * vec.lanes)))
            width = vec.lanes
            while width > 1:
                width //= 2
                v = b.fadd(vec.shuffle(v, v, list(range(width))),
                           vec.shuffle(v, v, list(range(width, 2 * width))))
            b.store(b.extract_element(v, ir.Constant(vec.i32, 0)),
                    vec.ptr(aty[1], res_v, ir.Constant(vec.i64, t)))
        return context.get_dummy_value()

    return sig, codegen


@kernel
def _fill_rows(xf, prm, pf, p0, p1, q0):
    """Rows ``q0 + (p - p0)`` of ``pf`` (pitch ``KP``) for output pixels ``p`` in ``[p0, p1)``:
    the im2col values ``(ci, ky, kx)`` of the pixel, zeros for padding and past ``K``."""
    cin, h, wd = prm[_CIN], prm[_H], prm[_W]
    oh, ow, kh, kw = prm[_OH], prm[_OW], prm[_KH], prm[_KW]
    sh, sw, pt, pl, dh, dw = prm[_SH], prm[_SW], prm[_PT], prm[_PL], prm[_DH], prm[_DW]
    k, kp = prm[_K], prm[_KP]
    zero = pf.dtype.type(0)
    plane = h * wd
    for p in range(p0, p1):
        n = p // (oh * ow)
        rem = p - n * oh * ow
        oy = rem // ow
        ox = rem - oy * ow
        row = (q0 + p - p0) * kp
        ix0 = ox * sw - pl
        iy0 = oy * sh - pt
        inside = (ix0 >= 0 and ix0 + (kw - 1) * dw < wd and iy0 >= 0
                  and iy0 + (kh - 1) * dh < h)
        src0 = n * cin * plane + iy0 * wd + ix0
        if inside and kh == 3 and kw == 3 and dw == 1:
            # the common case, unrolled: three rows of three values per channel
            r1 = dh * wd
            r2 = 2 * r1
            for ci in range(cin):
                s = src0 + ci * plane
                q = row + ci * 9
                pf[_u(q)] = xf[_u(s)]
                pf[_u(q + 1)] = xf[_u(s + 1)]
                pf[_u(q + 2)] = xf[_u(s + 2)]
                pf[_u(q + 3)] = xf[_u(s + r1)]
                pf[_u(q + 4)] = xf[_u(s + r1 + 1)]
                pf[_u(q + 5)] = xf[_u(s + r1 + 2)]
                pf[_u(q + 6)] = xf[_u(s + r2)]
                pf[_u(q + 7)] = xf[_u(s + r2 + 1)]
                pf[_u(q + 8)] = xf[_u(s + r2 + 2)]
        elif inside and kh == 1 and kw == 1:
            for ci in range(cin):
                pf[_u(row + ci)] = xf[_u(src0 + ci * plane)]
        else:
            # zeros, then the taps that fall inside the image (no test per value)
            for t in range(row, row + k):
                pf[_u(t)] = zero
            ky0 = min(kh, max(0, -(iy0 // dh)) if iy0 < 0 else 0)
            ky1 = max(ky0, min(kh, (h - 1 - iy0) // dh + 1)) if iy0 < h else ky0
            kx0 = min(kw, max(0, -(ix0 // dw)) if ix0 < 0 else 0)
            kx1 = max(kx0, min(kw, (wd - 1 - ix0) // dw + 1)) if ix0 < wd else kx0
            for ci in range(cin):
                base = src0 + ci * plane
                q = row + ci * kh * kw
                for ky in range(ky0, ky1):
                    s = base + ky * dh * wd
                    d = q + ky * kw
                    for kx in range(kx0, kx1):
                        pf[_u(d + kx)] = xf[_u(s + kx * dw)]
        for t in range(row + k, row + kp):
            pf[_u(t)] = zero


@parallel_kernel
def _driver(xf_o, wf_o, b_o, of_o, prm, pf_o, nthreads):
    nimg, cout, oh, ow = prm[_NIMG], prm[_COUT], prm[_OH], prm[_OW]
    k, kp, npc, kc = prm[_K], prm[_KP], prm[_NPC], prm[_KC]
    npix = nimg * oh * ow
    n_mt = (cout + MR - 1) // MR
    plen = pf_o.size // nthreads
    for t in prange(nthreads):
        xf = _unowned(xf_o)
        pf = _unowned(pf_o)[t * plen:(t + 1) * plen]  # this thread's copy of the rows
        wf = _unowned(wf_o)
        b = _unowned(b_o)
        of = _unowned(of_o)
        wrows = np.empty(MR, dtype=np.int64)
        lanes = _lanes(pf)
        nmax = (npc + NR - 1) // NR
        prows = np.empty(nmax * NR, dtype=np.int64)
        acc = np.empty(nmax * MR * NR * lanes, dtype=pf.dtype)
        res = np.empty(MR * NR, dtype=pf.dtype)
        for c0 in range(0, npix, npc):
            c1 = min(npix, c0 + npc)
            # every thread builds the chunk's rows itself: reading rows the other core built
            # cost up to 14% in periods when the two cores are far apart
            _fill_rows(xf, prm, pf, c0, c1, 0)
            n_nt = (c1 - c0 + NR - 1) // NR
            for nt in range(n_nt):
                nv = min(NR, c1 - c0 - nt * NR)
                for j in range(NR):
                    prows[nt * NR + j] = (nt * NR + min(j, nv - 1)) * kp
            for mt in range(t * n_mt // nthreads, (t + 1) * n_mt // nthreads):
                m0 = mt * MR
                mv = min(MR, cout - m0)
                for i in range(MR):
                    wrows[i] = (m0 + min(i, mv - 1)) * k  # rows past C_out repeat the last
                # K blocks outermost: the tile's weight rows stay in L1 across pixel tiles
                for k0 in range(0, k, kc):
                    for nt in range(n_nt):
                        _tile(wf, wrows, pf, prows[nt * NR:], k0, min(kc, k - k0),
                              acc[nt * MR * NR * lanes:], k0 == 0)
                for nt in range(n_nt):
                    _sums(acc[nt * MR * NR * lanes:], res)
                    for j in range(min(NR, c1 - c0 - nt * NR)):
                        p = c0 + nt * NR + j
                        n = p // (oh * ow)
                        pix = p - n * oh * ow
                        for i in range(mv):
                            co = m0 + i
                            of[(n * cout + co) * oh * ow + pix] = res[i * NR + j] + b[co]


def workspace_bytes(k, npix, itemsize, nthreads=None):
    """Peak extra memory (bytes) of :func:`conv2d_dot`: per thread, one chunk of im2col rows and
    the vector accumulators of its pixel tiles (``MR * lanes`` values per pixel)."""
    kp = -(-k // 16) * 16
    if nthreads is None:
        nthreads = _threads.numba_count()
    npc = _chunk_pixels(kp, itemsize)
    acc = -(-npc // NR) * NR * MR * (_VBYTES // itemsize)
    return nthreads * (min(npix, npc) * kp + acc) * itemsize


def _chunk_pixels(kp, itemsize):
    return max(NR, (_CHUNK_BYTES // (kp * itemsize)) // NR * NR)


def conv2d_dot(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Forward 2-D convolution without groups by dot products along K, written into ``out``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in, kH, kW)
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        All C-contiguous, one dtype (float32 or float64). ``OH, OW`` imply the bottom and
        right padding. Every element is written.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w : int

    Notes
    -----
    ``out[n, co, oy, ox] = sum_{ci, ky, kx} w[co, ci, ky, kx] * x[n, ci, iy, ix] + b[co]``
    (``iy = oy*stride_h - pad_top + ky*dil_h``, zeros outside ``x``), summed as the module
    docstring describes.
    """
    if out.size == 0:
        return
    nimg, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    k = cin * kh * kw
    kp = -(-k // 16) * 16  # P rows start on 64-byte boundaries (float32)
    npc = _chunk_pixels(kp, x.itemsize)
    npix = nimg * oh * ow
    nthreads = max(1, min(_threads.numba_count(), -(-cout // MR)))  # they split weight rows
    n_p = min(npix, npc) * kp  # one thread's rows (a multiple of 16: each copy stays aligned)
    pf = aligned("dot.rows", nthreads * n_p, x.dtype)  # no load of a row splits cache lines
    prm = np.array([nimg, cin, h, wd, cout, oh, ow, kh, kw, stride_h, stride_w, pad_top,
                    pad_left, dil_h, dil_w, k, kp, npc, _KC_BYTES // x.itemsize],
                   dtype=np.int64)
    _driver(x.reshape(-1), w.reshape(-1), b, out.reshape(-1), prm, pf, nthreads)
