"""Gradient of a 2-D convolution with respect to its weights, on numbaconv's GEMM micro-kernel.

For group ``g`` with ``K = C_in/groups * kH * kW`` rows ``k = (ci, ky, kx)``::

    dW[g*C_out/groups + co, ci, ky, kx] = sum_n sum_p  dY[n, g*C_out/groups + co, p] * col_n[k, p]

where ``p`` runs over the output pixels and ``col_n`` is the im2col matrix of image ``n``: a
GEMM whose reduction runs over the batch and the pixels. numbaconv computes its transpose
``dW_g^T (K x C_out/groups) = sum_n col_n @ dY_g[n]^T``: a parallel task owns a block of ``K``
rows and of output channels (never a part of the reduction) and walks the images and the pixels
in chunks, copying the chunk's im2col rows (the A operand, read in place by the micro-kernel)
and the chunk of ``dY^T`` as NR-wide B panels, and accumulating into its block. ``dY^T`` and the
final ``dW`` are cache-blocked transposes (about ``1/K`` and ``1/pixels`` of the work). Every
gradient element is summed over ``n`` ascending, then the pixels ascending, one fused
multiply-add each, starting from zero: the result does not depend on the blocking or on the
number of threads.
"""

import threading

import numba
import numpy as np
from numba import prange

from .._jit import parallel_kernel
from . import gemm as _gemm
from .im2col import _im2col_rows

_PIXEL_CHUNK = 256     # reduction block (micro-kernel K loop): B panel 256 x 32 floats in L1
_K_ROWS = 64           # gradient rows (im2col rows) per task: the im2col chunk stays in L2
_MIN_TASKS = 8         # parallel tasks wanted (2 cores; balance)
_KEEP_BYTES = 64 << 20  # largest scratch buffer kept between calls (per Python thread)

_scratch = threading.local()


def _buffer(slot, size, dtype):
    """A scratch array of ``size`` elements kept between calls of this Python thread.

    A fresh multi-megabyte ``np.empty`` comes back from the C allocator as new pages, and the
    first touch of every page is a page fault (about 1100 faults, 2 ms, for a 256 x 256 x 3 x 3
    gradient here); reusing the buffer avoids them. Buffers above ``_KEEP_BYTES`` are not kept.
    """
    dtype = np.dtype(dtype)
    kept = getattr(_scratch, slot, None)
    if kept is not None and kept.dtype == dtype and kept.size >= size:
        return kept[:size]
    buf = np.empty(size, dtype=dtype)
    if size * dtype.itemsize <= _KEEP_BYTES:
        setattr(_scratch, slot, buf)
    return buf


@parallel_kernel
def _transpose(src, dst, batch, rows, cols):
    """``dst[b, c, r] = src[b, r, c]`` (flat arrays), in 32 x 32 tiles that stay in L1."""
    tiles = (rows + 31) // 32
    for t in prange(batch * tiles):
        b = t // tiles
        r0 = (t - b * tiles) * 32
        r1 = min(rows, r0 + 32)
        for c0 in range(0, cols, 32):
            for c in range(c0, min(cols, c0 + 32)):
                d = (b * cols + c) * rows
                for r in range(r0, r1):
                    dst[d + r] = src[(b * rows + r) * cols + c]


@parallel_kernel
def _driver(x, gt, dwt, cout, groups, kh, kw, sh, sw, pt, pl, dh, dwl, oh, ow, kt, n_kb, ct,
            n_cb, pc, ldcol, ws_col, ws_b):
    nb, cin = x.shape[0], x.shape[1]
    cg, cog = cin // groups, cout // groups
    k = cg * kh * kw
    npix = oh * ow
    nr = _gemm.NV * _gemm._lanes(dwt)
    for t in prange(groups * n_kb * n_cb):
        g = t // (n_kb * n_cb)
        r = t - g * n_kb * n_cb
        kb = r // n_cb
        cb = r - kb * n_cb
        k0 = kb * kt
        k1 = min(k, k0 + kt)
        c0 = cb * ct
        c1 = min(cog, c0 + ct)
        if k1 <= k0 or c1 <= c0:
            continue
        tid = numba.get_thread_id()
        col = ws_col[tid]
        bp = ws_b[tid]
        for n in range(nb):
            for q0 in range(0, npix, pc):
                q1 = min(npix, q0 + pc)
                kc = q1 - q0
                _im2col_rows(x, n, g * cg, k0, k1, kh, kw, sh, sw, pt, pl, dh, dwl, q0, q1, ow,
                             col, ldcol)
                # dY^T rows q0..q1, channels c0..c1 of group g, as contiguous NR-wide panels
                _gemm._pack_b(gt, (n * npix + q0) * cout + g * cog + c0, cout, kc, c1 - c0, bp)
                # the first chunk starts from zero (init 2): the block is written before it is
                # read, so no page of the fresh result is first faulted in as the zero page
                init = 2 if n == 0 and q0 == 0 else 0
                for j in range(0, c1 - c0, nr):
                    _gemm._strip(kc, col, 0, _gemm.MR * ldcol, 1, ldcol, bp, (j // nr) * kc * nr,
                                 nr, dwt, (g * k + k0) * cog + c0 + j, cog, k1 - k0,
                                 min(nr, c1 - c0 - j), dwt, 0, init)


def _blocks(groups, k, cog, nr):
    """``(kt, n_kb, ct, n_cb)``: gradient rows (im2col rows) and output channels per task, and
    their counts; from the shapes alone."""
    mr = _gemm.MR
    kt = min(_K_ROWS, -(-k // mr) * mr)
    n_kb = -(-k // kt)
    if groups * n_kb < _MIN_TASKS:
        want = -(-_MIN_TASKS // groups)
        kt = max(mr, -(-(-(-k // want)) // mr) * mr)
        n_kb = -(-k // kt)
    n_cb = max(1, min(-(-_MIN_TASKS // (groups * n_kb)), -(-cog // nr)))
    ct = -(-(-(-cog // n_cb)) // nr) * nr
    n_cb = -(-cog // ct)
    return kt, n_kb, ct, n_cb


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
    nb = x.shape[0]
    oh, ow = grad_out.shape[2], grad_out.shape[3]
    cog = cout // groups
    k = cg * kh * kw
    itemsize = x.itemsize
    if not (nb and oh * ow and k and cog):
        return np.zeros(weight_shape, dtype=x.dtype)
    nr = _gemm.NV * (_gemm._VBYTES // itemsize)
    kt, n_kb, ct, n_cb = _blocks(groups, k, cog, nr)
    pc = min(_PIXEL_CHUNK, oh * ow)
    ldcol = pc + (nr // _gemm.NV if _gemm._l1_hostile(pc, itemsize) else 0)
    gt = _buffer("gt", grad_out.size, x.dtype)
    _transpose(grad_out.reshape(-1), gt, nb, cout, oh * ow)
    dwt = _buffer("dwt", groups * k * cog, x.dtype)
    threads = numba.config.NUMBA_NUM_THREADS
    ws_col = _buffer("col", threads * kt * ldcol, x.dtype).reshape(threads, kt * ldcol)
    nb_ = -(-ct // nr) * nr * pc
    ws_b = _buffer("b", threads * nb_, x.dtype).reshape(threads, nb_)
    _driver(x, gt, dwt, cout, groups, kh, kw, stride_h, stride_w, pad_top, pad_left, dil_h,
            dil_w, oh, ow, kt, n_kb, ct, n_cb, pc, ldcol, ws_col, ws_b)
    dw = np.empty(weight_shape, dtype=x.dtype)
    _transpose(dwt, dw.reshape(-1), groups, k, cog)
    return dw
