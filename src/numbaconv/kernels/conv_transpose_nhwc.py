"""Channels-last transposed convolution as stride-phase convolutions on the implicit GEMM.

What it computes
----------------
For input ``x`` (N, D, H, W, C_in), torch-ordered weights ``w`` (C_in, C_out/G, kD, kH, kW) and
``G`` groups, per spatial axis (input size ``I``, kernel ``k``, stride ``s``, padding ``p``,
dilation ``d``, output size ``O``)::

    y[n, o, co] = b[co] + sum_{i, k, ci : o = i*s - p + k*d} x[n, i, ci] * w[ci, co, k]

How
---
Output index ``o = q + s*j`` belongs to stride phase ``q`` (``0 <= q < s``). Within a phase the
taps that reach it are fixed, ``(q + p - k*d) % s == 0``, and their input index is
``i = j + (q + p - k*d) // s``: one step of ``j`` is one step of ``i``. So each phase of the
output is an ordinary stride-1 correlation of the input with a sub-kernel (its taps), and
:func:`numbaconv.kernels.conv_nhwc._driver` computes it with the output written in place on
the phase's grid (pixel stride ``s_w*C_out``, row stride ``s_h*W_out*C_out``). No multiply is
spent on the zeros a zero-stuffed input would hold, and the input is read in place but for a
border copy (the largest reach of any phase outside the input, zero-padded once).

The weights of each phase are gathered once per call into (taps, C_in/G, C_out) panels
(weights only, small next to the arithmetic). A phase no tap reaches (kernel extent shorter
than the stride) is the bias alone.

Inputs of few pixels (DCGAN's 4x4) take :func:`conv_transpose3d_ndhwc_few_pixels` instead:
there the weights outweigh the arithmetic, and one GEMM reads them as they lie.
"""

import numpy as np

from numbaconv.kernels import conv_nhwc, gemm, transpose


def _phases(size_in, size_out, k, s, p, d):
    """Per phase ``q``: ``(q, outputs, taps, input offsets)`` with ``i = j + offset``."""
    phases = []
    for q in range(s):
        count = max(0, -(-(size_out - q) // s))
        taps = [t for t in range(k) if (q + p - t * d) % s == 0]
        phases.append((q, count, taps, [(q + p - t * d) // s for t in taps]))
    return phases


def _border(phases, size_in):
    """Zero padding ``(lo, hi)`` that keeps every phase's reads inside the padded input."""
    lo = hi = 0
    for _, count, _, offsets in phases:
        if count and offsets:
            lo = max(lo, -min(offsets))
            hi = max(hi, max(offsets) + count - size_in)
    return lo, hi


def _taps_major(w, groups):
    """``w`` (C_in, C_out/G, kD, kH, kW) as (kD, kH, kW, C_in/G, C_out): for each tap, a
    group's input channels against all output channels. Without groups, torch's contiguous
    layout and TensorFlow's (kD, kH, kW, C_out, C_in) (a transposed view here) are one blocked
    transpose away; NumPy gathers the rest."""
    cin, og = w.shape[:2]
    kernel = w.shape[2:]
    taps = int(np.prod(kernel))
    if groups == 1 and w.flags.c_contiguous:
        return transpose.swap_last_two(w.reshape(1, cin * og, taps)).reshape(kernel + (cin, og))
    tf_order = w.transpose(2, 3, 4, 1, 0)
    if groups == 1 and tf_order.flags.c_contiguous:
        return transpose.swap_last_two(tf_order.reshape(taps, og, cin)).reshape(kernel + (cin, og))
    cg = cin // groups
    return np.ascontiguousarray(
        w.reshape((groups, cg, og) + kernel).transpose(3, 4, 5, 1, 0, 2)
    ).reshape(kernel + (cg, og * groups))


def conv_transpose3d_ndhwc(x, w, bias, y, stride, padding, dilation, groups):
    """``y[...] = conv_transpose3d(x, w) + bias`` in channels-last layout, computed in place.

    ``x`` (N, D, H, W, C_in), ``w`` (C_in, C_out/groups, kD, kH, kW) as torch orders transposed
    weights, ``bias`` (C_out,) or None, ``y`` (N, D_out, H_out, W_out, C_out) C-contiguous (its
    size fixes the output padding), all of one float dtype; ``stride``, ``dilation`` and
    ``padding`` (the low side: torch crops ``padding`` at both ends) are triples. ``y`` must not
    overlap the other arrays.
    """
    n, _, _, _, cin = x.shape
    cg, og = w.shape[0] // groups, w.shape[1]
    cout = og * groups
    out_size = y.shape[1:4]
    if y.size == 0:
        return y
    axes = [_phases(i, o, k, s, p, d) for i, o, k, s, p, d in
            zip(x.shape[1:4], out_size, w.shape[2:], stride, padding, dilation)]
    borders = [_border(ph, i) for ph, i in zip(axes, x.shape[1:4])]
    xp = conv_nhwc._padded(x, borders)
    dp, hp, wp = xp.shape[1:4]
    xflat, yflat = xp.reshape(-1), y.reshape(-1)
    wt = _taps_major(w, groups)
    has_bias = bias is not None
    b = np.ascontiguousarray(bias) if has_bias else yflat[:1]
    if any(not taps for ph in axes for _, count, taps, _ in ph if count):
        y[...] = 0 if bias is None else bias  # phases no tap reaches
    nr = conv_nhwc.NV * (gemm._VBYTES // y.itemsize)
    (sd, sh, sw), (do_, ho_, wo_) = stride, out_size
    lo = [b_[0] for b_ in borders]
    for qd, nd_, td, od in axes[0]:
        for qh, nh, th, oh in axes[1]:
            for qw, nw, tw, ow in axes[2]:
                if not (nd_ and nh and nw and td and th and tw):
                    continue
                shift = (((np.array(od)[:, None, None] + lo[0]) * hp
                          + np.array(oh)[None, :, None] + lo[1]) * wp
                         + np.array(ow)[None, None, :] + lo[2]) * cin
                atab = (shift.reshape(-1, 1) + np.arange(cg)[None, :]).reshape(-1)
                wk = wt[np.ix_(td, th, tw)].reshape(-1)
                k = len(td) * len(th) * len(tw) * cg
                n_rows = nd_ * nh
                rows, n_rb, ppc, n_cb, kc, npan = conv_nhwc._blocks(
                    n, groups, n_rows, nw, og, k, cg, 1, len(th), 1, y.itemsize, nr)
                conv_nhwc._driver(
                    xflat, dp, hp, wp, cin, cg, atab.astype(np.int64), wk, b, has_bias, yflat,
                    n, nh, nw, cout, og, k, 1, 1, 1, n_rows, rows, n_rb, ppc, n_cb, kc, npan,
                    groups, do_ * ho_ * wo_ * cout, sd * ho_ * wo_ * cout, sh * wo_ * cout,
                    sw * cout, ((qd * ho_ + qh) * wo_ + qw) * cout)
    return y


#: Most input pixels (N x spatial) for :func:`conv_transpose3d_ndhwc_few_pixels`. Measured
#: against the stride phases (float32, 2 threads, 4x4 stride 2, HWOI weights; GFLOP/s):
#: 4x4 C512->256 66 vs 9, 8x8 C256->128 88 vs 25, 8x8 C512->256 135 vs 31, 16x16 C128->64
#: 63 vs 63, 16x16 C256->128 107 vs 70.
FEW_PIXELS = 256


def conv_transpose3d_ndhwc_few_pixels(x, w, bias, y, stride, padding, dilation):
    """As :func:`conv_transpose3d_ndhwc` without groups, for inputs of few pixels (DCGAN's
    4x4), where each weight meets only a few pixels and gathering the weights per phase costs
    more than the arithmetic.

    One GEMM ``cols[(tap, co), pixel] = sum_ci w[tap, co, ci] * x[pixel, ci]`` reads the weights
    as they lie when they are in TensorFlow's (kD, kH, kW, C_out, C_in) order (torch's order
    costs one blocked transpose) and the transposed input (a small copy); then, starting from
    the bias, each tap's block of ``cols`` is added onto the strided slice of ``y`` it reaches,
    taps in ascending order (fixed order: exact on integer data, thread-count independent).
    ``cols`` holds ``taps * C_out * pixels`` values (at most a few MiB under FEW_PIXELS).
    """
    n, cin = x.shape[0], x.shape[-1]
    og = w.shape[1]
    kernel = w.shape[2:]
    taps = int(np.prod(kernel))
    pixels = n * int(np.prod(x.shape[1:4]))
    tf_order = w.transpose(2, 3, 4, 1, 0)
    if tf_order.flags.c_contiguous:
        rows = tf_order.reshape(taps * og, cin)                      # (tap, co) x ci, in place
        tap_major = True
    else:
        rows = transpose.swap_last_two(np.ascontiguousarray(w).reshape(1, cin, og * taps))
        rows = rows.reshape(og * taps, cin)                          # (co, tap) x ci
        tap_major = False
    cols = np.empty((taps * og, pixels), y.dtype)
    gemm.gemm_grouped(rows.reshape(-1), cin, 0, np.ascontiguousarray(x.reshape(pixels, cin).T)
                      .reshape(-1), pixels, 0, cols.reshape(-1), pixels, 0, 1, taps * og,
                      pixels, cin, overwrite=True)
    cols = cols.reshape((kernel + (og,) if tap_major else (og,) + kernel) + (pixels,))
    y[...] = 0 if bias is None else bias
    size_in, size_out = x.shape[1:4], y.shape[1:4]
    for tap in np.ndindex(*kernel):
        reach = [_reach(i, o, k, s, p, d) for i, o, k, s, p, d in
                 zip(size_in, size_out, tap, stride, padding, dilation)]
        if any(r is None for r in reach):
            continue
        block = cols[tap] if tap_major else cols[(slice(None),) + tap]    # (co, pixels)
        block = block.reshape((og, n) + tuple(size_in)).transpose(1, 2, 3, 4, 0)
        y[(slice(None),) + tuple(o for _, o in reach)] += \
            block[(slice(None),) + tuple(i for i, _ in reach)]
    return y


def _reach(size_in, size_out, k, s, p, d):
    """``(input slice, output slice)`` of the inputs that tap ``k`` sends inside the output
    (``o = i*s - p + k*d``), or None if it sends none."""
    lo = max(0, -((k * d - p) // s))                 # first i with o >= 0
    hi = min(size_in, (size_out - 1 + p - k * d) // s + 1)
    if hi <= lo:
        return None
    o0 = lo * s - p + k * d
    return slice(lo, hi), slice(o0, o0 + (hi - lo - 1) * s + 1, s)
