"""The ``numbaconv`` command.

``numbaconv bench``: numbaconv against NumPy, PyTorch and ONNX Runtime on real layers.
``numbaconv demo``: convolve the built-in real network layers and print, for each, the output
shape, parameters, MACs and FLOPs, the algorithm ``auto`` picks, and the measured speed.
``numbaconv bench-grad``: forward + backward against torch autograd (:mod:`numbaconv.grad_bench`).
``numbaconv bench-layouts``: channels-first against channels-last (:mod:`numbaconv.layout_bench`).
``numbaconv shape`` / ``numbaconv summary``: shapes and costs of layer specs or a built-in model
(see :mod:`numbaconv.shape_cli`).
"""

import argparse
import sys
import time

import numpy as np


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _inputs(problem, rng):
    x = rng.standard_normal(problem.input_shape, dtype=np.float32)
    w = rng.standard_normal(problem.weight_shape, dtype=np.float32)
    b = rng.standard_normal(problem.out_channels, dtype=np.float32) if problem.bias else None
    return x, w, b


def demo(args):
    import numbaconv
    from numbaconv import suite
    from numbaconv.functional import convolve

    rng = np.random.default_rng(0)
    layers = [suite.get(name) for name in args.layers] if args.layers else suite.LAYERS
    print(f"numbaconv {numbaconv.__version__}: {len(layers)} real layers, batch 1, float32, "
          f"{numbaconv.get_num_threads()} threads")
    header = (f"{'layer':<30} {'output shape':>18} {'params':>9} {'MMACs':>8} {'GFLOP':>6} "
              f"{'algorithm':>10} {'first ms':>9} {'ms':>8} {'GFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    for layer in layers:
        p = layer.problem
        x, w, b = _inputs(p, rng)
        start = time.perf_counter()
        y = convolve(p, x, w, b)
        first = time.perf_counter() - start
        assert y.shape == p.output_shape
        seconds = _median_seconds(lambda: convolve(p, x, w, b), args.repeats)
        choice = numbaconv.explain(x, w, b, p.stride, p.padding, p.dilation, p.groups,
                                   transposed=p.transposed,
                                   output_padding=p.output_padding).choice
        shape = "x".join(map(str, p.output_shape))
        print(f"{layer.name:<30} {shape:>18} {p.params:>9} {p.macs / 1e6:>8.1f} "
              f"{p.flops / 1e9:>6.2f} {choice:>10} {first * 1e3:>9.1f} {seconds * 1e3:>8.2f} "
              f"{p.flops / seconds / 1e9:>8.1f}")
    return 0


def bench(args):
    from . import bench as runner

    if args.layers:
        layers = [runner.parse_layer(text) for text in args.layers]
        layers = [layer if n == 1 else layer.with_batch(n) for n in args.batch for layer in layers]
    else:
        layers = runner.default_layers(quick=args.quick, batches=args.batch)
    repeats = 5 if args.quick and args.repeats is None else (args.repeats or 15)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 9)
    runner.run(layers, threads=args.threads, repeats=repeats,
               min_seconds=0.1 if args.quick else args.min_time, rounds=rounds,
               algorithms=args.algorithms, peer_names=args.peers, json_path=args.json,
               plot_path=args.plot, progress=not args.no_progress)
    return 0


def _bench_grad(args):
    from .grad_bench import main as run

    return run(args)


def _bench_layouts(args):
    from .layout_bench import main as run

    return run(args)


def _count(text):
    """argparse type: an int of at least 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def main(argv=None):
    from .bench import PEER_NAMES

    parser = argparse.ArgumentParser(prog="numbaconv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_bench = sub.add_parser(
        "bench", help="time numbaconv against NumPy, PyTorch and ONNX Runtime on real layers",
        description="Checks every candidate against the reference, then times all of them in "
                    "one process with the same thread count (median of interleaved rounds).")
    p_bench.add_argument("layers", nargs="*",
                         help="suite layer names or descriptors like mb1ic64ih56oc64kh3ph1 "
                              "(default: the built-in suite)")
    p_bench.add_argument("--quick", action="store_true",
                         help="five representative layers, fewer repeats")
    p_bench.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    p_bench.add_argument("--threads", type=int, default=2)
    p_bench.add_argument("--repeats", type=_count, default=None, help="timed calls per candidate")
    p_bench.add_argument("--min-time", type=float, default=0.3,
                         help="least seconds of timed calls per candidate")
    # nine rounds by default: slow periods of a shared machine last tens of samples, and with
    # three rounds one can take a candidate's whole block (measured: auto 130 GFLOP/s against
    # 149-164 for the kernel it runs); nine shorter rounds spread them over the candidates
    p_bench.add_argument("--rounds", type=_count, default=None,
                         help="interleaved timing rounds (default 9; 3 with --quick)")
    p_bench.add_argument("--algorithms", nargs="*", default=None,
                         help="numbaconv algorithms to time besides auto (default: all)")
    p_bench.add_argument("--peers", nargs="*", default=list(PEER_NAMES), choices=PEER_NAMES)
    p_bench.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    p_bench.add_argument("--plot", metavar="FILE.png", help="draw GFLOP/s per layer")
    p_bench.add_argument("--no-progress", action="store_true")
    p_bench.set_defaults(func=bench)
    p_demo = sub.add_parser("demo", help="convolve real network layers: shapes, costs, speed")
    p_demo.add_argument("layers", nargs="*", help="layer names (default: the whole suite)")
    p_demo.add_argument("--repeats", type=int, default=5, help="timed calls per layer")
    p_demo.set_defaults(func=demo)
    p_grad = sub.add_parser(
        "bench-grad", help="time forward + backward against torch autograd on ResNet-50, "
                           "ResNeXt-50 and MobileNetV2 layers")
    from .grad_bench import LAYERS as GRAD_LAYERS
    p_grad.add_argument("layers", nargs="*", choices=[[]] + sorted(GRAD_LAYERS),
                        help="layers (default: all)")
    p_grad.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p_grad.add_argument("--threads", type=int, default=2)
    p_grad.add_argument("--min-time", type=float, default=0.3)
    p_grad.set_defaults(func=_bench_grad)
    p_lay = sub.add_parser(
        "bench-layouts", help="time the suite's forward layers channels-first and channels-last")
    p_lay.add_argument("layers", nargs="*", help="layer names (default: the whole suite and the 3-D video layers)")
    p_lay.add_argument("--threads", type=int, default=2)
    p_lay.add_argument("--min-time", type=float, default=0.2)
    p_lay.set_defaults(func=_bench_layouts)
    from .shape_cli import register
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
