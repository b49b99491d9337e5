"""Speed and memory of every algorithm on the real layers of numbaconv.suite (asv)."""

import os
import subprocess
import sys
import tempfile

import numpy as np

from numbaconv import dispatch, layout_bench, suite
from numbaconv.functional import convolve
from numbaconv.plan import plan_conv2d
from numbaconv.plan_transposed import plan_conv_transpose2d

_LAYERS = [layer.name for layer in suite.LAYERS]
_ALGORITHMS = ["auto"] + [name for name in dispatch.names() if name != "reference"]


class Layers:
    params = (_LAYERS, _ALGORITHMS)
    param_names = ["layer", "algorithm"]
    timeout = 120

    def setup(self, layer, algorithm):
        problem = suite.get(layer).problem
        if algorithm != "auto":
            try:
                dispatch.get(algorithm, problem)
            except ValueError as err:  # not this algorithm's kind of problem
                raise NotImplementedError(str(err)) from err
        rng = np.random.default_rng(0)
        self.problem = problem
        self.x = rng.standard_normal(problem.input_shape, dtype=np.float32)
        self.w = rng.standard_normal(problem.weight_shape, dtype=np.float32)
        self.b = rng.standard_normal(problem.out_channels, dtype=np.float32)
        convolve(problem, self.x, self.w, self.b, algorithm=algorithm)  # compile and touch memory

    def time_conv(self, layer, algorithm):
        convolve(self.problem, self.x, self.w, self.b, algorithm=algorithm)

    def peakmem_conv(self, layer, algorithm):
        convolve(self.problem, self.x, self.w, self.b, algorithm=algorithm)

    def track_gflops(self, layer, algorithm):
        import time
        times = []
        for _ in range(5):
            start = time.perf_counter()
            convolve(self.problem, self.x, self.w, self.b, algorithm=algorithm)
            times.append(time.perf_counter() - start)
        return self.problem.flops / float(np.median(times)) / 1e9

    track_gflops.unit = "GFLOP/s"


class Plans:
    """2-D suite layers through a plan (weights prepared once), auto's choice for plans."""

    params = ([layer.name for layer in suite.LAYERS if layer.problem.nd == 2],)
    param_names = ["layer"]
    timeout = 120

    def setup(self, layer):
        p = suite.get(layer).problem
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal(p.input_shape, dtype=np.float32)
        w = rng.standard_normal(p.weight_shape, dtype=np.float32)
        b = rng.standard_normal(p.out_channels, dtype=np.float32)
        b = b if p.bias else None
        if p.transposed:
            self.conv = plan_conv_transpose2d(w, b, p.stride, p.padding, p.output_padding,
                                              p.groups, p.dilation)
        else:
            self.conv = plan_conv2d(w, b, p.stride, p.padding, p.dilation, p.groups)
        self.flops = p.flops
        self.conv(self.x)  # compile, prepare the weights, touch memory

    def time_plan(self, layer):
        self.conv(self.x)

    def track_gflops(self, layer):
        import time
        times = []
        for _ in range(5):
            start = time.perf_counter()
            self.conv(self.x)
            times.append(time.perf_counter() - start)
        return self.flops / float(np.median(times)) / 1e9

    track_gflops.unit = "GFLOP/s"


_FIRST_CALL = """
import time, numpy as np
start = time.perf_counter()
x = np.ones((1, 64, 56, 56), np.float32); w = np.ones((64, 64, 3, 3), np.float32)
numbaconv.conv2d(x, w, padding=1)
print(time.perf_counter() - start)
"""


class FirstCall:
    """Import plus first conv2d of a ResNet layer in a fresh process: cold (empty Numba cache)
    and warm (cache filled by a previous process)."""

    timeout = 300
    number = 1
    repeat = 3

    def setup(self):
        self.cache = tempfile.mkdtemp(prefix="numbaconv-cache-")

    def _run(self, cache_dir):
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                             capture_output=True, text=True)
        return float(out.stdout.strip().splitlines()[-1])

    def track_cold_seconds(self):
        return self._run(tempfile.mkdtemp(prefix="numbaconv-cold-"))

    def track_warm_seconds(self):
        self._run(self.cache)
        return self._run(self.cache)

    track_cold_seconds.unit = "s"
    track_warm_seconds.unit = "s"


class Layouts:
    """The layers of ``numbaconv bench-layouts`` (the suite and 3x3x3 video layers) in both
    layouts: channels-first with torch's weights, channels-last with TensorFlow's."""

    params = ([name for name, _ in layout_bench.problems()], ["channels_first", "channels_last"])
    param_names = ["layer", "layout"]
    timeout = 120

    def setup(self, layer, layout):
        (problem,) = [p for name, p in layout_bench.problems([layer])]
        first, last = layout_bench.calls(problem, np.random.default_rng(0))[1:]
        self.call = first if layout == "channels_first" else last
        self.flops = problem.flops
        self.call()  # compile and touch memory

    def time_conv(self, layer, layout):
        self.call()

    def track_gflops(self, layer, layout):
        import time
        times = []
        for _ in range(5):
            start = time.perf_counter()
            self.call()
            times.append(time.perf_counter() - start)
        return self.flops / float(np.median(times)) / 1e9

    track_gflops.unit = "GFLOP/s"
