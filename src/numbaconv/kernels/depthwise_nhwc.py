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
from numba.core import cgutils
from numba.extending import intrinsic

from numbaconv._jit import parallel_kernel, vector_bytes

_VBYTES = vector_bytes()


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
        fty = context.get_value_type(aty[0].dtype)
        isz = context.get_abi_sizeof(fty)
        lanes = _VBYTES // isz
        vty = ir.VectorType(fty, lanes)
        vp = vty.as_pointer()
        i64, i32 = ir.IntType(64), ir.IntType(32)
        i1v = ir.VectorType(ir.IntType(1), lanes)
        i32v = ir.VectorType(i32, lanes)
        sfx = "v%d%s" % (lanes, "f32" if isz == 4 else "f64")
        mod = builder.module
        fma = cgutils.get_or_insert_function(mod, ir.FunctionType(vty, [vty, vty, vty]),
                                             "llvm.fma." + sfx)
        mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vty, [vp, i32, i1v, vty]), "llvm.masked.load.%s.p0" % sfx)
        mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vty, vp, i32, i1v]),
            "llvm.masked.store.%s.p0" % sfx)
        align = ir.Constant(i32, isz)
        zero = ir.Constant(vty, [0.0] * lanes)

        def as64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        def data(i, arr):
            return context.make_array(aty[i])(context, builder, arr).data

        pout = builder.gep(data(0, out_v), [as64(o_v)])
        px = builder.gep(data(2, x_v), [as64(xb_v)])
        pw, pb, pt = data(4, w_v), data(8, bias_v), data(5, taps_v)
        tty = context.get_value_type(aty[5].dtype)
        nt, c = as64(nt_v), as64(c_v)
        nblk = builder.sdiv(builder.add(c, ir.Constant(i64, lanes - 1)), ir.Constant(i64, lanes))
        entry = builder.block
        blk = builder.append_basic_block("px.block")
        tap = builder.append_basic_block("px.tap")
        store = builder.append_basic_block("px.store")
        done = builder.append_basic_block("px.done")
        builder.cbranch(builder.icmp_signed(">", nblk, ir.Constant(i64, 0)), blk, done)

        builder.position_at_end(blk)
        j = builder.phi(i64)
        j.add_incoming(ir.Constant(i64, 0), entry)
        off = builder.mul(j, ir.Constant(i64, lanes))
        rest = builder.trunc(builder.sub(c, off), i32)
        u = ir.Constant(i32v, ir.Undefined)
        spl = builder.shuffle_vector(builder.insert_element(u, rest, ir.Constant(i32, 0)), u,
                                     ir.Constant(i32v, [0] * lanes))
        mask = builder.icmp_signed("<", ir.Constant(i32v, list(range(lanes))), spl)

        def vload(p, offset):
            return builder.call(mload, [builder.bitcast(builder.gep(p, [offset]), vp), align,
                                        mask, zero])

        start = vload(pb, off)
        builder.cbranch(builder.icmp_signed(">", nt, ir.Constant(i64, 0)), tap, store)

        builder.position_at_end(tap)
        t = builder.phi(i64)
        t.add_incoming(ir.Constant(i64, 0), blk)
        acc = builder.phi(vty)
        acc.add_incoming(start, blk)
        xo = as64(builder.load(builder.gep(pt, [builder.mul(t, ir.Constant(i64, 2))]), typ=tty))
        wo = as64(builder.load(builder.gep(pt, [builder.add(builder.mul(t, ir.Constant(i64, 2)),
                                                            ir.Constant(i64, 1))]), typ=tty))
        new = builder.call(fma, [vload(px, builder.add(xo, off)), vload(pw, builder.add(wo, off)),
                                 acc])
        tn = builder.add(t, ir.Constant(i64, 1))
        t.add_incoming(tn, tap)
        acc.add_incoming(new, tap)
        builder.cbranch(builder.icmp_signed("<", tn, nt), tap, store)

        builder.position_at_end(store)
        res = builder.phi(vty)
        res.add_incoming(start, blk)
        res.add_incoming(new, tap)
        builder.call(mstore, [res, builder.bitcast(builder.gep(pout, [off]), vp), align, mask])
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
