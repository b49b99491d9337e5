"""im2col + GEMM: the textbook convolution, in cache-sized pieces.

The im2col matrix of image ``n`` and group ``g`` has ``K = C_in/groups * kH * kW`` rows (one per
``(ci, ky, kx)``) and one column per output pixel; ``out[n, group channels] = W_g @ col`` with
``W_g`` the group's ``(C_out/groups, K)`` weight matrix, which is the OIHW weight as it lies in
memory. That matrix is never built whole: the output pixels of each ``(n, g)`` are cut into
chunks of a few micro-kernel panels, and a task (one per chunk, run in parallel) copies ``KC``
rows of the chunk's columns at a time into a small per-thread workspace and multiplies them
into the output at once, while they are still in cache. The output is pre-filled with the bias
and accumulated in place, so neither the weights nor the result are copied. A 1x1 convolution
with stride 1 and no padding copies nothing: the input already is the ``(C_in, H*W)`` matrix.

The workspace (``threads x KC x chunk`` values, about 128 KiB per thread) is capped by
:func:`set_workspace_limit` (64 MiB by default); a smaller cap means smaller pieces.

The GEMM is numbaconv's own micro-kernel (:mod:`numbaconv.kernels.gemm`), not BLAS: the BLAS
inside the NumPy/SciPy wheels runs AVX2 kernels on this class of CPU (about half the speed), its
rounding depends on its own thread count, and that count cannot be held reliably from every
calling thread. Every output is the bias followed by one FMA per ``k`` in ascending order, so
this algorithm's result does not depend on the chunking, the thread count or the calling thread.
"""

import numba
import numpy as np
from numba import prange

from .._jit import kernel, parallel_kernel
from . import gemm as _gemm
from .scratch import buffer

# Workspace budget of one call (bytes); see set_workspace_limit.
_workspace_limit = 64 << 20
# Workspace of one task, aimed at L2 beside the weights it meets.
_TASK_BYTES = 128 << 10
# Parallel tasks wanted per call (2 cores; balance), when the problem has that many panels.
_MIN_TASKS = 16


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
def _im2col_rows(x, n, c0, r0, r1, kh, kw, sh, sw, pt, pl, dh, dw, q0, q1, ow, col, ldc):
    """``col[(r - r0)*ldc + q - q0]`` = im2col row ``r`` (``r = (ci*kh + ky)*kw + kx``, input
    channel ``c0 + ci``) at output pixel ``q = oy*ow + ox``, for ``r0 <= r < r1``,
    ``q0 <= q < q1``; zero where the tap falls into the padding. Row segments are short (a few
    vectors), so they are moved with masked vector copies: LLVM's vectorised loops would run
    them in their scalar remainder."""
    h, w = x.shape[2], x.shape[3]
    lanes = _gemm._lanes(col)
    xf = x.reshape(-1)
    oya, oyb = q0 // ow, (q1 - 1) // ow
    for r in range(r0, r1):
        ci = r // (kh * kw)
        ky = (r // kw) % kh
        kx = r % kw
        pbase = ((n * x.shape[1]) + c0 + ci) * h * w
        off = kx * dw - pl
        # columns ox whose input column ox*sw + off lies inside [0, w)
        lo = 0 if off >= 0 else min(ow, (-off + sw - 1) // sw)
        hi = 0 if w - 1 - off < 0 else min(ow, (w - 1 - off) // sw + 1)
        hi = max(hi, lo)
        for oy in range(oya, oyb + 1):
            a = max(oy * ow, q0) - oy * ow
            e = min(oy * ow + ow, q1) - oy * ow
            d = (r - r0) * ldc + oy * ow - q0          # col index of column ox = 0
            iy = oy * sh - pt + ky * dh
            if iy < 0 or iy >= h:
                _zero(col, d + a, e - a)
                continue
            u0 = min(max(lo, a), e)
            u1 = max(min(hi, e), u0)
            _zero(col, d + a, u0 - a)
            src = pbase + iy * w + off
            for j in range(u0, u1, lanes):
                cnt = min(lanes, u1 - j)
                if sw == 1:
                    _gemm._vcopy(xf, src + j, col, d + j, cnt)
                elif sw == 2:
                    _gemm._vcopy_s2(xf, src + 2 * j, col, d + j, cnt)
                else:
                    _gemm._vgather(xf, src + j * sw, sw, col, d + j, cnt)
            _zero(col, d + u1, e - u1)


@kernel
def _zero(dst, off, n):
    """``dst[off:off+n] = 0``, a vector at a time."""
    lanes = _gemm._lanes(dst)
    for j in range(0, n, lanes):
        _gemm._vzero(dst, off + j, min(lanes, n - j))


@parallel_kernel
def _conv_im2col(x, wf, of, groups, cout, kh, kw, sh, sw, pt, pl, dh, dw, oh, ow, chunk, kc,
                 ldc, ws):
    """``of`` (the flat output, bias already in it) ``+=`` the convolution; one task per
    ``(image, group, chunk of output pixels)``."""
    nb, cin = x.shape[0], x.shape[1]
    cg, cog = cin // groups, cout // groups
    k = cg * kh * kw
    npix = oh * ow
    nr = _gemm.NV * _gemm._lanes(of)
    nchunks = (npix + chunk - 1) // chunk
    for t in prange(nb * groups * nchunks):
        ng = t // nchunks
        n, g = ng // groups, ng % groups
        q0 = (t - ng * nchunks) * chunk
        q1 = min(npix, q0 + chunk)
        col = ws[numba.get_thread_id()]
        a0 = g * cog * k
        c0 = (n * cout + g * cog) * npix + q0
        for k0 in range(0, k, kc):
            kcur = min(kc, k - k0)
            _im2col_rows(x, n, g * cg, k0, k0 + kcur, kh, kw, sh, sw, pt, pl, dh, dw, q0, q1,
                         ow, col, ldc)
            if cog == 1:
                _gemm._strip_row(kcur, wf, a0 + k0, 1, col, 0, ldc, of, c0, q1 - q0)
                continue
            for j in range(0, q1 - q0, nr):
                _gemm._strip(kcur, wf, a0 + k0, _gemm.MR * k, 1, k, col, j, ldc, of, c0 + j,
                             npix, cog, min(nr, q1 - q0 - j), of, 0, 0)


def _is_plain_gemm(kh, kw, sh, sw, pt, pl, oh, ow, h, wd):
    return (kh, kw, sh, sw, pt, pl) == (1, 1, 1, 1, 0, 0) and (oh, ow) == (h, wd)


def _tiling(n_tasks_outer, k, npix, itemsize):
    """``(chunk, kc, ldc)``: output pixels per task (whole panels), im2col rows per copy, and
    the workspace row stride; a function of the shapes and the workspace cap only."""
    nr = _gemm.NV * (_gemm._VBYTES // itemsize)
    panels = -(-npix // nr)
    kc = min(k, _gemm._k_block(k, itemsize))
    budget = min(_TASK_BYTES, _workspace_limit // max(1, numba.config.NUMBA_NUM_THREADS))
    per_task = max(1, budget // (kc * nr * itemsize))          # panels that fit the budget
    want = -(-_MIN_TASKS // max(1, n_tasks_outer))             # chunks wanted for balance
    per_task = max(1, min(per_task, -(-panels // want)))
    chunk = per_task * nr
    if kc * chunk * itemsize > budget:                         # tiny caps: fewer rows per copy
        kc = max(1, budget // (chunk * itemsize))
    ldc = chunk + (nr // _gemm.NV if _gemm._l1_hostile(chunk, itemsize) else 0)
    return chunk, kc, ldc


def workspace_bytes(problem):
    """Bytes of workspace the im2col algorithm allocates for a 2-d ``problem``."""
    (kh, kw), (sh, sw) = problem.kernel_size, problem.stride
    ((pt, _), (pl, _)), (oh, ow) = problem.padding, problem.out_size
    if _is_plain_gemm(kh, kw, sh, sw, pt, pl, oh, ow, *problem.in_size):
        return 0
    itemsize = np.dtype(problem.dtype).itemsize
    k = problem.in_channels // problem.groups * kh * kw
    _, kc, ldc = _tiling(problem.batch * problem.groups, k, oh * ow, itemsize)
    return numba.config.NUMBA_NUM_THREADS * kc * ldc * itemsize


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
    out[...] = b[:, None, None]
    wf = w.reshape(-1)
    if _is_plain_gemm(kh, kw, stride_h, stride_w, pad_top, pad_left, oh, ow, h, wd):
        for n in range(nb):
            _gemm.gemm_grouped(wf, k, cog * k, x[n].reshape(-1), h * wd, cg * h * wd,
                               out[n].reshape(-1), oh * ow, cog * oh * ow, groups, cog, h * wd, k)
        return
    chunk, kc, ldc = _tiling(nb * groups, k, oh * ow, x.itemsize)
    nthreads = numba.config.NUMBA_NUM_THREADS
    ws = buffer("im2col", nthreads * kc * ldc, x.dtype).reshape(nthreads, kc * ldc)
    _conv_im2col(x, wf, out.reshape(-1), groups, cout, kh, kw, stride_h, stride_w, pad_top,
                 pad_left, dil_h, dil_w, oh, ow, chunk, kc, ldc, ws)
