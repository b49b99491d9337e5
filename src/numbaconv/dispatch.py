"""Which algorithm computes a convolution: an ordered table, a small rule, and the reasons.

Every algorithm is an :class:`Algorithm` entry of :data:`ALGORITHMS`, most specialised first and
the reference last. Each answers :meth:`Algorithm.why_not` with ``None`` (it can compute the
problem) or a sentence saying why it cannot. ``algorithm='auto'`` applies :func:`auto_choice`;
a forced algorithm that cannot handle the problem raises :class:`UnsupportedAlgorithm` carrying the
reason. Tests iterate over this table, so a newly registered algorithm is tested with no new code.
"""

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import reference, stride1_lowering
from .kernels import (depthwise, depthwise_transposed, direct, dot, gemm, im2col, transposed,
                      winograd)
from .problem import ConvProblem


class UnsupportedAlgorithm(ValueError):
    """A forced algorithm cannot compute the given problem; the message says why."""


@dataclass(frozen=True)
class Algorithm:
    """One way to compute a convolution.

    Attributes
    ----------
    name : str
        What users pass as ``algorithm=``.
    transposed : bool
        Whether it computes transposed (True) or forward (False) convolutions.
    summary : str
        One line for tables and ``explain``.
    exact : bool
        Whether its result equals the reference bit for bit whenever every partial sum is exactly
        representable (integer-valued data of small magnitude). Winograd/FFT-like methods are not.
    run : callable
        ``run(problem, x, w, b, out)`` with batched C-contiguous arrays of ``problem.dtype``,
        ``b`` an array or None; writes every element of ``out``.
    limits : callable, optional
        ``limits(problem) -> str or None``: the algorithm-specific reason it cannot compute a
        problem of its kind.
    spatial_dims : tuple of int
        The numbers of spatial dimensions it computes.
    size_invariant : bool
        Whether each output element is summed in an order that depends only on the channels and
        kernel, never on the image size or tiling: then a tile computed on its own (with halo),
        as :mod:`numbaconv.dask` does, equals the whole-image result bit for bit on any data.
    """

    name: str
    transposed: bool
    summary: str
    run: Callable
    exact: bool = True
    limits: Optional[Callable] = None
    spatial_dims: tuple = (2,)
    size_invariant: bool = False

    def why_not(self, problem: ConvProblem):
        """``None`` if this algorithm can compute ``problem``, else the reason it cannot."""
        if problem.transposed != self.transposed:
            kind = "transposed" if self.transposed else "forward"
            return f"computes {kind} convolutions only"
        if problem.nd not in self.spatial_dims:
            return f"computes {' or '.join(map(str, self.spatial_dims))}-d convolutions only"
        return self.limits(problem) if self.limits else None


def _reference_run(problem, x, w, b, out):
    if problem.transposed:
        reference.conv_transpose_nd(problem, x, w, b, out)
    else:
        reference.conv_nd(problem, x, w, b, out)


def _reference(transposed):
    return Algorithm(
        name="reference", transposed=transposed, run=_reference_run, spatial_dims=(1, 2, 3),
        size_invariant=True,
        summary="pure NumPy, fixed summation order; the oracle of the others (slow)")


def _geometry(problem):
    """The ints every 2-d kernel takes after its arrays: strides, top/left pads, dilations."""
    (sh, sw), ((pt, _), (pl, _)), (dh, dw) = problem.stride, problem.padding, problem.dilation
    return sh, sw, pt, pl, dh, dw


def _bias(problem, b):
    return b if b is not None else np.zeros(problem.out_channels, dtype=problem.dtype)


def _im2col_run(problem, x, w, b, out):
    im2col.conv2d_im2col(x, w, _bias(problem, b), out, *_geometry(problem), problem.groups)


def _depthwise_run(problem, x, w, b, out):
    depthwise.conv2d_depthwise(x, w, _bias(problem, b), out, *_geometry(problem))


def _depthwise_limits(problem):
    if not problem.is_depthwise:
        return (f"computes depthwise convolutions only (groups == in_channels), got "
                f"groups={problem.groups}, in_channels={problem.in_channels}")
    return None


def _direct_run(problem, x, w, b, out):
    direct.conv2d_direct(x, w, _bias(problem, b), out, *_geometry(problem), problem.groups)


def _gemm_run(problem, x, w, b, out):
    gemm.conv2d_implicit_gemm(x, w, _bias(problem, b), out, *_geometry(problem), problem.groups)


def _dot_run(problem, x, w, b, out):
    dot.conv2d_dot(x, w, _bias(problem, b), out, *_geometry(problem))


def _dot_limits(problem):
    if problem.groups != 1:
        return f"computes ungrouped convolutions only, got groups={problem.groups}"
    return None


def _winograd_run(problem, x, w, b, out):
    (pt, _), (pl, _) = problem.padding
    if problem.dilation == (1, 1):
        done = winograd.conv2d_winograd(x, w, _bias(problem, b), out, pt, pl)
    else:
        done = winograd.conv2d_winograd_dilated(x, w, _bias(problem, b), out, problem.padding,
                                                problem.dilation)
    if not done:
        # Inf or NaN in the data: an exact kernel propagates them as the reference does
        get("auto", problem, exact=True).run(problem, x, w, b, out)


def _winograd_limits(problem):
    if problem.kernel_size != (3, 3):
        return f"computes 3x3 kernels only, got {problem.kernel_size[0]}x{problem.kernel_size[1]}"
    if problem.stride != (1, 1):
        return "computes stride 1 only (dilated kernels as stride-1 phases)"
    if problem.groups != 1:
        return f"computes ungrouped convolutions only, got groups={problem.groups}"
    return None


def _transposed_direct_run(problem, x, w, b, out):
    if stride1_lowering.forward_problem(problem) is not None:
        # the forward direct kernel on the flipped weights, flip included within 4% of the
        # transposed kernel or faster on every stride-1 layer measured (float32, 2 threads, 9
        # interleaved rounds, GFLOP/s): 3x3 C64 56x56 174 -> 193, C128 28x28 160 -> 157, 1x1
        # C256->64 56x56 124 -> 156, C64->256 124 -> 126, 3x3 g32 C128 56x56 42 -> 113, 3x3
        # C64->3 224x224 52 -> 83, 5x5 C32 64x64 197 -> 190
        _lowered_direct(problem, x, w, b, out)
        return
    transposed.conv_transpose2d_direct(x, w, _bias(problem, b), out, *_geometry(problem),
                                       problem.groups)


_lowered_direct = stride1_lowering.lowered(_direct_run)


def _lowered_limits(forward_limits):
    """``limits`` of a transposed algorithm that runs a forward one on stride-1 problems."""
    def limits(problem):
        reason = stride1_lowering.why_not(problem)
        if reason is None and forward_limits is not None:
            reason = forward_limits(stride1_lowering.forward_problem(problem))
        return reason
    return limits


_lowered_depthwise = stride1_lowering.lowered(_depthwise_run)


def _transposed_depthwise_run(problem, x, w, b, out):
    if problem.stride == (1, 1):
        _lowered_depthwise(problem, x, w, b, out)
        return
    depthwise_transposed.conv_transpose2d_narrow(x, w, _bias(problem, b), out,
                                                 *_geometry(problem), problem.groups)


def _transposed_depthwise_limits(problem):
    """Stride 1: the forward problem must be depthwise (one kernel for every padding, so tiles
    of a layer get the whole layer's bits). Other strides: one input or one output channel per
    group and a column stride of 1 or 2."""
    if problem.stride == (1, 1):
        return _lowered_limits(_depthwise_limits)(problem)
    cg_in = problem.in_channels // problem.groups
    cg_out = problem.out_channels // problem.groups
    if min(cg_in, cg_out) != 1:
        return (f"computes one input or one output channel per group only, got {cg_in} input "
                f"and {cg_out} output channels per group")
    if not depthwise_transposed.supports(problem.stride[1]):
        return f"computes column strides 1 and 2 only, got stride {problem.stride}"
    return None


def _transposed_gemm_run(problem, x, w, b, out):
    transposed.conv_transpose2d_gemm(x, w, _bias(problem, b), out, *_geometry(problem),
                                     problem.groups)


ALGORITHMS = (
    Algorithm(
        name="depthwise", transposed=False, run=_depthwise_run, limits=_depthwise_limits,
        size_invariant=True,
        summary="one stencil pass per channel plane, vectorised along rows; any channel "
                "multiplier, stride, dilation"),
    Algorithm(
        name="gemm", transposed=False, run=_gemm_run, size_invariant=True,
        summary="implicit GEMM: im2col panels packed on the fly for an 8x32 register-tiled "
                "AVX-512 micro-kernel; 1x1 stride-1 reads the input in place"),
    Algorithm(
        name="dot", transposed=False, run=_dot_run, limits=_dot_limits, size_invariant=True,
        summary="dot products along K (vector lanes over C_in x kH x kW) of weight rows with "
                "im2col rows, 5x5 register tiles; for few output pixels and many channels"),
    Algorithm(
        name="direct", transposed=False, run=_direct_run,
        summary="output pixels in the vector lanes over a zero-padded, stride-phase-split "
                "copy of a band of input rows; suits few channels, big kernels, narrow groups"),
    Algorithm(
        name="im2col", transposed=False, run=_im2col_run,
        summary="patches of a block of output rows copied into a workspace (capped, 64 MiB by "
                "default), then one GEMM per block; 1x1 stride-1 is a GEMM with no copy",
        size_invariant=True),
    Algorithm(
        name="winograd", transposed=False, run=_winograd_run, limits=_winograd_limits,
        exact=False,
        summary="Winograd F(4x4, 3x3): 36 GEMMs on transformed 6x6 tiles, 4x fewer multiplies; "
                "3x3 stride 1 ungrouped (dilated as stride-1 phases); not bit-exact (see the "
                "README's error figures)"),
    Algorithm(
        name="direct", transposed=True, run=_transposed_direct_run,
        summary="gather by stride phase (no multiplies on stuffed zeros), 16 output-channel x "
                "pixel accumulators in registers; stride 1: the forward direct kernel on the "
                "flipped weights"),
    Algorithm(
        name="gemm", transposed=True, run=_transposed_gemm_run, size_invariant=True,
        summary="register-tiled GEMM of input pixels by (C_out, kH, kW) weight columns, then "
                "col2im; for small images with many channels"),
    Algorithm(
        name="depthwise", transposed=True, run=_transposed_depthwise_run,
        limits=_transposed_depthwise_limits, size_invariant=True,
        summary="stride 1: the forward depthwise kernel on the flipped weights; other strides: "
                "output rows gathered from masked input-row vectors by column phase, phases "
                "interleaved in registers (one input or output channel per group)"),
    Algorithm(
        name="winograd", transposed=True, run=stride1_lowering.lowered(_winograd_run),
        limits=_lowered_limits(_winograd_limits), exact=False,
        summary="stride 1, 3x3, ungrouped: forward Winograd F(4x4, 3x3) on the flipped "
                "weights; not bit-exact"),
    _reference(False),
    _reference(True),
)


def names():
    """Names accepted by ``algorithm=``, besides ``'auto'``."""
    return tuple(dict.fromkeys(a.name for a in ALGORITHMS))


_INEXACT = "not exact (rounding differs from the reference) and the call asked for exact=True"


def candidates(problem, exact=False):
    """``{name: reason or None}`` for every algorithm of the problem's kind, in table order."""
    return {a.name: (_INEXACT if exact and not a.exact else a.why_not(problem))
            for a in ALGORITHMS if a.transposed == problem.transposed}


# Winograd pays for its transforms on large, dense layers whose output fills its 4x4 tiles (each
# tile row also carries one unused tile). Measured with ``numbaconv bench`` on 2 cores against the
# best exact kernel: 1.5-2x on ResNet-50 3x3 C64 56 and C128 28 and VGG-16 conv1_2; slower on C32
# 56x56 and C64 28x28 (too little work per transformed value) and on 14x14 and 7x7 maps at batch
# 1 (61% and 51% of the tiles' outputs used; but see the tile counts below). A dilated layer runs
# as dilation_h * dilation_w stride-1 phases, and the same limits hold per phase: dilation 2 on
# C128 56x56, C256 56x56, C256 65x65 and C512 65x65 (phases 28 to 33 wide) 1.17-1.45x the direct
# kernel (7 of 7 interleaved rounds each); C64 56x56 (phases like C64 28x28) was slower then, and
# DeepLab's C256 33x33 (17-wide phases) went both ways before its temporaries were kept.
_WINOGRAD_MIN_MACS = 50_000_000
_WINOGRAD_MIN_CHANNELS = 32
_WINOGRAD_MIN_TILE_USE = 0.75
# maps using less of their tiles need many tiles per call (below)
_WINOGRAD_MANY_TILES_MIN_TILE_USE = 0.5


# With the weights transformed in advance (a plan, see numbaconv.plan), what is left per call is
# reading U (36 x C_out x C_in) once: it pays once the call has enough tiles to spread that
# over, even on maps that waste many tile outputs. Measured with plans on 2 cores against the
# best exact kernel (float32, 5 interleaved rounds): C256, C384, C512 14x14 (61% of the tile
# outputs used, 20 tiles) 197-211 vs 172-174, 228 vs 180, 218 vs 181 GFLOP/s; DeepLab's C256 33x33
# dilation 2 (60%, 120 tiles) 243 vs 191; C512 7x7 (51%, 6 tiles per image) at batch 3, 4, 8 177
# vs 168, 205 vs 149, 223-234 vs 149-175, C256 7x7 at batch 3 and 4 196 vs 161 and 258 vs 153; but
# at batch 1 and 2 (6 and 12 tiles) C512 7x7 62 vs 180 and 112 vs 146, C256 131 vs 145. C1024 7x7
# at batch 4 (24 tiles, U of 151 MB) 130 vs 135: even.
_WINOGRAD_PREPARED_MIN_TILES = 16
# Without a plan the same maps pay once the call has enough tiles to also amortise the weight
# transform. Plain calls, 11 interleaved rounds against the direct kernel, after the dilated
# path kept its temporaries between calls: DeepLab's C256 33x33 dilation 2 (120 tiles) 252 vs
# 193 GFLOP/s (11/11), C128 229 vs 189, C512 197 vs 193, batch 2 217 vs 196; C256 14x14 at batch
# 8 (160 tiles) 188 vs 174, at batch 1 (20 tiles) even; dilation 4 (phases 9 wide, 42% of the
# tile outputs) 145 vs 171.
_WINOGRAD_PLAIN_MIN_TILES = 100
# Since large transformed weights are read once per chunk in all (winograd._STAGE_CHUNK_BYTES)
# wide layers pay from fewer tiles. Plain calls against the exact kernel the rule picks,
# float32, 2 threads, 4 interleaved rounds, GFLOP/s: 48 tiles (7x7 at batch 8) C192 208 vs 180,
# C256 209 vs 173, C512 242 vs 173, but C128 176 vs 183 and C1024 (U of 151 MB) 169 vs 173;
# 80 tiles (14x14 at batch 4) C256 332 vs 265, C384 372 vs 272, C512 343 vs 274; 40 tiles
# (14x14 at batch 2) C256 247 vs 275, C512 250 vs 277; 24 tiles C512 7x7 216 vs 171, C256 161
# vs 150, C1024 111 vs 176.
_WINOGRAD_WIDE_MIN_TILES = 48
_WINOGRAD_WIDE_MIN_CHANNELS = 192
_WINOGRAD_WIDE_MAX_WEIGHTS = 512 * 512   # C_in * C_out: U (36 of them) of at most 38 MB


def _winograd_pays(problem, prepared=False):
    (oh, ow), (dh, dw) = problem.out_size, problem.dilation
    ph, pw = -(-oh // dh), -(-ow // dw)  # one stride-1 phase of a dilated layer (the largest)
    t = winograd.TILE
    tiles = -(-ph // t) * (-(-pw // t) + 1)
    used = ph * pw / (t * t * tiles)
    cin, cout = problem.in_channels, problem.out_channels
    if not (problem.macs / (dh * dw) >= _WINOGRAD_MIN_MACS
            and min(cin, cout) >= _WINOGRAD_MIN_CHANNELS):
        return False
    if used >= _WINOGRAD_MIN_TILE_USE:
        return True
    if used < _WINOGRAD_MANY_TILES_MIN_TILE_USE:
        return False
    calls_tiles = problem.batch * dh * dw * tiles
    if prepared:
        return calls_tiles >= _WINOGRAD_PREPARED_MIN_TILES
    return calls_tiles >= _WINOGRAD_PLAIN_MIN_TILES or (
        calls_tiles >= _WINOGRAD_WIDE_MIN_TILES and min(cin, cout) >= _WINOGRAD_WIDE_MIN_CHANNELS
        and cin * cout <= _WINOGRAD_WIDE_MAX_WEIGHTS)


# The dot-product kernel covers output pixels in steps of 5 (7 when these were measured), the
# GEMM's tiles in steps of 32: it pays where that leaves many of the GEMM's lanes idle and the
# reduction is long. Measured on 2 cores of an AMD Zen 4 guest (float32), dot / gemm speed: 3x3
# C512 at 4x4, 6x6, 7x7 outputs 1.41, 1.37, 1.12, C256 7x7 1.12. On the Intel guest, since the
# GEMM's tiles of weights beyond L2 run each K block against all their panels (and its last
# panels of at most 16 pixels run at half width), 7 interleaved rounds: 3x3 C512 7x7 at batch
# 1, 2, 4, 8 0.90, 0.85, 1.04, 0.89, C256 7x7 0.87, C512 6x6 0.97, 5x5 0.98, 4x4 0.99, C1024 4x4
# 0.85: kernels larger than 1x1 now keep the GEMM. 1x1 kernels, whose im2col rows gather across
# channel planes, still pay where the GEMM's tiles are half used: 1x1 C2048->512 on 4x4 maps at
# batch 1, 4 1.30, 1.59 (but 0.77, 0.80 at batch 8, 16; Zen 4: 1.34, 1.11, 1.09, 1.24), on 7x7
# maps (77% used) 0.90, C1024->256 4x4 0.83.
_DOT_MIN_K = 2048
_DOT_MIN_GAIN_1X1 = 1.5


def _dot_pays(problem):
    oh, ow = problem.out_size[-2:]
    npix = problem.batch * oh * ow
    if (problem.groups != 1 or any(k != 1 for k in problem.kernel_size)
            or problem.in_channels < _DOT_MIN_K or npix == 0):
        return False
    # the GEMM's pixel tiles stay within one image; the dot kernel's run across images
    gemm_cover = oh * ow / (32 * -(-(oh * ow) // 32))
    dot_cover = npix / (dot.NR * -(-npix // dot.NR))
    return dot_cover >= _DOT_MIN_GAIN_1X1 * gemm_cover


# A 1x1 stride-1 layer that widens the channels (C_out >= 2 C_in) writes a result larger than
# its input; once input and result together pass _WIDE_1X1_BYTES they leave a 32 MiB last-level
# cache (shared with other work), and the direct kernel outruns the GEMM there. Measured on 2
# cores of an AMD Zen 4 guest with that cache, float32, GFLOP/s GEMM vs direct (4-5 of 5 rounds
# each way): C64->256 56x56 batch 3 (12 MB) 153 vs 170, batch 4 144 vs 158, batch 8 135 vs 154,
# batch 16 127 vs 148; C128->512 28x28 batch 8 161 vs 171; C32->128 112x112 batch 8 84 vs 136;
# but batch 4 of C128->512 (8 MB) 207 vs 199, and layers that narrow the channels keep the GEMM
# ahead at any size (C256->64 56x56 batch 8 173 vs 157, C512->128 28x28 178 vs 161). On 2 cores
# of an Intel guest reporting a 480 MiB last-level cache the GEMM stays ahead on all of these
# (4-5 of 5 rounds): C64->256 batch 3 183 vs 173, batch 4 183 vs 134, batch 8 99 vs 84, batch 16
# (61 MiB) 118 vs 78; C128->512 batch 8 217 vs 204; C32->128 112x112 batch 2 135 vs 117, batch 8
# 77 vs 74. So the threshold scales with the cache the system reports (10 MiB per 32 MiB).


def _last_level_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """Size of the CPU's last-level cache as Linux reports it, or 32 MiB when it does not."""
    best = (0, 32 << 20)
    try:
        entries = os.listdir(root)
    except OSError:
        return best[1]
    for name in entries:
        try:
            with open(os.path.join(root, name, "level")) as f:
                level = int(f.read())
            with open(os.path.join(root, name, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if scale > 1 else text
        if digits.isdigit() and level > best[0]:
            best = (level, int(digits) * scale)
    return best[1]


_WIDE_1X1_BYTES = _last_level_cache_bytes() * 10 // 32


def _wide_1x1_outgrows_cache(problem):
    if problem.groups != 1 or any(k != 1 for k in problem.kernel_size) or any(
            s != 1 for s in problem.stride) or problem.out_channels < 2 * problem.in_channels:
        return False
    itemsize = np.dtype(problem.dtype).itemsize
    data = problem.batch * (problem.in_channels * math.prod(problem.in_size)
                            + problem.out_channels * math.prod(problem.out_size))
    return data * itemsize >= _WIDE_1X1_BYTES


# On small maps the two exact kernels waste lanes differently: the GEMM covers each image's
# output pixels in panels of 32 (float32, AVX-512), the direct kernel covers its rows laid at
# pitch W_out + (kW-1)*dil/stride in tiles of 48 positions, the last one 32 when that covers the
# rest. Per lane it used the direct kernel ran about 10% faster, so it pays where it spends at
# most 1.1x the GEMM's lanes. Measured on 2 cores, float32, C128 and C256, 5 interleaved rounds,
# direct / GEMM GFLOP/s; the lane counts predicted the faster kernel on 36 of 38 shapes (within
# 3% counted as even): 3x3 stride 1 on outputs 8 to 15 wide 0.71-0.85, 0.86-0.87, 1.09-1.10,
# 0.96-1.01, 0.97 (C128, predicted direct) and 1.04, 0.92-0.93, 1.13-1.14, 0.97 (C128,
# predicted direct) and 1.01; stride 2 onto 8 to 15 wide 0.72-0.73, 1.12-1.13, 1.09-1.10,
# 0.95-0.98, 1.17-1.31, 1.03-1.08, 1.18-1.28, 1.08-1.16; 5x5 11, 12, 13 wide 0.85, 1.00, 0.95;
# batch 8 C256 13, 14, 15 wide 0.96, 1.10, 1.04. float64 follows the same lane counts (8 lanes:
# not measured).
_DIRECT_LANE_ADVANTAGE = 1.10


def _direct_lanes_pay(problem):
    """Whether the direct kernel covers a small map's output pixels in at most
    ``_DIRECT_LANE_ADVANTAGE`` times the GEMM's lanes (see above); kernels larger than 1x1.
    Measured with 512-bit vectors only: builds with narrower ones (other tile shapes) keep the
    GEMM."""
    if (problem.nd != 2 or all(k == 1 for k in problem.kernel_size)
            or direct._VBYTES < 64):
        return False
    (oh, ow), (_, kw), (_, sw), (_, dw) = (problem.out_size, problem.kernel_size,
                                          problem.stride, problem.dilation)
    lanes = direct._VBYTES // np.dtype(problem.dtype).itemsize
    tile = direct._V8 * lanes               # output positions of a tile of 8 channels
    panel = gemm.NV * lanes                 # output pixels of a GEMM panel
    pitch = ow + ((kw - 1) * dw) // sw
    full, rest = divmod(oh * pitch, tile)
    narrow = direct._V8_TAIL * lanes        # a band's last tile when it covers the rest
    direct_lanes = full * tile + (0 if rest == 0 else narrow if rest <= narrow else tile)
    gemm_lanes = -(-(oh * ow) // panel) * panel
    return direct_lanes <= _DIRECT_LANE_ADVANTAGE * gemm_lanes


def rule(problem, exact=False, prepared=False):
    """The algorithm ``'auto'`` prefers, by kernel size, groups, channels and image size.

    Forward convolution:

    0. ``winograd`` for 3x3 stride-1 ungrouped layers of at least 50M multiply-adds, 32 input
       and output channels, and outputs that use 75% of the 4x4 tiles covering them (maps of
       about 28 pixels and wider), unless ``exact``; for dilated layers the multiply-adds and the
       map of one stride-1 phase count. 50% of the tiles' outputs suffice (14x14 maps,
       DeepLab's dilated 33x33) when the call has at least 100 tiles in all, or 48 with 192
       to 512 channels (``C_in * C_out <= 512*512``), or 16 with ``prepared`` (weights
       transformed in advance, as a :class:`~numbaconv.plan.Conv2dPlan` does).
    1. ``depthwise`` when ``groups == C_in > 1`` (one channel per group), and for one input
       channel when ``C_out * kH * kW <= 64`` (see ``_SINGLE_CHANNEL_DEPTHWISE_TAPS``).
    2. ``direct`` for other grouped convolutions with narrow groups (``C_out / groups < 32``):
       a GEMM per group would be too small to run fast.
    3. ``gemm`` for 1x1 kernels (a plain matrix product), except stride-1 ones that at least
       double the channels with input and result of 10 MiB or more per 32 MiB of last-level
       cache (``direct``: see ``_WIDE_1X1_BYTES``), and for small images
       (``H_out * W_out < 256``, where direct tiles waste lanes on row padding), unless the
       direct kernel's tiles cover the pixels in at most 1.1 times the GEMM's lanes (3x3 on
       10x10, 12x12, 14x14 and 15x15 outputs, stride 2 onto 9x9 to 15x15 except 11x11; see
       ``_direct_lanes_pay``); among those,
       ``dot`` for ungrouped 1x1 layers with a long reduction (``C_in >= 2048``) when its
       5-pixel tiles cover the output pixels at least 1.5 times better than the GEMM's 32-pixel
       ones within each image: 1x1 layers on 4x4 maps.
    4. ``direct`` otherwise: dense 3x3 and larger kernels, strided or dilated, and images with few
       input or output channels.

    Transposed convolution: stride-1 layers that run as forward convolutions of the flipped
    weights (see :mod:`numbaconv.stride1_lowering`) take ``winograd`` or ``depthwise`` where the
    forward rule would; strided layers with one input or one output channel per group and a
    column stride of 1 or 2 take ``depthwise`` (depthwise input gradients, single-channel
    up-sampling: faster than ``direct`` on every such layer measured, 1.5-13x); otherwise
    ``gemm`` for narrow inputs (``W < 16``: the weights dominate and a GEMM reads them once), else
    ``direct`` (on stride-1 layers itself the forward direct kernel). These thresholds come from
    ``numbaconv bench`` sweeps on 2-core AVX-512 machines (see :data:`_TRANSPOSED_GEMM_BELOW`).
    """
    oh, ow = problem.out_size[-2:]
    if problem.transposed:
        forward = stride1_lowering.forward_problem(problem)
        if forward is not None:
            choice = rule(forward, exact, prepared)
            if choice in ("winograd", "depthwise"):
                return choice
        if forward is None and _transposed_depthwise_limits(problem) is None:
            return "depthwise"   # strided, one input or one output channel per group
        return "gemm" if problem.in_size[-1] < _TRANSPOSED_GEMM_BELOW else "direct"
    if not exact and _winograd_limits(problem) is None and _winograd_pays(problem, prepared):
        return "winograd"
    if problem.is_depthwise and (problem.groups > 1 or
                                 problem.out_channels * math.prod(problem.kernel_size) <=
                                 _SINGLE_CHANNEL_DEPTHWISE_TAPS):
        return "depthwise"
    if problem.groups > 1 and problem.out_channels // problem.groups < 32:
        return "direct"
    if all(k == 1 for k in problem.kernel_size) or oh * ow < 256:
        if _wide_1x1_outgrows_cache(problem):
            return "direct"
        if _dot_pays(problem):
            return "dot"
        if problem.out_channels // problem.groups >= 8 and _direct_lanes_pay(problem):
            return "direct"
        return "gemm"
    return "direct"


# Input width below which strided transposed layers take the GEMM. On an AMD Zen 4 guest the
# GEMM also led from 16 to 31 columns with >= 256 input channels per group; on an Intel AVX-512
# guest (2 MB L2 per core), after the GEMM's channel blocks, the direct kernel led on all 23
# layers measured from 16 columns on (k 2-4, stride 2, 128-512 input channels, batch 1-8; up to
# 2x: 4x4 C256->128 on 16x16 1.54 against 2.62 ms, at batch 8 11.3 against 23.0), the GEMM on
# 18 of the 19 below (8 and 12 columns; 1.1-2.2x; 4x4 C256->128 on 12x12 at batch 8 a tie,
# 8.45 against 8.54 ms).
_TRANSPOSED_GEMM_BELOW = 16


# One input channel: the depthwise kernel (one stencil pass per output channel) against the
# direct kernel (output channels share each input load), 2 threads, forced, ms: C1->1 2048^2
# 7x7 2.73 vs 2.93, 3x3 0.71 vs 1.33; 512^2 5x5 0.12 vs 0.20, 3x3 0.04 vs 0.15; C1->2 5x5 0.25
# vs 0.34; C1->4 3x3 0.20 vs 0.29; 1024^2 5x5 stride 2 0.18 vs 0.52. Direct wins once the
# outputs' taps add up: C1->4 5x5 0.45 vs 0.40, C1->16 5x5 1.62 vs 1.16, C1->1 11x11 2.28 vs
# 1.45 (C1->3 7x7, 147 taps, was 1.13x for depthwise: the bound is conservative).
_SINGLE_CHANNEL_DEPTHWISE_TAPS = 64


def auto_choice(problem, exact=False, prepared=False):
    """The algorithm ``'auto'`` runs: :func:`rule`'s choice when it can compute the problem,
    else the first algorithm in table order that can (the reference handles everything); with
    ``exact``, never an inexact one."""
    preferred = rule(problem, exact, prepared)
    for a in ALGORITHMS:
        if a.name == preferred and a.transposed == problem.transposed and \
                a.why_not(problem) is None:
            return a.name
    for a in ALGORITHMS:
        if a.exact and a.why_not(problem) is None:
            return a.name
    raise AssertionError(f"no algorithm for {problem}")


# (name, exact, prepared, problem, table) -> Algorithm: repeated calls skip the rule and checks
_CHOSEN = {}


def get(name, problem, exact=False, prepared=False):
    """The :class:`Algorithm` called ``name`` for ``problem``'s kind, checked to support it (and
    to be exact, with ``exact``); ``prepared`` tells ``'auto'`` that the caller holds weights
    prepared in advance (see :func:`rule`)."""
    key = (name, exact, prepared, problem, id(ALGORITHMS))
    chosen = _CHOSEN.get(key)
    if chosen is None:
        chosen = _get(name, problem, exact, prepared)
        if len(_CHOSEN) >= 1024:
            _CHOSEN.clear()
        _CHOSEN[key] = chosen
    return chosen


def _get(name, problem, exact, prepared):
    if name == "auto":
        name = auto_choice(problem, exact, prepared)
    if name not in names():
        raise ValueError(f"algorithm must be 'auto', 'tune' or one of {names()}, got {name!r}")
    for a in ALGORITHMS:
        if a.name == name and a.transposed == problem.transposed:
            reason = _INEXACT if exact and not a.exact else a.why_not(problem)
            if reason:
                raise UnsupportedAlgorithm(f"algorithm {name!r} cannot compute {problem}: {reason}")
            return a
    kind = "transposed" if problem.transposed else "forward"
    raise UnsupportedAlgorithm(f"algorithm {name!r} has no {kind} convolution")
