"""Register-tiled direct 2-D convolution (forward), for any groups, stride, dilation, padding.

What it computes
----------------
``out[n, co] = b[co] + sum_{ci, ky, kx} w[co, ci, ky, kx] * x[n, g*Cg_in + ci, iy, ix]`` with
``iy = oy*stride_h - pad_top + ky*dil_h`` (likewise ``ix``), zeros outside the input, i.e.
``torch.nn.functional.conv2d``. Every output element is the bias followed by one fused
multiply-add per tap in an order fixed by the layer's shape alone - (ci, ky, kx), or (ci, kx, ky)
for the row-reuse kernel below - so results do not depend on the tiling or the thread count.

Tiling strategy (and why)
-------------------------
*Output pixels live in the SIMD lanes.* A parallel work item takes a band of output rows of one
image and one group. It copies the input rows the band needs into a per-thread scratch buffer,
zero padded and split into ``stride_h * stride_w`` phase planes (plane ``(ph, pw)`` holds padded
input pixel ``(a*stride_h + ph, b*stride_w + pw)`` at ``(a, b)``) of row pitch
``Wq = OW + ((kW-1)*dil_w) // stride_w``. There the input under output pixel ``(oy, ox)`` for tap
``(ci, ky, kx)`` is at ``q + off[ci, ky, kx]``, with the flat index ``q = oy*Wq + ox``: consecutive
``q`` are consecutive in memory for *every* stride, dilation and padding. So

* the hot loop has no border tests and no gathers (padding is materialised, strides are undone
  by the phase split), and a table ``off`` covers every kernel size;
* ``q`` runs across row ends, so narrow outputs (7x7, 14x14) still fill whole vectors; the price
  is ``Wq - OW`` padding columns per row (computed, never stored);
* the copy is per band and stays in cache; it costs O(input) against O(MACs).

The micro-kernel ``_microkernel`` is written in LLVM IR (a Numba intrinsic) so the accumulators
are guaranteed to be SSA values, i.e. registers, and the FMAs packed (LLVM does not reliably keep
an accumulator tile held in arrays in registers). It holds ``V`` vectors of consecutive ``q``
(``V*L`` pixels, ``L`` lanes per 64-byte register) times ``C`` output channels: per tap it loads
``V`` input vectors and broadcasts ``C`` weights for ``V*C`` FMAs, ``V*C = 24`` of the 32 AVX-512
registers. ``C`` (8, 4 or 1) comes from the channels per group, so narrow groups (ResNeXt: 4) or
single output channels use more pixel vectors rather than waste lanes. Calls read the weights in
place (the ``C`` rows of ``w`` are ``C`` sequential streams); plans copy them once into blocks
with the ``C`` weights of a tap adjacent, which saves the broadcasts' address arithmetic (about
4% on Intel cores; on the Zen 4 guest the rows had been as fast as a packed copy).

A tile's taps read, per input channel, a segment of its pixels in every phase plane and row
the kernel touches; with strides these segments of all channels outgrow the L1 data cache, and
each channel block of a work item would fetch them again from L2 (one thread, 3x3 s2 C128 56:
the tile loop ran at 131 GFLOP/s, at 167 with every channel's taps pointed at one channel's
segments). Strided layers with few weights therefore run a tile's taps in blocks of input
channels, each block for all channel blocks, keeping partial sums in a small buffer between
blocks (see ``_tap_block``).

With one output channel per tile each tap costs a vector load per FMA, and loads become the
limit. For stride_h = dil_h = 1 and kH >= 3, ``_microkernel_rows`` holds 4 output rows x 6 vectors
instead and loads each input row once for the up to 4 output rows it feeds (with different ky),
about 0.4 loads per FMA for a 7x7 kernel.

Tiles are stored straight from the registers when a vector lies inside one output row, and with
one masked store per row segment otherwise (vectors crossing a row end or the band end). While a
tile of ``_microkernel`` runs, the output lines of the next one are prefetched for writing.
Results too large to stay in the last-level cache are instead stored non-temporally, without
reading the lines first, on flat pixel rows padded to whole vectors so that every such store is
aligned (see ``_STREAM_BYTES``).
"""

import collections
import functools
import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from numbaconv import _threads
from numbaconv._jit import kernel, parallel_kernel, vector_bytes
from numbaconv.kernels.prefetch import emit_prefetch
from numbaconv.kernels.scratch import aligned, buffer


_VBYTES = vector_bytes()
# Accumulator registers of a tile: 24 of the 32 zmm registers with AVX-512, leaving room for
# the loaded input vectors and a broadcast weight; 12 of 16 otherwise.
_NACC = 24 if _VBYTES == 64 else 12
# Row-reuse tile: _ROWS output rows x _NACC // _ROWS vectors, for kH >= _ROWS - 1.
_ROWS = 4


# ---------------------------------------------------------------------------------------------
# LLVM-IR code generation helpers
# ---------------------------------------------------------------------------------------------

class _LoopID(ir.values.MDValue):
    """Self-referential loop-ID metadata node (``!0 = !{!0, !1}``), compared by identity."""

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


def _loop_metadata(module, *flags):
    props = [module.add_metadata([ir.MetaDataString(module, f)]) for f in flags]
    node = _LoopID(module, [], name=str(len(module.metadata)))
    node.operands = tuple([node] + props)
    return node


class _Gen:
    """Vector code generation for one micro-kernel call (``dtype`` = the arrays' dtype)."""

    def __init__(self, context, builder, dtype):
        self.context = context
        self.b = builder
        self.fty = context.get_value_type(dtype)
        self.isz = context.get_abi_sizeof(self.fty)
        self.lanes = _VBYTES // self.isz
        self.vty = ir.VectorType(self.fty, self.lanes)
        self.i64 = ir.IntType(64)
        self.i32 = ir.IntType(32)
        self.zeros_mask = ir.Constant(ir.VectorType(self.i32, self.lanes), [0] * self.lanes)
        sfx = "v%d%s" % (self.lanes, "f32" if self.isz == 4 else "f64")
        mod = builder.module
        self._fma = cgutils.get_or_insert_function(
            mod, ir.FunctionType(self.vty, [self.vty] * 3), "llvm.fma." + sfx)
        mty = ir.VectorType(ir.IntType(1), self.lanes)
        self._mstore = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [self.vty, self.vty.as_pointer(), self.i32, mty]),
            "llvm.masked.store.%s.p0" % sfx)
        self._nontemporal = mod.add_metadata([ir.Constant(self.i32, 1)])

    def const(self, n):
        return ir.Constant(self.i64, n)

    def store_streaming(self, val, ptr):
        """Store vector ``val`` at ``ptr`` (vector aligned) around the caches (``vmovntps``;
        a plain store where the target has no such instruction)."""
        self.b.store(val, ptr, align=_VBYTES).set_metadata("nontemporal", self._nontemporal)

    def int64(self, v):
        return self.b.sext(v, self.i64) if v.type != self.i64 else v

    def data(self, aty, val):
        return self.context.make_array(aty)(self.context, self.b, val).data

    def gep(self, ptr, idx, inbounds=True):
        return self.b.gep(ptr, [idx], inbounds=inbounds)

    def smin(self, a, c):
        return self.b.select(self.b.icmp_signed("<", a, c), a, c)

    def splat(self, s, vty=None):
        vty = vty or self.vty
        undef = ir.Constant(vty, ir.Undefined)
        v = self.b.insert_element(undef, s, ir.Constant(self.i32, 0))
        return self.b.shuffle_vector(v, undef, self.zeros_mask)

    def bcast(self, ptr):
        """Broadcast the scalar at ``ptr``."""
        return self.splat(self.b.load(ptr, typ=self.fty))

    def vptr(self, ptr):
        return self.b.bitcast(ptr, self.vty.as_pointer())

    def vload(self, ptr):
        return self.b.load(self.vptr(ptr), align=self.isz, typ=self.vty)

    def fma(self, a, c, acc):
        return self.b.call(self._fma, [a, c, acc])

    def no_unroll(self, branch):
        # A second copy of a tap-loop body would need a second set of loaded input vectors
        # and broadcasts; with 24 live accumulators LLVM then spills.
        branch.set_metadata("llvm.loop", _loop_metadata(self.b.module, "llvm.loop.unroll.disable"))

    def loop(self, start, stop, state, body):
        """Emit ``for i in range(start, stop)`` carrying the SSA values ``state``.

        ``body(i, state) -> state``. Returns the state after the loop (also if it ran 0 times).
        """
        b = self.b
        pre = b.block
        head = b.append_basic_block("loop")
        done = b.append_basic_block("loop.done")
        b.cbranch(b.icmp_signed("<", start, stop), head, done)
        b.position_at_end(head)
        i = b.phi(self.i64)
        i.add_incoming(start, pre)
        phis = []
        for s in state:
            p = b.phi(s.type)
            p.add_incoming(s, pre)
            phis.append(p)
        new = body(i, phis)
        latch = b.block
        inext = b.add(i, self.const(1))
        i.add_incoming(inext, latch)
        for p, s in zip(phis, new):
            p.add_incoming(s, latch)
        self.no_unroll(b.cbranch(b.icmp_signed("<", inext, stop), head, done))
        b.position_at_end(done)
        out = []
        for s, n in zip(state, new):
            p = b.phi(s.type)
            p.add_incoming(s, pre)
            p.add_incoming(n, latch)
            out.append(p)
        return out

    def prefetch_for_write(self, q, span, nc, wq, ow, optr, obase, ostride):
        """Ask for the output lines of flat pixels ``q .. q+span-1`` of ``nc`` channels in L1,
        for writing (``prefetchw``). Approximate where they cross a row end; prefetches do not
        fault, so addresses past the array are harmless."""
        b = self.b
        row = b.sdiv(q, wq)
        first = b.add(obase, b.add(b.mul(row, ow), b.sub(q, b.mul(row, wq))))
        for c in range(nc):
            at = b.add(first, b.mul(self.const(c), ostride))
            for l in range(0, span + self.lanes, self.lanes):  # a span of n lines may touch n+1
                emit_prefetch(b, self.gep(optr, b.add(at, self.const(l)), False), write=True)

    def store_tile(self, res, nc, nrow, nv, q0, q1, wq, ow, optr, obase, ostride,
                   streaming=None):
        """Store a tile of ``nc`` channels x ``nrow`` rows x ``nv`` vectors.

        ``res[(c*nrow + r)*nv + v]`` holds flat pixels ``qa .. qa+L-1`` of channel ``c`` with
        ``qa = q0 + r*wq + v*L``; pixel ``q = row*wq + col`` goes to
        ``out[obase + c*ostride + row*ow + col]`` if ``q < q1`` and ``col < ow``.
        Vectors inside one output row are stored straight from the registers; the others are
        marked in a bit mask and stored afterwards, by one loop (not an unrolled copy per
        vector: that would double the compile time) that reads the tile back from a stack
        buffer and issues one masked store per row segment. Where ``streaming`` (an i1) is true
        the vectors inside a row are stored non-temporally (``vmovntps``), which needs their
        addresses vector aligned: the caller guarantees it.
        """
        b = self.b
        L = self.lanes
        lanes_c = self.const(L)
        nvec = nrow * nv
        slowmask = self.const(0)
        for r in range(nrow):
            qr = b.add(q0, b.mul(self.const(r), wq)) if r else q0
            for v in range(nv):
                qa = b.add(qr, self.const(v * L))
                row = b.sdiv(qa, wq)
                col = b.sub(qa, b.mul(row, wq))
                fast = b.and_(b.icmp_signed("<=", b.add(col, lanes_c), ow),
                              b.icmp_signed("<=", b.add(qa, lanes_c), q1))
                slow = b.and_(b.icmp_signed("<", qa, q1), b.not_(fast))
                slowmask = b.or_(slowmask, b.shl(b.zext(slow, self.i64), self.const(r * nv + v)))
                with b.if_then(fast):
                    orow = b.add(obase, b.add(b.mul(row, ow), col))
                    ptrs = [self.vptr(self.gep(optr, b.add(orow, b.mul(self.const(c), ostride))))
                            for c in range(nc)]
                    vals = [res[c * nvec + r * nv + v] for c in range(nc)]
                    if streaming is None:
                        for val, ptr in zip(vals, ptrs):
                            b.store(val, ptr, align=self.isz)
                    else:
                        with b.if_else(streaming) as (around, cached):
                            with around:
                                for val, ptr in zip(vals, ptrs):
                                    self.store_streaming(val, ptr)
                            with cached:
                                for val, ptr in zip(vals, ptrs):
                                    b.store(val, ptr, align=self.isz)

        with b.if_then(b.icmp_signed("!=", slowmask, self.const(0)), likely=False):
            buf = cgutils.alloca_once(b, ir.ArrayType(self.vty, nc * nvec))
            zero32 = ir.Constant(self.i32, 0)
            for i, r in enumerate(res):
                b.store(r, b.gep(buf, [zero32, ir.Constant(self.i32, i)], inbounds=True),
                        align=self.isz)
            ity = self.i64
            iota = ir.Constant(ir.VectorType(ity, L), list(range(L)))
            vity = ir.VectorType(ity, L)
            with cgutils.for_range(b, self.const(nvec)) as loop_i:
                i = loop_i.index
                with b.if_then(b.trunc(b.lshr(slowmask, i), ir.IntType(1))):
                    r = b.udiv(i, self.const(nv))
                    v = b.sub(i, b.mul(r, self.const(nv)))
                    qa = b.add(q0, b.add(b.mul(r, wq), b.mul(v, lanes_c)))
                    row = b.sdiv(qa, wq)
                    col = b.sub(qa, b.mul(row, wq))
                    pre = b.block
                    seg_head = b.append_basic_block("st.seg")
                    seg_store = b.append_basic_block("st.segst")
                    seg_next = b.append_basic_block("st.segnext")
                    seg_done = b.append_basic_block("st.segdone")
                    b.branch(seg_head)

                    b.position_at_end(seg_head)
                    lane = b.phi(ity)
                    srow = b.phi(ity)
                    scol = b.phi(ity)
                    lane.add_incoming(self.const(0), pre)
                    srow.add_incoming(row, pre)
                    scol.add_incoming(col, pre)
                    q = b.add(qa, lane)
                    seg = self.smin(self.smin(b.sub(lanes_c, lane), b.sub(wq, scol)),
                                    b.sub(q1, q))
                    nvalid = self.smin(seg, b.sub(ow, scol))
                    b.cbranch(b.icmp_signed(">", nvalid, self.const(0)), seg_store, seg_next)

                    b.position_at_end(seg_store)
                    lo = self.splat(lane, vity)
                    hi = self.splat(b.add(lane, nvalid), vity)
                    mask = b.and_(b.icmp_signed(">=", iota, lo), b.icmp_signed("<", iota, hi))
                    # Element index of lane 0 (masked-off lanes are never touched, so it may
                    # lie outside the array).
                    base = b.sub(b.add(obase, b.add(b.mul(srow, ow), scol)), lane)
                    for c in range(nc):
                        val = b.load(b.gep(buf, [zero32, b.add(self.const(c * nvec), i)],
                                           inbounds=True), typ=self.vty, align=self.isz)
                        idx = b.add(base, b.mul(self.const(c), ostride))
                        b.call(self._mstore, [val, self.vptr(self.gep(optr, idx, False)),
                                              ir.Constant(self.i32, self.isz), mask])
                    b.branch(seg_next)

                    b.position_at_end(seg_next)
                    lane_n = b.add(lane, seg)
                    lane.add_incoming(lane_n, seg_next)
                    srow.add_incoming(b.add(srow, self.const(1)), seg_next)
                    scol.add_incoming(self.const(0), seg_next)
                    more = b.and_(b.icmp_signed("<", lane_n, lanes_c),
                                  b.icmp_signed("<", b.add(qa, lane_n), q1))
                    b.cbranch(more, seg_head, seg_done)
                    b.position_at_end(seg_done)


@intrinsic
def _no_inline(typingctx):
    """Mark the calling compiled function ``noinline`` for LLVM (it is called per work item)."""
    def codegen(context, builder, signature, args):
        builder.function.attributes.add("noinline")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _store_fence(typingctx):
    """A full memory fence (``mfence`` on x86): non-temporal stores are weakly ordered, and the
    thread that reads the result must see them."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _lanes_of(typingctx, arr):
    """Number of lanes of the micro-kernels' vectors for ``arr``'s dtype (a compile-time int)."""
    lanes = _VBYTES // (arr.dtype.bitwidth // 8)

    def codegen(context, builder, signature, args):
        return context.get_constant(types.intp, lanes)

    return types.intp(arr), codegen


# ---------------------------------------------------------------------------------------------
# The micro-kernels
# ---------------------------------------------------------------------------------------------

@intrinsic
def _microkernel(typingctx, xs, offs, w, wbase, b, boff, out, obase, ostride, q0, q1, wq, ow,
                 stream, k0, k1, part, acc, aoff, V, C, P):
    """Compute one tile of ``C`` output channels x ``V`` vectors (``V*L`` pixels) over the taps
    ``k0 <= k < k1``.

    For channel ``c < C`` and tile pixel ``j < V*L``, with ``K = offs.size`` taps::

        start + sum_{k0 <= k < k1} w[wbase + c*K + k] * xs[q0 + offs[k] + j]

    (one fused multiply-add per k, k ascending). ``part`` says where the tile's sum stands:
    0 (all taps) and 1 (the first block of taps) start at ``b[boff + c]``, 2 (a middle block)
    and 3 (the last block) at the partial sums ``acc[aoff + c*V*L + j]`` that blocks 1 and 2
    store there (``acc`` vector aligned); 0 and 3 store pixel ``q = q0 + j`` to ``out`` (see
    ``_Gen.store_tile``). With ``P`` the weights are blocked: ``w[wbase + k*C + c]`` in place
    of ``w[wbase + c*K + k]``. ``V``, ``C`` and ``P`` are compile-time ints. With ``stream`` the
    stores inside output rows are non-temporal (their addresses must be vector aligned) and
    the next tile's lines are not prefetched.
    """
    if not all(isinstance(v, (types.IntegerLiteral, types.BooleanLiteral)) for v in (V, C, P)):
        return None
    nv, nc, blocked = V.literal_value, C.literal_value, bool(P.literal_value)
    sig = types.void(xs, offs, w, wbase, b, boff, out, obase, ostride, q0, q1, wq, ow, stream,
                     k0, k1, part, acc, aoff, V, C, P)

    def codegen(context, builder, signature, args):
        g = _Gen(context, builder, signature.args[0].dtype)
        at = signature.args
        (xs_v, offs_v, w_v, wbase_v, b_v, boff_v, out_v, obase_v, ostride_v,
         q0_v, q1_v, wq_v, ow_v, stream_v, k0_v, k1_v, part_v, acc_v, aoff_v) = args[:19]
        q0_v = g.int64(q0_v)
        streaming = builder.icmp_signed("!=", g.int64(stream_v), g.const(0))
        part_v = g.int64(part_v)
        from_bias = builder.icmp_signed("<", part_v, g.const(2))
        to_out = builder.or_(builder.icmp_signed("==", part_v, g.const(0)),
                             builder.icmp_signed("==", part_v, g.const(3)))
        aptr = g.gep(g.data(at[17], acc_v), g.int64(aoff_v))
        xptr = g.gep(g.data(at[0], xs_v), q0_v)
        offs_a = context.make_array(at[1])(context, builder, offs_v)
        optr = offs_a.data
        ntap = builder.extract_value(offs_a.shape, 0)
        oty = context.get_value_type(at[1].dtype)
        wptr = g.gep(g.data(at[2], w_v), g.int64(wbase_v))
        bptr = g.gep(g.data(at[4], b_v), g.int64(boff_v))
        # Weight row c of the tile (the C rows are C sequential streams), unless blocked.
        wrow = [] if blocked else [g.gep(wptr, builder.mul(g.const(c), ntap)) for c in range(nc)]

        # Accumulators (index c*nv + v) start at the bias or at the stored partial sums.
        with builder.if_else(from_bias) as (bias_start, partial_start):
            with bias_start:
                b_bias = builder.block
                init_b = []
                for c in range(nc):
                    init_b.extend([g.bcast(g.gep(bptr, g.const(c)))] * nv)
            with partial_start:
                b_part = builder.block
                init_p = [builder.load(g.vptr(g.gep(aptr, g.const(t * g.lanes))), align=_VBYTES,
                                       typ=g.vty) for t in range(nc * nv)]
        init = []
        for vb, vp in zip(init_b, init_p):
            phi = builder.phi(g.vty)
            phi.add_incoming(vb, b_bias)
            phi.add_incoming(vp, b_part)
            init.append(phi)

        def tap(k, acc):
            off = g.int64(builder.load(g.gep(optr, k), typ=oty))
            xk = g.gep(xptr, off)
            xv = [g.vload(g.gep(xk, g.const(v * g.lanes))) for v in range(nv)]
            new = list(acc)
            wk = g.gep(wptr, builder.mul(k, g.const(nc))) if blocked else None
            for c in range(nc):
                wc = g.bcast(g.gep(wk, g.const(c)) if blocked else g.gep(wrow[c], k))
                for v in range(nv):
                    new[c * nv + v] = g.fma(xv[v], wc, acc[c * nv + v])
            return new

        # The next tile's output lines (usually the next tile computed) are fetched for writing
        # while this one runs: with few taps per tile, stores that miss L1 and wait for their
        # line are a large share of the time (5x5 C1->32 on 512x512, one thread: stores
        # redirected to a few L1-resident lines, results wrong, 116 -> 145 GFLOP/s). Measured
        # float32, 2 threads, 6 alternating rounds: that layer at batch 8 (268 MB of output)
        # 198-207 -> 231-247 GFLOP/s, batch 1 235-244 -> 231-252, 3x3 layers and 7x7 s2 conv1
        # unchanged.
        with builder.if_then(builder.and_(to_out, builder.not_(streaming))):
            g.prefetch_for_write(builder.add(q0_v, g.const(nv * g.lanes)), nv * g.lanes, nc,
                                 g.int64(wq_v), g.int64(ow_v), g.data(at[6], out_v),
                                 g.int64(obase_v), g.int64(ostride_v))
        res = g.loop(g.int64(k0_v), g.int64(k1_v), init, tap)
        with builder.if_else(to_out) as (final, partial):
            with final:
                g.store_tile(res, nc, 1, nv, q0_v, g.int64(q1_v), g.int64(wq_v),
                             g.int64(ow_v), g.data(at[6], out_v), g.int64(obase_v),
                             g.int64(ostride_v), streaming)
            with partial:
                for t, r in enumerate(res):
                    builder.store(r, g.vptr(g.gep(aptr, g.const(t * g.lanes))), align=_VBYTES)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _microkernel_rows(typingctx, xs, offs, wofs, w, wbase, kh, kw, b, boff, out, obase,
                      ostride, q0, q1, wq, ow, R, V):
    """Compute and store one single-channel tile of ``R`` rows x ``V`` vectors, reusing rows.

    For tile row ``r < R`` and pixel ``j < V*L`` (flat ``q = q0 + r*wq + j``), with column taps
    ``i < offs.size`` (one per (ci, kx)) and ``ky < kh``::

        b[boff] + sum_i sum_ky w[wbase + wofs[i] + ky*kw] * xs[q + offs[i] + ky*wq]

    (i outer, ky inner, one FMA each). Input row ``t`` of a column tap is loaded once and used
    for every tile row ``r`` with ``ky = t - r`` in range. Needs ``kh >= R - 1``. ``R`` and ``V``
    are compile-time ints.
    """
    if not (isinstance(R, types.IntegerLiteral) and isinstance(V, types.IntegerLiteral)):
        return None
    nr, nv = R.literal_value, V.literal_value
    sig = types.void(xs, offs, wofs, w, wbase, kh, kw, b, boff, out, obase, ostride, q0, q1,
                     wq, ow, R, V)

    def codegen(context, builder, signature, args):
        g = _Gen(context, builder, signature.args[0].dtype)
        at = signature.args
        (xs_v, offs_v, wofs_v, w_v, wbase_v, kh_v, kw_v, b_v, boff_v, out_v, obase_v,
         ostride_v, q0_v, q1_v, wq_v, ow_v) = args[:16]
        q0_v, wq_v, kh_v, kw_v = g.int64(q0_v), g.int64(wq_v), g.int64(kh_v), g.int64(kw_v)
        xptr = g.gep(g.data(at[0], xs_v), q0_v)
        offs_a = context.make_array(at[1])(context, builder, offs_v)
        ncol = builder.extract_value(offs_a.shape, 0)
        oty = context.get_value_type(at[1].dtype)
        wofs_p = g.data(at[2], wofs_v)
        wptr = g.gep(g.data(at[3], w_v), g.int64(wbase_v))
        bias = g.bcast(g.gep(g.data(at[7], b_v), g.int64(boff_v)))
        init = [bias] * (nr * nv)   # index r*nv + v

        def col_tap(i, acc):
            xo = g.gep(xptr, g.int64(builder.load(g.gep(offs_a.data, i), typ=oty)))
            wo = g.gep(wptr, g.int64(builder.load(g.gep(wofs_p, i), typ=oty)))

            def step(acc, t, rows, ky_of):
                # Input row t feeds tile rows ``rows`` with ky = ky_of(r).
                xrow = g.gep(xo, builder.mul(t, wq_v))
                xv = [g.vload(g.gep(xrow, g.const(v * g.lanes))) for v in range(nv)]
                new = list(acc)
                for r in rows:
                    wr = g.bcast(g.gep(wo, builder.mul(ky_of(r), kw_v)))
                    for v in range(nv):
                        new[r * nv + v] = g.fma(xv[v], wr, acc[r * nv + v])
                return new

            # Ramp-up t < R-1: rows r <= t (ky = t - r <= R-2 <= kh-1).
            for t in range(nr - 1):
                acc = step(acc, g.const(t), range(t + 1),
                           lambda r, t=t: g.const(t - r))
            # Steady state R-1 <= t < kh: all rows.
            acc = g.loop(g.const(nr - 1), kh_v, acc,
                         lambda t, a: step(a, t, range(nr), lambda r: builder.sub(t, g.const(r))))
            # Ramp-down t = kh + s: rows r > s (ky = kh + s - r).
            for s in range(nr - 1):
                t = builder.add(kh_v, g.const(s))
                acc = step(acc, t, range(s + 1, nr),
                           lambda r, t=t: builder.sub(t, g.const(r)))
            return acc

        res = g.loop(g.const(0), g.int64(ncol), init, col_tap)
        g.store_tile(res, 1, nr, nv, q0_v, g.int64(q1_v), wq_v, g.int64(ow_v),
                     g.data(at[9], out_v), g.int64(obase_v), g.int64(ostride_v))
        return context.get_dummy_value()

    return sig, codegen


# ---------------------------------------------------------------------------------------------
# Tile shapes and "packing"
# ---------------------------------------------------------------------------------------------

# Output channels per tile, each with _NACC // C pixel vectors. Every shape is one more copy of
# the micro-kernel in the compiled module, so the set is small (compile time).
_TILE_CS = (8, 4, 1)
_RV = _NACC // _ROWS          # vectors per row of the row-reuse tile
_V8, _V4, _V1 = (_NACC // c for c in _TILE_CS)
# A band's last tile of 8 channels, when its pixels fit in one vector fewer: 14x14 maps (pitch
# 16, 224 positions) took 5 tiles of 48 (240), now 4 and one of 32. Interleaved processes, 6
# rounds, 2 threads, float32: 3x3 C256 14x14 174 -> 184 GFLOP/s (6/6), C512 14x14 175 -> 188
# (6/6), stride 2 C256 28 -> 14 160 -> 172 (5/6); C128 28x28 193 -> 193, C64 56x56 199 -> 203.
_V8_TAIL = max(1, _V8 - 1)

PackedDirectWeights = collections.namedtuple(
    "PackedDirectWeights", "data groups cout_g cin_g kh kw tile_c blocks")
PackedDirectWeights.__doc__ = """Weights prepared for :func:`conv2d_direct_packed`.

``data`` is the (C_out, C_in/groups, kH, kW) weight array itself, C-contiguous; ``tile_c`` is
the number of output channels per register tile. ``blocks`` is None (the micro-kernel reads the
``tile_c`` weight rows of a tile as ``tile_c`` streams) or the weights blocked by
:func:`_block_weights` (the ``tile_c`` weights of a tap adjacent: the broadcasts then need no
address arithmetic). Plans block them: float32, 2 threads, 8 alternating rounds, blocks against
rows 2-10% faster (median 4%) on 3x3 C64 56, C128 28, C256 14, 5x5 C1->32 512 and 7x7 s2
C3->64 224. Calls do not: a fresh copy per call, cold in the caches and read by both threads,
made 7x7 s2 C3->64 224 and 11x11 s4 C3->64 227 3-4% slower, though the copy itself took 1-2% of
the call."""


def _block_weights(w, groups, tile_c):
    """Weights (C_out, C_in/groups, kH, kW) as flat blocks of ``tile_c`` output channels: block
    ``g*n_cob + cob`` (``n_cob = ceil(C_out/groups / tile_c)``) starts at ``(g*n_cob + cob) *
    K * tile_c`` (``K = C_in/groups * kH * kW``) and holds ``w[co0 + c].ravel()[k]`` at
    ``k*tile_c + c``, with ``co0 = g*C_out/groups + min(cob*tile_c, C_out/groups - tile_c)`` (a
    group's last block overlaps the previous one, like the tiles)."""
    cout = w.shape[0]
    cout_g = cout // groups
    n_cob = -(-cout_g // tile_c)
    starts = (np.arange(groups)[:, None] * cout_g
              + np.minimum(np.arange(n_cob) * tile_c, cout_g - tile_c)[None, :]).reshape(-1)
    rows = w.reshape(cout, -1)[starts[:, None] + np.arange(tile_c)[None, :]]
    return np.ascontiguousarray(rows.transpose(0, 2, 1)).reshape(-1)


def _tile_shape(cout_g):
    """Output channels ``C`` per register tile (the tile is ``V = _NACC // C`` pixel vectors).

    ``C <= cout_g``: a group's last block of channels overlaps the previous one instead of being
    padded. Per tap a tile issues ``V*C`` FMAs (2 per cycle), ``V`` unaligned vector loads (each
    usually splits over two cache lines) and ``C`` broadcasts; the overlap recomputes
    ``ceil(cout_g/C)*C - cout_g`` channels. Minimise the estimated cycles per useful FMA; ties go
    to the larger ``C`` (less input traffic per FMA).
    """
    best = None
    for c in _TILE_CS:
        v = _NACC // c
        if c > cout_g or v < 1:
            continue
        waste = math.ceil(cout_g / c) * c / cout_g
        cost = waste * (0.5 * v * c + 0.1 * (2 * v + c)) / (v * c)
        if best is None or cost < best[0] - 1e-9:
            best = (cost, c)
    return best[1]


def pack_weights_direct(w, groups, blocked=True):
    """Prepare conv weights for :func:`conv2d_direct_packed` (choose the register tile).

    Parameters
    ----------
    w : ndarray, shape (C_out, C_in // groups, kH, kW)
        Float32 or float64 weights.
    groups : int
        Number of groups (divides C_out).
    blocked : bool
        Also copy the weights into blocks of the register tile's channels (see
        :func:`_block_weights`; not needed for one channel per tile, where they are the same).

    Returns
    -------
    PackedDirectWeights
        Reusable for any input size, stride, padding and dilation with the same ``w`` and
        ``groups``. Holds ``w`` itself (no copy) when ``w`` is C-contiguous, so ``w`` must not
        be modified while the result is in use.
    """
    cout, cin_g, kh, kw = w.shape
    cout_g = cout // groups
    tile_c = _tile_shape(cout_g)
    w = np.ascontiguousarray(w)
    blocks = _block_weights(w, groups, tile_c) if blocked and tile_c > 1 else None
    return PackedDirectWeights(w, groups, cout_g, cin_g, kh, kw, tile_c, blocks)


def _use_rows(tile_c, stride_h, dil_h, kh, ow, wq, lanes):
    """Whether the row-reuse micro-kernel applies and pays: it needs one channel per tile,
    unit vertical stride and dilation and kH >= _ROWS - 1, and its tiles span whole 6-vector
    column chunks of single rows, which wastes lanes on narrow outputs."""
    tq = _RV * lanes
    return (tile_c == 1 and stride_h == 1 and dil_h == 1 and kh >= _ROWS - 1
            and -(-ow // tq) * tq <= 1.6 * wq)


# ---------------------------------------------------------------------------------------------
# The parallel driver
# ---------------------------------------------------------------------------------------------

@kernel
def _q_pitch(ow, kw, dil_w, stride_w, align):
    """Row pitch ``Wq`` of the flat pixel space: the output row plus the kernel's reach, rounded
    up to a multiple of ``align``."""
    wq = ow + ((kw - 1) * dil_w) // stride_w
    return -(-wq // align) * align


@kernel
def _acc_len(n_cc, n_cob, tile_c, tq, blocked):
    """Elements of one thread's partial-sum buffer: a tile of every channel block of a work
    item when the taps are blocked (see the driver), else one vector (unused)."""
    return (-(-n_cob // n_cc)) * tile_c * tq if blocked else tq


@kernel
def _aligned_empty(n, like, lanes):
    """An uninitialised array of ``n`` elements of ``like``'s dtype whose first one is
    vector aligned (``lanes`` elements per vector)."""
    raw = np.empty(n + lanes, dtype=like.dtype)
    skip = ((-raw.ctypes.data) % (lanes * raw.itemsize)) // raw.itemsize
    return raw[skip:skip + n]


@kernel
def _scratch_len(cin_g, nphase, band, halo, wq, tq, lanes):
    """Elements of one band buffer: the phase planes, then slack so that the last tile's
    vector loads stay inside it (those lanes only feed pixels that are never stored)."""
    return cin_g * nphase * (band + halo) * wq + tq + wq + lanes


def _make_driver(blocked):
    """The parallel driver reading weights as rows (``w`` itself) or, with ``blocked``, as
    :func:`_block_weights` lays them out; one compiled copy each, built on first use."""
    PK = int(blocked)   # a compile-time constant for the micro-kernels

    @parallel_kernel
    def driver(x, w, wf, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
               groups, tile_c, rows, band, n_cc, tchunk, kblock, scratch, acc, stream):
        """Parallel driver; see the module docstring.

        A work item is (image, group, band of ``band`` output rows, chunk of output-channel
        blocks). With ``tchunk > 0`` it does ``tchunk`` tiles for all its channel blocks before
        moving on (input reuse in cache). With ``0 < kblock < taps`` the generic kernel runs
        ``kblock`` taps for all the tile's channel blocks at a time, with partial sums in
        ``acc`` (``tchunk`` is then 1): the input those taps read stays in L1 for all blocks.
        ``rows`` selects the row-reuse kernel (``band`` is then a multiple of _ROWS).
        ``scratch`` holds one band buffer per thread, ``acc`` one partial-sum buffer per
        thread (vector aligned); items on other thread ids allocate their own. The
        micro-kernels read the flat weights ``wf``: ``w`` raveled, or its blocks
        (``blocked``); ``w`` gives the shape. With ``stream`` (see
        :func:`_streams`) the rows of the flat pixel space are padded to whole vectors and the
        generic kernel's stores go around the caches.
        """
        n_img, cin, h, wd = x.shape
        cout, cin_g, kh, kw = w.shape
        oh = out.shape[2]
        ow = out.shape[3]
        cout_g = cout // groups
        lanes = _lanes_of(x)
        halo = ((kh - 1) * dil_h) // stride_h
        wq = _q_pitch(ow, kw, dil_w, stride_w, lanes if stream else 1)
        plane = (band + halo) * wq
        nphase = stride_h * stride_w
        ntap = cin_g * kh * kw
        tq = (_RV if rows else _NACC // tile_c) * lanes
        slot = _scratch_len(cin_g, nphase, band, halo, wq, tq, lanes)
        n_slots = scratch.size // slot
        kb = ntap if kblock <= 0 or rows else min(kblock, ntap)
        tch_k = 1 if kb < ntap else tchunk
        acc_slot = _acc_len(n_cc, -(-cout_g // tile_c), tile_c, tq, kb < ntap)
        n_acc = acc.size // max(1, acc_slot)

        # Generic kernel: tap k = (ci, ky, kx) reads the scratch at q + offs[k].
        # Row kernel: column tap i = (ci, kx) reads at q + offs[i] + ky*wq, weight wofs[i] +
        # ky*kw.
        nt = cin_g * kw if rows else ntap
        offs = np.empty(nt, dtype=np.int64)
        wofs = np.empty(nt, dtype=np.int64)
        for ci in range(cin_g):
            for ky in range(1 if rows else kh):
                ty = ky * dil_h
                for kx in range(kw):
                    tx = kx * dil_w
                    p = (ci * stride_h + ty % stride_h) * stride_w + tx % stride_w
                    k = ci * kw + kx if rows else (ci * kh + ky) * kw + kx
                    offs[k] = p * plane + (ty // stride_h) * wq + tx // stride_w
                    wofs[k] = ci * kh * kw + kx

        n_cob = -(-cout_g // tile_c)
        n_bands = -(-oh // band)
        cob_per = -(-n_cob // n_cc)
        xf = x.ravel()
        of = out.ravel()
        n_items = n_img * groups * n_bands * n_cc
        for item in prange(n_items):
            cc = item % n_cc
            r = item // n_cc
            bnd = r % n_bands
            r = r // n_bands
            g = r % groups
            n = r // groups
            oy0 = bnd * band
            nb = min(band, oh - oy0)
            cob0 = cc * cob_per
            cob1 = min(n_cob, cob0 + cob_per)
            if cob0 < cob1:
                tid = numba.get_thread_id()
                if tid < n_slots:
                    xs = scratch[tid * slot:(tid + 1) * slot]
                else:
                    xs = np.empty(slot, dtype=x.dtype)
                if tid < n_acc:
                    pacc = acc[tid * acc_slot:(tid + 1) * acc_slot]
                else:
                    pacc = _aligned_empty(acc_slot, x, lanes)
                _fill_band(xf, xs, n, g, cin, cin_g, h, wd, oy0, nb + halo, wq, plane,
                           stride_h, stride_w, pad_top, pad_left)
                obase_n = n * cout * oh * ow
                # The micro-kernels are expanded right here, one copy per tile shape
                # (compile-time constants): a call per tile would cost ~100 cycles of argument
                # passing.
                if rows:
                    ncc = -(-ow // tq)
                    for cob in range(cob0, cob1):
                        co0 = g * cout_g + cob
                        obase = obase_n + (co0 * oh + oy0) * ow
                        for rg in range(-(-nb // _ROWS)):
                            for ccol in range(ncc):
                                _microkernel_rows(xs, offs, wofs, wf, co0 * ntap, kh, kw, b,
                                                  co0, of, obase, oh * ow,
                                                  rg * _ROWS * wq + ccol * tq, nb * wq, wq, ow,
                                                  _ROWS, _RV)
                else:
                    nq = nb * wq
                    ntiles = -(-nq // tq)
                    tch = ntiles if tch_k <= 0 else tch_k
                    for t0 in range(0, ntiles, tch):
                        for k0 in range(0, ntap, kb):
                            k1 = min(ntap, k0 + kb)
                            part = (0 if k1 == ntap else 1) if k0 == 0 else (
                                3 if k1 == ntap else 2)
                            for cob in range(cob0, cob1):
                                # The last block of a group overlaps the previous one (same
                                # values).
                                co0 = g * cout_g + min(cob * tile_c, cout_g - tile_c)
                                obase = obase_n + (co0 * oh + oy0) * ow
                                wb = (g * n_cob + cob) * ntap * tile_c if PK else co0 * ntap
                                aoff = (cob - cob0) * tile_c * tq
                                for t in range(t0, min(t0 + tch, ntiles)):
                                    if tile_c == 8 and nq - t * tq <= _V8_TAIL * lanes:
                                        _microkernel(xs, offs, wf, wb, b, co0, of, obase,
                                                     oh * ow, t * tq, nq, wq, ow, stream, k0,
                                                     k1, part, pacc, aoff, _V8_TAIL, 8, PK)
                                    elif tile_c == 8:
                                        _microkernel(xs, offs, wf, wb, b, co0, of, obase,
                                                     oh * ow, t * tq, nq, wq, ow, stream, k0,
                                                     k1, part, pacc, aoff, _V8, 8, PK)
                                    elif tile_c == 4:
                                        _microkernel(xs, offs, wf, wb, b, co0, of, obase,
                                                     oh * ow, t * tq, nq, wq, ow, stream, k0,
                                                     k1, part, pacc, aoff, _V4, 4, PK)
                                    else:
                                        _microkernel(xs, offs, wf, wb, b, co0, of, obase,
                                                     oh * ow, t * tq, nq, wq, ow, stream, k0,
                                                     k1, part, pacc, aoff, _V1, 1, PK)
                    if stream:
                        _store_fence()

    return driver


_DRIVERS = {False: _make_driver(False), True: _make_driver(True)}


@kernel
def _fill_band(xf, xs, n, g, cin, cin_g, h, w, oy0, nrows, wq, plane,
               stride_h, stride_w, pad_top, pad_left):
    """Write all of scratch ``xs``: the input under one band as zero-padded phase planes.

    Plane rows past ``nrows`` and the slack after the last plane are only read by lanes that
    are never stored; they are zeroed anyway so no stale NaN or subnormal slows the FMAs.
    Indices are cast to unsigned so Numba adds no negative-index fix-up and LLVM vectorises
    the row copies (array views would cost two atomic reference-count updates per row).
    """
    _no_inline()
    zero = xs.dtype.type(0)
    u = np.uintp
    for ci in range(cin_g):
        xc = ((n * cin + g * cin_g + ci) * h) * w
        for ph in range(stride_h):
            for pw in range(stride_w):
                pbase = ((ci * stride_h + ph) * stride_w + pw) * plane
                # columns b of this plane with 0 <= b*stride_w + pw - pad_left < w
                blo = min(wq, max(0, -(-(pad_left - pw) // stride_w)))
                bhi = max(blo, min(wq, -(-(w + pad_left - pw) // stride_w)))
                for a in range(plane // wq):
                    dst = pbase + a * wq
                    iy = (oy0 + a) * stride_h + ph - pad_top
                    if a >= nrows or iy < 0 or iy >= h:
                        for j in range(wq):
                            xs[u(dst + j)] = zero
                        continue
                    for j in range(blo):
                        xs[u(dst + j)] = zero
                    src = xc + iy * w + pw - pad_left
                    if stride_w == 1:
                        for j in range(blo, bhi):
                            xs[u(dst + j)] = xf[u(src + j)]
                    else:
                        for j in range(blo, bhi):
                            xs[u(dst + j)] = xf[u(src + j * stride_w)]
                    for j in range(bhi, wq):
                        xs[u(dst + j)] = zero
    for j in range(cin_g * stride_h * stride_w * plane, xs.size):
        xs[u(j)] = zero


# ---------------------------------------------------------------------------------------------
# Planning and the public functions
# ---------------------------------------------------------------------------------------------

# Estimated cycles per element of a band copy. The earlier estimate, 0.5, let the planner copy
# a whole input per channel chunk where half-image bands read it once; on an Intel AVX-512 guest,
# with 2.0 (2 threads, float32, 3 rounds, forced direct, ms): 3x3 s2 C128 56 1.40 -> 1.20-1.23,
# s2 C512 14 1.69 -> 1.44, AlexNet conv1 0.70 -> 0.65; 12 other layers measured kept their plans.
_COPY_CYCLES = 2.0
# Bands past this size, if their traffic matters, run two tiles for all channel blocks at a time.
_TCHUNK_BAND_BYTES = 512 << 10


@functools.lru_cache(maxsize=256)
def _plan_work(n_img, groups, oh, ow, wq, halo, cin_g, nphase, n_cob, tile_c, rows, ntap,
               lanes, itemsize, nthreads):
    """Choose the prange work items: band height, output-channel chunks per band, tile chunk.

    Results do not depend on this choice (every output is one fixed-order sum), so it may
    depend on the thread count. The estimated cost of an item (in cycles) is its tiles' FMAs,
    padding lanes included, plus the band copy, which is repeated for each channel chunk;
    prange hands each thread an equal share of consecutive items, so the makespan is
    ceil(items/threads) items. Returns ``(band, n_cc, tchunk)``. Kept per shape (a search over
    band heights: tens of microseconds per call for tall outputs).
    """
    row_bytes = cin_g * nphase * wq * itemsize
    # Scratch size cap: a band read by several channel blocks may be big (fewer duplicated
    # copies and halo rows); one read once should stay in a core's L2.
    b_cap = max(1, ((4 << 20) if n_cob > 1 else (384 << 10)) // max(1, row_bytes) - halo)
    step = _ROWS if rows else 1
    tq = (_RV if rows else _NACC // tile_c) * lanes
    best = None
    for n_bands in range(1, oh + 1):
        band = -(-(-(-oh // n_bands)) // step) * step
        if band > b_cap and band > step:
            continue
        if best is not None and -(-oh // band) != n_bands:
            continue
        if rows:
            lanes_done = band * -(-ow // tq) * tq
        else:
            lanes_done = -(-(band * wq) // tq) * tq
        fma_cost = lanes_done * ntap * tile_c / 32.0          # 2 FMAs of 16 lanes per cycle
        copy_cost = cin_g * nphase * (band + halo) * wq * _COPY_CYCLES
        for n_cc in range(1, n_cob + 1):
            cob_per = -(-n_cob // n_cc)
            if -(-n_cob // cob_per) != n_cc:
                continue
            items = n_img * groups * n_bands * n_cc
            per_item = cob_per * fma_cost + copy_cost + 3000.0
            cost = -(-items // nthreads) * per_item
            if best is None or cost < best[0] * 0.99:
                best = (cost, band, n_cc, fma_cost)
            if items >= 16 * nthreads:
                break
        if n_img * groups * n_bands >= 64 * nthreads:
            break
    _, band, n_cc, block_cycles = best
    # A band too big for a core's L2 is re-read from L3 for every channel block; if that
    # traffic is not negligible next to a block's FMAs, do two tiles for all blocks before
    # moving on, which keeps their input window in L2 (the weights then stream instead).
    band_bytes = (band + halo) * row_bytes
    big = band_bytes > _TCHUNK_BAND_BYTES
    tchunk = 2 if big and band_bytes / 16.0 > 0.05 * block_cycles else 0
    return band, n_cc, tchunk


# Input bytes the taps of one block may read for one tile (see _tap_block): with the partial
# sums and the weights that stream past, they stay in a 48 KiB L1 data cache.
_TAP_BLOCK_BYTES = 24 << 10
# Weights of a work item's channel blocks up to which tap blocks are used: a tile then reads
# all of them, which must stay in a core's L2 for the next tile.
_TAP_BLOCK_WEIGHT_BYTES = 1 << 20
# Phase planes (stride_h * stride_w) from which tap blocks are used: with one plane (stride 1)
# a channel's segments overlap and L2 served them as fast.
_TAP_BLOCK_PHASES = 2


@functools.lru_cache(maxsize=256)
def _segment_elements(kh, kw, stride_h, stride_w, dil_h, dil_w, wq, tq, lanes):
    """Input elements one input channel contributes to a tile of ``tq`` flat pixels: a segment
    per (phase plane, row) the taps fall on, overlapping ones counted once. (Kept per shape: a
    walk over the taps, 0.1 ms per call for AlexNet's 11x11 kernel in 16 phase planes.)"""
    per_ci = 0
    for ph in range(stride_h):
        for pw in range(stride_w):
            rows = set()
            reach = [wq, -1]
            for ky in range(kh):
                ty = ky * dil_h
                if ty % stride_h != ph:
                    continue
                for kx in range(kw):
                    tx = kx * dil_w
                    if tx % stride_w == pw:
                        rows.add(ty // stride_h)
                        reach = [min(reach[0], tx // stride_w), max(reach[1], tx // stride_w)]
            if rows:
                seg = tq + reach[1] - reach[0] + lanes
                span = (max(rows) - min(rows)) * wq + seg
                per_ci += min(len(rows) * seg, span)
    return per_ci


def _tap_block(cin_g, kh, kw, stride_h, stride_w, dil_h, dil_w, wq, tq, cob_item, tile_c,
               lanes, itemsize):
    """Taps per block of the generic kernel (0: all of them, unblocked).

    A tile reads, for each input channel, a segment of ``tq`` flat pixels plus the kernel's
    horizontal reach in each (phase plane, row) its taps fall on. When a work item runs
    several channel blocks and all channels' segments outgrow the L1 data cache, every block
    fetches them again from L2; blocking the taps by input channels, ``_TAP_BLOCK_BYTES`` of
    segments at a time, lets all channel blocks read them from L1, at the price of storing and
    reloading the partial sums (same values: one FMA per tap in the same order). The order of
    the loops then turns from tiles within a channel block to channel blocks within a tile,
    which reads all the item's weights per tile: only done while they stay in L2.
    Float32, 2 threads, 8 alternating rounds, GFLOP/s unblocked -> blocked: 3x3 s2 C128 56
    217-221 -> 231 (at batch 8 230 -> 245), s2 C64 112 195-196 -> 202-206, 5x5 s2 C64->128 56
    even; with more weights s2 C256 28 at batch 8 228 -> 219 and s2 C512 14 185 -> 168 (hence
    the weight limit); stride 1 (one plane): C128 28 273 -> 268, C64 56 even, VGG's C64 224
    273 -> 278 (hence strided layers only).
    """
    ntap = cin_g * kh * kw
    if (cob_item < 2 or stride_h * stride_w < _TAP_BLOCK_PHASES
            or cob_item * tile_c * ntap * itemsize > _TAP_BLOCK_WEIGHT_BYTES):
        return 0
    per_ci = _segment_elements(kh, kw, stride_h, stride_w, dil_h, dil_w, wq, tq, lanes)
    per_ci *= itemsize
    if cin_g * per_ci <= 2 * _TAP_BLOCK_BYTES:
        return 0
    n_blocks = -(-cin_g * per_ci // _TAP_BLOCK_BYTES)
    return -(-cin_g // n_blocks) * kh * kw


# Results of at least this many bytes are stored non-temporally (past the caches, without
# first reading each line for ownership), as they would not stay in a 32 MiB last-level cache
# for the next layer anyway. Needs whole-vector output rows and a vector-aligned result; the
# flat pixel rows are then padded to whole vectors too, so that every stored vector is aligned,
# which must not add more than _STREAM_PAD of lanes. Float32, 2 threads, alternating rounds,
# GFLOP/s: 5x5 C1->32 512x512 (32 MiB; rows 516 -> 528) 219-236 -> 255, at batch 8 218-234 ->
# 252-265; 7x7 s2 conv1 at batch 8 (26 MB; rows 115 -> 128) 271-293 -> 254-281, hence the limit.
_STREAM_BYTES = 16 << 20
_STREAM_PAD = 1.05


def _streams(out, rows, lanes, wq):
    """Whether the direct kernel stores ``out`` non-temporally (see ``_STREAM_BYTES``); ``wq``
    is the unpadded row pitch of the flat pixel space."""
    return (not rows and out.nbytes >= _STREAM_BYTES and out.shape[3] % lanes == 0
            and out.ctypes.data % _VBYTES == 0 and -(-wq // lanes) * lanes <= _STREAM_PAD * wq)


def conv2d_direct_packed(x, packed, b, out, stride_h, stride_w, pad_top, pad_left,
                         dil_h, dil_w):
    """Direct convolution with weights prepared by :func:`pack_weights_direct`.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
        C-contiguous input, float32 or float64.
    packed : PackedDirectWeights
        From ``pack_weights_direct(w, groups)``, same dtype as ``x``.
    b : ndarray, shape (C_out,)
        Bias, same dtype (pass zeros for none).
    out : ndarray, shape (N, C_out, OH, OW)
        C-contiguous output, fully overwritten. ``OH``/``OW`` encode the bottom/right padding.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w : int
        Stride (>= 1), top/left zero padding (>= 0) and dilation (>= 1).

    Returns
    -------
    None
    """
    n_img = x.shape[0]
    oh, ow = out.shape[2], out.shape[3]
    if out.size == 0:
        return
    p = packed
    lanes = _VBYTES // x.dtype.itemsize
    halo = ((p.kh - 1) * dil_h) // stride_h
    wq = _q_pitch(ow, p.kw, dil_w, stride_w, 1)
    rows = _use_rows(p.tile_c, stride_h, dil_h, p.kh, ow, wq, lanes)
    stream = _streams(out, rows, lanes, wq)
    wq = _q_pitch(ow, p.kw, dil_w, stride_w, lanes if stream else 1)
    nthreads = _threads.get_num_threads()
    nphase = stride_h * stride_w
    band, n_cc, tchunk = _plan_work(n_img, p.groups, oh, ow, wq, halo, p.cin_g, nphase,
                                    -(-p.cout_g // p.tile_c), p.tile_c, rows,
                                    p.cin_g * p.kh * p.kw, lanes, x.dtype.itemsize, nthreads)
    tq = (_RV if rows else _NACC // p.tile_c) * lanes
    slot = _scratch_len(p.cin_g, nphase, band, halo, wq, tq, lanes)
    scratch = buffer("direct", nthreads * slot, x.dtype)
    n_cob = -(-p.cout_g // p.tile_c)
    kblock = 0 if rows else _tap_block(p.cin_g, p.kh, p.kw, stride_h, stride_w, dil_h, dil_w,
                                       wq, tq, -(-n_cob // n_cc), p.tile_c, lanes,
                                       x.dtype.itemsize)
    acc_slot = _acc_len(n_cc, n_cob, p.tile_c, tq, 0 < kblock < p.cin_g * p.kh * p.kw)
    acc = aligned("direct-acc", nthreads * acc_slot, x.dtype)
    blocked = p.blocks is not None
    with _threads.launch():
        _DRIVERS[blocked](x, p.data, p.blocks if blocked else p.data.reshape(-1), b, out,
                          stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, p.groups,
                          p.tile_c, rows, band, n_cc, tchunk, kblock, scratch, acc, stream)


def conv2d_direct(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """Direct 2-D convolution (``torch.nn.functional.conv2d`` semantics) into ``out``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
        C-contiguous input, float32 or float64.
    w : ndarray, shape (C_out, C_in // groups, kH, kW)
        C-contiguous weights, same dtype.
    b : ndarray, shape (C_out,)
        Bias, same dtype (pass zeros for none).
    out : ndarray, shape (N, C_out, OH, OW)
        C-contiguous output, same dtype; every element is written. ``OH``/``OW`` are taken
        from it and so encode the bottom/right padding.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w : int
        Stride (>= 1), top/left zero padding (>= 0), dilation (>= 1).
    groups : int
        Number of groups (divides C_in and C_out).

    Returns
    -------
    None

    Notes
    -----
    Any groups, kernel size, stride, dilation and padding (including padding larger than the
    kernel and kernels larger than the input). Each output is ``b[co]`` plus one FMA per tap in
    an order fixed by the layer's shape, independent of the thread count. Reads the weights in
    place: see :func:`pack_weights_direct` / :func:`conv2d_direct_packed` to block them once.
    """
    conv2d_direct_packed(x, pack_weights_direct(w, groups, blocked=False), b, out, stride_h,
                         stride_w, pad_top, pad_left, dil_h, dil_w)
