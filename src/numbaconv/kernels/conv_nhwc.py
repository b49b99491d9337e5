"""Channels-last 2-D convolution: an implicit GEMM with output pixels as rows.

What it computes
----------------
For input ``x`` (N, H, W, C_in), weights ``w`` (kH, kW, C_in/G, C_out) (TensorFlow's HWIO) and
``G`` groups of ``Cg = C_in/G`` input and ``Og = C_out/G`` output channels::

    y[n, oy, ox, g*Og + o] = b[g*Og + o] + sum_{ky, kx, c} xp[n, oy*sh + ky*dh, ox*sw + kx*dw, g*Cg + c]
                                                         * w[ky, kx, c, g*Og + o]

with ``xp`` the input zero-padded by ``(pt, pl)`` at the top/left. Each output is the bias
followed by one FMA per ``k = (ky, kx, c)`` in ascending order, whatever the tiling or the
thread count.

How
---
In channels-last memory this is a GEMM whose rows are output pixels and whose columns are output
channels, both as they lie: ``A[pixel, k]`` is read in place from the input (pixel stride
``sw*C_in``; a table gives the offset of each ``k``: its tap's shift plus its channel), the
result is written in place into ``y`` (pixel stride ``C_out``; the driver takes the output's
image, depth, row and pixel strides and a base offset, so that a caller can write onto a strided
sub-grid of a larger output, as the transposed kernel does per stride phase) and the weights are
read in place too (``B[k, o] = w[k*C_out + o]``). So there is no im2col matrix, no packing and
no transpose; a padded input is copied only when the convolution pads. (Packing the weights into
``NR``-column panels, as the GEMM does for L1-hostile strides, measured 0-40% slower: the copy
costs more than the L1 misses it saves, as the panel streams from L2 fast enough.)

The micro-kernel is :mod:`numbaconv.kernels.gemm`'s, with an ``MR`` pixels x ``NR`` channels
tile (5 x 4 vectors with 512-bit vectors, 6 x 2 with 256-bit ones) in registers. A task owns
``(image, group, block of output rows, block of column panels)`` and runs the whole K loop
itself (no split sums): for each K block, each column panel meets every output row of the task
(the input rows it reads stay in L2).
"""

import numpy as np
from numba import prange

from numbaconv._jit import kernel, parallel_kernel
from numbaconv.kernels import gemm
from numbaconv.kernels.scratch import buffer

# Register tile. With 512-bit vectors (32 registers): 5 pixels x 4 vectors of output channels
# (20 accumulators). Measured in one process against 8x2 (the NCHW tile), 4x4, 6x4 and 4x3 on
# ResNet/VGG 3x3 layers: 4-vector tiles were 20-40% faster than 8x2 (half the broadcasts per
# FMA), and 5 rows waste the least on the usual widths (7, 14, 28, 56, 224 pixels per row).
# With 256-bit vectors (16 registers) 20 accumulators spill: on an AVX2 machine 6x2 ran at
# 108/76/128/44 GFLOP/s on ResNet 3x3 C128 28, 1x1 C64->256 56, 3x3 C64 56 and 3x3 C512 7,
# against 60/36/61/31 for 5x4 (4x3 and 4x2 were within 10% of 6x2).
MR, NV = (5, 4) if gemm._VBYTES == 64 else (6, 2)
_A_BYTES = 384 * 1024     # input read by a task's rows for one K block: in L2
_MIN_TASKS = 8            # parallel tasks wanted (2 cores; balance)


@kernel
def _strip(kc, a, aoff, sia, b, boff, ldb, atab, ak0, c, coff, ldc, m, n_valid, bias, bias_off,
           init):
    """``C[0:m, 0:n_valid] (+)= A @ B`` for ``m`` pixels of one output row, ``MR`` at a time:
    pixel ``i``'s row ``k`` of A at ``a[aoff + i*sia + atab[ak0 + k]]``; ``init`` as the
    micro-kernel's (3: start from the bias of each column)."""
    gemm._noinline()
    for i in range((m + MR - 1) // MR):
        gemm._mk(kc, a, aoff + i * MR * sia, 0, sia, b, boff, ldb, atab, ak0, c,
                 coff + i * MR * ldc, ldc, min(MR, m - i * MR), n_valid, bias, bias_off, init,
                 MR, NV, 2, 0)


@kernel
def _task(t, xp, dp, hp, wp, cin, cg, atab, w, bias, has_bias, y, ho, wo, cout, og, k, sd, sh,
          sw, n_rows, rows, n_rb, ppc, n_cb, kc, npan, groups, ysn, ysd, ysh, ldc, ybase):
    gemm._noinline()
    nr = NV * gemm._lanes(y)
    cb = t % n_cb
    r = t // n_cb
    rb = r % n_rb
    r //= n_rb
    g = r % groups
    n = r // groups
    # output rows are (depth, row) pairs: r0..r1 of this image's n_rows = D_out * H_out
    r0 = rb * rows
    r1 = min(n_rows, r0 + rows)
    p0 = cb * ppc
    p1 = min(npan, p0 + ppc)
    for k0 in range(0, k, kc):
        kcur = min(kc, k - k0)
        init = 0 if k0 > 0 else (3 if has_bias else 2)
        for p in range(p0, p1):
            boff = k0 * cout + g * og + p * nr
            nval = min(nr, og - p * nr)
            for r in range(r0, r1):
                od = r // ho
                oy = r - od * ho
                _strip(kcur, xp, (((n * dp + od * sd) * hp + oy * sh) * wp) * cin + g * cg,
                       sw * cin, w, boff, cout, atab, k0, y,
                       n * ysn + od * ysd + oy * ysh + ybase + g * og + p * nr, ldc, wo, nval,
                       bias, g * og + p * nr, init)


@parallel_kernel
def _driver(xp, dp, hp, wp, cin, cg, atab, w, bias, has_bias, y, batch, ho, wo, cout, og, k, sd,
            sh, sw, n_rows, rows, n_rb, ppc, n_cb, kc, npan, groups, ysn, ysd, ysh, ldc, ybase):
    for t in prange(batch * groups * n_rb * n_cb):
        _task(np.int64(t), xp, dp, hp, wp, cin, cg, atab, w, bias, has_bias, y, ho, wo, cout,
              og, k, sd, sh, sw, n_rows, rows, n_rb, ppc, n_cb, kc, npan, groups, ysn, ysd, ysh,
              ldc, ybase)


def _blocks(batch, groups, ho, wo, og, k, cg, sh, kh, dh, itemsize, nr):
    """``(rows per task, column panels per task, KC)``: a function of the shapes alone."""
    kc = gemm._k_block(k, itemsize)
    npan = -(-og // nr)
    # input rows one output row reads per K block (its taps' rows), times the row width
    taps_rows = min(kh, -(-kc // cg))
    per_row = max(1, wo * sh * min(kc, cg) * itemsize * taps_rows)
    n_rb = -(-ho // max(1, min(ho, _A_BYTES // per_row)))
    rows = -(-ho // n_rb)
    # more tasks: split the column panels first (each keeps all of its input reuse), then rows
    want_cb, want_rb = 1, n_rb
    while batch * groups * n_rb * -(-npan // -(-npan // want_cb)) < _MIN_TASKS:
        if want_cb < npan:
            want_cb += 1
        elif n_rb < ho:
            want_rb += 1
            rows = -(-ho // want_rb)
            n_rb = -(-ho // rows)
        else:
            break
    ppc = -(-npan // want_cb)
    return rows, n_rb, ppc, -(-npan // ppc), kc, npan


def _padded(x, pads):
    """``x`` (N, D, H, W, C) zero-padded by ``pads`` ((front, back), (top, bottom), (left,
    right)) in a kept workspace, or ``x`` itself without padding."""
    if not any(lo or hi for lo, hi in pads):
        return np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[-1]
    inner = tuple(slice(lo, lo + size) for (lo, _), size in zip(pads, x.shape[1:4]))
    shape = (n,) + tuple(size + lo + hi for (lo, hi), size in zip(pads, x.shape[1:4])) + (c,)
    xp = buffer("nhwc.padded", int(np.prod(shape)), x.dtype).reshape(shape)
    # zero only the border: the slabs before/after the interior along each axis
    for axis, ((lo, hi), size) in enumerate(zip(pads, x.shape[1:4])):
        head = (slice(None),) + inner[:axis]
        xp[head + (slice(0, lo),)] = 0
        xp[head + (slice(lo + size, None),)] = 0
    xp[(slice(None),) + inner] = x
    return xp


def conv3d_ndhwc(x, w, bias, y, stride, padding, dilation, groups):
    """``y[...] = conv3d(x, w) + bias`` in channels-last layout, computed in place.

    ``x`` (N, D, H, W, C_in), ``w`` (kD, kH, kW, C_in/groups, C_out) DHWIO, ``bias`` (C_out,) or
    None, ``y`` (N, D_out, H_out, W_out, C_out) C-contiguous, all of one float dtype;
    ``stride``, ``dilation`` triples, ``padding`` ``((front, back), (top, bottom), (left,
    right))``. ``y`` must not overlap the other arrays.
    """
    (sd, sh, sw), (dd, dh, dw) = stride, dilation
    n, _, _, _, cin = x.shape
    kd, kh, kw, cg, cout = w.shape
    _, do, ho, wo, _ = y.shape
    if y.size == 0:
        return y
    og = cout // groups
    nr = NV * (gemm._VBYTES // y.itemsize)
    xp = _padded(x, padding)
    dp, hp, wp = xp.shape[1:4]
    k = kd * kh * kw * cg
    taps = (((np.arange(kd)[:, None, None] * dd * hp + np.arange(kh)[None, :, None] * dh) * wp
             + np.arange(kw)[None, None, :] * dw) * cin).reshape(-1)
    atab = (taps[:, None] + np.arange(cg)[None, :]).reshape(-1).astype(np.int64)
    wk = np.ascontiguousarray(w).reshape(-1)
    n_rows = do * ho
    rows, n_rb, ppc, n_cb, kc, npan = _blocks(n, groups, n_rows, wo, og, k, cg, sh, kh, dh,
                                              y.itemsize, nr)
    has_bias = bias is not None
    b = np.ascontiguousarray(bias) if has_bias else y.reshape(-1)[:1]
    _driver(xp.reshape(-1), dp, hp, wp, cin, cg, atab, wk, b, has_bias, y.reshape(-1), n, ho, wo,
            cout, og, k, sd, sh, sw, n_rows, rows, n_rb, ppc, n_cb, kc, npan, groups,
            n_rows * wo * cout, ho * wo * cout, wo * cout, cout, 0)
    return y


def conv2d_nhwc(x, w, bias, y, stride, padding, dilation, groups):
    """``y[...] = conv2d(x, w) + bias`` in channels-last layout, computed in place.

    ``x`` (N, H, W, C_in), ``w`` (kH, kW, C_in/groups, C_out) HWIO, ``bias`` (C_out,) or None,
    ``y`` (N, H_out, W_out, C_out) C-contiguous, all of one float dtype; ``padding`` is
    ``((top, bottom), (left, right))``. ``y`` must not overlap the other arrays. A 3-D
    convolution of unit depth.
    """
    conv3d_ndhwc(x[:, None], w[None], bias, y[:, None], (1,) + tuple(stride),
                 ((0, 0),) + tuple(padding), (1,) + tuple(dilation), groups)
    return y
