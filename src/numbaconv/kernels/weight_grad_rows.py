"""Weight gradient of stride-1 convolutions with the input read in place: no im2col.

With stride 1 the im2col row of tap ``t = (ky, kx)`` and input channel ``ci`` is, over output
pixels numbered with the zero-padded input's row pitch ``Wp = OW + (kW-1)*dW``
(``p = oy*Wp + ox``), one contiguous run of that padded input ``xp``::

    col[(t, ci), p] = xp[ci, oy + ky*dH, ox + kx*dW] = xp_flat[ci*plane + ky*dH*Wp + kx*dW + p]

The pixels ``ox >= OW`` of that numbering are not output pixels: the output gradient is zero
there (in its packed copy), so they add exact zeros. For group ``g``::

    dW_g^T (K x C_out/groups) = sum_n  A_n (K x OH*Wp) @ B_n (OH*Wp x C_out/groups)

``A_n`` is read in place from the padded input, its rows walked in (tap, channel) order, so
``MR`` consecutive rows of one tap are channel planes a fixed stride apart (the micro-kernel's
row stride); ``B_n`` is the output gradient transposed into the micro-kernel's ``NR``-wide
panels, once per image and shared by every task (``C_out`` rows per image where the im2col path
transposes ``K`` per image and task). A task owns a block of rows x output channels of
``dW_g^T``, stored with the rows in the weights' (channel, tap) order; a last pass transposes
each group's block into the weights.

Every gradient element is the sum the im2col path computes, in the same order (images
ascending, then the output pixels ascending, one fused multiply-add each, from +0): a sum that
starts at +0 never becomes -0, so the added zeros change no bit. Both paths give identical
results.

The extra pixels multiply those zeros by input values, which is NaN for an infinite input: the
padded copy checks the input, and :func:`conv2d_weight_grad_rows` returns None when it is not
finite (the im2col path then computes the gradient).
"""

import functools

import numpy as np
from numba import prange

from .._jit import kernel, parallel_kernel
from . import gemm as _gemm
from .scratch import buffer
from .transpose import tile_transpose

_PIXEL_CHUNK = 256        # reduction block: a B panel's 256 x 32 floats stay in L1
_MAX_ROWS = 512           # (tap, channel) rows per task: their pixel chunk stays in L2
_MIN_TASKS = 8            # parallel tasks wanted (2 cores; balance)
_GROUP_BYTES = 8 << 20    # padded input + packed gradient of the images handled at once
_KEEP_BYTES = 16 << 20    # largest scratch kept between calls (see scratch.py)


# Extra pixels (padding columns per output column, ``(kW-1)*dW / OW``) up to which the in-place
# read beats the im2col path (measured on 2 cores, float32, interleaved, batch 1 unless said,
# time of the im2col path / this one: 3x3 C64 56x56 (3.6% extra) 1.15, batch 8 1.15; C128
# 28x28 (7%) 1.06; 1x1 C64->256 56x56 (none) 1.00; dilated C256 33x33 (12%) 1.00; C256 14x14
# (14%) 0.92, batch 8 1.01; C512 7x7 (29%) 0.63). Runs of rows shorter than a few register
# tiles, or fewer output channels than one B panel, waste most of the tiles' lanes
# (ResNeXt's 4 channels per group: 0.55; one input channel, 5x5: 0.69).
_MAX_EXTRA = 0.08


def pays(cin_per_group, cout_per_group, out_w, kw, dil_w, itemsize):
    """Whether a stride-1 weight gradient of this shape should read its input in place."""
    nr = _gemm.NV * (_gemm._VBYTES // itemsize)
    return (cin_per_group >= 4 * _gemm.MR and cout_per_group >= nr
            and (kw - 1) * dil_w <= _MAX_EXTRA * out_w)


def padded_size(oh, ow, kh, kw, dh, dw):
    """``(Hp, Wp)``: rows and row pitch of the padded input copy. ``Wp = OW + (kW-1)*dW``;
    ``Hp = OH + (kH-1)*dH + 1``: the last tap's run of ``OH*Wp`` elements ends
    ``(kW-1)*dW`` elements into the row after the last one a real pixel reads."""
    return oh + (kh - 1) * dh + 1, ow + (kw - 1) * dw


@kernel
def _exponent_max(bits, off, n, mask):
    """Largest ``bits[off + i] & mask`` for ``i < n`` (``mask`` the exponent field: it equals
    ``mask`` only for Inf and NaN); an integer reduction, which vectorises."""
    m = bits[off] & 0
    for i in range(n):
        m = max(m, bits[off + i] & mask)
    return m


def tap_offsets(kh, kw, dh, dw, wp):
    """``[ky*dh*wp + kx*dw]`` for the taps in order: where each tap's run starts in a padded
    plane of row pitch ``wp``."""
    return (np.arange(kh, dtype=np.int64)[:, None] * (dh * wp)
            + np.arange(kw, dtype=np.int64)[None, :] * dw).ravel()


@kernel
def pad_plane(xf, bits, mask, src, h, w, pt, pl, hp, wp, dst, out):
    """``out[dst + r*wp + s] = xf[src + (r - pt)*w + s - pl]`` (0 outside the ``h x w`` plane at
    ``src``) for ``r < hp``, ``s < wp``. Returns the largest exponent field of the elements
    copied (see :func:`_exponent_max`)."""
    lo = min(wp, max(0, pl))
    hi = min(wp, max(lo, pl + w))
    m = bits[src] & 0
    for r in range(hp):
        y = r - pt
        d = dst + r * wp
        if 0 <= y < h and hi > lo:
            _gemm._zero_row(out, d, lo)
            s = src + y * w + lo - pl
            _gemm._copy_row(xf, s, out, d + lo, hi - lo)
            m = max(m, _exponent_max(bits, s, hi - lo, mask))
            _gemm._zero_row(out, d + hi, wp - hi)
        else:
            _gemm._zero_row(out, d, wp)
    return m


@parallel_kernel
def _pad(x, bits, mask, n0, nimg, pt, pl, hp, wp, plane, xp):
    """``xp[(i*C + c)*plane + r*wp + s] = x[n0 + i, c, r - pt, s - pl]`` (0 outside ``x``) for
    ``r < hp``, ``s < wp``. Returns the largest exponent field of the input copied (see
    :func:`_exponent_max`)."""
    cin, h, w = x.shape[1], x.shape[2], x.shape[3]
    xf = x.reshape(-1)
    worst = np.zeros(nimg * cin, dtype=bits.dtype)
    for u in prange(nimg * cin):
        dst = u * plane
        worst[u] = pad_plane(xf, bits, mask, (n0 * cin + u) * h * w, h, w, pt, pl, hp, wp, dst,
                             xp)
        _gemm._zero_row(xp, dst + hp * wp, plane - hp * wp)
    return worst.max()


@parallel_kernel
def _pack_grad(gf, n0, nimg, cout, groups, oh, ow, wp, bp):
    """``bp[((i*groups + g)*npan + jb)*npp*NR + p*NR + jj] = dY[n0 + i, g*C_out/groups + jb*NR
    + jj, oy, ox]`` for ``p = oy*wp + ox`` (``npp = oh*wp``), zero for ``ox >= ow``; by
    register-tile transposes. Lanes past the group's channels are left as they are: the
    micro-kernel does not read B columns past the valid ones."""
    cog = cout // groups
    lanes = _gemm._lanes(bp)
    nr = _gemm.NV * lanes
    npan = (cog + nr - 1) // nr
    npp = oh * wp
    plane = oh * ow
    for u in prange(nimg * groups * npan):
        i = u // (groups * npan)
        r = u - i * groups * npan
        g = r // npan
        jb = r - g * npan
        base = u * npp * nr
        width = min(nr, cog - jb * nr)
        src0 = ((n0 + i) * cout + g * cog + jb * nr) * plane
        for oy in range(oh):
            row = base + oy * wp * nr
            for x0 in range(0, ow, lanes):
                for j0 in range(0, width, lanes):
                    tile_transpose(gf, src0 + j0 * plane + oy * ow + x0, plane, bp,
                                   row + x0 * nr + j0, nr, min(lanes, width - j0),
                                   min(lanes, ow - x0))
            _gemm._zero_row(bp, row + ow * nr, (wp - ow) * nr)


@kernel
def task_block(t, n_cb, n_kb, ct, kt, cog, k):
    """``(g, c0, c1, k0, k1)``: task ``t`` of a weight gradient cut into ``n_cb`` blocks of
    ``ct`` output channels x ``n_kb`` blocks of ``kt`` columns per group (``cog`` channels and
    ``k`` columns a group), in prange order; empty when ``c1 <= c0`` or ``k1 <= k0``."""
    g = t // (n_cb * n_kb)
    r = t - g * n_cb * n_kb
    cb = r // n_kb
    kb = r - cb * n_kb
    c0 = cb * ct
    k0 = kb * kt
    return g, c0, min(cog, c0 + ct), k0, min(k, k0 + kt)


def cuts(cog, k, most_cb, c_unit, k_unit, k_most):
    """Candidate cuts of a group's ``cog x k`` gradient into tasks, wide tasks first: ``(ct,
    task widths in channels, kt, task widths in columns)`` for 1 to ``most_cb`` channel blocks
    (whole ``c_unit``) and column blocks of whole ``k_unit`` up to ``k_most``."""
    out = []
    for n_cb in range(1, most_cb + 1):
        ct = -(-(-(-cog // n_cb)) // c_unit) * c_unit
        for kt in range(min(k_most, -(-k // k_unit) * k_unit), 0, -k_unit):
            out.append((ct, np.minimum(ct, cog - ct * np.arange(-(-cog // ct))), kt,
                        np.minimum(kt, k - kt * np.arange(-(-k // kt)))))
    return out


@parallel_kernel
def _driver(xp, plane, cin, bp, npp, dwt, nimg, first, groups, cog, taps, toff, ct, n_cb, kt,
            n_kb, pc):
    cg = cin // groups
    k = cg * taps
    nr = _gemm.NV * _gemm._lanes(dwt)
    npan = (cog + nr - 1) // nr
    for t in prange(groups * n_cb * n_kb):
        g, c0, c1, k0, k1 = task_block(t, n_cb, n_kb, ct, kt, cog, k)
        if k1 <= k0 or c1 <= c0:
            continue
        for i in range(nimg):
            for q0 in range(0, npp, pc):
                kc = min(pc, npp - q0)
                # the first chunk starts from zero: the block is written before it is read
                init = 2 if first and i == 0 and q0 == 0 else 0
                for j in range(c0, c1, nr):
                    boff = (((i * groups + g) * npan + j // nr) * npp + q0) * nr
                    row = k0
                    while row < k1:   # runs of rows within one tap: a fixed stride apart
                        tap = row // cg
                        ci = row - tap * cg
                        end = min(k1, (tap + 1) * cg)
                        aoff = (i * cin + g * cg + ci) * plane + toff[tap] + q0
                        # result rows in the weights' order (channel, tap): taps*cog apart
                        _gemm._strip(kc, xp, aoff, _gemm.MR * plane, 1, plane, bp, boff, nr,
                                     dwt, (g * k + ci * taps + tap) * cog + j, taps * cog,
                                     end - row, min(nr, c1 - j), dwt, 0, init)
                        row = end


@parallel_kernel
def _untranspose(dwt, groups, cog, k, dw):
    """``dw[(g*cog + co)*k + kk] = dwt[(g*k + kk)*cog + co]``: each group's ``k x cog`` block
    transposed, by register tiles."""
    lanes = _gemm._lanes(dw)
    nk = (k + lanes - 1) // lanes
    for u in prange(groups * nk):
        g = u // nk
        k0 = (u - g * nk) * lanes
        for c0 in range(0, cog, lanes):
            tile_transpose(dwt, (g * k + k0) * cog + c0, cog, dw, (g * cog + c0) * k + k0, k,
                           min(lanes, k - k0), min(lanes, cog - c0))


@functools.lru_cache(maxsize=256)
def _blocks(groups, k, cog, cg, nr, npix):
    """``(ct, n_cb, kt, n_kb)``: output channels (whole B panels) and (tap, channel) rows per
    task, and their counts, from the shapes alone: among the cuts into at least
    ``_MIN_TASKS / 2`` tasks (when the shape has that many; rows cut at multiples of ``MR``,
    at most ``_MAX_ROWS``), the least modelled time on two threads (prange hands each a
    contiguous half; the GEMM's scoring)."""
    mr = _gemm.MR
    candidates = cuts(cog, k, max(1, min(-(-_MIN_TASKS // groups), cog // 64)), nr, mr,
                      _MAX_ROWS)
    fewest = min(-(-_MIN_TASKS // 2 // groups), max(c.size * w.size for _, c, _, w in candidates))
    best = None
    for ct, cts, kt, kts in candidates:
        if cts.size * kts.size < fewest:
            continue
        # cycles: 16 multiply-adds a cycle (whole panels and tiles), per-run and per-task
        # set-up (a run of rows is cut where a tap ends)
        runs = kts / min(kt, cg) + 1
        cost = ((-(-cts // nr) * nr)[:, None] * (-(-kts // mr) * mr)[None, :] * (npix / 16.0)
                + runs[None, :] * (npix * 2.0) + 3000.0).ravel()
        score = _gemm._two_thread_score(cost, groups)
        if best is None or score < best[0] * (1 - 1e-3):   # ties keep the wider tasks
            best = (score, ct, cts.size, kt, kts.size)
    return best[1:]


def conv2d_weight_grad_rows(x, grad_out, weight_shape, pad_top, pad_left, dil_h, dil_w, groups):
    """Gradient of the stride-1 ``conv2d(x, w)`` with respect to ``w``, or None when ``x``
    holds an Inf or a NaN (see the module docstring).

    ``x`` (N, C_in, H, W) and ``grad_out`` (N, C_out, OH, OW) C-contiguous, one float dtype;
    ``weight_shape`` (C_out, C_in/groups, kH, kW). Returns ``dW`` of that shape::

        dW[co, ci, ky, kx] = sum_{n, oy, ox} grad_out[n, co, oy, ox] *
            x[n, g*C_in/groups + ci, oy - pad_top + ky*dil_h, ox - pad_left + kx*dil_w]
    """
    cout, cg, kh, kw = weight_shape
    nb, cin = x.shape[:2]
    oh, ow = grad_out.shape[2:]
    cog = cout // groups
    taps = kh * kw
    k = cg * taps
    dt = x.dtype
    isz = dt.itemsize
    lanes = _gemm._VBYTES // isz
    nr = _gemm.NV * lanes
    hp, wp = padded_size(oh, ow, kh, kw, dil_h, dil_w)
    plane = -(-hp * wp // lanes) * lanes
    if _gemm._l1_hostile(plane, isz):
        plane += lanes
    npp = oh * wp
    npan = -(-cog // nr)
    per_image = cin * plane + groups * npan * npp * nr
    per_group = max(1, min(nb, _GROUP_BYTES // (per_image * isz)))
    xp = buffer("weight_grad.padded", per_group * cin * plane, dt, _KEEP_BYTES)
    bp = buffer("weight_grad.panels", per_group * groups * npan * npp * nr, dt, _KEEP_BYTES)
    dwt = buffer("weight_grad.transposed", cout * k, dt, _KEEP_BYTES)
    itype = np.int32 if isz == 4 else np.int64
    bits = x.reshape(-1).view(itype)
    mask = itype(0x7F800000) if isz == 4 else itype(0x7FF0000000000000)
    toff = tap_offsets(kh, kw, dil_h, dil_w, wp)
    ct, n_cb, kt, n_kb = _blocks(groups, k, cog, cg, nr, nb * npp)
    gf = grad_out.reshape(-1)
    for n0 in range(0, nb, per_group):
        nimg = min(per_group, nb - n0)
        if _pad(x, bits, mask, n0, nimg, pad_top, pad_left, hp, wp, plane, xp) == mask:
            return None
        _pack_grad(gf, n0, nimg, cout, groups, oh, ow, wp, bp)
        _driver(xp, plane, cin, bp, npp, dwt, nimg, n0 == 0, groups, cog, taps, toff, ct, n_cb,
                kt, n_kb, min(_PIXEL_CHUNK, npp))
    dw = np.empty(weight_shape, dtype=dt)
    _untranspose(dwt, groups, cog, k, dw.reshape(-1))
    return dw
