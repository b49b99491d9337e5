"""Depthwise convolution on channels-last (N, H, W, C) arrays, vectorised across channels.

``out[n, oy, ox, c] = bias[c] + sum_{ky, kx} x[n, oy*sh - pt + ky*dh, ox*sw - pl + kx*dw, c] *
w[ky, kx, c]`` (one input channel per output channel, taps outside the image skipped): bias
first, then one fused multiply-add per tap in ascending ``(ky, kx)`` order, the reference's
order, so integer-valued data gives the reference's bits. In channels-last memory the channels
of a pixel are contiguous, so the innermost loop over channels is a plain vector loop: no
padding copy, no phase split, any stride and dilation. Interior pixels of a row go four at a
time, so that each weight vector loaded serves four multiply-adds.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbaconv._jit import parallel_kernel
from numbaconv.kernels.ir_vectors import Vectors


def _make_pixels(npix):
    """The intrinsic for ``npix`` pixels at a time (a compile-time count; see its docstring)."""

    @intrinsic
    def pixels(typingctx, out, o, x, xbase, xstep, w, taps, ntaps, c, bias):
        """For pixels ``p < npix``: ``out[o + p*c + i] = bias[i] + sum_t x[xbase + p*xstep +
        taps[2t] + i] * w[taps[2t+1] + i]`` for ``i < c``, taps ascending. Per vector of
        channels the sums stay in registers across the taps (a sum kept in memory would wait on
        a store-to-load round trip at every tap), and each weight vector loaded serves all
        ``npix`` pixels (with one pixel, loads were two per multiply-add: the load ports, not
        the FMA units, set the pace)."""
        sig = types.void(out, o, x, xbase, xstep, w, taps, ntaps, c, bias)

        def codegen(context, builder, signature, args):
            out_v, o_v, x_v, xb_v, xs_v, w_v, taps_v, nt_v, c_v, bias_v = args
            aty = signature.args
            e = Vectors(context, builder, aty[0])
            i64 = e.i64
            L = e.lanes
            pout, px = e.ptr(aty[0], out_v, o_v), e.ptr(aty[2], x_v, xb_v)
            pw, pb = e.ptr(aty[5], w_v, 0), e.ptr(aty[9], bias_v, 0)
            pt = e.ptr(aty[6], taps_v, 0)
            tty = context.get_value_type(aty[6].dtype)
            nt, c, xs = e.as64(nt_v), e.as64(c_v), e.as64(xs_v)
            nblk = builder.sdiv(builder.add(c, ir.Constant(i64, L - 1)), ir.Constant(i64, L))
            entry = builder.block
            blk = builder.append_basic_block("px.block")
            tap = builder.append_basic_block("px.tap")
            store = builder.append_basic_block("px.store")
            done = builder.append_basic_block("px.done")
            builder.cbranch(builder.icmp_signed(">", nblk, ir.Constant(i64, 0)), blk, done)

            # per vector of channels: start at the bias, one FMA per tap and pixel, store
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
            accs = []
            for _ in range(npix):
                acc = builder.phi(e.vty)
                acc.add_incoming(start, blk)
                accs.append(acc)
            two_t = builder.mul(t, ir.Constant(i64, 2))
            xo = e.as64(builder.load(builder.gep(pt, [two_t]), typ=tty))
            wo = e.as64(builder.load(builder.gep(pt, [builder.add(two_t, ir.Constant(i64, 1))]),
                                     typ=tty))
            wv = e.load(builder.gep(pw, [builder.add(wo, off)]), mask)
            news = []
            for p in range(npix):
                xp = builder.add(builder.add(xo, off), builder.mul(xs, ir.Constant(i64, p)))
                news.append(e.fma(e.load(builder.gep(px, [xp]), mask), wv, accs[p]))
            tn = builder.add(t, ir.Constant(i64, 1))
            t.add_incoming(tn, tap)
            for acc, new in zip(accs, news):
                acc.add_incoming(new, tap)
            builder.cbranch(builder.icmp_signed("<", tn, nt), tap, store)

            builder.position_at_end(store)
            results = []
            for p in range(npix):        # the phi nodes first: LLVM wants them at the top
                res = builder.phi(e.vty)
                res.add_incoming(start, blk)
                res.add_incoming(news[p], tap)
                results.append(res)
            for p, res in enumerate(results):
                dst = builder.add(off, builder.mul(c, ir.Constant(i64, p)))
                e.store(res, builder.gep(pout, [dst]), mask)
            jn = builder.add(j, ir.Constant(i64, 1))
            j.add_incoming(jn, store)
            builder.cbranch(builder.icmp_signed("<", jn, nblk), blk, done)
            builder.position_at_end(done)
            return context.get_dummy_value()

        return sig, codegen

    return pixels


# Interior pixels of a row computed together. Measured float32, 2 threads, GFLOP/s for MobileNetV2
# C144 56 / C96 112 stride 2 / C576 14 / C32 112: 1 pixel 37/34/27/38, 4 pixels 60/51/38/71,
# 6 pixels 49/39/31/50, 8 pixels 60/47/38/64.
_RUN = 4
_pixel = _make_pixels(1)
_pixel_run = _make_pixels(_RUN)


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
        ox = 0
        while ox < ow:
            ix0 = ox * sw - pl
            if ox + _RUN <= ow and ix0 >= 0 and ix0 + (_RUN - 1) * sw + (kw - 1) * dw < wd:
                _pixel_run(of, ((n * oh + oy) * ow + ox) * c, xf, ix0 * c, sw * c, wf, inner, ni,
                           c, bias)
                ox += _RUN
                continue
            ox += 1
            if ix0 >= 0 and ix0 + (kw - 1) * dw < wd:
                _pixel(of, ((n * oh + oy) * ow + ox - 1) * c, xf, ix0 * c, 0, wf, inner, ni, c,
                       bias)
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
                    taps[2 * nt] = ((n * h + iy) * wd + ix) * c
                    taps[2 * nt + 1] = (ky * kw + kx) * c
                    nt += 1
            _pixel(of, ((n * oh + oy) * ow + ox - 1) * c, xf, 0, 0, wf, taps, nt, c, bias)


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
