"""Prefetches for compiled kernels: an IR helper, and a write-intent prefetch of an array range.

A store to a line that is not in L1 has to fetch the line first (read for ownership). Kernels
that write their results in short runs spread over many pages (one output row per channel, say)
get little help from the hardware prefetchers there, and stall on those fetches; asking for the
lines early, while the results are still being computed, hides them.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch_for_write", "emit_prefetch"]

_LINE = 64


def emit_prefetch(builder, ptr, write=False):
    """IR: ask for the cache line holding the address ``ptr`` (any pointer type) in every cache
    level, for reading or (``write``, ``prefetchw``) for writing."""
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    prefetch = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
    builder.call(prefetch, [builder.bitcast(ptr, i8p), ir.Constant(i32, int(write)),
                            ir.Constant(i32, 3), ir.Constant(i32, 1)])


@intrinsic
def prefetch_for_write(typingctx, arr, start, n):
    """Ask for the cache lines holding ``arr[start : start + n]`` in L1, for writing
    (``prefetchw``; a plain prefetch where the CPU has none). Nothing for ``n <= 0``. Prefetches
    never fault, and nothing is read or written."""
    if not isinstance(arr, types.Array):
        return None
    sig = types.void(arr, start, n)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        arr_v, start_v, n_v = args
        i64 = ir.IntType(64)
        i8p = ir.IntType(8).as_pointer()

        def as64(v):
            return builder.sext(v, i64) if v.type.width < 64 else v

        isz = context.get_abi_sizeof(context.get_value_type(aty.dtype))
        data = context.make_array(aty)(context, builder, arr_v).data
        base = builder.ptrtoint(data, i64)
        first = builder.add(base, builder.mul(as64(start_v), ir.Constant(i64, isz)))
        last = builder.add(first, builder.mul(builder.sub(as64(n_v), ir.Constant(i64, 1)),
                                              ir.Constant(i64, isz)))
        first = builder.and_(first, ir.Constant(i64, -_LINE))
        with builder.if_then(builder.icmp_signed(">", as64(n_v), ir.Constant(i64, 0))):
            with cgutils.for_range_slice(builder, first, builder.add(last, ir.Constant(i64, 1)),
                                         ir.Constant(i64, _LINE), i64) as (addr, _):
                emit_prefetch(builder, builder.inttoptr(addr, i8p), write=True)
        return context.get_dummy_value()

    return sig, codegen
