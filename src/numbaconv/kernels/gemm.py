"""Register-blocked GEMM in Numba, and the implicit-GEMM convolution built on it.

What it computes
----------------
* :func:`gemm`: ``c += a @ b`` for row-major float32/float64 matrices (``c`` may be a view with
  a row stride). Every element of ``c`` is its old value followed by one fused multiply-add per
  ``k`` in ascending order, so the result does not depend on blocking or on the thread count.
* :func:`conv2d_implicit_gemm`: ``torch.nn.functional.conv2d`` (any stride, padding, dilation,
  groups) as the product ``out[n, g] = W_g @ col(x[n, g])`` with ``W_g`` the group's
  ``(C_out/groups, C_in/groups*kH*kW)`` weight matrix and ``col`` the im2col matrix
  (``K = (ci, ky, kx)`` rows, output pixels as columns). Each output is the bias followed by one FMA
  per ``k`` in ascending ``(ci, ky, kx)`` order. The ``col`` matrix never exists as a whole: each
  work tile writes the few K x NC pieces it needs, straight in the micro-kernel's panel layout.

Tiling strategy (and why)
-------------------------
*Micro-kernel* (``_mk``, an LLVM-IR intrinsic): a ``MR x NR`` tile of ``C`` (``MR`` = 8 rows =
output channels, ``NR`` = 2 vectors = 32 float32 / 16 float64 columns = output pixels) lives in
16 of the 32 AVX-512 registers for the whole K loop. Per ``k`` it loads two vectors of B, broadcasts
8 values of A and issues 16 FMAs: 2 FMAs per cycle is the machine's peak and loads stay below one
per FMA. (12 rows, 24 accumulators, measured slower here: 1x1 layers 0.54-0.62 ms against 0.28
ms, ResNet 3x3 C128 0.75-0.87 against 0.70, since small channel counts leave partial tiles.) Written as Numba loops, LLVM keeps such a tile in memory (3-8 GFLOP/s measured); as IR the
accumulators are SSA values, and the kernel runs at ~230 GFLOP/s on one core (float32). Partial
tiles use AVX-512 masked loads/stores, so edge tiles need no copies and never touch memory outside
the valid rows and columns. B loads of partial column tiles are masked too, which lets the 1x1 path
read B straight from the input image; full ones are plain loads (free on the Zen 4 guest, a masked
load costs Intel cores a uop on the FMA ports: one core, 256^3 113 -> 120 GFLOP/s, 1x1 C64->256
56x56 1.15-1.21 -> 1.02-1.09 ms, Winograd C128 28x28 1.35-1.40 -> 1.27-1.32 ms).
Full tiles of packed A (its ``MR`` values of a ``k`` adjacent) run a copy of the K loop that
addresses them from one pointer; the general loop keeps ``MR`` row addresses, more than the
integer registers hold, and spends about 40 integer instructions per 16 FMAs recomputing them.
Old and new code side by side in one process, same bits: 1x1 C192->32 28x28 148 -> 153 and
138 -> 151 GFLOP/s (6/7 and 9/9 rounds faster), Winograd's GEMMs on C128
28x28 357 -> 377 and 340 -> 385, 3x3 C128 28x28 through the GEMM 181 -> 180 and 177 -> 174; the
same comparison of two identical copies differed by up to 6% (it favoured the second copy 7/7 on
one layer), so only the larger of these are clear. Convolutions pass their weights unpacked
(packing per call cost more than it saved: 1x1 C1024->256 14x14 182 -> 130); with weights packed
in advance 1x1 C64->256 56x56 ran 162 -> 187, other layers 0-3% faster.

*Packing* (BLIS style): A is packed as ``[MR-row panel][k][MR]`` (zero rows pad the last panel),
B as ``[NR-column panel][k][NR]``, so each micro-kernel call streams two contiguous buffers. Loops
around the micro-kernel: K blocks of ``KC``, then B panels (one ``KC x NR`` panel, <= 48 KiB, stays in
L1 while it meets every A panel of the tile), then A panels (the ``MC x KC`` A block stays in L2).

*Convolution*: the weights are packed once (:func:`pack_weights`) as the A operand; each tile
fills its B block (``KC`` rows x ``NC`` pixels) directly from the input image, one im2col row at a
time (zero padding, stride and dilation handled while copying), then scatters it into panels.
The cost of that fill is ``K*NC`` copies against ``C_out*K*NC`` FMAs. 1x1, stride 1, unpadded
convolutions skip it: the input already is the ``(C_in, H*W)`` B matrix; their tiles go over
the panels in passes of a few micro-tiles (:func:`_plain_mt_step`), which writes the result as
a few sequential streams and keeps the weights of a pass in L2.

*Parallelism*: ``prange`` over independent tiles ``(image, group, M block, N block)``; each tile runs
the whole K loop itself, so no sum is ever split between threads. Tile shapes depend only on the
problem shape. Workspace is per thread (indexed by Numba's thread id) and cache sized.
"""

import collections
import functools

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from numbaconv._aligned import row_shift
from numbaconv._jit import FASTMATH, kernel, parallel_kernel, vector_bytes
from numbaconv.kernels.prefetch import emit_prefetch
from numbaconv.kernels.scratch import aligned


_VBYTES = vector_bytes()
# Register tile: MR rows x NV vectors. 16 accumulators + 2 B vectors + broadcasts fit the
# 32 AVX-512 registers with room to spare (12 rows measured slower, see above); with 16
# registers (AVX2/SSE) use 6 x 2 (12 accumulators).
MR = 8 if _VBYTES == 64 else 6
NV = 2

_KC_BYTES = 32 * 1024          # B panel (KC x NR) streamed by one micro-kernel call: in L1
_A_BLOCK_BYTES = 384 * 1024    # A block (MC x KC) revisited for every B panel: in L2
_B_BLOCK_BYTES = 256 * 1024    # B block (KC x NC) of one tile: in L2
# B panels a micro-kernel prefetches ahead when B is read in place from the image (1x1 layers:
# each of the K rows is a separate stream) and an image plane fills a 4 KiB page or more: the
# hardware prefetchers follow streams within a page, a few dozen at a time, so K rows a page or
# more apart each start cold; rows of smaller planes share pages. 2 threads, float32, 5
# alternating rounds, two runs, GFLOP/s without -> with, batch 1: 56x56 and 112x112 planes:
# C256->64 56 215-223 -> 259-274, C256->128 56 248-257 -> 269-283, C64->64 56 236-258 ->
# 253-271, C32->16 112 156-165 -> 173-186, C64->256 56 285 -> 291-300, C16->96 112 +2-3%,
# C96->24 56, C24->144 56 and C144->24 56 -1 to -6%; 28x28 planes (3 KiB) from -3 to -6%
# (C128->512, C512->256) to +4% (C144->32, C192->32); 14x14 planes 0 to -17% (C1024->256
# 254-278 -> 212-233: two panels on is past the plane's six); 7x7 planes even. Batch 8: the
# 56x56 and 112x112 planes +1 to +37% (C256->128, C144->24 +30-37%) except C24->144 (-1 to
# -7%); 28x28 -3 to -8% (C128->512, C512->128, C512->256) to +8 to +14% (C144->32, C192->32);
# 14x14 -5 to -21%. (The limit had been the input and result outgrowing 12 MiB, a 32 MiB
# last-level cache's share; prefetching in a strip's first micro-tile only, not in every one:
# 28x28 planes -3 to +13%, but C32->16 112 at batch 8 -2 to -17% against +15 to +25%.)
_AHEAD = 2
_AHEAD_PLANE_BYTES = 4096
_MIN_TILES = 8                 # parallel tiles wanted at least (more cores than two)
_IN_PLACE = True               # read single-row B panels from the band (no packing)
_BAND_BYTES = 512 * 1024       # input band (all channels of a group) of a conv tile: in L2


# ---------------------------------------------------------------------------------------------
# The micro-kernel
# ---------------------------------------------------------------------------------------------

@intrinsic
def _mk(typingctx, kc, a, aoff, lda, sia, b, boff, ldb, boffs, bk0, c, coff, ldc, m_valid,
        n_valid, bias, bias_off, init, mr_, nv_, btab_, ahead_):
    """``C[i, j] (+)= sum_k A[k, i] * B[k, j]`` for ``i < m_valid``, ``j < n_valid``.

    ``A[k, i] = a[aoff + k*lda + i*sia]`` (``i < mr_``; rows past ``m_valid`` are not read),
    ``B[k, j] = b[boff + k*ldb + j]`` (``j < nv_*lanes``). A row table ``boffs[bk0 + k]``
    replaces ``k*ldb`` with ``btab_ == 1`` and ``k*lda`` with ``btab_ == 2``. ``C[i, j] = c[coff + i*ldc + j]``. Start value of ``C[i, j]``:
    ``init == 0``: ``C`` itself; ``init == 1``: ``bias[bias_off + i]`` (per row); ``init == 3``:
    ``bias[bias_off + j]`` (per column); else 0. Then one FMA per
    ``k`` ascending. With ``ahead_ > 0`` each ``k`` step also prefetches row ``k`` of the B
    panel ``ahead_`` panels (of ``nv_`` vectors) to the right, with ``ahead_ < 0`` row
    ``k - ahead_`` of the same panel (``btab_ == 0``). ``mr_``, ``nv_``, ``btab_``,
    ``ahead_`` are compile-time constants. B columns ``>= n_valid`` and C rows/columns outside
    the valid part are never read or written (masked vector accesses; prefetches do not fault).
    """
    if not all(isinstance(v, (types.IntegerLiteral, types.BooleanLiteral))
               for v in (mr_, nv_, btab_, ahead_)):
        return None
    mr, nv, tab = mr_.literal_value, nv_.literal_value, int(btab_.literal_value)
    ahead = int(ahead_.literal_value)
    sig = types.void(kc, a, aoff, lda, sia, b, boff, ldb, boffs, bk0, c, coff, ldc, m_valid,
                     n_valid, bias, bias_off, init, mr_, nv_, btab_, ahead_)

    def codegen(context, builder, signature, args):
        (kc_v, a_v, aoff_v, lda_v, sia_v, b_v, boff_v, ldb_v, boffs_v, bk0_v, c_v, coff_v,
         ldc_v, mv_v, nv_v, bias_v, bo_v, init_v) = args[:18]
        aty = signature.args
        fty = context.get_value_type(aty[1].dtype)
        isz = context.get_abi_sizeof(fty)
        lanes = _VBYTES // isz
        vty = ir.VectorType(fty, lanes)
        vptr_ty = vty.as_pointer()
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        i1v = ir.VectorType(ir.IntType(1), lanes)
        i32v = ir.VectorType(i32, lanes)
        sfx = "v%d%s" % (lanes, "f32" if isz == 4 else "f64")
        align = ir.Constant(i32, isz)

        def data(i, v):
            return context.make_array(aty[i])(context, builder, v).data

        def as64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        def k64(n):
            return ir.Constant(i64, n)

        def splat(s, ty):
            u = ir.Constant(ty, ir.Undefined)
            v = builder.insert_element(u, s, ir.Constant(i32, 0))
            return builder.shuffle_vector(v, u, ir.Constant(i32v, [0] * lanes))

        def vaddr(base, n):
            return builder.bitcast(builder.gep(base, [n]), vptr_ty)

        mod = builder.module
        fma = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vty, [vty, vty, vty]), "llvm.fma." + sfx)
        mload = cgutils.get_or_insert_function(
            mod, ir.FunctionType(vty, [vptr_ty, i32, i1v, vty]), "llvm.masked.load.%s.p0" % sfx)
        mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [vty, vptr_ty, i32, i1v]),
            "llvm.masked.store.%s.p0" % sfx)

        aptr = builder.gep(data(1, a_v), [as64(aoff_v)])
        bptr = builder.gep(data(5, b_v), [as64(boff_v)])
        tptr = builder.gep(data(8, boffs_v), [as64(bk0_v)])
        tty = context.get_value_type(aty[8].dtype)
        cptr = builder.gep(data(10, c_v), [as64(coff_v)])
        biasp = builder.gep(data(15, bias_v), [as64(bo_v)])
        lda, ldb, ldc = as64(lda_v), as64(ldb_v), as64(ldc_v)
        kc = as64(kc_v)
        mvalid = as64(mv_v)
        nvalid = builder.trunc(as64(nv_v), i32)
        init = as64(init_v)
        zero = ir.Constant(vty, [0.0] * lanes)
        none = ir.Constant(i1v, [0] * lanes)

        # Lane masks: column masks per vector, and per (row, vector) for C.
        lane = ir.Constant(i32v, list(range(lanes)))
        nsplat = splat(nvalid, i32v)
        colmask = [builder.icmp_signed("<", builder.add(lane, ir.Constant(i32v, [v * lanes] * lanes)),
                                       nsplat) for v in range(nv)]
        sia = as64(sia_v)
        cmask, crow, arow = [], [], []
        for i in range(mr):
            ok = builder.icmp_signed("<", k64(i), mvalid)
            crow.append(builder.gep(cptr, [builder.mul(k64(i), ldc)]))
            # rows past m_valid re-read row 0 (their results are never stored)
            arow.append(builder.gep(aptr, [builder.mul(builder.select(ok, k64(i), k64(0)), sia)]))
            cmask.extend(builder.select(ok, colmask[v], none) for v in range(nv))

        # Start values (outside the K loop, so the branch costs nothing).
        b_c = builder.append_basic_block("mk.init_c")
        b_b = builder.append_basic_block("mk.init_bias")
        b_z = builder.append_basic_block("mk.init_zero")
        b_cb = builder.append_basic_block("mk.init_col_bias")
        b_j = builder.append_basic_block("mk.start")
        sw = builder.switch(init, b_z)
        sw.add_case(k64(0), b_c)
        sw.add_case(k64(1), b_b)
        sw.add_case(k64(3), b_cb)
        builder.position_at_end(b_c)
        from_c = [builder.call(mload, [vaddr(crow[i], k64(v * lanes)), align,
                                       cmask[i * nv + v], zero])
                  for i in range(mr) for v in range(nv)]
        builder.branch(b_j)
        builder.position_at_end(b_b)
        from_b = []
        for i in range(mr):
            row = builder.select(builder.icmp_signed("<", k64(i), mvalid), k64(i), k64(0))
            s = splat(builder.load(builder.gep(biasp, [row]), typ=fty), vty)
            from_b.extend([s] * nv)
        builder.branch(b_j)
        builder.position_at_end(b_z)
        builder.branch(b_j)
        builder.position_at_end(b_cb)
        col_bias = [builder.call(mload, [vaddr(biasp, k64(v * lanes)), align, colmask[v], zero])
                    for v in range(nv)]
        builder.branch(b_j)
        builder.position_at_end(b_j)
        start = []
        for t in range(mr * nv):
            p = builder.phi(vty)
            p.add_incoming(from_c[t], b_c)
            p.add_incoming(from_b[t], b_b)
            p.add_incoming(zero, b_z)
            p.add_incoming(col_bias[t % nv], b_cb)
            start.append(p)

        # The K loop: accumulators are loop-carried SSA values, i.e. registers.
        def k_loop(entry, packed, full, join):
            """The loop from block ``entry``, leaving to ``join``; returns the (block, final
            accumulators) pairs that reach ``join``. With ``packed`` (A rows adjacent, all
            ``mr`` valid) the A values of step ``k`` are ``mr`` consecutive elements: one
            address, constant offsets (see the module docstring). With ``full`` (all columns
            valid) B is read by plain loads: on Intel cores a masked load also takes a uop on
            the FMA ports (256^3 on one core 113 -> 120 GFLOP/s, 1024^3 92 -> 99)."""
            builder.position_at_end(entry)
            loop = builder.append_basic_block("mk.loop")
            builder.cbranch(builder.icmp_signed(">", kc, k64(0)), loop, join)
            builder.position_at_end(loop)
            kphi = builder.phi(i64)
            kphi.add_incoming(k64(0), entry)
            acc = []
            for t in range(mr * nv):
                p = builder.phi(vty)
                p.add_incoming(start[t], entry)
                acc.append(p)
            row = as64(builder.load(builder.gep(tptr, [kphi]), typ=tty)) if tab else None
            bk = builder.gep(bptr, [row if tab == 1 else builder.mul(kphi, ldb)])
            if full:
                bv = [builder.load(vaddr(bk, k64(v * lanes)), align=isz, typ=vty)
                      for v in range(nv)]
            else:
                bv = [builder.call(mload, [vaddr(bk, k64(v * lanes)), align, colmask[v], zero])
                      for v in range(nv)]
            if ahead > 0:
                for v in range(nv):  # one 64-byte line per vector: read, keep in all caches
                    emit_prefetch(builder, builder.gep(bk, [k64((ahead * nv + v) * lanes)]))
            elif ahead < 0:     # the same panel -ahead rows down
                down = builder.mul(ldb, k64(-ahead))
                for v in range(nv):
                    emit_prefetch(builder, builder.gep(bk, [builder.add(down, k64(v * lanes))]))
            ka = row if tab == 2 else builder.mul(kphi, lda)
            arow_k = builder.gep(aptr, [ka]) if packed else None
            new = [None] * (mr * nv)
            for i in range(mr):
                addr = builder.gep(arow_k, [k64(i)]) if packed else builder.gep(arow[i], [ka])
                av = splat(builder.load(addr, typ=fty), vty)
                for v in range(nv):
                    t = i * nv + v
                    new[t] = builder.call(fma, [av, bv[v], acc[t]])
            knext = builder.add(kphi, k64(1))
            kphi.add_incoming(knext, loop)
            for t in range(mr * nv):
                acc[t].add_incoming(new[t], loop)
            builder.cbranch(builder.icmp_signed("<", knext, kc), loop, join)
            return [(entry, start), (loop, new)]

        packed_ok = builder.and_(builder.icmp_signed("==", sia, k64(1)),
                                 builder.icmp_signed("==", mvalid, k64(mr)))
        full_ok = builder.icmp_signed(">=", nvalid, ir.Constant(i32, nv * lanes))
        join = builder.append_basic_block("mk.join")
        arrivals = []
        e_packed = builder.append_basic_block("mk.packed")
        e_rows = builder.append_basic_block("mk.rows")
        builder.cbranch(packed_ok, e_packed, e_rows)
        for entry, packed in ((e_packed, True), (e_rows, False)):
            builder.position_at_end(entry)
            e_full = builder.append_basic_block("mk.full")
            e_part = builder.append_basic_block("mk.part")
            builder.cbranch(full_ok, e_full, e_part)
            arrivals += k_loop(e_full, packed, True, join) + k_loop(e_part, packed, False, join)
        builder.position_at_end(join)
        res = []
        for t in range(mr * nv):
            p = builder.phi(vty)
            for blk, values in arrivals:
                p.add_incoming(values[t], blk)
            res.append(p)
        for i in range(mr):
            for v in range(nv):
                t = i * nv + v
                builder.call(mstore, [res[t], vaddr(crow[i], k64(v * lanes)), align, cmask[t]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _lanes(typingctx, arr):
    """Lanes of one vector register for ``arr``'s dtype (a compile-time constant)."""
    n = _VBYTES // (arr.dtype.bitwidth // 8)
    sig = types.intp(arr)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, n)

    return sig, codegen


def _make_vector_copy(store_all, stride=1):
    """Build ``copy(src, soff, dst, doff, n)``: one vector's worth, ``0 <= n <= lanes``.

    ``dst[doff + i] = src[soff + i*stride]`` for ``i < n``, read with masked loads (nothing
    past the last needed element is touched; ``stride`` 2 loads two vectors and keeps the even
    lanes). With ``store_all`` it writes a whole vector ``dst[doff:doff+lanes]`` (zeros past
    ``n``), else only ``dst[doff:doff+n]`` (masked store). Written as IR because LLVM does not
    vectorise the equivalent short loops here (it cannot rule out that ``src`` and ``dst``
    overlap).
    """
    @intrinsic
    def copy(typingctx, src, soff, dst, doff, n):
        sig = types.void(src, soff, dst, doff, n)

        def codegen(context, builder, signature, args):
            src_v, soff_v, dst_v, doff_v, n_v = args
            aty = signature.args
            fty = context.get_value_type(aty[0].dtype)
            isz = context.get_abi_sizeof(fty)
            lanes = _VBYTES // isz
            vty = ir.VectorType(fty, lanes)
            i32 = ir.IntType(32)
            i32v = ir.VectorType(i32, lanes)
            i1v = ir.VectorType(ir.IntType(1), lanes)
            sfx = "v%d%s" % (lanes, "f32" if isz == 4 else "f64")
            mload = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty.as_pointer(), i32, i1v, vty]),
                "llvm.masked.load.%s.p0" % sfx)
            zero = ir.Constant(vty, [0.0] * lanes)
            align = ir.Constant(i32, isz)

            def addr(i, arr, off, extra=0):
                base = context.make_array(aty[i])(context, builder, arr).data
                off = builder.sext(off, ir.IntType(64)) if off.type.width < 64 else off
                if extra:
                    off = builder.add(off, ir.Constant(ir.IntType(64), extra))
                return builder.bitcast(builder.gep(base, [off]), vty.as_pointer())

            def lanes_below(limit):
                u = ir.Constant(i32v, ir.Undefined)
                spl = builder.shuffle_vector(builder.insert_element(u, limit, ir.Constant(i32, 0)),
                                             u, ir.Constant(i32v, [0] * lanes))
                return builder.icmp_signed("<", ir.Constant(i32v, list(range(lanes))), spl)

            cnt = builder.trunc(n_v, i32) if n_v.type.width > 32 else n_v
            mask = lanes_below(cnt)
            if stride == 1:
                v = builder.call(mload, [addr(0, src_v, soff_v), align, mask, zero])
            else:
                # elements 0 .. 2n-2 of two consecutive vectors, then the even ones
                last = builder.sub(builder.mul(cnt, ir.Constant(i32, 2)), ir.Constant(i32, 1))
                lo = builder.call(mload, [addr(0, src_v, soff_v), align, lanes_below(last), zero])
                hi_lim = builder.sub(last, ir.Constant(i32, lanes))
                hi = builder.call(mload, [addr(0, src_v, soff_v, lanes), align,
                                          lanes_below(hi_lim), zero])
                v = builder.shuffle_vector(lo, hi, ir.Constant(i32v, list(range(0, 2 * lanes, 2))))
            if store_all:
                builder.store(v, addr(2, dst_v, doff_v), align=isz)
            else:
                mstore = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, i1v]),
                    "llvm.masked.store.%s.p0" % sfx)
                builder.call(mstore, [v, addr(2, dst_v, doff_v), align, mask])
            return context.get_dummy_value()

        return sig, codegen

    return copy


@intrinsic
def _vzero(typingctx, dst, doff, n):
    """``dst[doff:doff+n] = 0`` for ``0 <= n <= lanes`` (one masked store)."""
    sig = types.void(dst, doff, n)

    def codegen(context, builder, signature, args):
        dst_v, doff_v, n_v = args
        fty = context.get_value_type(signature.args[0].dtype)
        isz = context.get_abi_sizeof(fty)
        lanes = _VBYTES // isz
        vty = ir.VectorType(fty, lanes)
        i32 = ir.IntType(32)
        i32v = ir.VectorType(i32, lanes)
        i1v = ir.VectorType(ir.IntType(1), lanes)
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, i1v]),
            "llvm.masked.store.v%d%s.p0" % (lanes, "f32" if isz == 4 else "f64"))
        cnt = builder.trunc(n_v, i32) if n_v.type.width > 32 else n_v
        u = ir.Constant(i32v, ir.Undefined)
        spl = builder.shuffle_vector(builder.insert_element(u, cnt, ir.Constant(i32, 0)), u,
                                     ir.Constant(i32v, [0] * lanes))
        mask = builder.icmp_signed("<", ir.Constant(i32v, list(range(lanes))), spl)
        base = context.make_array(signature.args[0])(context, builder, dst_v).data
        off = builder.sext(doff_v, ir.IntType(64)) if doff_v.type.width < 64 else doff_v
        builder.call(mstore, [ir.Constant(vty, [0.0] * lanes),
                              builder.bitcast(builder.gep(base, [off]), vty.as_pointer()),
                              ir.Constant(i32, isz), mask])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _vgather(typingctx, src, soff, stride, dst, doff, n):
    """``dst[doff + i] = src[soff + i*stride]`` for ``i < n <= lanes``: lane-by-lane loads
    (lanes past ``n`` re-read element 0) and one masked store. For rare strides (>= 3)."""
    sig = types.void(src, soff, stride, dst, doff, n)

    def codegen(context, builder, signature, args):
        src_v, soff_v, st_v, dst_v, doff_v, n_v = args
        aty = signature.args
        fty = context.get_value_type(aty[0].dtype)
        isz = context.get_abi_sizeof(fty)
        lanes = _VBYTES // isz
        vty = ir.VectorType(fty, lanes)
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        i32v = ir.VectorType(i32, lanes)
        i1v = ir.VectorType(ir.IntType(1), lanes)
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, i1v]),
            "llvm.masked.store.v%d%s.p0" % (lanes, "f32" if isz == 4 else "f64"))

        def as64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        cnt = as64(n_v)
        stride = as64(st_v)
        sbase = builder.gep(context.make_array(aty[0])(context, builder, src_v).data,
                            [as64(soff_v)])
        v = ir.Constant(vty, ir.Undefined)
        for i in range(lanes):
            ok = builder.icmp_signed("<", ir.Constant(i64, i), cnt)
            idx = builder.select(ok, builder.mul(ir.Constant(i64, i), stride), ir.Constant(i64, 0))
            x = builder.load(builder.gep(sbase, [idx]), typ=fty)
            v = builder.insert_element(v, x, ir.Constant(i32, i))
        u = ir.Constant(i32v, ir.Undefined)
        c32 = builder.trunc(cnt, i32)
        spl = builder.shuffle_vector(builder.insert_element(u, c32, ir.Constant(i32, 0)), u,
                                     ir.Constant(i32v, [0] * lanes))
        mask = builder.icmp_signed("<", ir.Constant(i32v, list(range(lanes))), spl)
        dbase = context.make_array(aty[3])(context, builder, dst_v).data
        dptr = builder.bitcast(builder.gep(dbase, [as64(doff_v)]), vty.as_pointer())
        builder.call(mstore, [v, dptr, ir.Constant(i32, isz), mask])
        return context.get_dummy_value()

    return sig, codegen


_vmove = _make_vector_copy(True)            # whole vector stored, zero filled past n
_vcopy = _make_vector_copy(False)           # only n elements stored
_vcopy_s2 = _make_vector_copy(False, 2)     # every other source element, n stored


@intrinsic
def _noinline(typingctx):
    """Mark the calling kernel ``noinline`` for LLVM.

    A ``prange`` driver links in the code of the kernels it calls and LLVM re-optimises what it
    inlines: a tile kernel called from a driver would be compiled twice. Kept out of line, it is
    compiled once (the call costs nothing next to a tile's work).
    """
    def codegen(context, builder, signature, args):
        builder.function.attributes.add("noinline")
        return context.get_dummy_value()

    return types.void(), codegen


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------

@kernel
def _pack_b(b, boff, ldb, k, n, dst):
    """``dst[(j//NR)*k*NR + kk*NR + j%NR] = b[boff + kk*ldb + j]`` (columns ``n..`` zero)."""
    lanes = _lanes(dst)
    nr = NV * lanes
    npan = (n + nr - 1) // nr
    for kk in range(k):
        src = boff + kk * ldb
        for p in range(npan):
            d = p * k * nr + kk * nr
            for v in range(NV):
                j = p * nr + v * lanes
                _vmove(b, src + j, dst, d + v * lanes, max(0, min(lanes, n - j)))


# ---------------------------------------------------------------------------------------------
# Strips: one B panel against a run of A micro-panels
# ---------------------------------------------------------------------------------------------

def _make_strip(ahead, nv=NV):
    """The strip kernel below, its micro-kernel ``nv`` vectors wide and prefetching B
    ``ahead`` panels on (0: none)."""

    @kernel
    def strip(kc, a, aoff, a_mt, lda, sia, b, boff, ldb, c, coff, ldc, m, n_valid, bias,
              bias_off, init):
        """``C[0:m, 0:n_valid] (+)= A[0:m, k-block] @ B[k-block, panel]``, MR rows at a time.

        Row block ``i`` reads A at ``aoff + i*a_mt`` and writes C rows from ``coff + i*MR*ldc``.
        Kept out of line (one compiled copy shared by the GEMM and the convolution, and no loop
        unswitching in the callers duplicating the micro-kernel).
        """
        _noinline()
        for i in range((m + MR - 1) // MR):
            _mk(kc, a, aoff + i * a_mt, lda, sia, b, boff, ldb, c, 0, c, coff + i * MR * ldc,
                ldc, min(MR, m - i * MR), n_valid, bias, bias_off + i * MR, init, MR, nv, False,
                ahead)

    return strip


_strip = _make_strip(0)
# For panels of at most one vector of valid columns (an image's last panel, e.g. 4 of 14x14's
# 196 pixels): half the FMAs. Float32, 2 threads, 9 alternating rounds, GFLOP/s: 1x1 s2
# C512->1024 28 227 -> 244 (at batch 8 208 -> 220), 1x1 C1024->256 14 254 -> 269 (248 -> 264),
# 3x3 C256 14 through the GEMM 249 -> 264, 1x1 C128->512 28 (16 of 784) 289 -> 301 (at
# batch 8 307 -> 303); 7x7 maps (17 of 49) even. Also the plain GEMM's (Winograd's 36 products
# over 4 tiles of a 7x7 map: C512 7 in a plan 89-103 -> 146-152 effective GFLOP/s).
_strip_narrow = _make_strip(0, 1)
# for B read in place from an image, whose ``k`` rows are as many separate streams (too many for
# the hardware prefetchers once the data outgrows the caches)
_strip_ahead = _make_strip(_AHEAD)


def _make_strip_tab(nv):
    """The kernel below with an ``nv`` vectors wide micro-kernel."""

    @kernel
    def strip_tab(kc, a, aoff, a_mt, lda, sia, b, boff, boffs, bk0, c, coff, ldc, m, n_valid,
                  bias, bias_off, init):
        """:func:`_strip` with B row ``k`` at ``b[boff + boffs[bk0 + k]]`` (read in place)."""
        _noinline()
        for i in range((m + MR - 1) // MR):
            _mk(kc, a, aoff + i * a_mt, lda, sia, b, boff, 0, boffs, bk0, c, coff + i * MR * ldc,
                ldc, min(MR, m - i * MR), n_valid, bias, bias_off + i * MR, init, MR, nv, True, 0)

    return strip_tab


_strip_tab = _make_strip_tab(NV)
_strip_tab_narrow = _make_strip_tab(1)


@kernel
def _strip_row(kc, a, aoff, lda, b, boff, ldb, c, coff, n):
    """``C[0, 0:n] += A[k-block, 0] @ B[k-block, 0:n]`` for a one-row ``C`` (``A[k, 0] =
    a[aoff + k*lda]``, ``B[k, j] = b[boff + k*ldb + j]``, ``C[0, j] = c[coff + j]``), four
    vectors of columns per micro-kernel call: an ``MR``-row tile would spend most of its FMAs
    on rows that do not exist."""
    _noinline()
    width = 4 * _lanes(c)
    for j in range(0, n, width):
        _mk(kc, a, aoff, lda, 0, b, boff + j, ldb, c, 0, c, coff + j, 0, 1, min(width, n - j), c,
            0, 0, 1, 4, False, 0)


# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------

@kernel
def _gemm_tile(t, af, lda, bf, ldb, cf, ldc, m, n, k, mc, nc, kc, pack_b, bpk, overwrite):
    _noinline()
    lanes = _lanes(cf)
    nr = NV * lanes
    n_nb = (n + nc - 1) // nc
    mb = t // n_nb
    nb = t - mb * n_nb
    m0 = mb * mc
    mcur = min(mc, m - m0)
    n0 = nb * nc
    ncur = min(nc, n - n0)
    n_np = (ncur + nr - 1) // nr
    for k0 in range(0, k, kc):
        kcur = min(kc, k - k0)
        if pack_b:
            _pack_b(bf, k0 * ldb + n0, ldb, kcur, ncur, bpk)
            bsrc, bld, bstep, bbase = bpk, nr, kcur * nr, 0
        else:
            bsrc, bld, bstep, bbase = bf, ldb, nr, k0 * ldb + n0
        for jp in range(n_np):
            nvalid = min(nr, ncur - jp * nr)
            if nvalid <= lanes:
                _strip_narrow(kcur, af, m0 * lda + k0, MR * lda, 1, lda, bsrc,
                              bbase + jp * bstep, bld, cf, m0 * ldc + n0 + jp * nr, ldc, mcur,
                              nvalid, cf, 0, 2 if overwrite and k0 == 0 else 0)
            else:
                _strip(kcur, af, m0 * lda + k0, MR * lda, 1, lda, bsrc, bbase + jp * bstep, bld,
                       cf, m0 * ldc + n0 + jp * nr, ldc, mcur, nvalid, cf, 0,
                       2 if overwrite and k0 == 0 else 0)


@parallel_kernel
def _gemm_driver(af, lda, ga, bf, ldb, gb, cf, ldc, gc, groups, m, n, k, mc, nc, kc, pack_b,
                 ws_b, overwrite):
    """``groups`` independent products, product ``g`` on ``af[g*ga:]``, ``bf[g*gb:]``,
    ``cf[g*gc:]``; one parallel region for all of them."""
    per_group = ((m + mc - 1) // mc) * ((n + nc - 1) // nc)
    for t in prange(groups * per_group):
        g = t // per_group
        _gemm_tile(np.int64(t - g * per_group), af[g * ga:], lda, bf[g * gb:], ldb, cf[g * gc:],
                   ldc, m, n, k, mc, nc, kc, pack_b, ws_b[numba.get_thread_id()], overwrite)


def _flat_rows(arr):
    """A 1-d view of a 2-d array with unit column stride, and its row stride (elements)."""
    rows, cols = arr.shape
    isz = arr.itemsize
    ld = arr.strides[0] // isz if rows > 1 else cols
    length = (rows - 1) * ld + cols if rows and cols else 0
    return np.lib.stride_tricks.as_strided(arr, shape=(length,), strides=(isz,)), ld


def _k_block(k, itemsize):
    """KC: K cut into equal blocks of at most ``_KC_BYTES / (NR*itemsize)`` rows, so that the
    B panel a micro-kernel call streams (KC x NR) stays in L1."""
    kmax = max(16, _KC_BYTES // (NV * _VBYTES))
    return -(-k // -(-k // kmax))


def _l1_hostile(ld, itemsize):
    """Whether rows ``ld`` elements apart map to so few L1 sets that a KC x NR panel read in
    place would evict itself (48 KiB, 12-way, 64 sets of 64-byte lines)."""
    stride = ld * itemsize
    if stride % 64:
        return False
    step = (stride // 64) % 64
    sets = 64 // np.gcd(step, 64) if step else 1
    return sets < 16


@functools.lru_cache(maxsize=256)
def _gemm_blocks(m, n, k, itemsize, groups=1):
    """Blocks ``(MC, NC, KC)`` of a GEMM (one of ``groups`` alike): a function of the shapes
    alone (never of threads).

    The A block (MC x KC) and the B block (KC x NC) each stay within a fraction of the 1 MiB L2;
    among such blocks the one with the least modelled time on two threads wins (prange hands each
    thread a contiguous half of the tiles; see :func:`_plan`). Cutting by cache size alone left
    the halves uneven (7 tiles, 4 against 3): interleaved, 5 rounds, 2 threads, float32, 128 x
    784 x 1152 133-148 -> 192 GFLOP/s, 1024 x 196 x 512 133 -> 180, 256 x 196 x 2304 140 -> 175,
    32 x 784 x 192 109 -> 140 (NumPy's 195, 198, 191, 145)."""
    nr = NV * (_VBYTES // itemsize)
    kc = _k_block(k, itemsize)
    n_mt, n_np = -(-m // MR), -(-n // nr)
    mt_max = max(1, _A_BLOCK_BYTES // (kc * itemsize) // MR)   # micro-panels per block
    np_max = max(1, _B_BLOCK_BYTES // (kc * itemsize) // nr)
    fewest = min(_MIN_TILES, groups * n_mt * n_np)
    best = None
    for per_n in _block_sizes(n_np, np_max):
        pans = _block_lengths(n_np, per_n)
        for per_m in _block_sizes(n_mt, mt_max):
            mts = _block_lengths(n_mt, per_m)
            if groups * mts.size * pans.size < fewest:
                continue
            score = _two_thread_score(
                (mts[:, None] * pans[None, :] * (k * _C_FMA) + _C_TILE).ravel(), groups)
            if best is None or score < best[0] - 1e-9:
                best = (score, per_m * MR, per_n * nr)
    return best[1], best[2], kc


def _two_thread_score(tile, repeats):
    """Modelled time of a parallel loop over ``tile`` (cycles per item, in prange order)
    repeated ``repeats`` times: the longer of the two contiguous halves prange hands two
    threads, plus a little of the total work."""
    seq = np.tile(tile, repeats)
    half = -(-seq.size // 2)
    return max(seq[:half].sum(), seq[half:].sum()) + 0.05 * seq.sum()


def _block_sizes(units, most):
    """Candidate block lengths (in units) for ``units`` cut into 1..64 blocks, none above
    ``most`` (at least the largest allowed)."""
    sizes = {-(-units // parts) for parts in range(1, min(units, 64) + 1)}
    return sorted({s for s in sizes if s <= most} | {min(units, most)})


def _block_lengths(units, size):
    """Lengths of the blocks of ``size`` units cutting ``units`` (the last one shorter)."""
    count = -(-units // size)
    lengths = np.full(count, size, dtype=np.float64)
    lengths[-1] = units - size * (count - 1)
    return lengths


def gemm(a, b, c):
    """``c += a @ b`` for 2-d float32 or float64 arrays, computed in place.

    Parameters
    ----------
    a : ndarray, shape (M, K)
    b : ndarray, shape (K, N)
    c : ndarray, shape (M, N)
        Same dtype. ``c`` may be a view with any row stride; columns of ``a``, ``b``, ``c``
        should be contiguous (other layouts are copied; ``c`` then through a temporary).

    Notes
    -----
    Element ``c[i, j]`` becomes ``fma(a[i, K-1], b[K-1, j], ... fma(a[i, 0], b[0, j], c[i, j]))``:
    one fixed order, so results are identical for any thread count.
    """
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0 or k == 0:
        return
    dt = c.dtype
    if a.strides[1] != a.itemsize or a.dtype != dt:
        a = np.ascontiguousarray(a, dtype=dt)
    if b.strides[1] != b.itemsize or b.dtype != dt:
        b = np.ascontiguousarray(b, dtype=dt)
    if c.strides[1] != c.itemsize or c.strides[0] < 0:
        tmp = np.ascontiguousarray(c)
        gemm(a, b, tmp)
        c[...] = tmp
        return
    af, lda = _flat_rows(a)
    bf, ldb = _flat_rows(b)
    cf, ldc = _flat_rows(c)
    gemm_grouped(af, lda, 0, bf, ldb, 0, cf, ldc, 0, 1, m, n, k)


def gemm_grouped(af, lda, ga, bf, ldb, gb, cf, ldc, gc, groups, m, n, k, overwrite=False):
    """``C_g += A_g @ B_g`` (``C_g = A_g @ B_g`` with ``overwrite``: ``C`` is never read) for
    ``g < groups``, all in one parallel region.

    ``A_g[i, kk] = af[g*ga + i*lda + kk]`` (``M x K``), ``B_g[kk, j] = bf[g*gb + kk*ldb + j]``
    (``K x N``), ``C_g[i, j] = cf[g*gc + i*ldc + j]`` (``M x N``): 1-d arrays of one dtype with
    row strides in elements. Same summation order as :func:`gemm`.
    """
    if groups == 0 or m == 0 or n == 0 or k == 0:
        return
    itemsize = cf.itemsize
    mc, nc, kc = _gemm_blocks(m, n, k, itemsize, groups)
    nthreads = numba.config.NUMBA_NUM_THREADS
    nr = NV * (_VBYTES // itemsize)
    pack_b = _l1_hostile(ldb, itemsize) or n < nr
    b_len = -(-nc // nr) * nr * kc if pack_b else 1
    ws_b = aligned("gemm.b", nthreads * b_len, cf.dtype).reshape(nthreads, b_len)
    _gemm_driver(af, lda, ga, bf, ldb, gb, cf, ldc, gc, groups, m, n, k, mc, nc, kc, pack_b,
                 ws_b, overwrite)


# ---------------------------------------------------------------------------------------------
# Implicit-GEMM convolution
# ---------------------------------------------------------------------------------------------

PackedGemmWeights = collections.namedtuple(
    "PackedGemmWeights", "data groups cout cin_g kh kw panels")
PackedGemmWeights.__doc__ = """Convolution weights prepared as the GEMM's A operand.

``data`` is 1-d. With ``panels`` true it holds, per group, ``ceil(cout_g / MR)`` panels of
``K x MR`` values (``K = cin_g*kh*kw``, ``k = (ci*kh + ky)*kw + kx``; rows past ``cout_g``
zero): the ``MR`` weights one micro-kernel step broadcasts are adjacent, so each call streams
one contiguous block. Otherwise it is the ``(C_out, K)`` weight matrix itself."""


@kernel
def _pack_weight_panels(wf, cout, groups, k, dst):
    zero = dst.dtype.type(0)
    cog = cout // groups
    n_mt = (cog + MR - 1) // MR
    for g in range(groups):
        for mt in range(n_mt):
            base = (g * n_mt + mt) * k * MR
            for r in range(MR):
                co = mt * MR + r
                if co < cog:
                    src = (g * cog + co) * k
                    for kk in range(k):
                        dst[base + kk * MR + r] = wf[src + kk]
                else:
                    for kk in range(k):
                        dst[base + kk * MR + r] = zero


def pack_weights(w, groups):
    """Pack convolution weights once for :func:`conv2d_implicit_gemm_packed`.

    Parameters
    ----------
    w : ndarray, shape (C_out, C_in // groups, kH, kW)
        Float32 or float64.
    groups : int
        Number of groups (divides ``C_out``).

    Returns
    -------
    PackedGemmWeights
        Reusable for any input size, stride, padding and dilation with the same ``w`` and
        ``groups``; a copy (``w`` may change afterwards). Costs one pass over ``w``.
    """
    cout, cin_g, kh, kw = w.shape
    k = cin_g * kh * kw
    n_mt = -(-(cout // groups) // MR)
    data = np.empty(groups * n_mt * k * MR, dtype=w.dtype)
    _pack_weight_panels(np.ascontiguousarray(w).reshape(-1), cout, groups, k, data)
    return PackedGemmWeights(data, groups, cout, cin_g, kh, kw, True)


def _unpacked_weights(w, groups):
    cout, cin_g, kh, kw = w.shape
    return PackedGemmWeights(np.ascontiguousarray(w).reshape(-1), groups, cout, cin_g, kh, kw,
                             False)


@kernel
def _copy_row(src, soff, dst, doff, n):
    """``dst[doff:doff+n] = src[soff:soff+n]`` by vectors; touches nothing outside."""
    lanes = _lanes(dst)
    for j in range(0, n, lanes):
        _vcopy(src, soff + j, dst, doff + j, min(lanes, n - j))


@kernel
def _zero_row(dst, doff, n):
    """``dst[doff:doff+n] = 0`` by vectors."""
    lanes = _lanes(dst)
    for j in range(0, n, lanes):
        _vzero(dst, doff + j, min(lanes, n - j))


@kernel
def _fill_band(xf, xbase, h, wd, cin_g, oy0, nrows, sh, sw, pt, pl, phases, wq, plane, band):
    """Copy the input under output rows ``oy0..`` into ``band`` as zero-padded phase planes.

    ``band[(ci*nph + p)*plane + a*wq + c]`` = padded input pixel
    ``((oy0 + a)*sh + ph, c*sw + pw)`` of channel ``ci`` (``(ph, pw) = phases[p]``) for
    ``a < nrows``, ``c < wq``; i.e. input ``(iy - pad_top, ix - pad_left)`` or 0 outside.
    """
    lanes = _lanes(band)
    nph = phases.shape[0]
    for ci in range(cin_g):
        xc = xbase + ci * h * wd
        for p in range(nph):
            ph = phases[p, 0]
            pw = phases[p, 1]
            # plane columns c with 0 <= c*sw + pw - pl < wd
            clo = min(wq, max(0, -(-(pl - pw) // sw)))
            chi = max(clo, min(wq, -(-(wd + pl - pw) // sw)))
            for a in range(nrows):
                dst = (ci * nph + p) * plane + a * wq
                iy = (oy0 + a) * sh + ph - pt
                if iy < 0 or iy >= h:
                    _zero_row(band, dst, wq)
                    continue
                _zero_row(band, dst, clo)
                src = xc + iy * wd + pw - pl
                if sw == 1:
                    _copy_row(xf, src + clo, band, dst + clo, chi - clo)
                elif sw == 2:
                    for c in range(clo, chi, lanes):
                        _vcopy_s2(xf, src + c * 2, band, dst + c, min(lanes, chi - c))
                else:
                    for c in range(clo, chi, lanes):
                        _vgather(xf, src + c * sw, sw, band, dst + c, min(lanes, chi - c))
                _zero_row(band, dst + chi, wq - chi)


@kernel
def _panel_chunks(q, n, ow, wq, oyb, cdst, csrc, clen):
    """Split output pixels ``q..q+n`` (flat index, rows of ``ow``) into vector-sized chunks.

    Chunk ``i`` is ``clen[i] <= lanes`` pixels of one output row; they go to panel column
    ``cdst[i]`` and sit in a band plane at flat position ``csrc[i]`` (row pitch ``wq``, rows
    counted from output row ``oyb``). Returns the number of chunks.
    """
    lanes = _lanes(cdst)
    oy = q // ow
    ox = q - oy * ow
    j = 0
    cnt = 0
    while j < n:
        seg = min(ow - ox, n - j)
        src = (oy - oyb) * wq + ox
        for t in range(0, seg, lanes):
            cdst[cnt] = j + t
            csrc[cnt] = src + t
            clen[cnt] = min(lanes, seg - t)
            cnt += 1
        j += seg
        oy += 1
        ox = 0
    return cnt


@kernel
def _pack_panel(band, offs, k0, kc, cdst, csrc, clen, nch, bp):
    """B panel rows ``k0..k0+kc``: ``bp[kk*NR + cdst[i] + j] = band[offs[k0+kk] + csrc[i] + j]``.

    Tap ``k``'s input under output pixel ``(oy, ox)`` is at ``offs[k] + (oy - oyb)*wq + ox`` of
    the band, so a panel row is a few contiguous chunks (one vector copy each) whose positions
    are the same for every ``k``. The usual chunk counts get straight-line code with the chunk
    positions in registers (about 1.7x faster than the generic loop, which reloads them).
    """
    nr = NV * _lanes(bp)
    if nch == 2:
        d0, s0, l0 = cdst[0], csrc[0], clen[0]
        d1, s1, l1 = cdst[1], csrc[1], clen[1]
        for kk in range(kc):
            base = offs[k0 + kk]
            d = kk * nr
            _vcopy(band, base + s0, bp, d + d0, l0)
            _vcopy(band, base + s1, bp, d + d1, l1)
    elif nch == 3:
        d0, s0, l0 = cdst[0], csrc[0], clen[0]
        d1, s1, l1 = cdst[1], csrc[1], clen[1]
        d2, s2, l2 = cdst[2], csrc[2], clen[2]
        for kk in range(kc):
            base = offs[k0 + kk]
            d = kk * nr
            _vcopy(band, base + s0, bp, d + d0, l0)
            _vcopy(band, base + s1, bp, d + d1, l1)
            _vcopy(band, base + s2, bp, d + d2, l2)
    else:
        for i in range(nch):
            di, si, li = cdst[i], csrc[i], clen[i]
            for kk in range(kc):
                _vcopy(band, offs[k0 + kk] + si, bp, kk * nr + di, li)


# Integer parameters of a convolution call, in the order of the ``prm`` array (``plain``: 0 no,
# 1 yes, 2 yes and prefetching B).
_PRM = ("n_img cin h wd cout oh ow sh sw pt pl groups k wq halo rows_max n_pb n_mb kc "
        "plain w_panels in_place len_x len_w len_b len_out len_offs n_phases len_band len_bp "
        "len_chunks shift").split()
_NPRM = len(_PRM)


# Passes of a 1x1 tile over its panels (B read in place), see _plain_mt_step: the micro-tiles
# of one pass when K is short, and the most bytes of weights one pass may hold otherwise.
_PASS_MT_SHORT_K = 4
_SHORT_K_PANEL_BYTES = 16 << 10
_PASS_A_BYTES = 512 << 10
# A conv tile whose weights (A) outgrow this many bytes, more than L2 keeps beside the panels,
# runs each K block against all its panels before the next, so that they are streamed from
# the last-level cache once rather than once per panel; and the planner counts each tile's
# weights as read once (_C_A_BYTE), which favours fewer, taller tiles for weight-heavy layers.
# Float32, 2 threads, 9 alternating rounds, forced GEMM, GFLOP/s: 3x3 C512 7 211 -> 219 at
# batch 1 (two tiles of one panel and all the weights each -> two of half the weights and both
# panels), 228 -> 237 at batch 8; C512 28 264 -> 286 and 271 -> 304; C256 14 at batch 8 266 ->
# 299; C256 35 267 -> 289; C256 14, C128 28, C64 56, s2 C128 56, 1x1 s2 C512->1024 28,
# AlexNet's and ResNet's conv1 at batch 1 even. (With 1 MiB, C256 14's tiles of 1.2 MB lost
# 0-5%.)
_A_STREAM_BYTES = 3 << 19


@kernel
def _plain_mt_step(k, nr, itemsize):
    """Micro-tiles per pass of a 1x1 tile over its panels (its B read in place).

    One pass, every micro-tile for each panel in turn, writes the result as one short run per
    output channel at a time, more runs than the hardware prefetchers follow once the result
    outgrows the caches, and reads all the weights for each panel. A pass over few micro-tiles
    writes as many sequential streams and keeps their weights in L2, but reads each B panel
    once per pass: ``_PASS_MT_SHORT_K`` micro-tiles when a B panel is at most
    ``_SHORT_K_PANEL_BYTES``, else as many as hold ``_PASS_A_BYTES`` of weights.
    Float32, 2 threads, 9 alternating rounds, GFLOP/s one pass -> passes, batch 1: 1x1
    C64->256 56 290 -> 294 (8/9 faster; 278 -> 288 in another run), C2048->512 7 190 -> 204,
    C1024->256 14 256 -> 260, C128->512 28 293 -> 298, C256->64 56, C192->32 28, C512->128 28
    even; batch 8: C64->256 294 -> 319, C2048->512 211 -> 229, C1024->256 278 -> 288, the
    others 0-2% faster. Four micro-tiles per pass for long K too had cost C512->128 28 10% and
    C1024->256 14 5% at batch 1 (B panels re-read).
    """
    if k * nr * itemsize <= _SHORT_K_PANEL_BYTES:
        return _PASS_MT_SHORT_K
    return max(_PASS_MT_SHORT_K, _PASS_A_BYTES // (MR * k * itemsize))


def _conv_tile(t, xp, wp, bp_, op, prmp, offsp, php, bandp, bpp, pcp):
    """Work tile ``t``: one image, one group, a range of panels, a range of micro-tiles.

    A C-callable function (see :func:`_tile_cfunc`): pointers in, arrays rebuilt from ``prm``.
    """
    prm = numba.carray(prmp, _NPRM)
    xf = numba.carray(xp, prm[22])
    wf = numba.carray(wp, prm[23])
    bias = numba.carray(bp_, prm[24])
    of = numba.carray(op, prm[25])
    offs = numba.carray(offsp, prm[26])
    phases = numba.carray(php, (prm[27], 2))
    band = numba.carray(bandp, prm[28])
    bp = numba.carray(bpp, prm[29])
    pc = numba.carray(pcp, (3, prm[30]))
    cdst, csrc, clen = pc[0], pc[1], pc[2]
    (_, cin, h, wd, cout, oh, ow, sh, sw, pt, pl, groups, k, wq, halo, rows_max, n_pb, n_mb,
     kc, plain, w_panels, in_place) = (
        prm[0], prm[1], prm[2], prm[3], prm[4], prm[5], prm[6], prm[7], prm[8], prm[9], prm[10],
        prm[11], prm[12], prm[13], prm[14], prm[15], prm[16], prm[17], prm[18], prm[19] != 0,
        prm[20] != 0, prm[21] != 0)
    ahead = prm[19] == 2
    # plain: the first panel is this many pixels, so that the others start on a vector
    # boundary of the image (0: no such panel)
    shift = prm[31]
    lanes = _lanes(of)
    nr = NV * lanes
    cog = cout // groups
    cin_g = cin // groups
    npix = oh * ow
    n_pan = (npix - shift + nr - 1) // nr + (shift > 0)   # NR-pixel panels per image
    n_mt = (cog + MR - 1) // MR              # MR-channel micro-tiles per group
    plane = (rows_max + halo) * wq           # one phase plane of a band
    # A[k, i] of micro-tile mt of group g is wf[g*a_g + mt*a_mt + k*a_k + i*a_i]
    if w_panels:
        a_g, a_mt, a_k, a_i = n_mt * k * MR, k * MR, MR, 1
    else:
        a_g, a_mt, a_k, a_i = cog * k, MR * k, 1, k
    per_img = groups * n_pb * n_mb
    img = t // per_img
    r = t - img * per_img
    g = r // (n_pb * n_mb)
    r = r - g * (n_pb * n_mb)
    pb = r // n_mb
    mb = r - pb * n_mb
    # balanced partitions of the panels and of the micro-tiles
    pan0 = pb * n_pan // n_pb
    pan1 = (pb + 1) * n_pan // n_pb
    mt0 = mb * n_mt // n_mb
    mt1 = (mb + 1) * n_mt // n_mb
    if pan1 <= pan0 or mt1 <= mt0:
        return
    xbase = (img * cin + g * cin_g) * h * wd
    obase = (img * cout + g * cog) * npix
    oyb = pan0 * nr // ow
    if not plain:
        oye = (min(npix, pan1 * nr) - 1) // ow
        _fill_band(xf, xbase, h, wd, cin_g, oyb, oye - oyb + 1 + halo, sh, sw, pt, pl,
                   phases, wq, plane, band)
    mt_step = _plain_mt_step(k, nr, of.itemsize) if plain else mt1 - mt0
    n_kb = (k + kc - 1) // kc
    n_jp = pan1 - pan0
    # Weights too large for L2 would be streamed again for every panel: then each K block of
    # them meets all the tile's panels before the next (same sums, in the same order).
    k_outer = (not plain and n_jp > 1
               and (mt1 - mt0) * MR * k * of.itemsize > _A_STREAM_BYTES)
    nch = 0
    for mtb in range(mt0, mt1, mt_step):
        mte = min(mt1, mtb + mt_step)
        for step in range(n_jp * n_kb):
            if k_outer:
                kb = step // n_jp
                jp = pan0 + step - kb * n_jp
            else:
                jp = pan0 + step // n_kb
                kb = step - (jp - pan0) * n_kb
            k0 = kb * kc
            q = jp * nr if shift == 0 else (0 if jp == 0 else shift + (jp - 1) * nr)
            nvalid = min(nr, npix - q) if shift == 0 or jp > 0 else shift
            # A panel within one output row is read from the band in place (B[k] at
            # offs[k] + its position); others are packed, a few contiguous chunks per k.
            in_row = in_place and not plain and q // ow == (q + nvalid - 1) // ow
            if not plain and (k_outer or kb == 0):
                nch = _panel_chunks(q, nvalid, ow, wq, oyb, cdst, csrc, clen)
            kcur = min(kc, k - k0)
            if plain:
                # 1x1, stride 1, no padding: B is the input itself, (C_in, H*W) row-major
                bsrc, bbase, bld = xf, xbase + k0 * npix + q, npix
            elif in_row:
                bsrc, bbase, bld = band, csrc[0], 0
            else:
                _pack_panel(band, offs, k0, kcur, cdst, csrc, clen, nch, bp)
                bsrc, bbase, bld = bp, 0, nr
            aoff = g * a_g + mtb * a_mt + k0 * a_k
            coff = obase + mtb * MR * npix + q
            m = min(cog, mte * MR) - mtb * MR
            co = g * cog + mtb * MR
            init = 1 if k0 == 0 else 0
            if in_row and nvalid <= lanes:
                _strip_tab_narrow(kcur, wf, aoff, a_mt, a_k, a_i, bsrc, bbase, offs, k0, of,
                                  coff, npix, m, nvalid, bias, co, init)
            elif in_row:
                _strip_tab(kcur, wf, aoff, a_mt, a_k, a_i, bsrc, bbase, offs, k0, of, coff,
                           npix, m, nvalid, bias, co, init)
            elif ahead:
                _strip_ahead(kcur, wf, aoff, a_mt, a_k, a_i, bsrc, bbase, bld, of, coff,
                             npix, m, nvalid, bias, co, init)
            elif nvalid <= lanes:
                _strip_narrow(kcur, wf, aoff, a_mt, a_k, a_i, bsrc, bbase, bld, of, coff,
                              npix, m, nvalid, bias, co, init)
            else:
                _strip(kcur, wf, aoff, a_mt, a_k, a_i, bsrc, bbase, bld, of, coff, npix,
                       m, nvalid, bias, co, init)


_tile_cfuncs = {}


def _tile_cfunc(dtype):
    """The compiled tile function for ``dtype``, as a C function pointer.

    Why not a plain call from the driver: a ``prange`` driver links in the IR of every kernel it
    calls and LLVM optimises all of it again, which doubled the cold compile time (7 s against
    4 s here). Called through a pointer, the driver's own module stays tiny. Same compile
    options as :mod:`numbaconv._jit`; compiled on first use of a dtype and cached on disk.
    """
    f = _tile_cfuncs.get(dtype)
    if f is None:
        fp = types.CPointer(numba.from_dtype(dtype))
        ip = types.CPointer(types.int64)
        sig = types.void(types.int64, fp, fp, fp, fp, ip, ip, ip, fp, fp, ip)
        f = _tile_cfuncs[dtype] = numba.cfunc(sig, cache=True, fastmath=set(FASTMATH),
                                              error_model="numpy")(_conv_tile)
    return f


@intrinsic
def _call_tile(typingctx, address, t, xf, wf, bias, of, prm, offs, phases, band, bp, pc):
    """Call the C function at ``address`` (:func:`_conv_tile`'s signature) with ``t`` and the
    arrays' data pointers. An integer address costs nothing to pass in; a function object
    argument costs Numba a typing step on every call (tens of microseconds)."""
    sig = types.void(address, t, xf, wf, bias, of, prm, offs, phases, band, bp, pc)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        ptrs = [context.make_array(ty)(context, builder, v).data
                for ty, v in zip(signature.args[2:], args[2:])]
        fnty = ir.FunctionType(ir.VoidType(), [i64] + [p.type for p in ptrs])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [args[1]] + ptrs)
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def _conv_driver(tile, xf, wf, bias, of, prm, offs, phases, ws_band, ws_b, ws_pc):
    n_tiles = prm[0] * prm[11] * prm[16] * prm[17]      # images x groups x panel blocks x M blocks
    for t in prange(n_tiles):
        tid = numba.get_thread_id()
        _call_tile(tile, np.int64(t), xf, wf, bias, of, prm, offs, phases, ws_band[tid],
                   ws_b[tid], ws_pc[tid])


def _is_plain_gemm(kh, kw, sh, sw, pt, pl, oh, ow, h, wd):
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and \
        oh == h and ow == wd


_ConvPlan = collections.namedtuple(
    "_ConvPlan", "plain phases offs wq halo rows_max n_pb n_mb kc band_len")

# Cost model (cycles) used to pick the tiling; only relative values matter.
_C_FMA = MR * NV / 2.0   # one micro-kernel k step (MR*NV FMAs at 2 per cycle)
_C_CHUNK = 2.5       # one chunk of a B panel row (masked load + store; lines split)
_C_FILL = 0.25       # one band element (vector copy), x4 for strided gathers
_C_TILE = 3000.0     # fixed cost of a tile (set-up, pipeline warm-up)
_C_A_BYTE = 0.1      # one byte of a tile's weights (each tile reads its own once)


def _split_sizes(total, parts):
    return np.diff(np.arange(parts + 1) * total // parts)


@functools.lru_cache(maxsize=256)
def _plan(n_img, cin, h, wd, cout, oh, ow, kh, kw, groups, sh, sw, pt, pl, dh, dw, itemsize):
    """Geometry and tiling of one convolution shape: a function of the shape alone."""
    lanes = _VBYTES // itemsize
    nr = NV * lanes
    cin_g, cog = cin // groups, cout // groups
    k = cin_g * kh * kw
    npix = oh * ow
    plain = _is_plain_gemm(kh, kw, sh, sw, pt, pl, oh, ow, h, wd)
    ty = np.arange(kh) * dh
    tx = np.arange(kw) * dw
    used = sorted({(int(a % sh), int(c % sw)) for a in ty for c in tx})
    phases = np.array(used, dtype=np.int64).reshape(-1, 2)
    wq = ow + ((kw - 1) * dw) // sw
    halo = ((kh - 1) * dh) // sh
    kc = _k_block(k, itemsize)
    n_pan = -(-npix // nr)
    n_mt = -(-cog // MR)

    # Choose (panel blocks, M blocks) minimising the modelled time on two threads (prange
    # hands each thread one contiguous half of the tiles), plus a little of the total work.
    row_cost = 0.0 if plain else cin_g * len(used) * wq * _C_FILL * {1: 1, 2: 2}.get(sw, 8)
    chunks_per_panel = 0.0 if plain else NV + min(nr, ow) / ow
    max_band = _BAND_BYTES // max(1, cin_g * len(used) * wq * itemsize)
    cand_pb = set(range(1, min(n_pan, 64) + 1)) | {-(-n_pan // m) for m in range(1, 65)}
    cand_mb = range(1, min(n_mt, 32) + 1)
    n_outer = n_img * groups
    best = None
    for n_pb in sorted(cand_pb):
        pans = _split_sizes(n_pan, n_pb)
        rows = np.minimum(oh, -(-(pans * nr) // ow) + 1) + halo
        if not plain and rows.max() > max(max_band, 2 + halo):
            continue
        for n_mb in cand_mb:
            if n_outer * n_pb * n_mb > 4096:
                break
            mts = _split_sizes(n_mt, n_mb)
            a_cost = mts * (MR * k * itemsize * _C_A_BYTE)
            tile = (pans[:, None] * k * (mts[None, :] * _C_FMA + chunks_per_panel * _C_CHUNK)
                    + (rows * row_cost)[:, None] + a_cost[None, :] + _C_TILE).ravel()
            score = _two_thread_score(tile, n_outer)
            if best is None or score < best[0] - 1e-9:
                best = (score, n_pb, n_mb)
    _, n_pb, n_mb = best
    rows_max = int(min(oh, -(-(-(-n_pan // n_pb) * nr) // ow) + 1))
    plane = (rows_max + halo) * wq
    offs = np.zeros(k, dtype=np.int64)
    band_len = 0
    if not plain:
        pidx = {pq: i for i, pq in enumerate(used)}
        tap = np.array([pidx[(int(a % sh), int(c % sw))] * plane + (a // sh) * wq + c // sw
                        for a in ty for c in tx], dtype=np.int64)
        offs[:] = (np.arange(cin_g, dtype=np.int64)[:, None] * (len(used) * plane)
                   + tap[None, :]).reshape(-1)
        band_len = cin_g * len(used) * plane
    offs.setflags(write=False)
    phases.setflags(write=False)
    return _ConvPlan(plain, phases, offs, wq, halo, rows_max, n_pb, n_mb, kc, band_len)


def workspace_bytes(n_img, cin, h, wd, cout, oh, ow, kh, kw, groups, stride_h, stride_w,
                    pad_top, pad_left, dil_h, dil_w, itemsize):
    """Peak extra memory (bytes) of one :func:`conv2d_implicit_gemm_packed` call."""
    p = _plan(n_img, cin, h, wd, cout, oh, ow, kh, kw, groups, stride_h, stride_w, pad_top,
              pad_left, dil_h, dil_w, itemsize)
    nr = NV * (_VBYTES // itemsize)
    per_thread = p.band_len + (0 if p.plain else p.kc * nr) + 6 * nr
    return numba.config.NUMBA_NUM_THREADS * per_thread * itemsize + p.offs.nbytes


def conv2d_implicit_gemm_packed(x, pw, b, out, stride_h, stride_w, pad_top, pad_left,
                                dil_h, dil_w):
    """:func:`conv2d_implicit_gemm` with weights prepared by :func:`pack_weights`.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    pw : PackedGemmWeights
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        C-contiguous, same dtype as ``x`` and ``pw.data`` (float32 or float64). Every element is
        written.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w : int
    """
    n_img, cin, h, wd = x.shape
    cout, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    groups, kh, kw = pw.groups, pw.kh, pw.kw
    if out.size == 0:
        return
    p = _plan(n_img, cin, h, wd, cout, oh, ow, kh, kw, groups, stride_h, stride_w, pad_top,
              pad_left, dil_h, dil_w, x.itemsize)
    nthreads = numba.config.NUMBA_NUM_THREADS
    nr = NV * (_VBYTES // x.itemsize)
    # per-thread rows of whole cache lines, from a line (no vector load straddles two: 1x1 s2
    # C512->1024 28 217 -> 226 GFLOP/s, 3x3 C256 14 through the GEMM 219 -> 236)
    line = 64 // x.itemsize
    band_len, b_len = -(-max(1, p.band_len) // line) * line, 1 if p.plain else p.kc * nr
    ws_band = aligned("gemm.band", nthreads * band_len, x.dtype).reshape(nthreads, band_len)
    ws_b = aligned("gemm.b", nthreads * b_len, x.dtype).reshape(nthreads, b_len)
    ws_pc = np.empty((nthreads, 3, 2 * nr), dtype=np.int64)
    xf, of = x.reshape(-1), out.reshape(-1)
    prm = np.array([n_img, cin, h, wd, cout, oh, ow, stride_h, stride_w, pad_top, pad_left,
                    groups, pw.cin_g * kh * kw, p.wq, p.halo, p.rows_max, p.n_pb, p.n_mb, p.kc,
                    2 if p.plain and oh * ow * x.itemsize >= _AHEAD_PLANE_BYTES else p.plain,
                    pw.panels, _IN_PLACE, xf.size, pw.data.size, b.size, of.size,
                    p.offs.size, p.phases.shape[0], ws_band.shape[1], ws_b.shape[1],
                    ws_pc.shape[2], _panel_shift(p.plain, xf, oh * ow)], dtype=np.int64)
    _conv_driver(_tile_cfunc(x.dtype).address, xf, pw.data, b, of, prm, p.offs, p.phases,
                 ws_band, ws_b, ws_pc)


def _panel_shift(plain, xf, npix):
    """Width of a first, narrower panel that puts every other panel of a 1x1 layer's in-place
    input on a vector boundary (0 when they already are, or when the image planes are not whole
    vectors, so that no one shift aligns every channel). The panels partition the pixels, whose
    sums do not depend on it. A vector load across a cache line boundary costs two: float32, 2
    threads, ResNet-50's 1x1 C64->256 on 56x56 read 16 bytes past a line boundary ran 259
    GFLOP/s, aligned 275-281, MobileNetV2's 1x1 C192->32 on 28x28 174 against 199. With the
    shift (alternating): C256->64 56 175 -> 201, C64->256 225 -> 234, C192->32 even."""
    return row_shift(xf, npix, _VBYTES // xf.itemsize) if plain else 0


def conv2d_implicit_gemm(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                         groups):
    """Forward 2-D convolution by implicit GEMM, written into ``out``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in // groups, kH, kW)
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        All C-contiguous, one dtype (float32 or float64). ``OH, OW`` imply the bottom and
        right padding. Every element is written.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups : int

    Notes
    -----
    ``out[n, co, oy, ox] = b[co] + sum_{ci, ky, kx} w[co, ci, ky, kx] * x[n, g*Cg + ci, iy, ix]``
    accumulated bias first, then one FMA per ``(ci, ky, kx)`` in lexicographic order, whatever the
    thread count.
    """
    # The weights as they are: packing them would cost more than it saves in a single call
    # when there are few output pixels (one pass over w against oh*ow FMAs per weight).
    conv2d_implicit_gemm_packed(x, _unpacked_weights(w, groups), b, out, stride_h, stride_w,
                                pad_top, pad_left, dil_h, dil_w)
