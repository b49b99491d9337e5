"""Hostile inputs, concurrency, process pools, a shared compile cache and memory limits."""

import concurrent.futures
import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numbaconv
from numbaconv import reference
from numbaconv.bench import extra_memory
from numbaconv.kernels import im2col

from threads import run_in_threads


def _usable(x, w, **kw):
    """The exact algorithms that can compute the problem (these tests demand the reference's
    bits)."""
    return [n for n, why in numbaconv.explain(x, w, exact=True, **kw).reasons.items()
            if why is None]


def test_subnormal_values_are_not_flushed_to_zero():
    tiny = np.float32(2.0 ** -140)  # subnormal in float32
    x = np.full((1, 2, 6, 6), tiny, np.float32)
    w = np.full((3, 2, 3, 3), 0.5, np.float32)
    expected = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    for name in _usable(x, w, padding=1):
        y = numbaconv.conv2d(x, w, padding=1, algorithm=name)
        assert np.all(y > 0), f"{name} flushed subnormals to zero"
        # each product is exact; only the final rounding to float32 subnormals differs
        assert np.allclose(y, expected, rtol=0, atol=2.0 ** -149 * 20), name


def test_huge_strides_and_single_output_pixel():
    x = np.arange(2 * 3 * 10 * 10, dtype=np.float64).reshape(2, 3, 10, 10)
    w = np.ones((4, 3, 3, 3))
    for stride in [(1000, 1000), (7, 1000), (1000, 1)]:
        for name in _usable(x, w, stride=stride):
            assert np.array_equal(numbaconv.conv2d(x, w, stride=stride, algorithm=name),
                                  reference.conv2d(x, w, stride=stride)), (stride, name)


def test_wrong_dimensionality_raises():
    for bad in (np.float32(1.0), np.ones(3), np.ones((1, 1, 2, 3, 3))):
        with pytest.raises(ValueError, match="input must have shape"):
            numbaconv.conv2d(bad, np.ones((1, 1, 1, 1)))


def test_input_and_weight_overlapping_views_of_one_buffer():
    buffer = np.random.default_rng(0).integers(-4, 5, 4000).astype(np.float32)
    x = buffer[:2 * 4 * 10 * 10].reshape(2, 4, 10, 10)
    w = buffer[100:100 + 6 * 4 * 3 * 3].reshape(6, 4, 3, 3)   # overlaps x
    before = buffer.copy()
    expected = reference.conv2d(x.copy(), w.copy(), padding=1)
    for name in _usable(x, w, padding=1):
        assert np.array_equal(numbaconv.conv2d(x, w, padding=1, algorithm=name), expected)
    assert np.array_equal(buffer, before)


def test_eight_python_threads_on_every_algorithm_at_once():
    rng = np.random.default_rng(1)
    jobs = []
    for x_shape, w_shape, kw, transposed in [
            ((2, 16, 20, 20), (32, 16, 3, 3), dict(padding=1), False),
            ((1, 16, 20, 20), (16, 1, 3, 3), dict(padding=1, groups=16), False),
            ((1, 16, 9, 9), (16, 8, 4, 4), dict(stride=2, padding=1), True)]:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        fn = numbaconv.conv_transpose2d if transposed else numbaconv.conv2d
        for name in _usable(x, w, transposed=transposed, **kw):
            if name != "reference":
                jobs.append((fn, x, w, kw, name, fn(x, w, **kw, algorithm=name)))
    failures = []

    def worker(offset):
        for i in range(len(jobs)):
            fn, x, w, kw, name, expected = jobs[(i + offset) % len(jobs)]
            if not np.array_equal(fn(x, w, **kw, algorithm=name), expected):
                failures.append(name)

    errors = run_in_threads(worker, 8)
    assert len(jobs) >= 6 and not failures and not errors, errors


def _pool_job(seed):
    import numbaconv as nc
    from numbaconv import reference as ref
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (1, 8, 12, 12)).astype(np.float32)
    w = rng.integers(-4, 5, (8, 8, 3, 3)).astype(np.float32)
    return bool(np.array_equal(nc.conv2d(x, w, padding=1), ref.conv2d(x, w, padding=1)))


def test_process_pool():
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        assert all(pool.map(_pool_job, range(6)))


def test_processes_sharing_one_empty_cache(tmp_path):
    """Three processes compile into the same empty Numba cache at once; a fourth loads from it.
    All must compute correct results (no corrupted cache entries)."""
    script = textwrap.dedent("""
        import numpy as np, numbaconv, sys
        from numbaconv import reference
        rng = np.random.default_rng(int(sys.argv[1]))
        x = rng.integers(-4, 5, (1, 16, 10, 10)).astype(np.float32)
        w = rng.integers(-4, 5, (32, 16, 1, 1)).astype(np.float32)
        y = numbaconv.conv2d(x, w, algorithm="gemm")
        print(int(np.array_equal(y, reference.conv2d(x, w))))
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert outputs == ["1", "1", "1"]
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path) for f in files)
    again = subprocess.run([sys.executable, "-c", script, "9"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.stdout.strip() == "1"


def test_im2col_workspace_respects_the_cap():
    """A layer whose whole im2col matrix would take 1.1 GiB runs within the 64 MiB cap."""
    problem = numbaconv.ConvProblem.for_conv((1, 512, 256, 256), (64, 512, 3, 3), padding=1)
    k = 512 * 9
    whole = k * 256 * 256 * 4
    assert whole > 2**30
    assert im2col.workspace_bytes(problem) <= im2col.get_workspace_limit()
    x = np.ones(problem.input_shape, np.float32)
    w = np.ones(problem.weight_shape, np.float32)
    out = np.empty(problem.output_shape, np.float32)
    peak = extra_memory(lambda: numbaconv.conv2d(x, w, padding=1, algorithm="im2col", out=out), 0)
    assert peak <= im2col.get_workspace_limit() + (1 << 20), peak
    assert out[0, 0, 100, 100] == k  # interior: every tap meets a one


def test_every_algorithm_keeps_extra_memory_small_on_a_large_layer():
    x = np.ones((1, 64, 112, 112), np.float32)
    w = np.ones((64, 64, 3, 3), np.float32)
    for name in _usable(x, w, padding=1):
        if name == "reference":
            continue
        extra = extra_memory(lambda: numbaconv.conv2d(x, w, padding=1, algorithm=name),
                             x.nbytes)       # the result has the input's shape
        assert extra < 64 * 2**20, (name, extra)


@pytest.mark.parametrize("cap", [4096, 64 << 10])
def test_im2col_under_a_small_workspace_cap_is_exact_and_within_it(cap):
    rng = np.random.default_rng(3)
    x = rng.integers(-4, 5, (2, 24, 13, 11)).astype(np.float32)
    w = rng.integers(-4, 5, (16, 12, 3, 5)).astype(np.float32)
    b = rng.integers(-4, 5, 16).astype(np.float32)
    kw = dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1), groups=2)
    problem = numbaconv.ConvProblem.for_conv(x.shape, w.shape, **kw)
    old = im2col.get_workspace_limit()
    im2col.set_workspace_limit(cap)
    try:
        assert im2col.workspace_bytes(problem) <= cap
        y = numbaconv.conv2d(x, w, b, algorithm="im2col", **kw)
    finally:
        im2col.set_workspace_limit(old)
    assert np.array_equal(y, reference.conv2d(x, w, b, **kw))
