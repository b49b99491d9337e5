"""im2col + GEMM: the convolution as one matrix product per tile of output rows.

For batch element ``n``, group ``g`` and a block of output rows, the patches the kernel meets are
copied into a workspace ``col`` of shape ``(K, P)`` with ``K = C_in/groups * kH * kW`` and ``P``
the block's output pixels; then BLAS computes ``out[n, group channels, rows] += W_g @ col``
(``W_g`` is the group's ``(C_out/groups, K)`` weight matrix, which is the OIHW weight as it lies in
memory). The output is pre-filled with the bias and the GEMM accumulates into it in place, through
leading dimensions, so neither the weights nor the result are ever copied. A 1x1 convolution with
stride 1 and no padding needs no ``col`` at all: the input already is the ``(C_in, H*W)`` matrix.

Parallelism: tiles ``(n, g, row block, channel block)`` are independent and go through ``prange``,
each with one single-threaded BLAS call on its own thread's workspace row; the tile shapes depend
only on the problem, never on the thread count, so results are identical for any thread count.
BLAS is called through Numba's own ``numba_xxgemm`` helper (scipy's BLAS), which takes leading
dimensions and therefore sub-matrices in place.
"""

import numba
import numpy as np
from numba import prange, types

from .._jit import kernel, parallel_kernel

# Workspace budget of one call, all threads together (bytes); see set_workspace_limit.
_workspace_limit = 64 << 20

# A tile should give BLAS enough columns to run at speed but leave several tiles to share out.
_TARGET_TILE_PIXELS = 1024
_MIN_TILE_PIXELS = 256
_MIN_TILES = 4

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,           # kind, transa, transb
    types.intp, types.intp, types.intp,           # m, n, k (column-major)
    types.voidptr, types.voidptr, types.intp,     # alpha, a, lda
    types.voidptr, types.intp,                    # b, ldb
    types.voidptr, types.voidptr, types.intp))    # beta, c, ldc


def set_workspace_limit(nbytes):
    """Cap the im2col workspace of one call at ``nbytes`` (default 64 MiB, all threads together)."""
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"workspace limit must be a positive int of bytes, got {nbytes!r}")
    _workspace_limit = nbytes


def get_workspace_limit():
    return _workspace_limit


@kernel
def _gemm_accumulate(m, n, k, a, lda, b, ldb, c, ldc):
    """Row-major ``C[m, n] += A[m, k] @ B[k, n]``; a, b, c are 1-d views starting at the corners.

    A row-major matrix is its column-major transpose, so this asks BLAS for C^T += B^T A^T.
    """
    one = np.ones(1, a.dtype)
    kind = 115 if a.itemsize == 4 else 100  # 's' or 'd'
    _xxgemm(kind, 78, 78, n, m, k, one.ctypes, b.ctypes, ldb, a.ctypes, lda, one.ctypes,
            c.ctypes, ldc)


@kernel
def _im2col_rows(x, n, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, oy0, oy1, ow, col):
    """Fill ``col[(ci, ky, kx), (oy - oy0) * ow + ox]`` for output rows ``oy0 <= oy < oy1``."""
    h, w = x.shape[2], x.shape[3]
    p = (oy1 - oy0) * ow
    r = 0
    for ci in range(cg):
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
                    src = x[n, c0 + ci, iy]
                    dst[:lo] = 0
                    if sw == 1:
                        dst[lo:hi] = src[lo + off: hi + off]
                    else:
                        for ox in range(lo, hi):
                            dst[ox] = src[ox * sw + off]
                    dst[hi:] = 0
                r += 1


@parallel_kernel
def _conv2d_im2col(x, w, b, out, sh, sw, pt, pl, dh, dw, groups, rows, cblk, ws):
    nb, _, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    cog = cout // groups
    k = cg * kh * kw
    n_rb = (oh + rows - 1) // rows
    n_cb = (cog + cblk - 1) // cblk
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and \
        oh == h and ow == wd
    wf = w.reshape(-1)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    per_image = groups * n_rb * n_cb
    for t in prange(nb * per_image):
        n = t // per_image
        g = (t // (n_rb * n_cb)) % groups
        rb = (t // n_cb) % n_rb
        cb = t % n_cb
        oy0 = rb * rows
        oy1 = min(oh, oy0 + rows)
        co0 = g * cog + cb * cblk
        co1 = min(g * cog + cog, co0 + cblk)
        p = (oy1 - oy0) * ow
        for co in range(co0, co1):
            out[n, co, oy0:oy1, :] = b[co]
        c_view = of[(n * cout + co0) * oh * ow + oy0 * ow:]
        a_view = wf[co0 * k:]
        if direct:
            b_view = xf[(n * x.shape[1] + g * cg) * h * wd + oy0 * ow:]
            _gemm_accumulate(co1 - co0, p, k, a_view, k, b_view, h * wd, c_view, oh * ow)
        else:
            col = ws[numba.get_thread_id()]
            _im2col_rows(x, n, g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, oy0, oy1, ow, col)
            _gemm_accumulate(co1 - co0, p, k, a_view, k, col, p, c_view, oh * ow)


def tiling(batch, groups, out_channels_per_group, oh, ow, k, itemsize):
    """Tile shape ``(rows, channel block)`` of a problem: a function of the problem alone.

    Rows per tile aim at about ``_TARGET_TILE_PIXELS`` output pixels, fewer (down to about
    ``_MIN_TILE_PIXELS``: narrower GEMMs run slowly) when that leaves less than ``_MIN_TILES``
    tiles, and few enough that all threads' ``col`` workspaces fit the limit. When rows alone
    cannot make enough tiles (small images), output channels are split too.
    """
    max_threads = numba.config.NUMBA_NUM_THREADS
    rows = max(1, min(oh, -(-_TARGET_TILE_PIXELS // ow)))
    min_rows = max(1, -(-_MIN_TILE_PIXELS // ow))
    while rows > min_rows and batch * groups * -(-oh // rows) < _MIN_TILES:
        rows = max(min_rows, (rows + 1) // 2)
    budget_rows = _workspace_limit // max(1, max_threads * k * ow * itemsize)
    rows = max(1, min(rows, budget_rows))
    tiles = batch * groups * -(-oh // rows)
    cblk = out_channels_per_group
    while tiles * -(-out_channels_per_group // cblk) < _MIN_TILES and cblk > 16:
        cblk = -(-cblk // 2)
    return rows, cblk


def workspace_bytes(problem):
    """Bytes of ``col`` workspace the im2col algorithm allocates for ``problem``."""
    rows, _ = _problem_tiling(problem)
    if _is_plain_gemm(problem):
        return 0
    k = problem.in_channels // problem.groups * problem.kernel_size[0] * problem.kernel_size[1]
    return numba.config.NUMBA_NUM_THREADS * k * rows * problem.out_size[1] * \
        np.dtype(problem.dtype).itemsize


def _problem_tiling(problem):
    k = problem.in_channels // problem.groups * problem.kernel_size[0] * problem.kernel_size[1]
    return tiling(problem.batch, problem.groups, problem.out_channels // problem.groups,
                  problem.out_size[0], problem.out_size[1], k, np.dtype(problem.dtype).itemsize)


def _is_plain_gemm(problem):
    return (problem.kernel_size == (1, 1) and problem.stride == (1, 1)
            and problem.padding == ((0, 0), (0, 0)) and problem.out_size == problem.in_size)


def conv2d_im2col(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """Forward 2-D convolution by im2col + GEMM, written into ``out``.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    w : ndarray, shape (C_out, C_in / groups, kH, kW)
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        All C-contiguous and of one dtype (float32 or float64). ``OH, OW`` imply the bottom and
        right padding. Call inside ``numbaconv._threads.blas_single_threaded()``.
    """
    n, _, h, wd = x.shape
    cout, cg, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    k = cg * kh * kw
    rows, cblk = tiling(n, groups, cout // groups, oh, ow, k, x.itemsize)
    plain = kh == 1 and kw == 1 and stride_h == 1 and stride_w == 1 and pad_top == 0 and \
        pad_left == 0 and (oh, ow) == (h, wd)
    ws_cols = 1 if plain else k * rows * ow
    ws = np.empty((numba.config.NUMBA_NUM_THREADS, ws_cols), dtype=x.dtype)
    _conv2d_im2col(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups,
                   rows, cblk, ws)
