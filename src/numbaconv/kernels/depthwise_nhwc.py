"""Depthwise convolution on channels-last (N, H, W, C) arrays, vectorised across channels.

``out[n, oy, ox, c] = bias[c] + sum_{ky, kx} x[n, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw, c] *
w[ky, kx, c]`` (one input channel per output channel, taps outside the image skipped): bias
first, then one fused multiply-add per tap in ascending ``(ky, kx)`` order, the reference's
order, so integer-valued data gives the reference's bits. In channels-last memory the channels
of a pixel are contiguous, so the innermost loop over channels is a plain vector loop: no
padding copy, no phase split, any stride and dilation.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbaconv._jit import parallel_kernel
from numbaconv.kernels.ir_vectors import Vectors


@intrinsic
def _pixel(typingctx, out, o, x, xbase, w, taps, ntaps, c, bias):
    """``out[o + i] = bias[i] + sum_t x[xbase + taps[2t] + i] * w[taps[2t+1] + i]`` for
    ``i < c``, taps
    ascending: per vector of channels the sum stays in a register across the taps (a sum kept
    in memory would wait on a store-to-load round trip at every tap)."""
    sig = types.void(out, o, x, xbase, w, taps, ntaps, c, bias)

    def codegen(context, builder, signature, args):
        out_v, o_v, x_v, xb_v, w_v, taps_v, nt_v, c_v, bias_v = args
        aty = signature.args
        e = Vectors(context, builder, aty[0])
        i64 = e.i64
        L = e.lanes
        pout, px = e.ptr(aty[0], out_v, o_v), e.ptr(aty[2], x_v, xb_v)
        pw, pb, pt = e.ptr(aty[4], w_v, 0), e.ptr(aty[8], bias_v, 0), e.ptr(aty[5], taps_v, 0)
        tty = context.get_value_type(aty[5].dtype)
        nt, c = e.as64(nt_v), e.as64(c_v)
        nblk = builder.sdiv(builder.add(c, ir.Constant(i64, L - 1)), ir.Constant(i64, L))
        entry = builder.block
        blk = builder.append_basic_block("px.block")
        tap = builder.append_basic_block("px.tap")
        store = builder.append_basic_block("px.store")
        done = builder.append_basic_block("px.done")
        builder.cbranch(builder.icmp_signed(">", nblk, ir.Constant(i64, 0)), blk, done)

        # per vector of channels: start at the bias, one FMA per tap, store
        builder.position_at_end(blk)
        j = builder.phi(i64)
        j.add_incoming(ir.Constant(i64, 0), entry)
        off = builder.mul(j, ir.Constant(i64, L))
        mask = e.mask(builder.sub(c, off), L)
        start = e.load(builder.gep(pb, [off]), mask)
        builder.cbranch(builder.icmp_signed(">", nt, ir.Constant(i64, 0)), tap, store)

        builder.position_at_end(tap)
        t = builder.phi(i64)
        t.add_incoming(ir.Constant(i64, 0), blk)
        acc = builder.phi(e.vty)
        acc.add_incoming(start, blk)
        two_t = builder.mul(t, ir.Constant(i64, 2))
        xo = e.as64(builder.load(builder.gep(pt, [two_t]), typ=tty))
        wo = e.as64(builder.load(builder.gep(pt, [builder.add(two_t, ir.Constant(i64, 1))]),
                                 typ=tty))
        new = e.fma(e.load(builder.gep(px, [builder.add(xo, off)]), mask),
                    e.load(builder.gep(pw, [builder.add(wo, off)]), mask), acc)
        tn = builder.add(t, ir.Constant(i64, 1))
        t.add_incoming(tn, tap)
        acc.add_incoming(new, tap)
        builder.cbranch(builder.icmp_signed("<", tn, nt), tap, store)

        builder.position_at_end(store)
        res = builder.phi(e.vty)
        res.add_incoming(start, blk)
        res.add_incoming(new, tap)
        e.store(res, builder.gep(pout, [off]), mask)
        jn = builder.add(j, ir.Constant(i64, 1))
        j.add_incoming(jn, store)
        builder.cbranch(builder.icmp_signed("<", jn, nblk), blk, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def _depthwise_nhwc(x, w, bias, out, sh, sw, pt, pl, dh, dw):
    n_img, h, wd, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    kh, kw = w.shape[0], w.shape[1]
    xf, wf, of = x.reshape(-1), w.reshape(-1), out.reshape(-1)
    for task in prange(n_img * oh):
        n = task // oh
        oy = task - n * oh
        taps = np.empty(2 * kh * kw, dtype=np.int64)
        inner = np.empty(2 * kh * kw, dtype=np.int64)   # taps of pixels away from the sides
        ni = 0
        for ky in range(kh):
            iy = oy * sh - pt + ky * dh
            if 0 <= iy < h:
                for kx in range(kw):
                    inner[2 * ni] = ((n * h + iy) * wd + kx * dw) * c
                    inner[2 * ni + 1] = (ky * kw + kx) * c
                    ni += 1
        for ox in range(ow):
            ix0 = ox * sw - pl
            if ix0 >= 0 and ix0 + (kw - 1) * dw < wd:
                _pixel(of, ((n * oh + oy) * ow + ox) * c, xf, ix0 * c, wf, inner, ni, c, bias)
                continue
            nt = 0
            for ky in range(kh):
                iy = oy * sh - pt + ky * dh
                if iy < 0 or iy >= h:
                    continue
                for kx in range(kw):
                    ix = ox * sw - pl + kx * dw
                    if ix < 0 or ix >= wd:
                        continue
                    taps[2 * nt] = ((n * h + iy) * wd + ix) * c
                    taps[2 * nt + 1] = (ky * kw + kx) * c
                    nt += 1
            _pixel(of, ((n * oh + oy) * ow + ox) * c, xf, 0, wf, taps, nt, c, bias)


def conv2d_depthwise_nhwc(x, w, bias, out, sh, sw, pt, pl, dh, dw):
    """``out`` (N, OH, OW, C) = the depthwise convolution of ``x`` (N, H, W, C) with ``w``
    (kH, kW, C) and ``bias`` (C,): channel multiplier 1, any stride, top/left padding and
    dilation (the output shape fixes the bottom/right padding). C-contiguous arrays of one float
    dtype; writes every element of ``out``."""
    if out.size:
        _depthwise_nhwc(x, w, bias, out, sh, sw, pt, pl, dh, dw)
    return out


def weight_as_taps(w_torch):
    """Depthwise torch weights (C, 1, kH, kW) as the kernel's (kH, kW, C), contiguous."""
    return np.ascontiguousarray(w_torch[:, 0].transpose(1, 2, 0))
