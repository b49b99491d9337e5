"""Layout changes between channels-first and channels-last: ``(N, A, B) -> (N, B, A)``.

NumPy copies a transposed view element by element in the destination's order, so one of the
two arrays is walked with a large stride and every element costs a cache miss (a 1.6 MB
(3136, 128) float32 transpose took ~0.6 ms here). This kernel moves 32 x 32 blocks, each read and
written within L1, in parallel, each block as square tiles transposed in registers
(:func:`tile_transpose`, also used by kernels that lay out operands): that transpose in 45-49
us on 2 threads, 183 with scalar copies.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from numbaconv._jit import parallel_kernel
from numbaconv.kernels.gemm import _lanes
from numbaconv.kernels.ir_vectors import Vectors

_BLOCK = 32


def _tile_codegen(e, builder, row_ptr, dbase, ldd, rows_v, cols_v):
    """The transpose of :func:`tile_transpose`, source row ``i`` at ``row_ptr(i)``."""
    L = e.lanes
    rows, cols = e.as64(rows_v), e.as64(cols_v)
    colmask = e.mask(cols_v, L)
    rowmask = e.mask(rows_v, L)
    none = ir.Constant(colmask.type, [0] * L)
    vecs = []
    for i in range(L):
        ok = builder.icmp_signed("<", ir.Constant(e.i64, i), rows)
        vecs.append(e.load(row_ptr(i), builder.select(ok, colmask, none)))
    half = L // 2
    lo = [q for lane in range(half) for q in (lane, L + lane)]
    hi = [q for lane in range(half, L) for q in (lane, L + lane)]
    for _ in range(L.bit_length() - 1):
        vecs = [v for i in range(half) for v in (e.shuffle(vecs[i], vecs[i + half], lo),
                                                 e.shuffle(vecs[i], vecs[i + half], hi))]
    for j in range(L):
        ok = builder.icmp_signed("<", ir.Constant(e.i64, j), cols)
        p = builder.gep(dbase, [builder.mul(ir.Constant(e.i64, j), ldd)])
        e.store(vecs[j], p, builder.select(ok, rowmask, none))


@intrinsic
def tile_transpose(typingctx, src, soff, lds, dst, doff, ldd, rows, cols):
    """``dst[doff + j*ldd + i] = src[soff + i*lds + j]`` for ``i < rows``, ``j < cols``, with
    ``rows, cols <= L``, the elements of one vector register (16 float32 with AVX-512). Reads
    and writes nothing outside the tile (masked vector loads and stores).

    ``L`` rows in registers, then ``log2(L)`` rounds that interleave row ``i`` with row
    ``i + L/2`` (a perfect shuffle of the index bits each round; one two-source permute per
    output vector): ``L log2(L)`` permutes for ``L*L`` elements, where a scalar transpose
    spends a load and a store on each."""
    sig = types.void(src, soff, lds, dst, doff, ldd, rows, cols)

    def codegen(context, builder, signature, args):
        s_v, soff_v, lds_v, d_v, doff_v, ldd_v, rows_v, cols_v = args
        e = Vectors(context, builder, signature.args[0])
        sbase = e.ptr(signature.args[0], s_v, soff_v)
        lds = e.as64(lds_v)
        _tile_codegen(e, builder,
                      lambda i: builder.gep(sbase, [builder.mul(ir.Constant(e.i64, i), lds)]),
                      e.ptr(signature.args[3], d_v, doff_v), e.as64(ldd_v), rows_v, cols_v)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def tile_transpose_rows(typingctx, src, soff, offs, ooff, dst, doff, ldd, rows, cols):
    """:func:`tile_transpose` with source row ``i`` at ``src[soff + offs[ooff + i]]`` (rows
    anywhere, e.g. the taps of a convolution in a padded image): ``dst[doff + j*ldd + i] =
    src[soff + offs[ooff + i] + j]``."""
    sig = types.void(src, soff, offs, ooff, dst, doff, ldd, rows, cols)

    def codegen(context, builder, signature, args):
        s_v, soff_v, o_v, ooff_v, d_v, doff_v, ldd_v, rows_v, cols_v = args
        e = Vectors(context, builder, signature.args[0])
        sbase = e.ptr(signature.args[0], s_v, soff_v)
        obase = e.ptr(signature.args[2], o_v, ooff_v)
        rows = e.as64(rows_v)

        def row_ptr(i):
            # rows past ``rows`` are never loaded; they take row 0's table entry
            k = builder.select(builder.icmp_signed("<", ir.Constant(e.i64, i), rows),
                               ir.Constant(e.i64, i), ir.Constant(e.i64, 0))
            off = builder.load(builder.gep(obase, [k]))
            return builder.gep(sbase, [e.as64(off)])

        _tile_codegen(e, builder, row_ptr, e.ptr(signature.args[4], d_v, doff_v),
                      e.as64(ldd_v), rows_v, cols_v)
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def _transpose(src, dst):
    n, a, b = src.shape
    lanes = _lanes(dst)
    sf = src.reshape(-1)
    df = dst.reshape(-1)
    ta = (a + _BLOCK - 1) // _BLOCK
    tb = (b + _BLOCK - 1) // _BLOCK
    for t in prange(n * ta * tb):
        i = t // (ta * tb)
        r = t - i * (ta * tb)
        a0 = (r // tb) * _BLOCK
        b0 = (r - (r // tb) * tb) * _BLOCK
        for x in range(a0, min(a, a0 + _BLOCK), lanes):
            for y in range(b0, min(b, b0 + _BLOCK), lanes):
                tile_transpose(sf, (i * a + x) * b + y, b, df, (i * b + y) * a + x, a,
                               min(lanes, a - x), min(lanes, b - y))


def swap_last_two(src, dst=None):
    """``dst[i] = src[i].T`` for a C-contiguous float32/float64 ``src`` of shape (N, A, B);
    ``dst`` (N, B, A) C-contiguous, allocated when None. Returns ``dst``."""
    n, a, b = src.shape
    if dst is None:
        dst = np.empty((n, b, a), dtype=src.dtype)
    if src.size:
        _transpose(src, dst)
    return dst
