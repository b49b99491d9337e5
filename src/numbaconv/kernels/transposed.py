"""Transposed 2-D convolution (``torch.nn.functional.conv_transpose2d``) kernels.

Two algorithms, each with its own public driver; both take the plain-array interface described
in :func:`conv_transpose2d_direct` and never build a zero-stuffed input.

``conv_transpose2d_direct`` (gather by stride phase)
    Output row ``oy`` and column ``ox`` belong to the stride phase ``((oy + pad_top) % stride_h,
    (ox + pad_left) % stride_w)``. Within one phase the kernel taps that can reach the pixel are
    fixed, and the input pixel of each tap moves by exactly one when the output moves by one
    stride, so every phase is an ordinary stride-1 correlation of the input with a sub-kernel.
    No multiply is spent on the structural zeros of the stuffed input.

    Work item = (image, group, block of CB output channels, output row). For each column phase
    the row is cut into tiles of TW phase pixels; a tile is one call of the GEMM's register
    micro-kernel (:func:`numbaconv.kernels.gemm._mk`: CB x TW accumulators in vector registers,
    per step one or two input vectors, CB broadcast weights and 16 FMAs) whose K loop runs over
    all of the phase's taps that meet the input, input channels innermost, the input row of
    each step taken from a small table. (A loop nest per tap in Numba, the same instructions in
    its innermost loop, gave the same speed on the layers; the one loop leaves fewer lines.)
    Tiles go to a small per-item staging row (one segment per column phase), which is then
    interleaved into the output row with contiguous stores. Those rows (one per output channel
    of the item, each on its own page) get little from the hardware prefetchers, so with results
    of 2 MiB or more an item first prefetches them for writing (float32, 2 threads, alternating
    rounds: 2x2 s2 C256->128 64 at batch 8 211 -> 235 GFLOP/s, at batch 1 231 -> 236). With the
    interleave left out altogether (results wrong) the kernel had run 15-20% faster on one
    thread before that, and still runs 4-8% faster on two after it (3x3 s2 C32->16 128 174 ->
    188 GFLOP/s): what writing tiles straight into the output could still win.

    To make that loop branch-free, the input rows a thread's run of work items reads are
    copied into a zero-padded "NHCW" buffer (rows of all channels of one image row adjacent, so a
    work item streams one compact block) and the weight blocks it uses are repacked so the CB
    channels of one (tap, input channel) are contiguous and a tile's weights, taps in phase
    order, are one contiguous stream (against the blocks of all tiles
    interleaved, in one process, 40 rounds: 2x2 s2 C256->128 64 4-5% faster, 4x4 s2 C128->64 16
    2-14%, the others even); each thread makes its own copies, in
    the same parallel region, so no thread reads data the other one wrote (measured against
    copies made by both threads together: 3x3 s2 C32->16 128 124 vs 106 GFLOP/s and 2x2 s2
    C256->128 64 153 vs 125 in a period when the two cores were far apart, 4x4 s2 C128->64 16
    136 vs 141, where both threads copy every input row), each row and block when first
    needed (weight blocks copied up front held 4x4 s2 C128->64 16 at 154 against 169
    GFLOP/s). Taps that fall outside the input
    vertically are skipped exactly; horizontally the zero padding stands in for them. ``0 * w``
    is an exact zero for finite weights, so this is exact; if the weights hold Inf/NaN the
    affected border columns are recomputed by a plain exact gather afterwards (Inf * 0 would
    otherwise create NaNs torch does not produce). Plans pass :class:`PackedWeights`, whose
    blocks are packed once and read by both threads in place (4x4 s2 C128->64 16: 7% faster
    than the per-call copies, 4% at batch 8).

    Two tile shapes (chosen per layer from the lane efficiency): TW = 2 vectors x CB = 8, the
    GEMM's own micro-kernel shape, unless TW = 1 vector x CB = 16 leaves fewer lanes idle
    (phase rows of one vector, as DCGAN's 16x16 inputs have).

``conv_transpose2d_gemm`` (GEMM + col2im)
    ``cols[pixel, (co, ky, kx)] = sum_ci x[ci, pixel] * w[ci, (co, ky, kx)]`` on the forward
    GEMM's register-tiled micro-kernel (8 pixels x 2 vectors of (co, ky, kx), masked at the
    edges; no BLAS) reading the weights in torch's own layout, then a col2im that scatter-adds
    the columns of a block of output channels into a cache-resident tile. Meant for small
    spatial sizes with many channels (DCGAN-style 4x4 inputs), where the weights dominate the
    memory traffic and a repacking pass would cost more than the arithmetic. A tile reads one
    128-byte run per input channel, ``J`` elements apart: the prefetchers do not follow such
    runs, and for ``J`` a power of two they share cache sets, so large weights go through in
    blocks of input channels that stay in L2 (see ``_GEMM_BLOCK_BYTES``), and the first
    image's tiles prefetch the run 16 input channels ahead (``_GEMM_AHEAD``; float32, 2
    threads, 8 alternating rounds, 8 ahead: DCGAN t4x4 C512->256 on 4x4 0.52 -> 0.44 ms,
    C1024->512 2.25 -> 2.10, C512->256 at batch 8 2.73 -> 2.59; with the weights evicted from
    the caches before each call 16 ahead 0.77 -> 0.51 ms). Plans pass :class:`PackedWeights`,
    whose panels make each tile's weights one contiguous stream (DCGAN t4x4 C512->256 on 4x4:
    GEMM 0.53 -> 0.36 ms).

Choosing between them (measured float32, 2 threads, k in {2, 3, 4}, stride 2; the rule lives in
:func:`numbaconv.dispatch.rule`): ``gemm`` when the input is narrow, ``W < 16``, ``direct``
otherwise. ``direct`` loses up to ~10x on 4x4 inputs (most vector lanes idle, weight repacking
dominates); ``gemm`` loses up to 2x from 16 columns on and 1.3-4x from 32 (col2im and its
temporary dominate).

Performance notes that shaped the code (Numba 0.68 / LLVM, znver5):

* Numba gives the body of a ``prange`` loop ``noalias`` array arguments only when that body
  creates no array views at all, so the parallel bodies below never slice, reshape or index
  arrays partially: every access is a full scalar index into a flat array (flattening happens
  in the Python drivers).
* The shapes, phase tables and work split of a layer are built once in Python and kept
  (:func:`_direct_geometry`): a few dozen microseconds per call otherwise, 10% of a DCGAN
  t4x4 C128->64 16 call (float32, 2 threads, alternating rounds: 0.300 -> 0.271 ms; 3x3 s2
  C32->16 128 0.782 -> 0.691 ms, C64->32 32 0.192 -> 0.155 ms).
* Hot indices are ``np.uint64`` so Numba emits no negative-index wraparound selects; they are
  non-negative by construction.
* Tile sizes are closure constants (one compiled kernel per dtype and tile shape): the
  micro-kernel takes them as compile-time literals.

Determinism: every output element is produced by exactly one work item with a fixed summation
order, and the work split does not depend on the thread count, so results are bit-identical for
any number of threads.
"""

import collections
import functools

import numpy as np
from numba import prange

from numbaconv import _threads
from numbaconv._aligned import copy_aligned, row_shift
from numbaconv._jit import kernel, prefer_wide_vectors, parallel_kernel, vector_bytes
from numbaconv.kernels.gemm import MR, NV, _lanes, _make_strip, _mk, _strip, _vcopy, _vzero
from numbaconv.kernels.prefetch import prefetch_for_write
from numbaconv.kernels.scratch import aligned, buffer

__all__ = ["conv_transpose2d_direct", "conv_transpose2d_gemm"]

_U1 = np.uint64(1)
_L2_SHARE_BYTES = 512 * 1024   # data a loop order may count on staying in a core's L2
# Results from this size on are prefetched for writing, row by row, by the direct kernel's items
# (smaller ones tend to stay in cache between calls)
_PREFETCH_OUT_BYTES = 2 << 20


# ----------------------------------------------------------------------------------------------
# Geometry helpers (plain Python, tiny tables)
# ----------------------------------------------------------------------------------------------

def _phase_taps(k, s, d):
    """Taps of each stride phase along one axis.

    For residue ``r = (o + pad) % s`` the taps are the ``kk`` with ``kk*d % s == r``; for each
    one ``e = (kk*d - r) // s`` is the input offset: output phase index ``m = (o + pad) // s``
    reads input ``m - e``. Returns (count[s], kk[s, k], e[s, k]).
    """
    nt = np.zeros(s, np.int64)
    tk = np.zeros((s, max(k, 1)), np.int64)
    te = np.zeros((s, max(k, 1)), np.int64)
    for kk in range(k):
        r = (kk * d) % s
        tk[r, nt[r]] = kk
        te[r, nt[r]] = (kk * d - r) // s
        nt[r] += 1
    return nt, tk, te


def _phase_ranges(s, pad, n_out):
    """First phase index m0[r] and count M[r] of the outputs ``o = m*s + r - pad`` in [0, n_out)."""
    m0 = np.zeros(s, np.int64)
    cnt = np.zeros(s, np.int64)
    for r in range(s):
        lo = -((r - pad) // s)                 # ceil((pad - r) / s), >= 0
        hi = (n_out - 1 + pad - r) // s + 1
        m0[r] = lo
        cnt[r] = max(hi - lo, 0)
    return m0, cnt


def _phase_order(nty, tky, ntx, tkx, kW):
    """The kernel taps ordered phase by phase: row phase ``qy``, column phase ``qx``, then the
    phase's row taps ``a`` and column taps ``bb``. Returns (P0[sh, sw], ptap[kH*kW]): tap
    ``(tky[qy, a], tkx[qx, bb])`` is ``ky*kW + kx = ptap[P0[qy, qx] + a*ntx[qx] + bb]``."""
    sh, sw = len(nty), len(ntx)
    p0 = np.zeros((sh, sw), np.int64)
    ptap = []
    for qy in range(sh):
        for qx in range(sw):
            p0[qy, qx] = len(ptap)
            for a in range(nty[qy]):
                for bb in range(ntx[qx]):
                    ptap.append(tky[qy, a] * kW + tkx[qx, bb])
    return p0, np.array(ptap, np.int64)


def _phase_rows(nty, tey, ntx, tex, Cin, Cg_in, WP):
    """Row offsets of the micro-kernel's ``k`` steps, in the order of :func:`_phase_order` with
    the input channels innermost: step ``(P0[qy, qx] + a*ntx[qx] + bb)*Cg_in + ci`` reads input
    channel ``ci`` of row ``my - tey[qy, a]`` from column ``j - tex[qx, bb]``, i.e. ``(ci -
    tey[qy, a]*Cin)*WP - tex[qx, bb]`` elements from channel 0 of row ``my``, column ``j`` of
    the row copies (rows of all ``Cin`` channels adjacent, ``WP`` apart)."""
    first = [-tey[qy, a] * Cin * WP - tex[qx, bb]
             for qy in range(len(nty)) for qx in range(len(ntx))
             for a in range(nty[qy]) for bb in range(ntx[qx])]
    return np.add.outer(np.array(first, np.int64), np.arange(Cg_in, dtype=np.int64) * WP).ravel()


# ----------------------------------------------------------------------------------------------
# Direct (stride-phase gather) algorithm
# ----------------------------------------------------------------------------------------------

@kernel
def _copy_rows(x, xp, xoff, r0, ra, rb, Cin, H, W, WP, PADL):
    """Rows ``r`` in ``[ra, rb]`` of ``r = n*H + iy``: ``xp[xoff + ((r - r0)*Cin + ci)*WP + PADL
    + ix] = x[n, ci, iy, ix]``, zeros around (flat arrays; vector copies)."""
    lanes = _lanes(xp)
    for r in range(ra, rb + 1):
        n = r // H
        iy = r - n * H
        for ci in range(Cin):
            d = xoff + ((r - r0) * Cin + ci) * WP
            s = ((n * Cin + ci) * H + iy) * W
            for i in range(0, PADL, lanes):
                _vzero(xp, d + i, min(lanes, PADL - i))
            for i in range(0, W, lanes):
                _vcopy(x, s + i, xp, d + PADL + i, min(lanes, W - i))
            for i in range(PADL + W, WP, lanes):
                _vzero(xp, d + i, min(lanes, WP - i))


def _make_copy_weights(CB):
    UCB = np.uint64(CB)

    @kernel
    def copy_weights(w, wp, woff, g, cb, Cin, groups, Cg_out, kH, kW, ncb, ptap):
        """Channel block ``cb`` of group ``g``: ``wp[woff + (((g*ncb + cb)*kH*kW + p)*Cg_in
        + ci)*CB + co - cb*CB] = w[g*Cg_in + ci, co, ptap[p]]`` for ``co`` in the block, zeros
        past ``Cg_out``: in the taps' phase order ``ptap`` (see :func:`_phase_order`), the
        weights one tile reads are one contiguous stream.
        Returns whether a copied weight is not finite. (The check is its own pass over the
        block's contiguous weights, which LLVM vectorises; the copy's channel loop has a trip
        count known at compile time and is unrolled: 138 -> 52 us for DCGAN C128->64's
        weights against a plain loop with the check inside.)"""
        prefer_wide_vectors()
        Cg_in = Cin // groups
        KK = kH * kW
        uKK = np.uint64(KK)
        co0 = cb * CB
        full = co0 + CB <= Cg_out
        bad = False
        for ci in range(Cg_in):
            s0 = np.uint64(((g * Cg_in + ci) * Cg_out + co0) * KK)
            for i in range(np.uint64(min(CB, Cg_out - co0) * KK)):
                bad |= not np.isfinite(w[s0 + i])
            for p in range(KK):
                d = np.uint64(woff + (((g * ncb + cb) * KK + p) * Cg_in + ci) * CB)
                s = s0 + np.uint64(ptap[p])
                if full:
                    for j in range(UCB):
                        wp[d + j] = w[s + j * uKK]
                else:
                    for j in range(UCB):
                        wp[d + j] = w[s + j * uKK] if co0 + j < Cg_out else 0
        return bad

    return copy_weights


def _make_pack(copy_weights):
    @kernel
    def pack(w, wp, Cin, groups, Cg_out, kH, kW, ncb, ptap):
        """Every channel block of every group at offset 0 (see ``copy_weights``); whether a
        weight is not finite."""
        bad = False
        for g in range(groups):
            for cb in range(ncb):
                bad |= copy_weights(w, wp, 0, g, cb, Cin, groups, Cg_out, kH, kW, ncb, ptap)
        return bad

    return pack


# The weight copy and packing kernels of each channel-block width CB, built once.
_COPIES = {}


def _copy_kernels(CB):
    k = _COPIES.get(CB)
    if k is None:
        copy = _make_copy_weights(CB)
        k = _COPIES[CB] = (copy, _make_pack(copy))
    return k


class PackedWeights:
    """Weights ``w`` (C_in, C_out / groups, kH, kW) of :func:`conv_transpose2d_direct` and
    :func:`conv_transpose2d_gemm` packed once for their kernels, for repeated calls (plans): a
    call given this instead of ``w`` reads the packed form in place instead of copying blocks
    (direct) or reading rows far apart (gemm). Each form is packed on the first call that uses
    it. ``w`` must not change afterwards."""

    def __init__(self, w, groups):
        self.weight = np.ascontiguousarray(w)
        self.groups = groups
        self._blocks = {}
        self._panels = {}

    def gemm_panels(self, JW):
        """The GEMM's weights as panels of JW columns: flat (groups, nj, C_in / groups, JW)
        where panel ``jc`` holds columns ``jc*JW + [0, JW)`` of the group's (C_in / groups, J)
        matrix (``J = C_out / groups * kH * kW``; zeros past J), so a tile's weights are one
        contiguous stream."""
        panels = self._panels.get(JW)
        if panels is None:
            Cin = self.weight.shape[0]
            J = self.weight[0].size
            nj = -(-J // JW)
            w2 = np.zeros((Cin, nj * JW), self.weight.dtype)
            w2[:, :J] = self.weight.reshape(Cin, J)
            w2 = w2.reshape(self.groups, Cin // self.groups, nj, JW)
            panels = copy_aligned(w2.transpose(0, 2, 1, 3), w2.dtype).reshape(-1)
            self._panels[JW] = panels
        return panels

    def blocks(self, CB, ptap):
        """``(wp, bad)``: the blocks for ``CB`` output channels per tile with the taps in the
        order ``ptap`` (see :func:`_phase_order`), and whether a weight is not finite."""
        key = (CB, ptap.tobytes())
        got = self._blocks.get(key)
        if got is None:
            w = self.weight
            Cin, Cg_out, kH, kW = w.shape
            ncb = -(-Cg_out // CB)
            wp = np.empty(kH * kW * Cin * ncb * CB, w.dtype)
            bad = _copy_kernels(CB)[1](w.reshape(-1), wp, Cin, self.groups, Cg_out, kH, kW, ncb,
                                       ptap)
            got = self._blocks[key] = (wp, bool(bad))
        return got


def _run_tables(nitems, nruns, OH, H, ncb, groups, sh, pt, emax, rows_outer):
    """Per run of items: first and last input row ``n*H + iy`` it reads, offset of its rows in
    the row copies, first unit (see :func:`_make_direct`) ``(n*groups + g)*ncb + cb``, or
    ``n*groups + g`` with ``rows_outer``."""
    t = np.zeros((nruns, 4), np.int64)
    per_unit, per_img = (OH * ncb, groups) if rows_outer else (OH, groups * ncb)
    off = 0
    for run in range(nruns):
        i0 = run * nitems // nruns
        i1 = (run + 1) * nitems // nruns - 1
        ua, ub = i0 // per_unit, i1 // per_unit
        na, nb = ua // per_img, ub // per_img
        oya, oyb = (i0 // ncb % OH, i1 // ncb % OH) if rows_outer else (i0 % OH, i1 % OH)
        lo = max(0, (oya + pt) // sh - emax)
        hi = min(H - 1, (oyb + pt) // sh)
        # a later unit of the first image reads it from row 0, an earlier unit of the last
        # image to its last row
        r0 = na * H + (0 if ub > ua and (ua + 1) // per_img == na else lo)
        r1 = nb * H + (H - 1 if ub > ua and (ub - 1) // per_img == nb else hi)
        r1 = max(r1, r0 - 1)  # rows that read no input (bias only) copy nothing
        t[run] = (r0, r1, off, ua)
        off += r1 - r0 + 1
    return t, off


def _rows_outer(ncb, rows_bytes, weight_bytes):
    """Whether the items run channel blocks innermost: when ``rows_bytes``, the input rows a run
    reads for one image and group, outgrow a core's L2 (each of the ``ncb`` blocks would stream
    them again from further out) while ``weight_bytes``, the group's packed weights, fit it.
    Measured float32, 2 threads, one process, 40 rounds: 2x2 s2 C256->128 64 (2 MiB of rows per
    thread, 512 KiB of weights) 6% faster at batch 1, 10% at batch 8; where the rows fit, blocks
    outermost keep one block's weights close for all rows (4x4 s2 C128->64 16: 13% slower with
    blocks innermost)."""
    return ncb > 1 and rows_bytes > _L2_SHARE_BYTES and weight_bytes <= _L2_SHARE_BYTES


def _make_direct(TW, CB):
    """Compile-time tile shape: TW phase pixels (lanes) x CB output channels (16 x one vector
    or 8 x two)."""
    NVT = 1 if CB == 16 else 2
    _copy_weights = _copy_kernels(CB)[0]

    @parallel_kernel
    def _direct_rows(x, w, xp, wp, b, out, N, H, W, Cin, WP, PADL, Cg_in, Cg_out, groups, kH,
                     kW, sh, sw, pt, pl, nty, tey, ntx, P0, ptap, rows, m0x, Mx, SL, OH, OW,
                     runs, WPS, nruns, stage, packed, rows_outer, prefetch_out):
        Cout = Cg_out * groups
        ncb = (Cg_out + CB - 1) // CB
        KK = kH * kW
        nitems = N * groups * ncb * OH
        bad = 0
        # nruns contiguous runs of items, one per thread. Each run copies the input rows and the
        # weight blocks it reads (so no thread reads what the other one wrote: that cost up to
        # 2x when the two cores were far apart). Its staging row is an argument, not a local
        # array: LLVM cannot tell local arrays apart, and kept the tile in memory to copy it
        # out element by element (3x3 s2 C32->16 128: 150 against 172 GFLOP/s)
        for run in prange(nruns):
            prefer_wide_vectors()
            r0 = runs[run, 0]
            xoff = runs[run, 2] * Cin * WP
            woff = 0 if packed else run * WPS
            # Rows and weight blocks are copied when first needed, so the copies are still in
            # cache when read (see the module notes)
            rows_done = r0 - 1
            unit0 = runs[run, 3]
            units_done = 0
            units = groups if rows_outer else groups * ncb
            stage0 = run * sw * CB * SL
            sbase = np.uint64(stage0)
            for item in range(run * nitems // nruns, (run + 1) * nitems // nruns):
                # item ((n*groups + g)*ncb + cb)*OH + oy, or with rows_outer ((n*groups + g)*OH
                # + oy)*ncb + cb; the weights of a unit (one channel block, or with rows_outer all
                # blocks of a group) are copied before its first item: units come in order
                if rows_outer:
                    cb = item % ncb
                    rest = item // ncb
                    oy = rest % OH
                    unit = rest // OH
                    blk = unit
                else:
                    oy = item % OH
                    unit = item // OH
                    cb = unit % ncb
                    blk = unit // ncb
                g = blk % groups
                n = blk // groups
                if not packed and unit - unit0 == units_done and units_done < units:
                    for c_cb in range(ncb) if rows_outer else range(cb, cb + 1):
                        bad += _copy_weights(w, wp, woff, g, c_cb, Cin, groups, Cg_out, kH,
                                             kW, ncb, ptap)
                    units_done += 1
                co0 = cb * CB
                # The output rows this item writes at its end: fetched for writing now, while
                # its tiles run (see the module notes)
                for c in range(min(CB, Cg_out - co0) if prefetch_out else 0):
                    prefetch_for_write(out, ((n * Cout + g * Cg_out + co0 + c) * OH + oy) * OW,
                                       OW)
                # Taps of this row's phase whose input row exists: e grows with the tap index,
                # so they form one contiguous range [a0, a1) of the phase's tap list.
                qy = (oy + pt) % sh
                my = (oy + pt) // sh
                need = min(runs[run, 1], n * H + min(my, H - 1))
                if need > rows_done:
                    _copy_rows(x, xp, xoff, r0, rows_done + 1, need, Cin, H, W, WP, PADL)
                    rows_done = need
                a0 = 0
                while a0 < nty[qy] and my - tey[qy, a0] >= H:
                    a0 += 1
                a1 = nty[qy]
                while a1 > a0 and my - tey[qy, a1 - 1] < 0:
                    a1 -= 1
                for qx in range(sw):
                    # One K loop of the register tile: the phase's existing taps in order, input
                    # channels innermost (weights one stream, input rows from the table)
                    p0 = P0[qy, qx] + a0 * ntx[qx]
                    kc = (a1 - a0) * ntx[qx] * Cg_in
                    wb = woff + ((g * ncb + cb) * KK + p0) * Cg_in * CB
                    xb = xoff + ((n * H + my - r0) * Cin + g * Cg_in) * WP + m0x[qx] + PADL
                    for j0 in range(0, Mx[qx], TW):
                        _mk(kc, wp, wb, CB, 1, xp, xb + j0, 0, rows, p0 * Cg_in, stage,
                            stage0 + qx * CB * SL + j0, SL, CB, TW, stage, 0, 2, CB, NVT, True, 0)
                # Interleave the column phases into the output row (+ bias).
                for c in range(min(CB, Cg_out - co0)):
                    oc = g * Cg_out + co0 + c
                    bv = b[oc]
                    ob = np.uint64(((n * Cout + oc) * OH + oy) * OW)
                    if sw == 1:
                        sa = sbase + np.uint64(c * SL)  # m0x[0] == pad_left: phase index m == ox
                        for u in range(OW):
                            uu = np.uint64(u)
                            out[ob + uu] = stage[sa + uu] + bv
                    elif sw == 2:
                        # ox = 2u -> phase qa, ox = 2u + 1 -> phase qb, both at phase index u.
                        qa = pl % 2
                        sa = sbase + np.uint64((qa * CB + c) * SL)
                        sb = sbase + np.uint64(((1 - qa) * CB + c) * SL)
                        half = OW // 2
                        for u in range(half):
                            uu = np.uint64(u)
                            u2 = np.uint64(2 * u)
                            out[ob + u2] = stage[sa + uu] + bv
                            out[ob + u2 + _U1] = stage[sb + uu] + bv
                        if OW % 2 == 1:
                            out[ob + np.uint64(OW - 1)] = stage[sa + np.uint64(half)] + bv
                    else:
                        for qx in range(sw):
                            ox0 = m0x[qx] * sw + qx - pl
                            sq = sbase + np.uint64((qx * CB + c) * SL)
                            for m in range(Mx[qx]):
                                out[ob + np.uint64(ox0 + sw * m)] = stage[sq + np.uint64(m)] + bv

        return bad

    return _direct_rows


# One kernel per (itemsize, shape); each compiles on first use only.
_DIRECT = {}


def _direct_kernel(itemsize, TW, CB):
    key = (itemsize, TW, CB)
    k = _DIRECT.get(key)
    if k is None:
        k = _DIRECT[key] = _make_direct(TW, CB)
    return k


@parallel_kernel
def _fix_columns(x, w, b, out, N, Cin, H, W, groups, Cg_out, kH, kW, sh, sw, pt, pl, dh, dw,
                 OH, OW, cols, ncols):
    """Exact gather for the output columns listed in cols[:ncols] (all rows, channels, images).

    Used only when the weights hold Inf/NaN: there the zero padding of the fast kernel would
    add 0*Inf = NaN terms that torch never forms."""
    Cg_in = Cin // groups
    Cout = Cg_out * groups
    for item in prange(N * Cout * OH):
        prefer_wide_vectors()
        zero = np.zeros(1, out.dtype)
        oy = item % OH
        rest = item // OH
        oc = rest % Cout
        n = rest // Cout
        g = oc // Cg_out
        j = oc - g * Cg_out
        for ic in range(ncols):
            ox = cols[ic]
            acc = zero[0]
            for ci in range(g * Cg_in, (g + 1) * Cg_in):
                for ky in range(kH):
                    ty = oy + pt - ky * dh
                    if ty < 0 or ty % sh != 0:
                        continue
                    iy = ty // sh
                    if iy >= H:
                        continue
                    for kx in range(kW):
                        tx = ox + pl - kx * dw
                        if tx < 0 or tx % sw != 0:
                            continue
                        ix = tx // sw
                        if ix >= W:
                            continue
                        acc += (x[((n * Cin + ci) * H + iy) * W + ix]
                                * w[((ci * Cg_out + j) * kH + ky) * kW + kx])
            out[((n * Cout + oc) * OH + oy) * OW + ox] = acc + b[oc]


def _check_dtype(x):
    if x.dtype != np.float32 and x.dtype != np.float64:
        raise TypeError(f"transposed kernels support float32/float64, got {x.dtype}")


def conv_transpose2d_direct(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                            groups):
    """Transposed 2-D convolution by stride-phase gather with register-tiled vector kernels.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
        Input, C-contiguous float32 or float64.
    w : ndarray, shape (C_in, C_out // groups, kH, kW), or PackedWeights
        Weights in torch's transposed-convolution layout, same dtype.
    b : ndarray, shape (C_out,)
        Bias, same dtype.
    out : ndarray, shape (N, C_out, OH, OW)
        Output, overwritten entirely. ``OH``/``OW`` include output_padding and any extra
        bottom/right padding. Must not overlap ``x``, ``w`` or ``b``.
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups : int
        Hyper-parameters (validated by the caller; strides and dilations >= 1, pads >= 0).

    Returns
    -------
    None

    Notes
    -----
    ``out[n, co, oy, ox] = b[co] + sum x[n, ci, iy, ix] * w[ci, co % Cg_out, ky, kx]`` over
    the ``ci`` of the group of ``co`` and all ``(iy, ix, ky, kx)`` with
    ``oy == iy*stride_h - pad_top + ky*dil_h`` and ``ox == ix*stride_w - pad_left + kx*dil_w``.
    Best for layers with a phase row of at least ~16 pixels (input width >= ~16); allocates a
    padded copy of ``x`` and a repacked copy of ``w`` per call (not with :class:`PackedWeights`).
    """
    _check_dtype(x)
    packed = w if isinstance(w, PackedWeights) else None
    if packed is not None:
        w = packed.weight
    N, Cin, H, W = x.shape
    Cg_out, kH, kW = w.shape[1], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    Cg_in = Cin // groups
    dt = x.dtype
    isz = dt.itemsize
    if out.size == 0:
        return
    if x.size == 0 or w.size == 0:
        out[...] = b.reshape(1, -1, 1, 1)
        return
    G = _direct_geometry(N, Cin, H, W, Cg_out, kH, kW, OH, OW, stride_h, stride_w, pad_top,
                         pad_left, dil_h, dil_w, groups, isz, _threads.numba_count())
    xp = aligned("transposed.x", G.nrows * Cin * G.WP, dt)
    if packed is not None:
        wp, bad_w = packed.blocks(G.CB, G.ptap)
    else:
        wp, bad_w = buffer("transposed.w", G.nruns * G.wps, dt), False
    outf = out.reshape(-1)
    bad = bad_w | _direct_kernel(isz, G.TW, G.CB)(
        x.reshape(-1), w.reshape(-1), xp, wp, b, outf, N, H, W, Cin, G.WP, G.PADL, Cg_in,
        Cg_out, groups, kH, kW, stride_h, stride_w, pad_top, pad_left, G.nty, G.tey, G.ntx,
        G.P0, G.ptap, G.rows, G.m0x, G.Mx, G.SL, OH, OW, G.runs, G.wps, G.nruns,
        buffer("transposed.stage", G.nruns * stride_w * G.CB * G.SL, dt), packed is not None,
        G.rows_outer, out.nbytes >= _PREFETCH_OUT_BYTES)
    if bad and len(G.edge_cols):
        _fix_columns(x.reshape(-1), w.reshape(-1), b, outf, N, Cin, H, W, groups, Cg_out, kH, kW,
                     stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, OH, OW, G.edge_cols,
                     len(G.edge_cols))


_Geometry = collections.namedtuple(
    "_Geometry", "TW CB SL PADL WP nruns rows_outer runs nrows wps nty tey ntx P0 ptap rows "
    "m0x Mx edge_cols")


@functools.lru_cache(maxsize=64)
def _direct_geometry(N, Cin, H, W, Cg_out, kH, kW, OH, OW, stride_h, stride_w, pad_top,
                     pad_left, dil_h, dil_w, groups, isz, nthreads):
    """Tile shape, buffer sizes and the small index tables of one call of
    :func:`conv_transpose2d_direct` (the same for every call of a layer: kept, as building them
    takes longer than a small layer's arithmetic). The tables are shared; nothing writes them."""
    Cg_in = Cin // groups
    vec = 64 // isz                     # lanes of one zmm register
    nty, tky, tey = _phase_taps(kH, stride_h, dil_h)
    ntx, tkx, tex = _phase_taps(kW, stride_w, dil_w)
    m0x, Mx = _phase_ranges(stride_w, pad_left, OW)

    # Tile shape: two vectors x 8 channels (the GEMM's own micro-kernel shape) unless one
    # vector x 16 channels covers the phase rows and channel blocks with fewer idle lanes
    # (phase rows of 16 pixels: DCGAN's 4x4 on 16x16). Float32, 2 threads, alternating rounds,
    # GFLOP/s, 1x16 vs 2x8 where both cover them equally: 2x2 s2 C256->128 64 257-260 vs
    # 275-285 (batch 8 249 vs 275), 4x4 s2 C128->64 32 247-248 vs 271-285, 3x3 s2 C64->32 32
    # 228-230 vs 242-246, C32->16 128 159-210 vs 163-214; 4x4 s2 C128->64 16 234-239 vs 140-142.
    def efficiency(TW, CB):
        lanes = sum(int(m) for m in Mx) / max(1, sum(-(-int(m) // TW) * TW for m in Mx))
        return lanes * Cg_out / (-(-Cg_out // CB) * CB)
    TW, CB = 2 * vec, 8
    if efficiency(vec, 16) > efficiency(2 * vec, 8):
        TW, CB = vec, 16

    SL = max(TW, -(-int(Mx.max()) // TW) * TW)         # staging length per phase
    PADL = int(tex.max())
    WP = PADL + max(W, int((m0x + SL).max()))          # tiles may run past the row: zeros
    WP = -(-WP // vec) * vec                           # rows start on a cache line
    ncb = -(-Cg_out // CB)
    nitems = N * groups * ncb * OH
    nruns = max(1, min(nitems, nthreads))
    rows_outer = _rows_outer(ncb, min(H, -(-N * H // nruns)) * Cg_in * WP * isz,
                             kH * kW * Cg_in * ncb * CB * isz)
    runs, nrows = _run_tables(nitems, nruns, OH, H, ncb, groups, stride_h, pad_top,
                              int(tey.max()), rows_outer)
    P0, ptap = _phase_order(nty, tky, ntx, tkx, kW)
    # Output columns whose phase tiles read horizontal padding for some tap: recomputed when
    # the weights hold Inf/NaN (see the module notes)
    edge_cols = []
    for ox in range(OW):
        r, m = (ox + pad_left) % stride_w, (ox + pad_left) // stride_w
        if any(not 0 <= m - tex[r, i] < W for i in range(ntx[r])):
            edge_cols.append(ox)
    return _Geometry(TW, CB, SL, PADL, WP, nruns, rows_outer, runs, nrows,
                     groups * kH * kW * Cg_in * ncb * CB, nty, tey, ntx, P0, ptap,
                     _phase_rows(nty, tey, ntx, tex, Cin, Cg_in, WP), m0x, Mx,
                     np.array(edge_cols, np.int64))


# ----------------------------------------------------------------------------------------------
# GEMM + col2im algorithm
# ----------------------------------------------------------------------------------------------

_GEMM_BLOCK_BYTES = 512 * 1024   # weight rows of one input-channel block of the GEMM, per run
_PANEL_BYTES = NV * vector_bytes()   # one row of a GEMM column panel (the micro-kernel's width)


def _make_gemm(ahead):
    """The GEMM kernel; its micro-kernels prefetch the weight row ``ahead`` rows down (0: no
    prefetch)."""
    strip_ahead = _make_strip(-ahead)

    @parallel_kernel
    def _gemm(x2, w2, cols, N, groups, Cg_in, HW, J, nruns, packed, KC, shift):
        """cols[(n*groups + g), p, j] = sum_ci x2[n, g*Cg_in + ci, p] * w2[g*Cg_in + ci, j].

        x2: (N, C_in, HW) flat. w2: (C_in, J) flat, or with ``packed`` the panels of
        :meth:`PackedWeights.gemm_panels`. A work item is one column panel (``NV`` vectors of
        the (co, ky, kx) axis) of one image and group, all its pixels (``MR`` at a time, masked
        at the edges). The input channels run in blocks of KC, each block over all of a run's
        items before the next (its weights stay in L2); between blocks a tile's partial sums
        wait in ``cols``, so every sum still runs over ci in ascending order. With ``shift >
        0`` the first panel is that many columns wide and the others start ``shift`` columns
        further (see :func:`_panel_shift`)."""
        Cin = Cg_in * groups
        JW = NV * _lanes(cols)
        nj = (J - shift + JW - 1) // JW + (shift > 0)
        nitems = N * groups * nj
        # nruns contiguous runs of items, one per thread
        for run in prange(nruns):
            prefer_wide_vectors()
            for k0 in range(0, Cg_in, KC):
                kc = min(Cg_in, k0 + KC) - k0
                init = 2 if k0 == 0 else 0     # zeros, then the partial sums so far
                # images innermost: one column block of the weights serves every image while
                # it is in cache (batch-8 DCGAN 4x4 C512->256: 180 against 173 GFLOP/s)
                for item in range(run * nitems // nruns, (run + 1) * nitems // nruns):
                    n = item % N
                    rest = item // N
                    jc = rest % nj
                    g = rest // nj
                    j0 = jc * JW if shift == 0 else (0 if jc == 0 else shift + (jc - 1) * JW)
                    nvalid = min(JW, J - j0) if shift == 0 or jc > 0 else shift
                    if packed:
                        wb = ((g * nj + jc) * Cg_in + k0) * JW
                        ldb = JW
                    else:
                        wb = (g * Cg_in + k0) * J + j0
                        ldb = J
                    xb = (n * Cin + g * Cg_in + k0) * HW
                    cb = ((n * groups + g) * HW) * J + j0
                    if n == 0 and not packed:
                        strip_ahead(kc, x2, xb, MR, HW, 1, w2, wb, ldb, cols, cb, J, HW,
                                    nvalid, cols, 0, init)
                    else:
                        _strip(kc, x2, xb, MR, HW, 1, w2, wb, ldb, cols, cb, J, HW,
                               nvalid, cols, 0, init)

    return _gemm


_GEMM = {}


# Weight rows (input channels) a tile prefetches ahead; only the first image's tiles do (the
# others find the rows in cache). DCGAN t4x4 C512->256 on 4x4, float32, 2 threads, interleaved,
# ms: the weights in cache: none 0.50-0.54, 4 0.47, 8-32 0.41-0.44; the weights evicted before
# each call (as among other layers): none 0.77-1.10, 8 0.71, 16 0.51-0.63, 32 0.51-0.60, 48 0.69.
_GEMM_AHEAD = 16


def _gemm_kernel(ahead):
    k = _GEMM.get(ahead)
    if k is None:
        k = _GEMM[ahead] = _make_gemm(ahead)
    return k


@parallel_kernel
def _col2im(cols, b, out, N, groups, Cg_out, H, W, HWc, J, kH, kW, sh, sw, pt, pl, dh, dw,
            OH, OW, CBc, kylo, kyhi, kxlo, kxhi):
    """out = bias + scatter-add of cols, one block of CBc output channels per work item.

    The block's output planes live in a local tile (sized to stay in L1/L2) that is filled with
    the bias, receives every contribution in input-pixel order, then is copied out.
    kylo/kyhi[iy] (kxlo/kxhi[ix]): the kernel rows (columns) whose target is inside the output."""
    Cout = Cg_out * groups
    KK = kH * kW
    ncb = (Cg_out + CBc - 1) // CBc
    plane = OH * OW
    for item in prange(N * groups * ncb):
        prefer_wide_vectors()
        cb = item % ncb
        rest = item // ncb
        g = rest % groups
        n = rest // groups
        co0 = cb * CBc
        nc = min(CBc, Cg_out - co0)
        tile = np.empty(nc * plane, out.dtype)
        for c in range(nc):
            bv = b[g * Cg_out + co0 + c]
            for i in range(plane):
                tile[c * plane + i] = bv
        cbase = (n * groups + g) * HWc
        uplane = np.uint64(plane)
        uKK = np.uint64(KK)
        for iy in range(H):
            for ix in range(W):
                src = (cbase + iy * W + ix) * J + co0 * KK
                for ky in range(kylo[iy], kyhi[iy]):
                    trow = (iy * sh - pt + ky * dh) * OW + ix * sw - pl
                    for kx in range(kxlo[ix], kxhi[ix]):
                        # channels innermost: nc steps per tap, where the tap loops run 1-4
                        t = np.uint64(trow + kx * dw)
                        k = np.uint64(src + ky * kW + kx)
                        for c in range(nc):
                            tile[t] += cols[k]
                            t += uplane
                            k += uKK
        ob = ((n * Cout + g * Cg_out + co0) * OH) * OW
        for i in range(nc * plane):
            out[ob + i] = tile[i]


def _panel_shift(w2, J):
    """Width of a first, narrower column panel that starts the others on vector boundaries of
    the weights read in place (0 when they already do, or when the rows of ``J`` columns are
    not whole vectors, so that no one shift aligns every row). NumPy puts large arrays 16 bytes
    past a cache line; a panel row of 2 vectors then spans 3 lines. Which panel computes a
    column does not change its sums. Float32, 2 threads, alternating, ms, weights 16 bytes past
    a line: DCGAN t4x4 C512->256 on 4x4 0.42 -> 0.37 (0.52 -> 0.46 with the weights evicted
    from the caches before each call), at batch 8 2.98 -> 2.60, C1024->512 1.75 -> 1.50; with
    aligned weights unchanged."""
    return row_shift(w2, J, _PANEL_BYTES // NV // w2.itemsize)


@functools.lru_cache(maxsize=64)
def _krange(k, s, p, d, n_in, n_out):
    """For each input index i: the kernel indices [lo, hi) with 0 <= i*s - p + k*d < n_out
    (read-only arrays, remembered: building them took 17 us, a tenth of a small layer's col2im)."""
    target = np.arange(n_in)[:, None] * s - p + np.arange(k)[None, :] * d
    inside = (target >= 0) & (target < n_out)
    any_in = inside.any(axis=1)
    lo = np.where(any_in, inside.argmax(axis=1), 0)
    hi = np.where(any_in, k - inside[:, ::-1].argmax(axis=1), 0)
    lo.flags.writeable = False
    hi.flags.writeable = False
    return lo, hi


def conv_transpose2d_gemm(x, w, b, out, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
                          groups):
    """Transposed 2-D convolution as a register-tiled GEMM followed by col2im.

    Same interface and semantics as :func:`conv_transpose2d_direct`. Reads the weights in
    their own layout (no repacking), so it is the better choice when the weights dominate:
    small spatial sizes with many channels (e.g. 4x4 inputs, hundreds of channels). Needs a
    temporary of ``N * groups * H * W * (C_out // groups) * kH * kW`` elements.
    """
    _check_dtype(x)
    packed = w if isinstance(w, PackedWeights) else None
    if packed is not None:
        w = packed.weight
    N, Cin, H, W = x.shape
    Cg_out, kH, kW = w.shape[1], w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    Cg_in = Cin // groups
    dt = x.dtype
    JW = _PANEL_BYTES // dt.itemsize
    if out.size == 0:
        return
    if x.size == 0 or w.size == 0:
        out[...] = b.reshape(1, -1, 1, 1)
        return
    HW = H * W
    J = Cg_out * kH * kW
    x2 = x.reshape(-1)
    w2 = packed.gemm_panels(JW) if packed is not None else w.reshape(-1)
    shift = 0 if packed is not None else _panel_shift(w2, J)
    # the columns' rows as (mis)aligned as the weights' rows: shifted panels align both
    size = N * groups * HW * J
    cols = aligned("transposed.cols", size + JW, dt)
    skip = (w2.ctypes.data % 64) // dt.itemsize if shift else 0
    cols = cols[skip:skip + size]
    nitems = N * groups * (-(-(J - shift) // JW) + (shift > 0))
    nruns = max(1, min(nitems, _threads.numba_count()))
    # Input channels per block: the weight rows of a block, over a run's columns, fill at
    # most _GEMM_BLOCK_BYTES. Rows J apart in memory defeat the prefetchers and, for J a
    # power of two, share cache sets: blocks kept in L2 took DCGAN's t4x4 C512->256 on 4x4
    # from 0.70 to 0.53 ms, C1024->512 from 4.8 to 2.0. Packed panels are one stream: no blocks.
    run_cols = -(-groups * J // nruns)
    KC = max(8, min(Cg_in, _GEMM_BLOCK_BYTES // (run_cols * dt.itemsize)))
    if packed is not None:
        KC = Cg_in
    _gemm_kernel(_GEMM_AHEAD)(x2, w2, cols, N, groups, Cg_in, HW, J, nruns,
                              packed is not None, KC, shift)
    kylo, kyhi = _krange(kH, stride_h, pad_top, dil_h, H, OH)
    kxlo, kxhi = _krange(kW, stride_w, pad_left, dil_w, W, OW)
    # Channels per col2im item: tile of <= 32K elements, and at least ~8 items per group.
    CBc = max(1, min(32768 // (OH * OW), -(-Cg_out // 8)))
    _col2im(cols, b, out.reshape(-1), N, groups, Cg_out, H, W, HW, J, kH, kW,
            stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, OH, OW, CBc,
            kylo, kyhi, kxlo, kxhi)
