"""``numbaconv bench-layouts``: the same layers channels-first and channels-last.

For each layer of the built-in suite (and a few 3x3x3 video layers), times ``numbaconv`` with
``data_format='NCHW'`` (torch weights) and ``'NHWC'`` (TensorFlow weights; ``'NCDHW'`` /
``'NDHWC'`` in 3-D; HWOI for transposed layers), and torch in NCHW and ``channels_last`` when it
is installed: one process, the same thread count, medians of interleaved rounds. Before timing,
the channels-last result is checked against the channels-first one (within the forward error
bound).
"""

import time

import numpy as np

from . import _threads, layouts, suite
from .functional import conv2d, conv3d, conv_transpose2d
from .problem import ConvProblem

#: 3x3x3 layers of C3D / R(2+1)D-style video networks (N, C, D, H, W), C_out = C.
VIDEO_LAYERS = {
    "c3d_3x3x3_c64_16x56": (1, 64, 16, 56, 56),
    "c3d_3x3x3_c128_8x28": (1, 128, 8, 28, 28),
    "c3d_3x3x3_c256_4x14": (1, 256, 4, 14, 14),
}


def _median(fn, min_time):
    fn()
    times = []
    while len(times) < 3 or sum(times) < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _problems(names):
    found = []
    for layer in suite.LAYERS:
        if not names or layer.name in names:
            found.append((layer.name, layer.problem))
    for name, (n, c, d, h, w) in VIDEO_LAYERS.items():
        if not names or name in names:
            found.append((name, ConvProblem.for_conv((n, c, d, h, w), (c, c, 3, 3, 3), bias=True,
                                                     padding=1)))
    unknown = set(names or ()) - {name for name, _ in found}
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}")
    return found


def problems(names=None):
    """``(name, ConvProblem)`` of the layers ``names`` (default: all of them)."""
    return _problems(names)


def calls(p, rng):
    """Random float32 operands ``(x, w, b)`` of problem ``p`` (torch layouts) and two calls that
    compute it with numbaconv: channels-first with torch's weights, and channels-last with
    TensorFlow's (copies made once, here)."""
    nd = p.nd
    x = rng.standard_normal(p.input_shape, dtype=np.float32)
    w = rng.standard_normal(p.weight_shape, dtype=np.float32)
    b = rng.standard_normal(p.out_channels, dtype=np.float32)
    x_last = np.ascontiguousarray(layouts.channels_last(x, nd))
    w_tf = np.ascontiguousarray(w.transpose(tuple(range(2, nd + 2)) + (1, 0)))
    conv, fmt = (conv2d, "NHWC") if nd == 2 else (conv3d, "NDHWC")
    kw = dict(stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups)
    if p.transposed:
        conv = conv_transpose2d
        kw = dict(stride=p.stride, padding=tuple(lo for lo, _ in p.padding),
                  output_padding=p.output_padding, groups=p.groups)
    return ((x, w, b), lambda: conv(x, w, b, **kw),
            lambda: conv(x_last, w_tf, b, data_format=fmt, **kw))


def run(names=None, threads=2, min_time=0.2, rounds=3, log=print):
    """Time every layer in both layouts; returns a list of dicts (GFLOP/s per candidate)."""
    try:
        import torch
    except ImportError:
        torch = None
        log("torch is not installed: numbaconv times only")
    rng = np.random.default_rng(0)
    cols = ("ours_first", "ours_last", "torch_first", "torch_last")
    log(f"{'layer (GFLOP/s)':<32}{'NCHW':>8}{'NHWC':>8}{'torch NCHW':>12}{'torch cl':>10}")
    rows = []
    with _threads.num_threads(threads):
        if torch is not None:
            torch.set_num_threads(threads)
        for name, p in _problems(names):
            nd = p.nd
            (x, w, b), ours_first, ours_last = calls(p, rng)
            cands = {"ours_first": ours_first, "ours_last": ours_last}
            first, last = ours_first(), ours_last()
            terms = (w.size // w.shape[1] if p.transposed else w[0].size) + 1  # per output
            magnitude = np.abs(x).max() * np.abs(w).max() * terms + np.abs(b).max()
            err = float(np.abs(layouts.channels_first(last, nd) - first).max())
            if err > 2 * terms * np.finfo(np.float32).eps * magnitude:
                raise AssertionError(f"{name}: channels-last result differs by {err:.3g}")
            if torch is not None:
                fn = torch.nn.functional.conv2d if nd == 2 else torch.nn.functional.conv3d
                pads = [lo for lo, _ in p.padding]
                if any(lo != hi for lo, hi in p.padding):
                    pads = None
                if p.transposed:
                    fn = torch.nn.functional.conv_transpose2d
                tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                fmt_t = torch.channels_last if nd == 2 else torch.channels_last_3d
                txl, twl = tx.contiguous(memory_format=fmt_t), tw.contiguous(memory_format=fmt_t)
                if pads is not None:
                    targs = dict(stride=p.stride, padding=pads, dilation=p.dilation,
                                 groups=p.groups)
                    if p.transposed:
                        targs["output_padding"] = p.output_padding
                    cands["torch_first"] = lambda: fn(tx, tw, tb, **targs)
                    cands["torch_last"] = lambda: fn(txl, twl, tb, **targs)
            times = {c: [] for c in cands}
            for _ in range(rounds):
                for c, fn_ in cands.items():
                    times[c].append(_median(fn_, min_time / rounds))
            row = {"layer": name, "gflop": p.flops / 1e9}
            for c in cols:
                row[c] = p.flops / 1e9 / float(np.median(times[c])) if c in times else None
            rows.append(row)
            log(f"{name:<32}" + "".join(f"{(f'{row[c]:.0f}' if row[c] else '-'):>{wd}}"
                                        for c, wd in zip(cols, (8, 8, 12, 10))))
    ratios = [r["ours_last"] / r["ours_first"] for r in rows]
    if ratios:
        log(f"NHWC / NCHW speed: geometric mean {float(np.exp(np.mean(np.log(ratios)))):.2f}x")
    peer = [r["ours_last"] / r["torch_last"] for r in rows if r["torch_last"]]
    if peer:
        log(f"NHWC / torch channels_last: geometric mean "
            f"{float(np.exp(np.mean(np.log(peer)))):.2f}x, worst {min(peer):.2f}x")
    return rows


def main(args):
    run(args.layers or None, args.threads, args.min_time)
    return 0
