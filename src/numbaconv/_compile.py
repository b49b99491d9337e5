"""Ahead-of-time compilation: run every kernel once on small problems that reach all its paths."""

import time

import numpy as np

from . import dispatch
from .problem import ConvProblem

# Small problems that between them reach every code path of every kernel: dense, 1x1, strided
# and dilated, few and many channels, depthwise with multiplier 1 and 2, grouped, transposed.
_WARMUP = (
    ("conv", (1, 16, 9, 9), (32, 16, 3, 3), dict(padding=1)),
    ("conv", (4, 16, 36, 9), (32, 16, 3, 3), dict(padding=1)),   # Winograd's pipelines
    ("conv", (1, 16, 9, 9), (32, 16, 1, 1), {}),
    ("conv", (1, 16, 12, 12), (16, 16, 3, 3), dict(padding=2, dilation=2)),   # Winograd phases
    ("conv", (1, 3, 17, 17), (8, 3, 5, 5), dict(stride=2, dilation=2, padding=2)),
    ("conv", (1, 1, 20, 20), (1, 1, 7, 7), dict(padding=3)),
    ("conv", (1, 1, 20, 20), (16, 1, 5, 5), dict(padding=2)),
    ("conv", (1, 8, 12, 12), (8, 1, 3, 3), dict(padding=1, groups=8)),
    ("conv", (1, 8, 12, 12), (16, 1, 3, 3), dict(padding=1, groups=8, stride=2)),
    ("conv", (1, 8, 6, 40), (8, 1, 3, 3), dict(padding=2, groups=8, dilation=2)),
    ("conv", (1, 8, 12, 12), (8, 1, 3, 3), dict(stride=3, groups=8)),   # im2col weight gradient
    ("conv", (1, 16, 12, 12), (16, 4, 3, 3), dict(padding=1, groups=4)),
    ("conv", (1, 64, 8, 8), (64, 8, 3, 3), dict(padding=1, groups=8)),
    ("tconv", (1, 8, 6, 6), (8, 8, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("tconv", (1, 16, 4, 4), (16, 16, 4, 4), dict(stride=2, padding=1)),
    ("tconv", (1, 8, 6, 6), (8, 8, 1, 1), {}),
    ("tconv", (1, 8, 6, 6), (8, 1, 3, 3), dict(stride=2, groups=8)),    # row cycles
    ("tconv", (1, 8, 6, 6), (8, 1, 2, 2), dict(stride=2, groups=8)),    # rows by tap tables
)


def warmup_problems(dtype):
    for kind, x_shape, w_shape, kwargs in _WARMUP:
        make = ConvProblem.for_conv_transpose if kind == "tconv" else ConvProblem.for_conv
        yield make(x_shape, w_shape, bias=True, dtype=dtype, **kwargs)


def precompile(dtypes=("float32", "float64")):
    """Compile every kernel for ``dtypes`` now, instead of on first use.

    With Numba's on-disk cache this is paid once per installation; later processes load the
    machine code from the cache. Returns ``{algorithm: seconds}``, transposed algorithms named
    ``'<name> (transposed)'``.

    >>> import numbaconv
    >>> sorted(numbaconv.precompile(dtypes=("float32",)))
    ['depthwise', 'depthwise (transposed)', 'direct', 'direct (transposed)', 'dot', 'gemm', 'gemm (NHWC)', 'gemm (transposed)', 'grouped (NHWC)', 'im2col', 'weight gradient', 'winograd']
    """
    from .kernels import (conv_nhwc, direct, grouped_nhwc, small_maps, transpose, weight_grad,
                          weight_grad_rows)

    spent = {}
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for problem in warmup_problems(dtype):
            x = rng.standard_normal(problem.input_shape).astype(dtype)
            w = rng.standard_normal(problem.weight_shape).astype(dtype)
            b = rng.standard_normal(problem.out_channels).astype(dtype)
            for algorithm in dispatch.ALGORITHMS:
                if algorithm.name == "reference" or algorithm.why_not(problem):
                    continue
                start = time.perf_counter()
                algorithm.run(problem, x, w, b, np.empty(problem.output_shape, dtype))
                key = algorithm.name + (" (transposed)" if algorithm.transposed else "")
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - start
            if not problem.transposed:
                (pt, _), (pl, _) = problem.padding
                start = time.perf_counter()
                weight_grad.conv2d_weight_grad(
                    x, rng.standard_normal(problem.output_shape).astype(dtype),
                    problem.weight_shape, *problem.stride, pt, pl, *problem.dilation,
                    problem.groups)
                spent["weight gradient"] = spent.get("weight gradient", 0.0) + \
                    time.perf_counter() - start
        # the direct kernel with blocked weights (plans)
        start = time.perf_counter()
        direct.conv2d_direct_packed(np.ones((1, 4, 6, 6), dtype),
                                    direct.pack_weights_direct(np.ones((8, 4, 3, 3), dtype), 1),
                                    np.ones(8, dtype), np.empty((1, 8, 6, 6), dtype), 1, 1, 1, 1,
                                    1, 1)
        spent["direct"] += time.perf_counter() - start
        # the GEMM of small-map plans (channels in the lanes)
        start = time.perf_counter()
        small_maps.conv2d_small_maps(np.ones((1, 4, 7, 7), dtype),
                                     small_maps.pack_weights(np.ones((8, 4, 3, 3), dtype)),
                                     np.ones(8, dtype), np.empty((1, 8, 5, 5), dtype), 3, 3, 1,
                                     0, 0, 1, 1)
        spent["gemm"] += time.perf_counter() - start
        # the stride-1 weight gradient that reads its input in place (the warm-up shapes are
        # too small for its rule)
        start = time.perf_counter()
        weight_grad_rows.conv2d_weight_grad_rows(np.ones((1, 32, 4, 4), dtype),
                                                 np.ones((1, 32, 4, 4), dtype), (32, 32, 3, 3),
                                                 1, 1, 1, 1, 1)
        spent["weight gradient"] += time.perf_counter() - start
        start = time.perf_counter()
        conv_nhwc.conv2d_nhwc(np.ones((1, 5, 5, 3), dtype), np.ones((3, 3, 3, 4), dtype),
                              np.ones(4, dtype), np.empty((1, 5, 5, 4), dtype), (1, 1),
                              ((1, 1), (1, 1)), (1, 1), 1)
        transpose.swap_last_two(np.ones((1, 3, 4), dtype))
        spent["gemm (NHWC)"] = spent.get("gemm (NHWC)", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        grouped_nhwc.conv2d_grouped_nhwc(np.ones((1, 5, 5, 4), dtype), np.ones((3, 3, 2, 4), dtype),
                                         np.ones(4, dtype), np.empty((1, 5, 5, 4), dtype), 1, 1,
                                         1, 1, 1, 1)
        spent["grouped (NHWC)"] = spent.get("grouped (NHWC)", 0.0) + time.perf_counter() - start
    return spent
