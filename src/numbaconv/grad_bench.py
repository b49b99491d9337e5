"""``numbaconv bench-grad``: forward + backward time of numbaconv against torch autograd.

For each layer (ResNet-50, ResNeXt-50 and MobileNetV2 layers by default), one training step of
the convolution: the forward call, then the input, weight and bias gradients. numbaconv runs
``conv2d`` and :func:`numbaconv.grad.conv2d_vjp`; torch runs ``F.conv2d`` and ``backward``
(NCHW, same thread count, same process). Before timing, the gradients are compared: the relative difference must be
within ``8 * k * eps`` of the size of the gradients (a forward error bound with room). Medians
of interleaved rounds.
"""

import time

import numpy as np

from . import _threads, grad
from .functional import conv2d
from .problem import ConvProblem

#: ResNet-50, ResNeXt-50 and MobileNetV2 layers (C_in, C_out, size, kernel, stride, padding,
#: groups).
LAYERS = {
    "resnet_3x3_c64_56": (64, 64, 56, 3, 1, 1, 1),
    "resnet_3x3_c128_28": (128, 128, 28, 3, 1, 1, 1),
    "resnet_3x3_c256_14": (256, 256, 14, 3, 1, 1, 1),
    "resnet_1x1_c64to256_56": (64, 256, 56, 1, 1, 0, 1),
    "resnet_3x3s2_c128_56": (128, 128, 56, 3, 2, 1, 1),
    "resnext50_3x3g32_c128_56": (128, 128, 56, 3, 1, 1, 32),
    "mobilenetv2_dw3x3_c144_56": (144, 144, 56, 3, 1, 1, 144),
    "mobilenetv2_dw3x3s2_c96_112": (96, 96, 112, 3, 2, 1, 96),
}


def _median(fn, min_time, repeats):
    fn()
    times, spent = [], 0.0
    while len(times) < repeats or spent < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return float(np.median(times))


def run(names=None, batches=(1, 8), threads=2, min_time=0.3, repeats=5, log=print):
    """Time every layer x batch; returns a list of result dicts (and prints a table)."""
    try:
        import torch
    except ImportError:
        torch = None
        log("torch is not installed: numbaconv times only")
    names = list(names or LAYERS)
    for name in names:
        if name not in LAYERS:
            raise ValueError(f"unknown layer {name!r}; choose from {sorted(LAYERS)}")
    rng = np.random.default_rng(0)
    rows = []
    log(f"{'layer':<28}{'batch':>6}{'GFLOP':>8}{'numbaconv ms':>14}{'torch ms':>10}"
        f"{'speed-up':>10}")
    with _threads.num_threads(threads):
        if torch is not None:
            torch.set_num_threads(threads)
        for name in names:
            cin, cout, size, k, s, p, groups = LAYERS[name]
            for n in batches:
                problem = ConvProblem.for_conv((n, cin, size, size), (cout, cin // groups, k, k),
                                               bias=True, stride=s, padding=p, groups=groups)
                x = rng.standard_normal(problem.input_shape, dtype=np.float32)
                w = rng.standard_normal(problem.weight_shape, dtype=np.float32)
                b = rng.standard_normal(cout, dtype=np.float32)
                g = rng.standard_normal(problem.output_shape, dtype=np.float32)

                def ours():
                    conv2d(x, w, b, s, p, groups=groups)
                    return grad.conv2d_vjp(x, w, g, s, p, groups=groups)

                flops = 3 * problem.flops  # forward, input gradient, weight gradient
                row = {"layer": name, "batch": n, "gflop": flops / 1e9}
                if torch is not None:
                    tx = torch.tensor(x, requires_grad=True)
                    tw = torch.tensor(w, requires_grad=True)
                    tb = torch.tensor(b, requires_grad=True)
                    tg = torch.tensor(g)

                    def theirs():
                        tx.grad = tw.grad = tb.grad = None
                        torch.nn.functional.conv2d(tx, tw, tb, s, p, groups=groups).backward(tg)

                    theirs()
                    _check(ours(), (tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()), problem)
                times = {"numbaconv": [], "torch": []}
                for _ in range(3):  # interleaved rounds
                    times["numbaconv"].append(_median(ours, min_time / 3, repeats))
                    if torch is not None:
                        times["torch"].append(_median(theirs, min_time / 3, repeats))
                row["numbaconv_ms"] = 1e3 * float(np.median(times["numbaconv"]))
                row["torch_ms"] = 1e3 * float(np.median(times["torch"])) if torch else None
                rows.append(row)
                ratio = f"{row['torch_ms'] / row['numbaconv_ms']:.2f}x" if torch else "-"
                tms = f"{row['torch_ms']:.2f}" if torch else "-"
                log(f"{name:<28}{n:>6}{row['gflop']:>8.2f}{row['numbaconv_ms']:>14.2f}{tms:>10}"
                    f"{ratio:>10}")
    if torch is not None and rows:
        ratios = [r["torch_ms"] / r["numbaconv_ms"] for r in rows]
        log(f"speed-up over torch (forward + backward): geometric mean "
            f"{float(np.exp(np.mean(np.log(ratios)))):.2f}x, worst {min(ratios):.2f}x")
    return rows


def _check(ours, theirs, problem):
    eps = np.finfo(np.float32).eps
    k_in = problem.out_channels * int(np.prod(problem.kernel_size))
    k_w = problem.batch * int(np.prod(problem.out_size))
    for name, a, b, k in zip(("input", "weight", "bias"), ours, theirs, (k_in, k_w, k_w)):
        scale = float(np.abs(b).max()) or 1.0
        err = float(np.abs(a - b).max()) / scale
        if err > 8 * k * eps:
            raise AssertionError(f"{problem}: {name} gradient differs from torch by {err:.2e} "
                                 f"(relative to its largest entry)")


def main(args):
    run(args.layers or None, tuple(args.batch), args.threads, args.min_time)
