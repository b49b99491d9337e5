"""Array views that own no reference, for the bodies of parallel loops.

A Numba array view (a slice, a row, a reshape) holds a reference to its parent's memory, and
taking or dropping one is an atomic update of a count that every thread shares. Inside a
``prange`` body both cores then write one cache line over and over, which costs little when
the cores are close and a lot when they are not (measured on a shared 2-core machine: a
Winograd stage 2x slower with 2 threads than with 1). A view of :func:`unowned` has no parent
to count: the caller keeps the array alive for as long as the view is used.
"""

import numba
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from numbaconv._jit import kernel


@intrinsic
def _voidptr(typingctx, addr):
    """Integer address -> void pointer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(addr), codegen


@kernel
def unowned(a):
    """View of ``a`` that owns no reference (the caller keeps ``a`` alive)."""
    return numba.carray(_voidptr(a.ctypes.data), a.shape, a.dtype)
