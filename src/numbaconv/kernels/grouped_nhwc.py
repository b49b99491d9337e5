"""Grouped and depthwise convolution with few channels per group on channels-last (N, H, W, C)
arrays.

``out[n, oy, ox, g*og + o] = bias[g*og + o] + sum_{ky, kx, i} x[n, oy*sh - pt + ky*dh,
ox*sw - pl + kx*dw, g*cg + i] * w[ky, kx, i, g*og + o]`` with ``cg`` input and ``og`` output
channels per group (TensorFlow's HWIO weights; taps outside the image skipped): bias first, then
one fused multiply-add per ``(ky, kx, i)`` in ascending order, the reference's order, so
integer-valued data gives the reference's bits.

A vector of output channels covers whole groups (``og`` divides the lanes) and reads a
contiguous run of input channels, ``lanes * cg / og`` of them (``cg <= og``). For input channel
``i`` of every group, a shuffle spreads each group's value over that group's output lanes, and
one multiply-add with the weight vector ``w[ky, kx, i, :]`` serves all of them. That covers
depthwise convolution (``cg == og == 1``: the shuffle is the identity and vanishes), with a
channel multiplier (``cg == 1``, ``og`` of 2 to 16) and ResNeXt-style groups (``cg == og``, 2 to
16 channels), which would otherwise leave most of an implicit GEMM's register tile idle. No
padding copy, no phase split, any stride and dilation. Interior pixels of a row go four at a
time, so that each weight vector loaded serves four multiply-adds (measured on the depthwise
layers, float32, 2 threads, GFLOP/s, one pixel / four / six / eight at a time: MobileNetV2 C144
56: 37 / 60 / 49 / 60; C96 112 stride 2: 34 / 51 / 39 / 47; C576 14: 27 / 38 / 31 / 38).
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbaconv import _threads
from numbaconv._jit import parallel_kernel, vector_bytes
from numbaconv.kernels.ir_vectors import Vectors

#: ``(cg, og)`` pairs the kernel computes (for float32; float64 vectors hold half the lanes).
SHAPES = tuple((c, c) for c in (1, 2, 4, 8, 16)) + tuple((1, m) for m in (2, 4, 8, 16))
_RUN = 4
_VBYTES = vector_bytes()


def supports(cg, og, itemsize):
    """Whether the kernel computes groups of ``cg`` input and ``og`` output channels."""
    return (cg, og) in SHAPES and og <= _VBYTES // itemsize


def _emit(e, builder, cg, og, npix, a, done):
    """The loops over channel vectors and taps for one ``(cg, og)``; ``a`` holds the pointers and
    counts; branches to ``done`` at the end."""
    i64 = e.i64
    L = e.lanes
    first = builder.block
    blk = builder.append_basic_block("g.block")
    tap = builder.append_basic_block("g.tap")
    store = builder.append_basic_block("g.store")
    nxt = builder.append_basic_block("g.next")
    builder.cbranch(builder.icmp_signed(">", a["nblk"], ir.Constant(i64, 0)), blk, done)

    builder.position_at_end(blk)
    j = builder.phi(i64)
    j.add_incoming(ir.Constant(i64, 0), first)
    off = builder.mul(j, ir.Constant(i64, L))
    left = builder.sub(a["c"], off)
    mask = e.mask(left, L)
    in_off = builder.mul(builder.sdiv(off, ir.Constant(i64, og)), ir.Constant(i64, cg))
    # input channels of the groups this vector holds (whole groups: og divides L and c)
    in_count = builder.mul(builder.sdiv(left, ir.Constant(i64, og)), ir.Constant(i64, cg))
    in_mask = e.mask(in_count, L)
    start = e.load(builder.gep(a["pb"], [off]), mask)
    builder.cbranch(builder.icmp_signed(">", a["nt"], ir.Constant(i64, 0)), tap, store)

    builder.position_at_end(tap)
    t = builder.phi(i64)
    t.add_incoming(ir.Constant(i64, 0), blk)
    accs = []
    for _ in range(npix):
        acc = builder.phi(e.vty)
        acc.add_incoming(start, blk)
        accs.append(acc)
    two_t = builder.mul(t, ir.Constant(i64, 2))
    xo = e.as64(builder.load(builder.gep(a["pt"], [two_t]), typ=a["tty"]))
    wo = e.as64(builder.load(builder.gep(a["pt"], [builder.add(two_t, ir.Constant(i64, 1))]),
                             typ=a["tty"]))
    xs = [e.load(builder.gep(a["px"], [builder.add(builder.add(xo, in_off),
                                                    builder.mul(a["xs"], ir.Constant(i64, p)))]),
                 in_mask) for p in range(npix)]
    news = list(accs)
    for i in range(cg):
        wv = e.load(builder.gep(a["pw"], [builder.add(builder.add(wo, off),
                                                      builder.mul(a["c"], ir.Constant(i64, i)))]),
                    mask)
        spread = [(lane // og) * cg + i for lane in range(L)]
        news = [e.fma(e.shuffle(xv, xv, spread), wv, acc) for xv, acc in zip(xs, news)]
    tn = builder.add(t, ir.Constant(i64, 1))
    t.add_incoming(tn, builder.block)
    for acc, new in zip(accs, news):
        acc.add_incoming(new, builder.block)
    tap_end = builder.block
    builder.cbranch(builder.icmp_signed("<", tn, a["nt"]), tap, store)

    builder.position_at_end(store)
    results = []
    for p in range(npix):          # the phi nodes first: LLVM wants them at the top
        res = builder.phi(e.vty)
        res.add_incoming(start, blk)
        res.add_incoming(news[p], tap_end)
        results.append(res)
    for p, res in enumerate(results):
        e.store(res, builder.gep(a["pout"], [builder.add(off, builder.mul(a["c"],
                                                                          ir.Constant(i64, p)))]),
                mask)
    builder.branch(nxt)
    builder.position_at_end(nxt)
    jn = builder.add(j, ir.Constant(i64, 1))
    j.add_incoming(jn, nxt)
    builder.cbranch(builder.icmp_signed("<", jn, a["nblk"]), blk, done)


def _make_pixels(npix):
    @intrinsic
    def pixels(typingctx, out, o, x, xbase, xstep, w, taps, ntaps, c, bias, cg, og):
        """For pixels ``p < npix``: ``out[o + p*c + co] = bias[co] + sum_t sum_i x[xbase +
        p*xstep + taps[2t] + (co // og)*cg + i] * w[taps[2t+1] + i*c + co]``, ``co < c``."""
        sig = types.void(out, o, x, xbase, xstep, w, taps, ntaps, c, bias, cg, og)

        def codegen(context, builder, signature, args):
            out_v, o_v, x_v, xb_v, xs_v, w_v, taps_v, nt_v, c_v, bias_v, cg_v, og_v = args
            aty = signature.args
            e = Vectors(context, builder, aty[0])
            i64 = e.i64
            L = e.lanes
            c = e.as64(c_v)
            a = dict(pout=e.ptr(aty[0], out_v, o_v), px=e.ptr(aty[2], x_v, xb_v),
                     xs=e.as64(xs_v), pw=e.ptr(aty[5], w_v, 0), pt=e.ptr(aty[6], taps_v, 0),
                     tty=context.get_value_type(aty[6].dtype), nt=e.as64(nt_v), c=c,
                     pb=e.ptr(aty[9], bias_v, 0),
                     nblk=builder.sdiv(builder.add(c, ir.Constant(i64, L - 1)),
                                       ir.Constant(i64, L)))
            key = builder.add(builder.mul(e.as64(cg_v), ir.Constant(i64, 64)), e.as64(og_v))
            done = builder.append_basic_block("g.done")
            switch = builder.switch(key, done)
            for cg, og in SHAPES:
                if og > L:
                    continue
                case = builder.append_basic_block(f"g.case{cg}_{og}")
                switch.add_case(ir.Constant(i64, cg * 64 + og), case)
                builder.position_at_end(case)
                _emit(e, builder, cg, og, npix, a, done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return pixels


_pixel = _make_pixels(1)
_pixel_run = _make_pixels(_RUN)


@parallel_kernel
def _grouped_nhwc(x, w, bias, out, sh, sw, pt, pl, dh, dw, cg, og, nruns):
    n_img, h, wd, cin = x.shape
    oh, ow, cout = out.shape[1], out.shape[2], out.shape[3]
    kh, kw = w.shape[0], w.shape[1]
    xf, wf, of = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    wtap = cg * cout
    # one contiguous run of output rows per thread: the tap lists are allocated once per run
    # (an allocation per row takes the allocator's lock, a cache line both cores fight over)
    for run in prange(nruns):
        taps = np.empty(2 * kh * kw, dtype=np.int64)
        inner = np.empty(2 * kh * kw, dtype=np.int64)   # taps of pixels away from the sides
        for task in range(run * n_img * oh // nruns, (run + 1) * n_img * oh // nruns):
            n = task // oh
            oy = task - n * oh
            ni = 0
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                if 0 <= iy < h:
                    for kx in range(kw):
                        inner[2 * ni] = ((n * h + iy) * wd + kx * dw) * cin
                        inner[2 * ni + 1] = (ky * kw + kx) * wtap
                        ni += 1
            ox = 0
            while ox < ow:
                ix0 = ox * sw - pl
                o = ((n * oh + oy) * ow + ox) * cout
                if ox + _RUN <= ow and ix0 >= 0 and ix0 + (_RUN - 1) * sw + (kw - 1) * dw < wd:
                    _pixel_run(of, o, xf, ix0 * cin, sw * cin, wf, inner, ni, cout, bias, cg, og)
                    ox += _RUN
                    continue
                ox += 1
                if ix0 >= 0 and ix0 + (kw - 1) * dw < wd:
                    _pixel(of, o, xf, ix0 * cin, 0, wf, inner, ni, cout, bias, cg, og)
                    continue
                nt = 0
                for ky in range(kh):
                    iy = oy * sh - pt + ky * dh
                    if iy < 0 or iy >= h:
                        continue
                    for kx in range(kw):
                        ix = ix0 + kx * dw
                        if ix < 0 or ix >= wd:
                            continue
                        taps[2 * nt] = ((n * h + iy) * wd + ix) * cin
                        taps[2 * nt + 1] = (ky * kw + kx) * wtap
                        nt += 1
                _pixel(of, o, xf, 0, 0, wf, taps, nt, cout, bias, cg, og)


def conv2d_grouped_nhwc(x, w, bias, out, sh, sw, pt, pl, dh, dw):
    """``out`` (N, OH, OW, C_out) = the grouped convolution of ``x`` (N, H, W, C_in) with ``w``
    (kH, kW, cg, C_out) (HWIO) and ``bias`` (C_out,), ``G = C_in / cg`` groups, ``(cg, og)`` one
    of :data:`SHAPES`; any stride, top/left padding and dilation (the output shape fixes the
    bottom/right padding). C-contiguous arrays of one float dtype; writes every element of
    ``out``."""
    cg, og = w.shape[2], out.shape[3] // (x.shape[3] // w.shape[2])
    if not supports(cg, og, x.itemsize):
        raise ValueError(f"groups of {cg} input and {og} output channels are not supported")
    if out.size:
        _grouped_nhwc(x, w, bias, out, sh, sw, pt, pl, dh, dw, cg, og,
                      max(1, min(out.shape[0] * out.shape[1], _threads.numba_count())))
    return out
