"""``numbaconv bench``: numbaconv against its peers on real layers, in one process.

For every layer: draw float32 operands, compute the reference result, run every candidate once
and check it against the reference (a candidate that disagrees is reported and not timed), then
time the candidates in interleaved rounds and report medians. Candidates: numbaconv's ``auto``,
each numbaconv algorithm that supports the layer, and the peers of :mod:`numbaconv.peers` that are
installed. All use the same thread count.
"""

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import dispatch, peers, reference
from ._threads import set_num_threads
from .functional import convolve
from .plan import plan_conv2d
from .plan_transposed import plan_conv_transpose2d
from .problem import ConvProblem
from .suite import LAYERS, Layer, get

QUICK_LAYERS = ("resnet50_3x3_c128_28", "resnet50_1x1_c64to256_56", "mobilenetv2_dw3x3_c144_56",
                "resnext50_3x3g32_c128_56", "t3x3s2_c32to16_128")
PEER_NAMES = tuple(p.name for p in peers.PEERS)
# numbaconv with the weights prepared once (numbaconv.plan_conv2d / plan_conv_transpose2d), as a
# network layer would run
PLAN = "numbaconv plan"
_PAUSE_AFTER_PEER = 0.4   # seconds: lets a peer's spinning thread pool go to sleep
_WARM_SECONDS = 0.03      # untimed calls before each candidate's timed calls


@dataclass
class Result:
    """One candidate on one layer."""

    candidate: str
    status: str = "ok"            # ok, failed check, unsupported, error
    detail: str = ""
    samples: list = field(default_factory=list)
    first_call: float = math.nan  # seconds, compilation included for numbaconv
    extra_bytes: int = -1         # peak memory beyond operands and output (numbaconv only)

    @property
    def median(self):
        return float(np.median(self.samples)) if self.samples else math.nan


def parse_layer(text):
    """A suite layer name, or a problem descriptor such as ``mb1ic64ih56oc64kh3ph1``."""
    try:
        return get(text)
    except KeyError:
        pass
    try:
        problem = ConvProblem.from_descriptor(text)
    except ValueError as err:
        raise ValueError(f"{text!r} is neither a suite layer nor a descriptor: {err}") from None
    if problem.nd != 2:
        raise ValueError(f"bench runs 2-d layers; {text!r} is {problem.nd}-d")
    return Layer(text, problem)


def machine_load():
    """1-minute load average, or None where /proc is missing."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def extra_memory(run, result_bytes):
    """Peak bytes a call allocates beyond its result, as traced by tracemalloc (NumPy and Numba
    allocations both go through Python's allocator hooks; BLAS's private buffers do not)."""
    import tracemalloc

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()
    return max(0, peak - base - result_bytes)


def gemm_peak(threads, size=2048, repeats=5):
    """Measured float32 GEMM speed in GFLOP/s: the fastest call of NumPy, numbaconv's own GEMM
    and (if installed) torch, i.e. what this machine reaches when nothing disturbs it."""
    from .kernels import gemm as own
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    best = 0.0
    with threadpool_limits(threads):
        a @ a
        best = max(best, 2 * size ** 3 / _best_time(lambda: a @ a, repeats) / 1e9)
    c = np.zeros_like(a)
    own.gemm(a, a, c)
    best = max(best, 2 * size ** 3 / _best_time(lambda: own.gemm(a, a, c), repeats) / 1e9)
    try:
        import torch
        torch.set_num_threads(threads)
        t = torch.from_numpy(a)
        torch.mm(t, t)
        best = max(best, 2 * size ** 3 / _best_time(lambda: torch.mm(t, t), repeats) / 1e9)
    except ImportError:
        pass
    return best


def _best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _check(y, expected, bound, batch):
    """None if ``y`` (its first image) is within the error bound of the reference, else why."""
    y = np.asarray(y)
    if y.shape[1:] != expected.shape[1:] or y.shape[0] != batch:
        return f"shape {y.shape}"
    diff = np.abs(y[:1].astype(np.float64) - expected)
    excess = diff - bound
    if not np.all(excess <= 0):  # also catches NaN
        return f"error {np.nanmax(diff):.3g} exceeds the bound"
    return None


def _reference_and_bound(problem, x, w, b):
    """Reference result of the first image and its forward error bound (elementwise):
    ``2 * gamma_k * (|w| * |x| + |b|)``, ``k`` the products per output element."""
    one = replace(problem, batch=1)
    x1 = x[:1]
    run = reference.conv_transpose_nd if problem.transposed else reference.conv_nd
    expected = run(one, x1, w, b, np.empty(one.output_shape, x.dtype)).astype(np.float64)
    magnitude = run(one, np.abs(x1).astype(np.float64), np.abs(w).astype(np.float64),
                    None if b is None else np.abs(b).astype(np.float64),
                    np.empty(one.output_shape, np.float64))
    k = problem.in_channels // problem.groups * math.prod(problem.kernel_size) + 1
    u = np.finfo(x.dtype).eps / 2
    return expected, 2 * k * u / (1 - k * u) * magnitude


def candidates_for(problem, algorithms, peer_names):
    """[(name, kind, object)] for the layer: numbaconv auto, its algorithms, then peers."""
    out = [("numbaconv", "numbaconv", "auto")]
    if problem.nd == 2 and (algorithms is None or "plan" in algorithms):
        out.append((PLAN, "plan", None))
    for name, reason in dispatch.candidates(problem).items():
        if name != "reference" and (algorithms is None or name in algorithms):
            out.append((f"nc:{name}", "numbaconv", name) if reason is None
                       else (f"nc:{name}", "unsupported", reason))
    for peer in peers.PEERS:
        if peer.name in peer_names:
            why = peer.unavailable()
            out.append((peer.name, "peer", peer) if why is None
                       else (peer.name, "unsupported", why))
    return out


def bench_layer(layer, threads, repeats, min_seconds, rounds, algorithms, peer_names, rng,
                progress=None):
    """Check and time every candidate on one layer; returns {candidate: Result}."""
    problem = layer.problem
    x = rng.standard_normal(problem.input_shape, dtype=np.float32)
    w = rng.standard_normal(problem.weight_shape, dtype=np.float32)
    b = rng.standard_normal(problem.out_channels, dtype=np.float32) if problem.bias else None
    expected, bound = _reference_and_bound(problem, x, w, b)
    results, runners = {}, {}
    for name, kind, obj in candidates_for(problem, algorithms, peer_names):
        result = results[name] = Result(name)
        if kind == "unsupported":
            result.status, result.detail = "unsupported", obj
            continue
        if progress:
            progress(f"{layer.name}: {name} (check)")
        try:
            if kind == "numbaconv":
                run = (lambda algorithm=obj: convolve(problem, x, w, b, algorithm=algorithm))
                to_numpy = np.asarray
                exact = dispatch.get(obj, problem).exact   # 'auto' as what it picks
            elif kind == "plan":
                if problem.transposed:
                    conv = plan_conv_transpose2d(w, b, problem.stride, problem.padding,
                                                 problem.output_padding, problem.groups,
                                                 problem.dilation)
                else:
                    conv = plan_conv2d(w, b, problem.stride, problem.padding, problem.dilation,
                                       problem.groups)
                run, to_numpy = (lambda: conv(x)), np.asarray
                result.detail = conv.algorithm_for(x.shape)
                exact = dispatch.get(result.detail, problem).exact
            else:
                run, to_numpy = obj.prepare(problem, x, w, b, threads)
                exact = True
            start = time.perf_counter()
            y = to_numpy(run())
            result.first_call = time.perf_counter() - start
        except NotImplementedError as err:
            result.status, result.detail = "unsupported", str(err)
            continue
        except Exception as err:  # a peer's failure is a result to report, not a crash
            result.status, result.detail = "error", f"{type(err).__name__}: {err}"
            continue
        # inexact algorithms (Winograd, FFT) are held to a bound on gross errors only
        why = _check(y, expected, bound * (1.0 if exact else 1000.0), problem.batch)
        if why:
            result.status, result.detail = "failed check", why
            continue
        if kind in ("numbaconv", "plan"):
            result.extra_bytes = extra_memory(run, y.nbytes)
        runners[name] = run
    per_round = max(1, -(-repeats // rounds))
    previous = None
    for r in range(rounds):
        for name, run in runners.items():
            if progress:
                progress(f"{layer.name}: {name} (round {r + 1}/{rounds})")
            # let the previous candidate's spinning thread pool (OpenMP, ONNX Runtime, OpenBLAS)
            # go idle, so it does not steal cores from this one; then warm the caches. Peers'
            # pools spin for up to a few hundred ms after their last call (the first numbaconv
            # candidate of a round, after ONNX Runtime, measured 20-30% slow with a 50 ms pause).
            time.sleep(_PAUSE_AFTER_PEER if previous in PEER_NAMES else 0.05)
            previous = name
            warm = time.perf_counter()
            run()
            while time.perf_counter() - warm < _WARM_SECONDS:   # clocks ramp up after a pause
                run()
            spent, count = 0.0, 0
            while count < per_round or spent < min_seconds / rounds:
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
                results[name].samples.append(elapsed)
                spent += elapsed
                count += 1
    return results


def best_peer(results):
    """(name, seconds) of the fastest peer that ran on this layer, or (None, nan)."""
    timed = [(r.median, n) for n, r in results.items() if n in PEER_NAMES and r.samples]
    real = [t for t in timed if t[1] != "numpy-im2col"] or timed
    if not real:
        return None, math.nan
    seconds, name = min(real)
    return name, seconds


def summarize(report):
    """Geometric means and worst cases of numbaconv (auto) against torch, the best peer, NumPy,
    and (key ``'plan'``) of numbaconv's plans against the best peer on the layers they run."""
    def ratios(peer, ours_name="numbaconv"):
        values = {}
        for layer in report["layers"]:
            res = layer["results"]
            ours = res.get(ours_name, {}).get("median")
            theirs = (res.get(peer, {}).get("median") if peer != "best"
                      else layer.get("best_peer_seconds"))
            if ours and theirs and not math.isnan(ours) and not math.isnan(theirs):
                values[layer["name"]] = theirs / ours
        return values

    summary = {}
    for key, values in [(peer, ratios(peer)) for peer in ("torch", "best", "numpy-im2col")] + [
            ("plan", ratios("best", PLAN))]:
        if values:
            worst = min(values, key=values.get)
            summary[key] = dict(geomean=float(np.exp(np.mean(np.log(list(values.values()))))),
                                worst=values[worst], worst_layer=worst, layers=len(values))
    return summary


def _format_table(report, peak):
    lines = []
    head = (f"{'layer / candidate':<36} {'ms':>9} {'GFLOP/s':>8} {'%peak':>6} "
            f"{'vs best peer':>12} {'first ms':>9} {'extra MiB':>9}  note")
    lines += [head, "-" * len(head)]
    for layer in report["layers"]:
        shape = "x".join(map(str, layer["output_shape"]))
        lines.append(f"{layer['name']}  [{layer['descriptor']}: output {shape}, "
                     f"{layer['params']} params, {layer['gflop']:.3f} GFLOP]")
        best = layer.get("best_peer_seconds")
        for name, r in layer["results"].items():
            med = r["median"]
            if r["status"] != "ok":
                lines.append(f"  {name:<34} {'-':>9} {'-':>8} {'-':>6} {'-':>12} {'-':>9} "
                             f"{'-':>9}  {r['status']}: {r['detail'][:70]}")
                continue
            gflops = layer["gflop"] / med
            ratio = f"{best / med:.2f}x" if best and not math.isnan(best) else "-"
            extra = f"{r['extra_bytes'] / 2**20:.1f}" if r["extra_bytes"] >= 0 else "-"
            first = f"{r['first_call'] * 1e3:.1f}" if name.startswith(("numbaconv", "nc:")) \
                else "-"
            lines.append(f"  {name:<34} {med * 1e3:>9.3f} {gflops:>8.1f} "
                         f"{100 * gflops / peak if peak else 0:>6.1f} {ratio:>12} {first:>9} "
                         f"{extra:>9}  {r['detail']}".rstrip())
    return "\n".join(lines)


def _environment(threads):
    import numba

    env = dict(python=platform.python_version(), machine=platform.machine(),
               processor=platform.processor(), cpus=os.cpu_count(), threads=threads,
               numpy=np.__version__, numba=numba.__version__)
    try:
        import llvmlite.binding as ll
        env["llvm_cpu"] = ll.get_host_cpu_name()
    except Exception:  # informational only
        pass
    for module in ("torch", "onnxruntime"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:
            pass
    return env


def run(layers, threads=2, repeats=15, min_seconds=0.3, rounds=3, algorithms=None,
        peer_names=PEER_NAMES, json_path=None, plot_path=None, out=None, progress=True):
    """Benchmark ``layers``; print the table and summary, write JSON/plot if asked."""
    out = out or sys.stdout
    set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    load = machine_load()
    if load is not None and load > 0.5:
        print(f"warning: the machine is busy (load average {load:.2f}); timings will be noisy "
              f"and thread-pool peers suffer most", file=out)
    status = _Progress(len(layers)) if progress else None
    rng = np.random.default_rng(0)
    with threadpool_limits(threads):  # NumPy's BLAS runs the numpy-im2col peer
        peak = gemm_peak(threads)
        print(f"float32 GEMM peak measured: {peak:.0f} GFLOP/s ({threads} threads)", file=out)
        report = dict(environment=_environment(threads), gemm_peak_gflops=peak, layers=[])
        for i, layer in enumerate(layers):
            if status:
                status.layer(i)
            results = bench_layer(layer, threads, repeats, min_seconds, rounds, algorithms,
                                  peer_names, rng, status.show if status else None)
            best_name, best_seconds = best_peer(results)
            report["layers"].append(dict(
                name=layer.name, descriptor=str(layer.problem),
                output_shape=layer.problem.output_shape, params=layer.problem.params,
                gflop=layer.problem.flops / 1e9, best_peer=best_name,
                best_peer_seconds=best_seconds,
                results={n: dict(status=r.status, detail=r.detail, median=r.median,
                                 samples=r.samples, first_call=r.first_call,
                                 extra_bytes=r.extra_bytes) for n, r in results.items()}))
    if status:
        status.done()
    report["summary"] = summarize(report)
    print(_format_table(report, peak), file=out)
    print(_format_summary(report["summary"]), file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1, default=float)
        print(f"wrote {json_path}", file=out)
    if plot_path:
        plot(report, plot_path)
        print(f"wrote {plot_path}", file=out)
    return report


def _format_summary(summary):
    names = {"torch": "PyTorch NCHW", "best": "the best peer", "numpy-im2col": "NumPy im2col"}
    lines = ["", "numbaconv (auto) speed-up, time(peer) / time(numbaconv), over the layers:"]
    for key, s in summary.items():
        if key == "plan":
            lines.append(f"numbaconv plans (weights prepared once):\n"
                         f"  vs {names['best']:<14} geometric mean {s['geomean']:.2f}x, worst "
                         f"{s['worst']:.2f}x ({s['worst_layer']}), {s['layers']} layers")
            continue
        lines.append(f"  vs {names[key]:<14} geometric mean {s['geomean']:.2f}x, worst "
                     f"{s['worst']:.2f}x ({s['worst_layer']}), {s['layers']} layers")
    return "\n".join(lines)


def plot(report, path):
    """Horizontal bars: GFLOP/s of numbaconv (auto), its plans and each peer, per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["numbaconv", PLAN] + list(PEER_NAMES)
    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(layers) * 1.2))
    height = 0.8 / len(names)
    for j, name in enumerate(names):
        values = []
        for layer in layers:
            r = layer["results"].get(name)
            ok = r and r["status"] == "ok"
            values.append(layer["gflop"] / r["median"] if ok else 0.0)
        ys = [i + j * height for i in range(len(layers))]
        ax.barh(ys, values, height=height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(layers))])
    ax.set_yticklabels([layer["name"] for layer in layers], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"GFLOP/s (float32, {report['environment']['threads']} threads; "
                  f"GEMM peak {report['gemm_peak_gflops']:.0f})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total):
        self.total, self.index = total, 0
        self.tty = sys.stderr.isatty()

    def layer(self, index):
        self.index = index

    def show(self, text):
        done = int(30 * self.index / max(1, self.total))
        line = f"[{'#' * done}{'.' * (30 - done)}] {self.index + 1}/{self.total} {text}"
        if self.tty:
            sys.stderr.write("\r" + line[:110].ljust(110))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self):
        if self.tty:
            sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()


def default_layers(quick=False, batches=(1,)):
    base = [get(n) for n in QUICK_LAYERS] if quick else list(LAYERS)
    return [layer if n == 1 else layer.with_batch(n) for n in batches for layer in base]
