"""The one place that decides how numbaconv's kernels are compiled.

Every kernel module builds its decorators here, so compile options stay uniform:

* ``cache=True``: compiled machine code is kept on disk beside the sources, so only the
  first call after installation pays for compilation.
* ``fastmath={'contract'}``: lets LLVM fuse a multiply and an add into one FMA. It never
  reorders a sum, so a kernel's summation order is the one written in its source and the
  result does not depend on the thread count. Reassociating flags (``reassoc``, ``fast``)
  are deliberately absent, as are ``nnan``/``ninf``: NaN and Inf must propagate.
* ``error_model='numpy'``: integer division without Python's zero-division check, which
  would otherwise sit inside hot index arithmetic.
* ``nogil=True``: kernels release the GIL, so several Python threads can convolve at once.
"""

import llvmlite.binding as _llb
import numba
from numba import types
from numba.extending import intrinsic

FASTMATH = frozenset({"contract"})

_COMMON = dict(cache=True, nogil=True, fastmath=set(FASTMATH), error_model="numpy")


def vector_bytes():
    """Width in bytes of the widest vector registers of the CPU Numba compiles for (64 with
    AVX-512, 32 with AVX, else 16). Micro-kernels written in LLVM IR size their tiles by it:
    wider vectors would still be correct elsewhere (LLVM splits them) but would spill."""
    features = numba.config.CPU_FEATURES
    if not features:
        if numba.config.CPU_NAME:  # a named target without a feature list: assume the least
            return 16
        features = _llb.get_host_cpu_features().flatten()
    feats = {f.strip() for f in features.split(",")}
    if "+avx512f" in feats:
        return 64
    if "+avx" in feats:
        return 32
    return 16


def kernel(fn):
    """Decorate a serial compiled helper (inlined into its callers by LLVM when small)."""
    return numba.njit(**_COMMON)(fn)


def parallel_kernel(fn):
    """Decorate a compiled driver whose outermost ``prange`` spreads work over threads."""
    return numba.njit(parallel=True, **_COMMON)(fn)


@intrinsic
def prefer_wide_vectors(typingctx):
    """Ask LLVM to auto-vectorise the enclosing function with 512-bit vectors.

    LLVM's tuning for several AVX-512 CPUs (Skylake-X to Sapphire Rapids) prefers 256-bit
    vectors, which halves the speed of FMA-bound loops. The function attribute
    ``prefer-vector-width=512`` overrides that for this function only: the user's other Numba
    code and the cache keys are untouched, and on CPUs without AVX-512 it changes nothing.
    Call it at the top of every loop body that should vectorise wide; inside a ``prange`` body it
    lands on the outlined parallel function, where the loop's code ends up.
    """
    def codegen(context, builder, signature, args):
        # llvmlite only knows enum attributes; a string attribute is written out verbatim.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen
