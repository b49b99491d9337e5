"""Depthwise 2-D convolution, NCHW, by rows of shifted vectors (3x3 and 5x5 kernels with stride 1
or 2, 7x7 with stride 1; dilation 1, left padding ``k // 2``, any top padding and output size).

One output row is a run of vectors along W. For every kernel row ``ky`` the input row is read
once, vector after vector, with masked loads (lanes past the row's end and rows in the top or
bottom padding read as zeros, without touching memory), and kept in registers from one output
vector to the next: the vector of tap ``kx`` is the input run shifted by ``kx - k // 2``
columns, one lane shift (``valignd``) of the previous and current (or current and next)
vectors. Stride 2 reads two vectors per output vector and splits them into even and odd
columns (two permutes): taps 1 and 2 are those, tap 0 the odd ones shifted by one lane. The lane
shifts are inline assembly because LLVM lowers them to two-source permutes, which on Zen 4
compete with the FMAs for their pipes (measured below). So a 3x3 tap costs one FMA and at most
one shuffle, and each input element is loaded once per kernel row, where a flat pass
(:mod:`numbaconv.kernels.depthwise`) issues one unaligned load per tap; the zero padding left and
right needs no copies or border passes, since the shifts bring zeros in. 5x5 kernels would keep
too many vectors in registers: there each shifted run is its own masked load (still shared by the
output rows of a step). 7x7 kernels, and 5x5 with stride 2, take the input rows of a step one at
a time: a row's runs are made (7x7: seven loads; 5x5 stride 2: three loads split into even and
odd columns and shifted), multiplied into the output rows the row reaches (weights broadcast
where used) and dropped. Several output rows per step share their input rows, and their
multiply-add chains interleave. 3x3 on narrow rows (stride 2: up to four output vectors, stride
1: one) instead walks down vertical strips, one output row per step: each input row is read (and
split) once, and the rows an output row shares with the next one carry over in registers. A last
vector of outputs at most half full (56-wide rows: 3.5 vectors of float32) does its
multiply-adds at half width, which Zen 4 issues two per cycle against one of full width.

Each output is the bias followed by one FMA per tap, rows then columns, padding zeros multiplied
like data (so an Inf/NaN weight on a padded tap gives NaN, as in the reference). Work is split
into contiguous runs of output rows, one per thread; the result does not depend on the thread
count.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbaconv import _threads
from numbaconv._jit import kernel, parallel_kernel, vector_bytes
from numbaconv.kernels.ir_vectors import Vectors, switch
from numbaconv.kernels.unowned import unowned as _unowned

__all__ = ["conv2d_depthwise_rows", "supports"]

# Output rows per step by (k, stride): the rows share input rows, and more rows need more
# registers. Measured on 2 cores (AVX-512 Zen 4, float32; flat passes of the other depthwise
# kernel in brackets): 3x3 C144 56x56 stride 1 with 4 rows 113-123 GFLOP/s (74-81), 1 row 74, 6
# or 8 rows no faster; 3x3 C96 112x112 stride 2 with 2 or 3 rows 60-67 (37), 1 row 37; 5x5 C240
# 28x28 with 4 rows and loads 104-112 (53-74; 3 rows and shuffles 70-83). With every run of a step
# loaded up front, 5x5 stride 2 (36-40 against 52-55) and 7x7 (43-63 against 70-85) spilled
# registers; with the input rows streamed (same bits in the same order), 7x7 with 4 rows: C96
# 56x56 149 GFLOP/s (81-92), C192 28x28 122 (51-62), C384 14x14 98 (23-49), C768 7x7 39 (7-20),
# C96 112x112 181 (94-100), 6 rows per step 4-23% faster on the 14x14 and 7x7 maps, 4-6% slower
# on the others; 5x5 stride 2 with 3 rows: C144 56x56 84 (38-42), C240 28x28 65 (25), C672 14x14
# 33 (17-18), C96 112x112 93 (58), C32 224x224 103 (48-49), against 56-83, 45-67, 21-30, 72-82,
# 73-79 with 2 or 4 rows; the 5x5 stride-1 layers gained nothing from streaming.
# With 16 vector registers (AVX2) the kept rows spill: measured under an AVX2 build here, 3x3
# C144 56x56 ran at 41-49 GFLOP/s against 79-80 for the flat passes (1, 2 or 4 rows per step),
# so the kernel is used with 32 registers (AVX-512) only. Lane shifts by valignd in place of
# LLVM's vpermt2ps (1 thread, same bits): 3x3 C144 56x56 125 -> 114 us, C32 112x112 95 -> 87;
# stride 2, where the shift of the odd columns replaced a third permute: C96 112x112 148 -> 135,
# C144 56x56 72 -> 58 (splitting in 128-bit lanes by vshufps and restoring the column order once
# per output vector, five shuffles per row instead of three, gave 145 and 63).
ROWS = {(3, 1): 4, (3, 2): 2, (5, 1): 4, (7, 1): 4, (5, 2): 3} if vector_bytes() == 64 else {}
VARIANTS = sorted({(k, s, r) for (k, s), n in ROWS.items() for r in {1, n}})
# 3x3 on output rows of at most STRIPS[stride] vectors goes down vertical strips instead (see
# _strips): each input row is read (and split) once, where row steps read the rows they share
# with the next step again. 2 threads, float32, same bits, 9 of 9 interleaved rounds faster:
# stride 2, C96 112x112 65.9 -> 55.8 us, C144 56x56 30.3 -> 24.2, C64 65x65 23.1 -> 18.7, C240
# 28x28 19.7 -> 14.1 (wider rows lost: C32 224x224, 7 vectors per row, 79 -> 84 with strips of
# four); stride 1 only on rows of one vector, C384 14x14 21.7 -> 16.0 us, C960 7x7 35.8 -> 23.3
# (two vectors already lost: C96 28x28 13.6 -> 14.3, C144 56x56 61 -> 65).
# Half-width last vectors (same bits, 2 threads, 9 interleaved rounds): stride 1 C144 56x56
# 56.5 -> 55.3 us (9/9 faster), C960 7x7 23.4 -> 21.8 (9/9); stride 2 C96 112x112 55.6 -> 54.6
# (8/9); 1 thread C144 56x56 109.9 -> 105.3. Small gains, and partly the method's: C384 14x14,
# which has no half-full vector, measured 15.7 -> 14.8 in a repeat of that comparison.
STRIPS = (0, 1, 4)
STRIP_VARIANTS = [(st, n) for st in (1, 2) for n in range(1, STRIPS[st] + 1)]
_VBYTES = vector_bytes()

# parameter slots of the int64 array handed to the compiled code
_C, _H, _W, _M, _OH, _OW, _K, _ST, _PT, _NR = range(10)


def supports(kh, kw, sh, sw, pl, dh, dw):
    """Whether :func:`conv2d_depthwise_rows` computes this geometry."""
    return kh == kw and sh == sw and (kh, sh) in ROWS and dh == dw == 1 and pl == kw // 2


class _PlaneIR:
    """What both emitters need of one plane (the first 11 arguments of :func:`_rows` and
    :func:`_strips`): the vector helpers, the ``k * k`` weights and the bias as vectors, and
    input row pointers."""

    def __init__(self, context, builder, aty, args, k):
        x_v, xbase_v, h_v, wd_v, z_v, w_v, wbase_v, bias_v, out_v, obase_v, ow_v = args[:11]
        self.vec = vec = Vectors(context, builder, aty[0])
        self.b, self.aty, self.x, self.out = builder, aty, x_v, out_v
        self.xbase, self.h, self.wd, self.ow, self.obase = (
            vec.as64(v) for v in (xbase_v, h_v, wd_v, ow_v, obase_v))
        wbase = self.wbase = vec.as64(wbase_v)
        self.w_arr = w_v
        # as vectors (7x7 streams: it broadcasts each weight where used, as 5x5 stride 2 does,
        # whose vectors here go unused)
        self.w = [] if k >= 7 else [
            vec.splat(builder.load(vec.ptr(aty[5], w_v, builder.add(wbase, self.c64(i)))))
            for i in range(k * k)]
        self.bias = vec.splat(bias_v)
        self.zrow = vec.ptr(aty[4], z_v, self.c64(0))

    def c64(self, n):
        return ir.Constant(self.vec.i64, n)

    def row(self, iy):
        """Input row ``iy`` of the plane, or the zero row outside ``[0, h)``."""
        b, c64 = self.b, self.c64
        inside = b.and_(b.icmp_signed(">=", iy, c64(0)), b.icmp_signed("<", iy, self.h))
        xrow = self.vec.ptr(self.aty[0], self.x,
                            b.add(self.xbase, b.mul(b.select(inside, iy, c64(0)), self.wd)))
        return b.select(inside, xrow, self.zrow)


def _emit_rows(context, builder, aty, args, k, st, nr):
    """IR of output rows ``oy .. oy + nr - 1`` of one plane (see :func:`_rows`)."""
    p = _PlaneIR(context, builder, aty, args, k)
    vec, b, c64, wvec, bvec = p.vec, builder, p.c64, p.w, p.bias
    i64, lanes = vec.i64, vec.lanes
    zero = ir.Constant(vec.vty, [0.0] * lanes)
    wd_v, ow_v, obase_v, out_v = p.wd, p.ow, p.obase, p.out
    oy_v, pt_v = vec.as64(args[11]), vec.as64(args[12])
    nvec = b.sdiv(b.add(ow_v, c64(lanes - 1)), c64(lanes))
    # the last block, when it holds at most half a vector of outputs, is done after the loop
    half_tail = b.icmp_signed("<=", b.sub(ow_v, b.mul(b.sub(nvec, c64(1)), c64(lanes))),
                              c64(lanes // 2))
    nvec = b.select(half_tail, b.sub(nvec, c64(1)), nvec)

    # input rows of the nr output rows: pointers into x, or to the zero row
    nin = (nr - 1) * st + k
    top = b.sub(b.mul(oy_v, c64(st)), pt_v)
    rows = [p.row(b.add(top, c64(i))) for i in range(nin)]

    # How the tap vectors of output block j come about, per input row (lanes past the row's
    # end load as zeros, so the shifts bring in the right padding):
    # - "loads" (5x5): each shifted run is its own masked load.
    # - "shifts" (3x3 stride 1): the row's blocks j-1, j, j+1 stay in registers from one step
    #   to the next; tap kx is the pair shifted by kx - 1 lanes (valign).
    # - "pairs" (3x3 stride 2): the row's 2 * lanes columns of block j split into even and odd
    #   columns (taps 1 and 2); tap 0 is the odd columns shifted by one lane, the previous
    #   block's odd columns shifting in (valign).
    # - "stream" (7x7 stride 1, 5x5 stride 2): the input rows one at a time, each row's runs
    #   made, used by the output rows the row reaches and dropped (see step()).
    if (k >= 7 and st == 1) or (k >= 5 and st == 2):
        mode = "stream"
    else:
        mode = "loads" if st == 1 and k >= 5 else "shifts" if st == 1 else "pairs"
    assert mode != "pairs" or k == 3

    def block(r, first):
        m = vec.mask(b.sub(wd_v, first), lanes)
        return vec.load(b.gep(r, [first]), mask=m)

    def span_mask(start):
        """Lanes ``l`` with ``0 <= start + l < wd`` (the others load as zeros)."""
        return b.and_(vec.mask(b.sub(wd_v, start), lanes), b.not_(vec.mask(b.neg(start), lanes)))

    evens = list(range(0, 2 * lanes, 2))
    odds = list(range(1, 2 * lanes, 2))

    fn = b.function
    pre = b.block
    j_hdr = fn.append_basic_block("dw_j_hdr")
    j_body = fn.append_basic_block("dw_j_body")
    done = fn.append_basic_block("dw_done")
    if mode == "shifts":
        cur0 = [block(r, c64(0)) for r in rows]
    b.branch(j_hdr)

    b.position_at_end(j_hdr)
    j = b.phi(i64)
    j.add_incoming(c64(0), pre)
    if mode in ("shifts", "pairs"):
        # loop-carried blocks: shifts keep (previous, current), pairs the previous odd columns
        carried = [[b.phi(vec.vty) for _ in range(2 if mode == "shifts" else 1)]
                   for _ in range(nin)]
        for i in range(nin):
            carried[i][0].add_incoming(zero, pre)
            if mode == "shifts":
                carried[i][1].add_incoming(cur0[i], pre)
    b.cbranch(b.icmp_signed("<", j, nvec), j_body, done)

    def step(j, half):
        """Output block j of the nr rows; its taps in full vectors, the multiply-adds and the
        store in half ones when ``half``. Returns the blocks the next step carries."""
        first = b.mul(j, c64(lanes))
        taps = [[None] * k for _ in range(nin)]  # taps[row][kx]: the vector of that tap
        new = None
        width = lanes // 2 if half else lanes

        def store(accs):
            omask = vec.mask(b.sub(ow_v, first), width)
            for r in range(nr):
                orow = b.add(obase_v, b.mul(b.add(oy_v, c64(r)), ow_v))
                vec.store(accs[r], vec.ptr(aty[8], out_v, b.add(orow, first)), omask)

        if mode == "stream":
            # input rows outermost: each row's k shifted runs are made, used by the output rows
            # it reaches and dropped (all the rows' runs at once would spill), the weights
            # broadcast where used; per output row the taps still add in (ky, kx) order.
            # Stride 1: each run is a masked load. Stride 2: three loads per row cover the
            # columns of a block's taps; their even and odd columns are taps 0 and 1, and
            # shifted by q lanes (the third vector's columns shifting in), taps 2q and 2q + 1.
            if st == 1:
                starts = [b.add(first, c64(kx - k // 2)) for kx in range(k)]
            else:
                col0 = b.sub(b.mul(first, c64(2)), c64(k // 2))
                starts = [b.add(col0, c64(i * lanes)) for i in range(3)]
            masks = [(start, span_mask(start)) for start in starts]

            def runs(r):
                loaded = [vec.load(b.gep(r, [start]), mask=m) for start, m in masks]
                if st == 1:
                    return loaded
                lo, hi, nxt = loaded
                halves = [(vec.shuffle(lo, hi, evens), vec.shuffle(nxt, nxt, evens)),
                          (vec.shuffle(lo, hi, odds), vec.shuffle(nxt, nxt, odds))]
                out = []
                for kx in range(k):
                    base, more = halves[kx % 2]
                    out.append(base if kx < 2 else vec.align(base, more, kx // 2))
                return out

            accs = [vec.low(bvec, width) if half else bvec] * nr
            for i, r in enumerate(rows):
                run = [vec.low(v, width) if half else v for v in runs(r)]
                for o in range(nr):
                    ky = i - o * st
                    if not 0 <= ky < k:
                        continue
                    for kx in range(k):
                        wv = vec.splat(b.load(vec.ptr(aty[5], p.w_arr, b.add(p.wbase,
                                                                               c64(ky * k + kx)))))
                        accs[o] = vec.fma(run[kx], vec.low(wv, width) if half else wv, accs[o])
            store(accs)
            return None
        if mode == "loads":
            for kx in range(k):
                start = b.add(first, c64(kx - k // 2))
                m = span_mask(start)
                for i, r in enumerate(rows):
                    taps[i][kx] = vec.load(b.gep(r, [start]), mask=m)
        elif mode == "shifts":
            nxt = [block(r, b.add(first, c64(lanes))) for r in rows]
            for i in range(nin):
                prev, cur = carried[i]
                taps[i] = [vec.align(prev, cur, lanes - 1), cur, vec.align(cur, nxt[i], 1)]
            new = [(carried[i][1], nxt[i]) for i in range(nin)]
        else:
            first2 = b.mul(j, c64(2 * lanes))
            pairs = [(block(r, first2), block(r, b.add(first2, c64(lanes)))) for r in rows]
            new = []
            for i, (lo, hi) in enumerate(pairs):
                ev = vec.shuffle(lo, hi, evens)
                od = vec.shuffle(lo, hi, odds)
                new.append((od,))
                taps[i] = [vec.align(carried[i][0], od, lanes - 1), ev, od]
        ws, bs = wvec, bvec
        if half:
            taps = [[vec.low(t, width) for t in row] for row in taps]
            ws, bs = [vec.low(t, width) for t in wvec], vec.low(bvec, width)
        # taps outermost: the nr rows' multiply-add chains interleave, so the out-of-order core
        # always has independent FMAs to issue (row by row, the 9-deep chains filled its queues)
        accs = [bs] * nr
        for ky in range(k):
            for kx in range(k):
                for r in range(nr):
                    accs[r] = vec.fma(taps[r * st + ky][kx], ws[ky * k + kx], accs[r])
        store(accs)
        return new

    b.position_at_end(j_body)
    new = step(j, False)
    j.add_incoming(b.add(j, c64(1)), j_body)
    if mode in ("shifts", "pairs"):
        for i in range(nin):
            for c, v in zip(carried[i], new[i]):
                c.add_incoming(v, j_body)
    b.branch(j_hdr)
    b.position_at_end(done)
    # a last block of at most half a vector of outputs: FMAs of half width (Zen 4 issues two of
    # those per cycle, one of full width)
    tail = fn.append_basic_block("dw_tail")
    end = fn.append_basic_block("dw_end")
    b.cbranch(half_tail, tail, end)
    b.position_at_end(tail)
    step(j, True)
    b.branch(end)
    b.position_at_end(end)


@intrinsic
def _rows(typingctx, x, xbase, h, wd, zrow, w, wbase, bias, out, obase, ow, oy, pt, k, st,
          nr):
    """Output rows ``oy .. oy + nr - 1`` of one plane: ``out[obase + r*ow + ox] = bias +
    sum_{ky,kx} w[wbase + ky*k + kx] * x[xbase + iy*wd + ix]`` for ``ox < ow``, with
    ``iy = r*st - pt + ky`` and ``ix = ox*st - k//2 + kx``; reads outside ``[0, h) x [0, wd)``
    are zeros (rows outside come from ``zrow``, a zero row of at least ``wd`` + 2 vectors).
    ``(k, st, nr)`` must be one of :data:`VARIANTS`: a switch on them picks the compiled
    copy."""
    sig = types.void(x, xbase, h, wd, zrow, w, wbase, bias, out, obase, ow, oy, pt, k, st, nr)

    def codegen(context, builder, signature, args):
        switch(builder, args[13:16], VARIANTS, "dw_rows",
                lambda kk, ss, rr: _emit_rows(context, builder, signature.args, args, kk, ss,
                                              rr))
        return context.get_dummy_value()

    return sig, codegen


def _emit_strips(context, builder, aty, args, st, nstrips):
    """IR of output rows ``[oy0, oy1)`` of the vertical strips ``j .. j + nstrips - 1`` (one
    vector of outputs wide each) of one plane, 3x3, stride ``st`` (see :func:`_strips`)."""
    p = _PlaneIR(context, builder, aty, args, 3)
    vec, b, c64, wvec, bvec, rowptr = p.vec, builder, p.c64, p.w, p.bias, p.row
    i64, lanes = vec.i64, vec.lanes
    fzero = ir.Constant(vec.fty, 0.0)
    wd_v, ow_v, obase_v, out_v = p.wd, p.ow, p.obase, p.out
    j_v, oy0_v, oy1_v, pt_v = (vec.as64(v) for v in args[11:15])
    strips = []
    for s in range(nstrips):
        js = b.add(j_v, c64(s))
        first = b.mul(js, c64(st * lanes))     # the strip's first input column
        m_lo = vec.mask(b.sub(wd_v, first), lanes)
        m_hi = vec.mask(b.sub(wd_v, b.add(first, c64(lanes))), lanes)
        firsto = b.mul(js, c64(lanes))
        om = vec.mask(b.sub(ow_v, firsto), lanes)
        # the input columns left and (stride 1) right of the strip, zero outside the row
        left = b.icmp_signed(">", js, c64(0))
        lidx = b.select(left, b.sub(first, c64(1)), c64(0))
        right = b.icmp_signed("<", b.add(first, c64(lanes)), wd_v)
        ridx = b.select(right, b.add(first, c64(lanes)), c64(0))
        strips.append((first, m_lo, m_hi, firsto, om, left, lidx, right, ridx))

    def taps(rp, strip):
        first, m_lo, m_hi, _, _, left, lidx, right, ridx = strip
        lx = vec.splat(b.select(left, b.load(b.gep(rp, [lidx])), fzero))
        cur = vec.load(b.gep(rp, [first]), mask=m_lo)
        if st == 1:
            rx = vec.splat(b.select(right, b.load(b.gep(rp, [ridx])), fzero))
            return [vec.align(lx, cur, lanes - 1), cur, vec.align(cur, rx, 1)]
        hi = vec.load(b.gep(rp, [b.add(first, c64(lanes))]), mask=m_hi)
        ev = vec.shuffle(cur, hi, list(range(0, 2 * lanes, 2)))
        od = vec.shuffle(cur, hi, list(range(1, 2 * lanes, 2)))
        return [vec.align(lx, od, lanes - 1), ev, od]

    # an output row shares 3 - st input rows with the previous one: their taps carry over
    ncar = 3 - st
    fn = b.function
    top = b.sub(b.mul(oy0_v, c64(st)), pt_v)
    half_ws = [vec.low(v, lanes // 2) for v in wvec]
    half_b = vec.low(bvec, lanes // 2)

    def walk(half):
        """The loop down the rows; with ``half``, the last strip holds at most half a vector
        of outputs and its multiply-adds are of half width (two per cycle on Zen 4, one of
        full width)."""
        pre = b.block
        hdr = fn.append_basic_block("st_hdr")
        body = fn.append_basic_block("st_body")
        done = fn.append_basic_block("st_done")
        init = [[taps(rowptr(b.add(top, c64(i))), strip) for i in range(ncar)]
                for strip in strips]
        b.branch(hdr)
        b.position_at_end(hdr)
        oy = b.phi(i64)
        oy.add_incoming(oy0_v, pre)
        car = [[[b.phi(vec.vty) for _ in range(3)] for _ in range(ncar)]
               for _ in range(nstrips)]
        for s in range(nstrips):
            for i in range(ncar):
                for t in range(3):
                    car[s][i][t].add_incoming(init[s][i][t], pre)
        b.cbranch(b.icmp_signed("<", oy, oy1_v), body, done)
        b.position_at_end(body)
        iy0 = b.sub(b.mul(oy, c64(st)), pt_v)
        newrows = [rowptr(b.add(iy0, c64(i))) for i in range(ncar, 3)]
        nxt = []
        for s, strip in enumerate(strips):
            rows3 = [list(t) for t in car[s]] + [taps(r, strip) for r in newrows]
            nxt.append(rows3[st:])
            ws, acc, om = wvec, bvec, strip[4]
            if half and s == nstrips - 1:
                rows3 = [[vec.low(t, lanes // 2) for t in r] for r in rows3]
                ws, acc = half_ws, half_b
                om = vec.mask(b.sub(ow_v, strip[3]), lanes // 2)
            for ky in range(3):
                for kx in range(3):
                    acc = vec.fma(rows3[ky][kx], ws[ky * 3 + kx], acc)
            orow = b.add(obase_v, b.mul(oy, ow_v))
            vec.store(acc, vec.ptr(aty[8], out_v, b.add(orow, strip[3])), om)
        oy.add_incoming(b.add(oy, c64(1)), body)
        for s in range(nstrips):
            for i in range(ncar):
                for t in range(3):
                    car[s][i][t].add_incoming(nxt[s][i][t], body)
        b.branch(hdr)
        b.position_at_end(done)

    with b.if_else(b.icmp_signed("<=", b.sub(ow_v, strips[-1][3]), c64(lanes // 2))) as (
            then, otherwise):
        with then:
            walk(True)
        with otherwise:
            walk(False)


@intrinsic
def _strips(typingctx, x, xbase, h, wd, zrow, w, wbase, bias, out, obase, ow, j, oy0, oy1, pt,
            st, ns):
    """Output rows ``[oy0, oy1)`` of one plane of a 3x3 convolution with stride ``st``,
    restricted to the ``ns`` vectors of outputs from vector ``j`` on, walking down the rows
    (same arguments and result as :func:`_rows`); ``(st, ns)`` must be one of
    :data:`STRIP_VARIANTS`. Each step reads the input rows its output row does not share with
    the previous one (stride 2: splits them into even and odd columns); the shared rows' taps
    are the previous step's; the lane shifts take the columns beside the strip from scalar
    loads (zero outside the row)."""
    sig = types.void(x, xbase, h, wd, zrow, w, wbase, bias, out, obase, ow, j, oy0, oy1, pt, st,
                     ns)

    def codegen(context, builder, signature, args):
        switch(builder, args[15:17], STRIP_VARIANTS, "dw_strips",
                lambda st, n: _emit_strips(context, builder, signature.args, args, st, n))
        return context.get_dummy_value()

    return sig, codegen


@kernel
def _plane(xf, xbase, h, wd, zrow, wf, wbase, bias, of, obase, ow, oy0, oy1, pt, k, st, nr):
    """Rows ``[oy0, oy1)`` of one output plane: down vertical strips (3x3, narrow rows) or
    ``nr`` at a time (they share input rows)."""
    nvec = -(-ow // (_VBYTES // xf.itemsize))
    if k == 3 and nvec <= STRIPS[st]:
        _strips(xf, xbase, h, wd, zrow, wf, wbase, bias, of, obase, ow, 0, oy0, oy1, pt, st,
                nvec)
        return
    oy = oy0
    while oy < oy1:
        r = nr if oy + nr <= oy1 else 1
        _rows(xf, xbase, h, wd, zrow, wf, wbase, bias, of, obase, ow, oy, pt, k, st, r)
        oy += r


@parallel_kernel
def _driver(x4, w4, b_o, out4, prm, nthreads):
    # one contiguous run of the (image, output channel, output row) rows per thread; the 4-d
    # arrays are flattened here, where views cost nothing (in Python, 0.5 us a call)
    xf_o = x4.reshape(x4.size)
    wf_o = w4.reshape(w4.size)
    of_o = out4.reshape(out4.size)
    c, h, wd, m, oh, ow = prm[_C], prm[_H], prm[_W], prm[_M], prm[_OH], prm[_OW]
    k, st, pt, nr = prm[_K], prm[_ST], prm[_PT], prm[_NR]
    nrows = (of_o.size // (oh * ow)) * oh
    for t in prange(nthreads):
        xf = _unowned(xf_o)
        wf = _unowned(wf_o)
        b = _unowned(b_o)
        of = _unowned(of_o)
        zrow = np.zeros(wd + 64, dtype=xf.dtype)
        lo = t * nrows // nthreads
        hi = (t + 1) * nrows // nthreads
        r = lo
        while r < hi:
            plane = r // oh
            oy0 = r - plane * oh
            oy1 = min(oh, oy0 + hi - r)
            co = plane % (c * m)
            n = plane // (c * m)
            _plane(xf, (n * c + co // m) * h * wd, h, wd, zrow, wf, co * k * k, b[co], of,
                   plane * oh * ow, ow, oy0, oy1, pt, k, st, nr)
            r += oy1 - oy0


def conv2d_depthwise_rows(x, w, b, out, stride, pad_top):
    """Depthwise convolution into ``out`` for the geometries of :func:`supports`.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    w : ndarray, shape (C * m, 1, k, k)
    b : ndarray, shape (C * m,)
    out : ndarray, shape (N, C * m, OH, OW)
        All C-contiguous, one dtype (float32 or float64); ``out`` is written completely.
    stride, pad_top : int
        Stride (both directions) and top padding; the left padding is ``k // 2``, ``OH`` and
        ``OW`` imply the bottom and right padding.

    Notes
    -----
    ``out[n, co, oy, ox] = b[co] + sum_{ky, kx} w[co, 0, ky, kx] *
    x[n, co // m, oy*stride - pad_top + ky, ox*stride - k//2 + kx]`` (zeros outside ``x``),
    summed in that order.
    """
    if out.size == 0:
        return
    key = (x.shape, w.shape, out.shape, stride, pad_top)
    prm = _params.get(key)
    if prm is None:
        n, c, h, wd = x.shape
        cout, _, k, _ = w.shape
        oh, ow = out.shape[2], out.shape[3]
        prm = np.array([c, h, wd, cout // c, oh, ow, k, stride, pad_top, ROWS[k, stride]],
                       dtype=np.int64)
        if len(_params) >= 256:
            _params.clear()
        _params[key] = prm
    nrows = out.shape[0] * out.shape[1] * out.shape[2]
    _driver(x, w, b, out, prm, max(1, min(_threads.numba_count(), nrows)))


_params = {}  # per-shape parameter arrays (building one costs about a microsecond a call)
