"""im2col + GEMM: the textbook convolution, one matrix product per block of output rows.

For batch element ``n``, group ``g`` and a block of output rows, the patches the kernel meets are
copied into a workspace ``col`` of shape ``(K, P)`` with ``K = C_in/groups * kH * kW`` and ``P``
the block's output pixels (a parallel copy, one input channel per task); then
``out[n, group channels, rows] += W_g @ col`` where ``W_g`` is the group's ``(C_out/groups, K)``
weight matrix, which is the OIHW weight as it lies in memory. The output block is pre-filled with
the bias and the GEMM accumulates into it in place, through its row stride, so neither the
weights nor the result are copied. A 1x1 convolution with stride 1 and no padding needs no
``col`` at all: the input already is the ``(C_in, H*W)`` matrix.

The workspace is capped (64 MiB by default, :func:`set_workspace_limit`): the row blocks are as
tall as the cap allows, at least one output row.

The GEMM is numbaconv's own (:func:`numbaconv.kernels.gemm.gemm`), not BLAS: the BLAS inside the
NumPy/SciPy wheels runs AVX2 kernels on this class of CPU (about half the speed), its rounding
depends on its own thread count, and that count cannot be held reliably from every calling
thread. numbaconv's GEMM sums every element in ascending ``k`` order with FMAs, so this
algorithm's result does not depend on the block height, the thread count or the calling thread.
"""

import numpy as np
from numba import prange

from .._jit import kernel, parallel_kernel, prefer_wide_vectors
from . import gemm as _gemm

# Workspace budget of one call (bytes); see set_workspace_limit.
_workspace_limit = 64 << 20


def set_workspace_limit(nbytes):
    """Cap the im2col workspace of one call at ``nbytes`` (default 64 MiB)."""
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"workspace limit must be a positive int of bytes, got {nbytes!r}")
    _workspace_limit = nbytes


def get_workspace_limit():
    """The current cap of the im2col workspace, in bytes."""
    return _workspace_limit


@kernel
def _im2col_channel(x, n, c, r0, kh, kw, sh, sw, pt, pl, dh, dw, oy0, oy1, ow, col):
    """Rows ``r0 ...`` (one per ``(ky, kx)``) of ``col`` for input channel ``c``:
    ``col[r, (oy - oy0) * ow + ox]`` for output rows ``oy0 <= oy < oy1``."""
    prefer_wide_vectors()
    h, w = x.shape[2], x.shape[3]
    p = (oy1 - oy0) * ow
    plane = x[n, c]
    r = r0
    for ky in range(kh):
        for kx in range(kw):
            off = kx * dw - pl
            # columns ox whose input column ox*sw + off lies inside [0, w)
            lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
            hi = 0 if w - 1 - off < 0 else min(ow, (w - 1 - off) // sw + 1)
            hi = max(hi, lo)
            base = r * p
            for oy in range(oy0, oy1):
                iy = oy * sh - pt + ky * dh
                dst = col[base + (oy - oy0) * ow: base + (oy - oy0 + 1) * ow]
                if iy < 0 or iy >= h:
                    dst[:] = 0
                    continue
                dst[:lo] = 0
                if hi > lo and sw == 1:
                    dst[lo:hi] = plane[iy, lo + off: hi + off]
                elif hi > lo:
                    dst[lo:hi] = plane[iy, lo * sw + off: (hi - 1) * sw + off + 1: sw]
                dst[hi:] = 0
            r += 1


@parallel_kernel
def _im2col(x, n, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oy0, oy1, ow, col):
    """``col`` (flat, ``K x P``) for input channels ``c0 .. c0 + cg``, one channel per task."""
    for ci in prange(cg):
        _im2col_channel(x, n, c0 + ci, ci * kh * kw, kh, kw, sh, sw, pt, pl, dh, dw, oy0, oy1,
                        ow, col)


def block_rows(k, oh, ow, itemsize):
    """Output rows per block: as many as the workspace limit allows (at least one)."""
    return max(1, min(oh, _workspace_limit // max(1, k * ow * itemsize)))


def _is_plain_gemm(kh, kw, sh, sw, pt, pl, oh, ow, h, wd):
    return (kh, kw, sh, sw, pt, pl) == (1, 1, 1, 1, 0, 0) and (oh, ow) == (h, wd)


def workspace_bytes(problem):
    """Bytes of ``col`` workspace the im2col algorithm allocates for a 2-d ``problem``."""
    (kh, kw), (sh, sw) = problem.kernel_size, problem.stride
    ((pt, _), (pl, _)), (oh, ow) = problem.padding, problem.out_size
    if _is_plain_gemm(kh, kw, sh, sw, pt, pl, oh, ow, *problem.in_size):
        return 0
    itemsize = np.dtype(problem.dtype).itemsize
    k = problem.in_channels // problem.groups * kh * kw
    return k * block_rows(k, oh, ow, itemsize) * ow * itemsize


def conv2d_im2col(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """Forward 2-D convolution by im2col + GEMM, written into ``out``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in / groups, kH, kW)
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        All C-contiguous and of one dtype (float32 or float64). ``OH, OW`` imply the bottom and
        right padding.
    """
    nb, cin, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    cog = cout // groups
    k = cg * kh * kw
    plain = _is_plain_gemm(kh, kw, stride_h, stride_w, pad_top, pad_left, oh, ow, h, wd)
    rows = oh if plain else block_rows(k, oh, ow, x.itemsize)
    col = None if plain else np.empty(k * rows * ow, dtype=x.dtype)
    out[...] = b[:, None, None]
    for n in range(nb):
        for g in range(groups):
            a = w[g * cog:(g + 1) * cog].reshape(cog, k)
            c_all = out[n, g * cog:(g + 1) * cog].reshape(cog, oh * ow)
            if plain:
                _gemm.gemm(a, x[n, g * cg:(g + 1) * cg].reshape(cg, h * wd), c_all)
                continue
            for oy0 in range(0, oh, rows):
                oy1 = min(oh, oy0 + rows)
                p = (oy1 - oy0) * ow
                _im2col(x, n, g * cg, cg, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h,
                        dil_w, oy0, oy1, ow, col)
                _gemm.gemm(a, col[:k * p].reshape(k, p), c_all[:, oy0 * ow:oy1 * ow])
