"""Gradient of a 2-D convolution with respect to its weights, on numbaconv's GEMM micro-kernel.

For group ``g`` with ``K = C_in/groups * kH * kW`` rows ``k = (ci, ky, kx)``::

    dW[g*C_out/groups + co, ci, ky, kx] = sum_n sum_p  dY[n, g*C_out/groups + co, p] * col_n[k, p]

where ``p`` runs over the output pixels and ``col_n`` is the im2col matrix of image ``n``: a
GEMM ``dW_g (C_out/groups x K) = sum_n dY_g[n] @ col_n^T`` whose reduction runs over the batch
and the pixels. A parallel task owns a block of the gradient (all output channels of a group, a
block of ``K`` columns; never a part of the reduction) and walks the images and the pixels in
chunks: it copies the chunk's im2col rows, turns them into the micro-kernel's B panels (one
pixel per panel row), and accumulates ``dY`` (read in place as the A operand: no transpose of
the large gradient) times those panels into its block, which lies in the result itself. Every
gradient element is summed over ``n`` ascending, then the pixels ascending, one fused
multiply-add each, starting from zero: the result does not depend on the blocking or on the
number of threads.

Stride-1 layers whose padding adds few pixels per output row read the input in place instead
of copying im2col rows (:mod:`.weight_grad_rows`; same sums in the same order, same bits).
Unpadded stride-1 1x1 layers need no copy either: their im2col rows are the input's rows, which
are transposed into the panels straight from the input. Other stride-1 layers (small maps,
grouped, few channels) transpose the panels from a zero-padded copy of the images, each im2col
row found by its offset in that copy (no im2col rows; measured against copying them, 2
threads, interleaved: 3x3 C256 14x14 1.08x, batch 8 1.12x, C128 14x14 1.11x, C256 7x7 batch 8
1.17x, C512 7x7 1.02x, C512 10x10 0.97x, ResNeXt's grouped C128 56x56 1.98x, 5x5 C1->32 512x512
1.32x). Other strides copy im2col rows.

Depthwise layers and other narrow groups (at most :data:`NARROW_GROUP` input channels per
group) have weight rows far too short for GEMM tiles: kernels 1, 3, 5 or 7 wide with column
stride 1 or 2 run on :mod:`.weight_grad_narrow` (one pass over ``dY`` per output channel and
input channel of its group, the input read in place with masked vector loads); other depthwise
layers take one task per channel, each tap's gradient a vectorised dot product (:func:`_vdot`,
a fixed lane order) of the ``dY`` plane with the tap's im2col row.
"""


import functools

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import cgutils
from numba.extending import intrinsic

from .._jit import kernel, parallel_kernel
from . import gemm as _gemm
from . import weight_grad_narrow as _narrow
from . import weight_grad_rows as _rows
from .im2col import _im2col_rows
from .scratch import buffer
from .ir_vectors import lane_sum
from .transpose import tile_transpose, tile_transpose_rows

_PIXEL_CHUNK = 256     # reduction block (micro-kernel K loop): B panel 256 x 32 floats in L1
_K_COLS = 256          # gradient columns (im2col rows) per task: its B panels stay in L2
_MIN_TASKS = 8         # parallel tasks wanted (2 cores; balance)
_KEEP_BYTES = 16 << 20  # largest scratch kept between calls (see scratch.py)
#: Input channels per group up to which grouped layers take the narrow-group kernel. Measured
#: against the GEMM path (2 threads, 3x3, ms): 4 per group (ResNeXt C128 g32 56x56) 0.65 vs 1.60,
#: batch 8 5.8 vs 10.9; 8 per group C64 56x56 0.46 vs 0.48, C256 28x28 0.79 vs 0.68; 16 per
#: group C512 14x14 1.10 vs 0.44.
NARROW_GROUP = 4
# Vector accumulators of a dot product: independent FMA chains that hide the FMA latency.
_DOT_CHAINS = 4


@intrinsic
def _vdot(typingctx, a, aoff, b, boff, n):
    """``sum_i a[aoff + i] * b[boff + i]`` for ``i < n``, vectorised in a fixed order: element
    ``i`` goes to lane ``i % L`` of accumulator ``(i // L) % 4`` (``L`` lanes, masked tail), then
    the accumulators are added as ``(v0 + v1) + (v2 + v3)`` and the lanes pairwise. The order
    depends on ``n`` only, so results are reproducible."""
    sig = a.dtype(a, aoff, b, boff, n)

    def codegen(context, builder, signature, args):
        a_v, aoff_v, b_v, boff_v, n_v = args
        aty = signature.args
        fty = context.get_value_type(aty[0].dtype)
        isz = context.get_abi_sizeof(fty)
        lanes = _gemm._VBYTES // isz
        vty = ir.VectorType(fty, lanes)
        vptr = vty.as_pointer()
        i64, i32 = ir.IntType(64), ir.IntType(32)
        i32v = ir.VectorType(i32, lanes)
        i1v = ir.VectorType(ir.IntType(1), lanes)
        sfx = "v%d%s" % (lanes, "f32" if isz == 4 else "f64")
        align = ir.Constant(i32, isz)
        mod = builder.module
        fma = cgutils.get_or_insert_function(mod, ir.FunctionType(vty, [vty] * 3),
                                             "llvm.fma." + sfx)
        mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vty, [vptr, i32, i1v, vty]), "llvm.masked.load.%s.p0" % sfx)

        def as64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        def ptr(i, arr, off):
            data = context.make_array(aty[i])(context, builder, arr).data
            return builder.gep(data, [as64(off)])

        pa, pb = ptr(0, a_v, aoff_v), ptr(2, b_v, boff_v)
        n = as64(n_v)
        zero = ir.Constant(vty, [0.0] * lanes)
        step = lanes * _DOT_CHAINS
        pre = builder.block
        head = builder.append_basic_block("dot.head")
        body = builder.append_basic_block("dot.body")
        tail = builder.append_basic_block("dot.tail")
        builder.branch(head)
        builder.position_at_end(head)
        i = builder.phi(i64)
        i.add_incoming(ir.Constant(i64, 0), pre)
        accs = []
        for _ in range(_DOT_CHAINS):
            phi = builder.phi(vty)
            phi.add_incoming(zero, pre)
            accs.append(phi)
        builder.cbranch(builder.icmp_signed("<", i, n), body, tail)
        builder.position_at_end(body)
        new = []
        for c, acc in enumerate(accs):
            j = builder.add(i, ir.Constant(i64, c * lanes))
            left = builder.sub(n, j)
            left = builder.select(builder.icmp_signed(">", left, ir.Constant(i64, lanes)),
                                  ir.Constant(i64, lanes), left)
            left = builder.select(builder.icmp_signed("<", left, ir.Constant(i64, 0)),
                                  ir.Constant(i64, 0), left)
            u = ir.Constant(i32v, ir.Undefined)
            spl = builder.shuffle_vector(
                builder.insert_element(u, builder.trunc(left, i32), ir.Constant(i32, 0)), u,
                ir.Constant(i32v, [0] * lanes))
            mask = builder.icmp_signed("<", ir.Constant(i32v, list(range(lanes))), spl)
            va = builder.call(mload, [builder.bitcast(builder.gep(pa, [j]), vptr), align, mask,
                                      zero])
            vb = builder.call(mload, [builder.bitcast(builder.gep(pb, [j]), vptr), align, mask,
                                      zero])
            new.append(builder.call(fma, [va, vb, acc]))
        for acc, value in zip(accs, new):
            acc.add_incoming(value, builder.block)
        i.add_incoming(builder.add(i, ir.Constant(i64, step)), builder.block)
        builder.branch(head)
        builder.position_at_end(tail)
        v = builder.fadd(builder.fadd(accs[0], accs[1]), builder.fadd(accs[2], accs[3]))
        return lane_sum(builder, v)

    return sig, codegen


@parallel_kernel
def _depthwise_driver(x, gf, dw, m, kh, kw, sh, sw, pt, pl, dh, dwl, oh, ow, pc, ldcol, ws_col):
    """One task per output channel ``co`` (input channel ``co // m``): ``dW[co, tap]`` is a dot
    product of its ``dY`` plane with the tap's im2col row, over the images and pixel chunks."""
    nb, cin = x.shape[0], x.shape[1]
    cout = cin * m
    taps = kh * kw
    npix = oh * ow
    for co in prange(cout):
        col = ws_col[numba.get_thread_id()]
        for t in range(taps):
            dw[co * taps + t] = 0
        for n in range(nb):
            for q0 in range(0, npix, pc):
                q1 = min(npix, q0 + pc)
                _im2col_rows(x, n, co // m, 0, taps, kh, kw, sh, sw, pt, pl, dh, dwl, q0, q1,
                             ow, col, ldcol)
                goff = (n * cout + co) * npix + q0
                for t in range(taps):
                    dw[co * taps + t] += _vdot(gf, goff, col, t * ldcol, q1 - q0)


@kernel
def _pack_columns(col, coff, ldcol, rows, kc, bp):
    """``bp[(j//NR)*kc*NR + p*NR + j%NR] = col[coff + j*ldcol + p]`` for ``j < rows``, ``p < kc``
    (zeros in the last panel past ``rows``): the im2col rows become the columns of NR-wide B
    panels, one pixel per panel row. A transpose within cache by register tiles, ``1/C_out``
    of the work."""
    lanes = _gemm._lanes(bp)
    nr = _gemm.NV * lanes
    for j0 in range(0, rows, lanes):
        base = (j0 // nr) * kc * nr + j0 % nr
        for p0 in range(0, kc, lanes):
            tile_transpose(col, coff + j0 * ldcol + p0, ldcol, bp, base + p0 * nr, nr,
                           min(lanes, rows - j0), min(lanes, kc - p0))
    tail = rows % nr
    if tail:
        base = (rows // nr) * kc * nr
        for p in range(kc):
            for jj in range(tail, nr):
                bp[base + p * nr + jj] = 0


@parallel_kernel
def _driver(x, gf, dw, cout, groups, kh, kw, sh, sw, pt, pl, dh, dwl, oh, ow, ct, n_cb, kt, n_kb,
            pc, ldcol, ws_col, ws_b, mode, n0, nimg, first, xp, plane, wp, offs):
    """Images ``n0 .. n0 + nimg`` (``first``: the result starts from zero). How the panels are
    made: ``mode`` 0 copies im2col rows, then transposes them; 1 transposes the input's own
    rows (they are the im2col rows: an unpadded stride-1 1x1 kernel over the input's whole
    width); 2 transposes rows of ``xp``, the images' zero-padded copies (stride 1: im2col row
    ``j`` over output row ``oy`` is ``xp[image*C_in*plane + offs[j] + oy*wp ...]``)."""
    cin = x.shape[1]
    xplane = x.shape[2] * x.shape[3]   # may hold rows past the output's (mode 1)
    xf = x.reshape(-1)
    lanes = _gemm._lanes(dw)
    cg, cog = cin // groups, cout // groups
    k = cg * kh * kw
    npix = oh * ow
    nr = _gemm.NV * _gemm._lanes(dw)
    for t in prange(groups * n_cb * n_kb):
        g, c0, c1, k0, k1 = _rows.task_block(t, n_cb, n_kb, ct, kt, cog, k)
        if k1 <= k0 or c1 <= c0:
            continue
        tid = numba.get_thread_id()
        col = ws_col[tid]
        bp = ws_b[tid]
        for i in range(nimg):
            n = n0 + i
            for q0 in range(0, npix, pc):
                q1 = min(npix, q0 + pc)
                kc = q1 - q0
                if mode == 1:
                    _pack_columns(xf, (n * cin + g * cg + k0) * xplane + q0, xplane, k1 - k0, kc,
                                  bp)
                elif mode == 2:
                    for j0 in range(0, k1 - k0, lanes):
                        base = (j0 // nr) * kc * nr + j0 % nr
                        for oy in range(q0 // ow, (q1 - 1) // ow + 1):
                            a = max(oy * ow, q0)
                            e = min(oy * ow + ow, q1)
                            for p0 in range(a, e, lanes):
                                tile_transpose_rows(xp, (i * cin + g * cg) * plane + oy * wp + p0
                                                    - oy * ow, offs, k0 + j0, bp,
                                                    base + (p0 - q0) * nr, nr,
                                                    min(lanes, k1 - k0 - j0), min(lanes, e - p0))
                else:
                    _im2col_rows(x, n, g * cg, k0, k1, kh, kw, sh, sw, pt, pl, dh, dwl, q0, q1,
                                 ow, col, ldcol)
                    _pack_columns(col, 0, ldcol, k1 - k0, kc, bp)
                # the first chunk starts from zero (init 2): the block is written before it is
                # read, so no page of the fresh result is first faulted in as the zero page
                init = 2 if first and i == 0 and q0 == 0 else 0
                for j in range(0, k1 - k0, nr):
                    _gemm._strip(kc, gf, (n * cout + g * cog + c0) * npix + q0, _gemm.MR * npix,
                                 1, npix, bp, (j // nr) * kc * nr, nr, dw,
                                 (g * cog + c0) * k + k0 + j, k, c1 - c0, min(nr, k1 - k0 - j),
                                 dw, 0, init)


@functools.lru_cache(maxsize=256)
def _blocks(groups, k, cog, nr, npix):
    """``(ct, n_cb, kt, n_kb)``: output channels and gradient columns (im2col rows) per task,
    and their counts; from the shapes alone (``npix`` = images x output pixels).

    A task transposes its ``kt`` im2col rows and streams its ``ct`` rows of ``dY`` once per
    pixel for ``ct * kt`` multiply-adds, so output channels are cut only where ``K`` alone
    leaves too few tasks, and tasks stay wide. Among the cuts into at least ``_MIN_TASKS / 2``
    tasks (when the shape has that many) the one with the least modelled time on two threads
    wins (prange hands each a contiguous half; the GEMM's scoring). Cut by a fixed width, 3x3
    C128's ``K = 1152`` took 8 tasks whose halves held 640 and 544 columns, C256's ``K = 2304``
    9 (5 against 4)."""
    mr = _gemm.MR
    cuts = _rows.cuts(cog, k, max(1, min(-(-_MIN_TASKS // groups), cog // 64)), mr, nr,
                      max(nr, _K_COLS) // nr * nr)
    fewest = min(-(-_MIN_TASKS // 2 // groups), max(c.size * w.size for _, c, _, w in cuts))
    best = None
    for ct, cts, kt, kts in cuts:
        if cts.size * kts.size < fewest:
            continue
        # cycles: 16 multiply-adds a cycle, transposes, dY streamed per task, set-up
        cost = (cts[:, None] * kts[None, :] * (npix / 16.0) + kts[None, :] * (npix * 0.5)
                + cts[:, None] * (npix * 0.5) + 3000.0).ravel()
        score = _gemm._two_thread_score(cost, groups)
        if best is None or score < best[0] * (1 - 1e-3):   # ties keep the wider tasks
            best = (score, ct, cts.size, kt, kts.size)
    return best[1:]


def conv2d_weight_grad(x, grad_out, weight_shape, stride_h, stride_w, pad_top, pad_left, dil_h,
                       dil_w, groups):
    """Gradient of ``conv2d(x, w)`` with respect to ``w``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    grad_out : ndarray, shape (N, C_out, OH, OW)
        C-contiguous, same dtype (float32 or float64). ``OH, OW`` may be smaller than the
        forward output (rows and columns past them then contribute nothing).
    weight_shape : (C_out, C_in / groups, kH, kW)
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups : int

    Returns
    -------
    ndarray, shape ``weight_shape``
        ``dW[co, ci, ky, kx] = sum_{n, oy, ox} grad_out[n, co, oy, ox] *
        x[n, g*C_in/groups + ci, oy*stride_h - pad_top + ky*dil_h, ox*stride_w - pad_left +
        kx*dil_w]`` (zero outside the image), summed over ``n``, then ``(oy, ox)`` ascending.
    """
    cout, cg, kh, kw = weight_shape
    nb, cin = x.shape[:2]
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    cog = cout // groups
    k = cg * kh * kw
    itemsize = x.itemsize
    if not (nb and oh * ow and k and cog):
        return np.zeros(weight_shape, dtype=x.dtype)
    nr = _gemm.NV * (_gemm._VBYTES // itemsize)
    if groups > 1 and cg <= NARROW_GROUP and _narrow.supports(kw, stride_w):
        return _narrow.conv2d_narrow_weight_grad(x, grad_out, weight_shape, stride_h, stride_w,
                                                 pad_top, pad_left, dil_h, dil_w, groups)
    if cg == 1 and groups > 1:
        # depthwise: one weight row per channel, too narrow for GEMM tiles
        threads = numba.config.NUMBA_NUM_THREADS
        pc = min(4096, oh * ow)
        ws_col = buffer("weight_grad.col", threads * k * pc, x.dtype,
                        _KEEP_BYTES).reshape(threads, k * pc)
        dw = np.empty(weight_shape, dtype=x.dtype)
        _depthwise_driver(x, grad_out.reshape(-1), dw.reshape(-1), cog, kh, kw, stride_h,
                          stride_w, pad_top, pad_left, dil_h, dil_w, oh, ow, pc, pc, ws_col)
        return dw
    # An unpadded stride-1 1x1 kernel over the whole width: im2col rows are the input's rows,
    # transposed into panels from the input itself. Measured against the in-place path below
    # (which transposes dy instead, C_out rows per image where this transposes C_in per task),
    # 2 threads, 15 interleaved rounds, ms: C64->256 56x56 0.57 vs 0.70 (batch 8 5.0 vs 8.6),
    # C256->64 0.57 vs 0.67, C512->1024 14x14 1.01 vs 1.31; copying im2col rows first: 0.75,
    # 7.4, 0.72, 1.15.
    x_rows = (kh == kw == 1 and stride_h == stride_w == 1 and pad_top == pad_left == 0
              and x.shape[3] == ow)
    if not x_rows and stride_h == stride_w == 1 and _rows.pays(cg, cog, ow, kw, dil_w,
                                                               itemsize):
        dw = _rows.conv2d_weight_grad_rows(x, grad_out, weight_shape, pad_top, pad_left, dil_h,
                                           dil_w, groups)
        if dw is not None:      # else the input is not finite: the im2col path handles it
            return dw
    ct, n_cb, kt, n_kb = _blocks(groups, k, cog, nr, nb * oh * ow)
    pc = min(_PIXEL_CHUNK, oh * ow)
    ldcol = pc + (nr // _gemm.NV if _gemm._l1_hostile(pc, itemsize) else 0)
    threads = numba.config.NUMBA_NUM_THREADS
    copies = not x_rows and (stride_h != 1 or stride_w != 1)   # im2col rows (mode 0)
    ws_col = buffer("weight_grad.col", threads * kt * ldcol if copies else threads, x.dtype,
                    _KEEP_BYTES).reshape(threads, -1)
    nb_ = -(-kt // nr) * nr * pc
    ws_b = buffer("weight_grad.b", threads * nb_, x.dtype, _KEEP_BYTES).reshape(threads,
                                                                          nb_)
    dw = np.empty(weight_shape, dtype=x.dtype)
    args = (x, grad_out.reshape(-1), dw.reshape(-1), cout, groups, kh, kw, stride_h, stride_w,
            pad_top, pad_left, dil_h, dil_w, oh, ow, ct, n_cb, kt, n_kb, pc, ldcol, ws_col, ws_b)
    if x_rows or copies:
        # (xp a flat array as in mode 2: one compiled signature for all modes)
        _driver(*args, 1 if x_rows else 0, 0, nb, True, x.reshape(-1), 0, 0,
                np.zeros(1, np.int64))
        return dw
    # stride 1: panels transposed from zero-padded copies of the images (no im2col rows)
    hp, wp = _rows.padded_size(oh, ow, kh, kw, dil_h, dil_w)
    lanes = _gemm._VBYTES // itemsize
    plane = -(-hp * wp // lanes) * lanes
    per_group = max(1, min(nb, _rows._GROUP_BYTES // (cin * plane * itemsize)))
    xp = buffer("weight_grad.padded", per_group * cin * plane, x.dtype, _KEEP_BYTES)
    offs = (np.arange(cg, dtype=np.int64)[:, None] * plane
            + _rows.tap_offsets(kh, kw, dil_h, dil_w, wp)[None, :]).ravel()
    itype = np.int32 if itemsize == 4 else np.int64
    bits = x.reshape(-1).view(itype)
    for n0 in range(0, nb, per_group):
        nimg = min(per_group, nb - n0)
        # only real pixels are read: whether the input is finite does not matter here
        _rows._pad(x, bits, itype(0), n0, nimg, pad_top, pad_left, hp, wp, plane, xp)
        _driver(*args, 2, n0, nimg, n0 == 0, xp, plane, wp, offs)
    return dw
