"""Convolution of small feature maps with the vector lanes along output channels (plans).

The GEMM (:mod:`numbaconv.kernels.gemm`) puts 32 output pixels of one image in the lanes of its
two vectors, so a map that is not a multiple of 32 pixels leaves lanes idle: ResNet-50's 7x7
maps (49 pixels) fill 49 of 64, and an 8x8 map runs as fast as 7x7 there. This kernel turns the
tile around: its register tile is ``MR`` = 7 output pixels of one row (broadcast from a
zero-padded copy of the input) by 2 vectors of output channels (32 float32 / 16 float64, read
from weights packed channel-contiguous), so rows of 7, 14, 28 ... pixels fill every lane. That
needs the weights in a layout a call cannot afford to make (one pass over all of them per call:
9.4 MB for C512 3x3), so plans use it, which pack once.

The micro-kernel is the GEMM's (``_mk``) with the operands exchanged:
``out[n, co, oy, ox] = b[co] + sum_k w[co, k] * xpad[n, ci, oy*sh + ky*dh, ox + kx*dw]`` for
``k = (ci, ky, kx)`` ascending, one fused multiply-add each, which is the GEMM's order and its
bits. The pixel operand's ``k`` rows are not evenly spaced (the taps of a channel are a few
elements apart, channels a padded plane apart), so they come from a table of offsets, and the
7 pixels of a row are adjacent in the padded input (stride 1 along W only). A work item (one
image, one block of 32 channels, a run of output rows) keeps its partial sums in a small buffer
and goes over K in blocks whose weights (256 k x 32 channels, 32 KiB) stay in L1 while they
meet every row of the item.
"""

import functools

import numpy as np
from numba import prange

from numbaconv import _threads
from numbaconv._jit import kernel, parallel_kernel, vector_bytes
from numbaconv.kernels.gemm import NV as _GEMM_NV, _mk
from numbaconv.kernels.scratch import aligned
from numbaconv.kernels.unowned import unowned as _unowned

__all__ = ["MR", "channels_per_tile", "conv2d_small_maps", "pack_weights", "pays", "supports"]

_VBYTES = vector_bytes()
MR = 7                 # output pixels per register tile (7 x 2 vectors: 14 accumulators)
NV = 2                 # vectors of output channels per register tile
_KC_BYTES = 32 << 10   # weights of one K block of a channel block: L1


def channels_per_tile(itemsize):
    """Output channels one register tile covers (``NV`` vectors)."""
    return NV * _VBYTES // itemsize


def supports(sw, groups, oh, ow):
    """Whether :func:`conv2d_small_maps` computes this geometry: one group, stride 1 along W,
    an output map of at most 32x32 (the partial sums of a work item stay in L2)."""
    return groups == 1 and sw == 1 and 0 < oh * ow <= 1024


@functools.lru_cache(maxsize=256)
def pays(kh, kw, sw, groups, oh, ow, cout, itemsize):
    """Whether this kernel beats the GEMM's pixel panels on a geometry it supports: kernels
    larger than 1x1, and lanes at least 5% better used.

    Lanes used: here ``ow / (MR * ceil(ow / MR))`` of the pixels times ``cout / (n * ceil(cout
    / n))`` of the channels (``n`` a tile's channels); the GEMM's panels ``oh*ow`` over 2
    vectors a panel, one for a last panel of at most one vector. Plans, float32, 2 threads, 5
    alternating rounds, 3x3 stride 1, GFLOP/s, GEMM -> this kernel: C512 7x7 214-224 ->
    257-277, at batch 2 213 -> 256, C256 7x7 189 -> 244, C128 7x7 143 -> 191, C256 14x14 253-265
    -> 292-311, C64 14x14 144 -> 189, C512 14x14 267 -> 264 (taken: 196 of 208 lanes against
    all), C256 14x14 at batch 4 271 -> 267; not taken: C128 28x28 253 -> 247, C256 10x10 228 ->
    211. 1x1 kernels: the input rows are the pixel operand itself, and a K block of them
    outgrows L1 (1x1 C1024->256 14x14 248 -> 166; 7x7 maps 200-203 -> 205-222 in one run, -21% to
    +11% in another).
    """
    if kh * kw == 1 or not supports(sw, groups, oh, ow):
        return False
    lanes = _VBYTES // itemsize
    nch = channels_per_tile(itemsize)
    panel = _GEMM_NV * lanes  # the GEMM's panel width in pixels
    npix = oh * ow
    rest = npix % panel
    gemm_lanes = npix - rest + (0 if rest == 0 else lanes if rest <= lanes else panel)
    here = (ow / (MR * -(-ow // MR))) * (cout / (nch * -(-cout // nch)))
    return here >= 1.05 * npix / gemm_lanes


def pack_weights(w):
    """Weights (C_out, C_in, kH, kW) as ``[channel block][k][channels]`` (1-d, C-order),
    ``channels_per_tile`` channels a block, missing channels of the last block zero."""
    cout = w.shape[0]
    k = w.size // max(cout, 1)
    nch = channels_per_tile(w.itemsize)
    ncb = -(-cout // nch)
    wt = np.zeros((ncb * nch, k), w.dtype)
    wt[:cout] = w.reshape(cout, k)
    return np.ascontiguousarray(wt.reshape(ncb, nch, k).transpose(0, 2, 1)).reshape(-1)


@functools.lru_cache(maxsize=64)
def _tap_offsets(cin, kh, kw, dh, dw, hp, wp):
    """Offset of ``k = (ci, ky, kx)``'s pixel row in a padded image (read-only)."""
    ci, ky, kx = np.meshgrid(np.arange(cin), np.arange(kh) * dh, np.arange(kw) * dw,
                             indexing="ij")
    offs = (ci * (hp * wp) + ky * wp + kx).reshape(-1).astype(np.int64)
    offs.setflags(write=False)
    return offs


@kernel
def _item(xp, xbase, wc, wbase, offs, bias, of, obase, acc, k, nch, nvalid, co0, oy0, oy1, ow,
          sh, wp, oplane, kc):
    """Output rows ``[oy0, oy1)`` of channels ``[co0, co0 + nvalid)`` of one image: each K
    block of the weights meets every row, the partial sums wait in ``acc`` (``[row][chunk of
    MR pixels][MR][nch]``), then go to their planes."""
    nchunk = (ow + MR - 1) // MR
    for k0 in range(0, k, kc):
        kn = min(kc, k - k0)
        init = 3 if k0 == 0 else 0       # start from the bias (per channel), then the sums
        for oy in range(oy0, oy1):
            for j in range(nchunk):
                _mk(kn, xp, xbase + oy * sh * wp + j * MR, 0, 1, wc, wbase + k0 * nch, nch,
                    offs, k0, acc, ((oy - oy0) * nchunk + j) * MR * nch, nch,
                    min(MR, ow - j * MR), nvalid, bias, co0, init, MR, NV, 2, 0)
    for c in range(nvalid):
        ob = obase + (co0 + c) * oplane
        for oy in range(oy0, oy1):
            rb = (oy - oy0) * nchunk * MR * nch + c
            for ox in range(ow):
                of[ob + oy * ow + ox] = acc[rb + ox * nch]


@parallel_kernel
def _driver(x4, xpad, wc_o, bias_o, out4, offs_o, pt, pl, sh, hp, wp, nch, kc, row_groups,
            nthreads):
    n_img, cin, h, wd = x4.shape
    cout, oh, ow = out4.shape[1], out4.shape[2], out4.shape[3]
    xf_o = x4.reshape(x4.size)
    of_o = out4.reshape(out4.size)
    k = offs_o.size
    plane = hp * wp
    # the zero-padded input: the rows and columns the taps reach, a plane per (image, channel)
    for p in prange(n_img * cin):
        xpf = _unowned(xpad)
        xf = _unowned(xf_o)
        zero = xpf.dtype.type(0)
        pb = p * plane
        sb = p * h * wd
        for r in range(hp):
            iy = r - pt
            inside = 0 <= iy < h
            for c in range(wp):
                ix = c - pl
                xpf[pb + r * wp + c] = xf[sb + iy * wd + ix] if inside and 0 <= ix < wd \
                    else zero
    ncb = (cout + nch - 1) // nch
    nchunk = (ow + MR - 1) // MR
    rows = (oh + row_groups - 1) // row_groups
    items = n_img * ncb * row_groups
    for t in prange(nthreads):
        xp = _unowned(xpad)
        wc = _unowned(wc_o)
        bias = _unowned(bias_o)
        of = _unowned(of_o)
        offs = _unowned(offs_o)
        acc = np.empty(rows * nchunk * MR * nch, dtype=xp.dtype)
        for it in range(t * items // nthreads, (t + 1) * items // nthreads):
            rg = it % row_groups
            rest = it // row_groups
            cb = rest % ncb
            n = rest // ncb
            oy0 = rg * rows
            oy1 = min(oh, oy0 + rows)
            if oy1 > oy0:
                _item(xp, n * cin * plane, wc, cb * k * nch, offs, bias, of, n * cout * oh * ow,
                      acc, k, nch, min(nch, cout - cb * nch), cb * nch, oy0, oy1, ow, sh, wp,
                      oh * ow, kc)


def conv2d_small_maps(x, wc, b, out, kh, kw, stride_h, pad_top, pad_left, dil_h, dil_w):
    """Convolution into ``out`` with weights from :func:`pack_weights`, for the geometries of
    :func:`supports` (stride 1 along W, one group).

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    wc : ndarray, 1-d
        :func:`pack_weights` of the (C_out, C_in, kH, kW) weights.
    b : ndarray, shape (C_out,)
    out : ndarray, shape (N, C_out, OH, OW)
        All C-contiguous, one dtype (float32 or float64); every element is written. ``OH``
        and ``OW`` imply the bottom and right padding.
    kh, kw, stride_h, pad_top, pad_left, dil_h, dil_w : int

    Notes
    -----
    ``out[n, co, oy, ox] = b[co] + sum_{ci, ky, kx} w[co, ci, ky, kx] *
    x[n, ci, oy*stride_h - pad_top + ky*dil_h, ox - pad_left + kx*dil_w]`` (zeros outside
    ``x``), the bias first, then one FMA per ``(ci, ky, kx)`` in lexicographic order, whatever
    the thread count.
    """
    n_img, cin, _, _ = x.shape
    cout, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    if out.size == 0:
        return
    hp = (oh - 1) * stride_h + (kh - 1) * dil_h + 1
    wp = ow + (kw - 1) * dil_w
    nch = channels_per_tile(x.itemsize)
    ncb = -(-cout // nch)
    nthreads = max(1, _threads.numba_count())
    # enough work items for the threads: split the rows when images x channel blocks are few
    row_groups = min(oh, -(-4 * nthreads // (n_img * ncb)))
    xpad = aligned("small_maps.xpad", n_img * cin * hp * wp, x.dtype)
    _driver(x, xpad, wc, b, out, _tap_offsets(cin, kh, kw, dil_h, dil_w, hp, wp), pad_top,
            pad_left, stride_h, hp, wp, nch, _KC_BYTES // (nch * x.itemsize), row_groups,
            min(nthreads, n_img * ncb * row_groups))
