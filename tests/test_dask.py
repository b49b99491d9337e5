"""numbaconv.dask: blocks with exact halos give the in-memory result bit for bit.

Exact tier: integer-valued data, every algorithm, many chunkings (every partial sum is exact, so
any summation order gives the same bits). Real-data tier: the reference algorithm, whose summation
order per output element does not depend on the image size, so halo blocks must reproduce it
exactly. One real LocalCluster (2 worker processes) checks the same on dask.distributed and that
workers load the kernels from Numba's disk cache instead of compiling them per task.
"""

import pickle

import numpy as np
import pytest

import numbaconv

da = pytest.importorskip("dask.array")
ndask = pytest.importorskip("numbaconv.dask")


# (x shape, w shape, keyword arguments, transposed): the geometry each case stresses is in its id
CASES = {
    "3x3p1": ((2, 3, 23, 19), (4, 3, 3, 3), dict(padding=1), False),
    "5x5s2p2": ((1, 2, 31, 26), (3, 2, 5, 5), dict(stride=2, padding=2), False),
    "3x3s3d2-asym": ((1, 2, 29, 27), (2, 2, 3, 3),
                     dict(stride=3, dilation=2, padding=((3, 0), (1, 4))), False),
    "4x2d2-same": ((1, 2, 17, 21), (3, 2, 4, 2), dict(dilation=2, padding="same"), False),
    "1x1s2": ((2, 4, 15, 16), (5, 4, 1, 1), dict(stride=2), False),
    "11x11s4p2": ((1, 3, 47, 45), (4, 3, 11, 11), dict(stride=4, padding=2), False),
    "7x7-wide-halo": ((1, 1, 20, 22), (2, 1, 7, 7), dict(padding=3), False),
    "depthwise-s2": ((1, 6, 18, 17), (12, 1, 3, 3), dict(stride=2, padding=1, groups=6), False),
    "groups2": ((2, 4, 13, 14), (6, 2, 3, 3), dict(padding=(1, 2), groups=2), False),
    "pad-beyond-kernel": ((1, 2, 6, 7), (3, 2, 2, 2), dict(padding=5, stride=2), False),
    "t3x3s2p1op1": ((1, 4, 11, 13), (4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1),
                    True),
    "t4x4s2p1": ((2, 3, 9, 8), (3, 2, 4, 4), dict(stride=2, padding=1), True),
    "t2x2s2": ((1, 2, 10, 9), (2, 3, 2, 2), dict(stride=2), True),
    "t3x3s3d2-asym": ((1, 2, 8, 9), (2, 2, 3, 3),
                      dict(stride=3, dilation=2, padding=((0, 4), (2, 1)),
                           output_padding=(2, 1)), True),
    "t1x1s3op2-gaps": ((1, 3, 5, 4), (3, 2, 1, 1), dict(stride=3, output_padding=2), True),
    "t-groups3": ((1, 6, 7, 8), (6, 1, 3, 3), dict(stride=2, padding=1, groups=3), True),
}

# (input chunks, output spatial chunks): default output chunks from uneven input chunks, output
# chunks of 1 (every border case of the halo arithmetic, blocks no image row reaches included),
# and odd output chunks across single-chunk input
CHUNKINGS = {
    "uneven-in": (lambda shape: (1, -1, (5, 1, shape[2] - 6), 7), None),
    "out-1": (lambda shape: (shape[0], -1, 4, 6), 1),
    "out-odd": (lambda shape: (1, -1, -1, -1), (3, 5)),
}


def _arrays(rng, x_shape, w_shape, kwargs, transposed, kind, dtype=np.float32):
    def draw(shape):
        if kind == "int":
            return rng.integers(-4, 5, size=shape).astype(dtype)
        return rng.standard_normal(shape).astype(dtype)

    groups = kwargs.get("groups", 1)
    c_out = w_shape[1] * groups if transposed else w_shape[0]
    return draw(x_shape), draw(w_shape), draw((c_out,))


def _both(x, w, b, kwargs, transposed, chunks, out_chunks, algorithm, exact=True):
    """(lazy dask result, it computed synchronously, in-memory result)."""
    in_memory = numbaconv.conv_transpose2d if transposed else numbaconv.conv2d
    on_dask = ndask.conv_transpose2d if transposed else ndask.conv2d
    y = on_dask(da.from_array(x, chunks=chunks), w, b, algorithm=algorithm, chunks=out_chunks,
                exact=exact, **kwargs)
    return y, y.compute(scheduler="synchronous"), in_memory(x, w, b, algorithm=algorithm,
                                                            exact=exact, **kwargs)


def _algorithms(x, w, kwargs, transposed):
    """The exact algorithms that can compute the problem."""
    reasons = numbaconv.explain(x, w, True, transposed=transposed, exact=True, **kwargs).reasons
    return [name for name, reason in reasons.items() if reason is None]


@pytest.mark.parametrize("chunking", CHUNKINGS)
@pytest.mark.parametrize("case", CASES)
def test_exact_tier_every_algorithm(rng, case, chunking):
    x_shape, w_shape, kwargs, transposed = CASES[case]
    x, w, b = _arrays(rng, x_shape, w_shape, kwargs, transposed, "int")
    in_chunks, out_chunks = CHUNKINGS[chunking]
    for algorithm in _algorithms(x, w, kwargs, transposed) + ["auto"]:
        lazy, got, want = _both(x, w, b, kwargs, transposed, in_chunks(x_shape), out_chunks,
                                algorithm)
        assert got.shape == want.shape == lazy.shape and got.dtype == want.dtype == lazy.dtype
        assert np.array_equal(got, want), f"{case} {chunking} {algorithm}: chunks {lazy.chunks}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_real_data_reference_is_bit_identical(rng, case, dtype):
    x_shape, w_shape, kwargs, transposed = CASES[case]
    x, w, b = _arrays(rng, x_shape, w_shape, kwargs, transposed, "real", dtype)
    for in_chunks, out_chunks in CHUNKINGS.values():
        lazy, got, want = _both(x, w, b, kwargs, transposed, in_chunks(x_shape), out_chunks,
                                "reference")
        assert np.array_equal(got, want), f"{case}: chunks {lazy.chunks}"


def test_default_output_chunks_follow_input_chunks_through_the_stride():
    x = da.zeros((1, 1, 40, 30), dtype=np.float32, chunks=(1, 1, (10, 10, 20), 30))
    y = ndask.conv2d(x, np.ones((1, 1, 3, 3), np.float32), stride=2, padding=1)
    # input boundary B starts output row ceil((B + 1) / 2): 10 -> 6, 20 -> 11
    assert y.chunks == ((1,), (1,), (6, 5, 9), (15,))
    t = ndask.conv_transpose2d(x, np.ones((1, 1, 4, 4), np.float32), stride=2, padding=1)
    # input boundary B starts output row 2 * B - 1: 10 -> 19, 20 -> 39 (of 80)
    assert t.chunks == ((1,), (1,), (19, 20, 41), (60,))


def test_unbatched_input_and_numpy_input(rng):
    x, w, b = _arrays(rng, (3, 21, 18), (4, 3, 3, 3), {}, False, "int")
    y = ndask.conv2d(da.from_array(x, chunks=(3, 8, 7)), w, b, padding=1)
    assert y.shape == (4, 21, 18)
    assert np.array_equal(y.compute(scheduler="synchronous"),
                          numbaconv.conv2d(x, w, b, padding=1))
    t = ndask.conv_transpose2d(x, np.ones((3, 2, 2, 2), np.float32), stride=2, chunks=9)
    assert np.array_equal(t.compute(scheduler="synchronous"),
                          numbaconv.conv_transpose2d(x, np.ones((3, 2, 2, 2), np.float32),
                                                     stride=2))


def test_dtype_follows_the_in_memory_promotion(rng):
    x = rng.integers(0, 3, (1, 2, 9, 9)).astype(np.uint8)
    w = np.ones((2, 2, 3, 3), np.float32)
    y = ndask.conv2d(da.from_array(x, chunks=4), w)
    assert y.dtype == np.float64
    assert np.array_equal(y.compute(scheduler="synchronous"), numbaconv.conv2d(x, w))


def test_channel_chunks_of_whole_groups_map_to_output_channel_chunks(rng):
    x, w, b = _arrays(rng, (1, 8, 12, 12), (8, 2, 3, 3), dict(groups=4), False, "int")
    y = ndask.conv2d(da.from_array(x, chunks=(1, (2, 6), 5, 12)), w, b, padding=1, groups=4)
    assert y.chunks[1] == (2, 6)
    assert np.array_equal(y.compute(scheduler="synchronous"),
                          numbaconv.conv2d(x, w, b, padding=1, groups=4))


@pytest.mark.parametrize("groups,channel_chunks", [(1, (4, 4)), (4, (3, 5))])
def test_channel_chunks_that_split_a_group_are_refused(groups, channel_chunks):
    x = da.zeros((1, 8, 10, 10), dtype=np.float32, chunks=(1, channel_chunks, 10, 10))
    with pytest.raises(ValueError, match=r"whole groups.*rechunk"):
        ndask.conv2d(x, np.ones((8, 8 // groups, 3, 3), np.float32), groups=groups)


def test_invalid_arguments_raise_the_in_memory_errors_before_computing():
    x = da.zeros((1, 3, 10, 10), dtype=np.float32, chunks=5)
    with pytest.raises(ValueError, match="divisible by groups"):
        ndask.conv2d(x, np.ones((4, 3, 3, 3), np.float32), groups=2)
    with pytest.raises(ValueError, match="same"):
        ndask.conv2d(x, np.ones((4, 3, 3, 3), np.float32), stride=2, padding="same")
    with pytest.raises(numbaconv.UnsupportedAlgorithm):
        ndask.conv_transpose2d(x, np.ones((3, 4, 3, 3), np.float32), algorithm="im2col")
    with pytest.raises(ValueError, match="num_threads"):
        ndask.conv2d(x, np.ones((4, 3, 3, 3), np.float32), num_threads=0)


def test_weight_and_bias_enter_the_graph_once():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    x = da.zeros((2, 64, 64, 64), dtype=np.float32, chunks=(1, 64, 16, 16))
    y = ndask.conv2d(x, w, b, padding=1)
    layer = dict(y.dask.layers[y.name])
    assert y.npartitions == 32
    held = [v for v in layer.values() if isinstance(v, np.ndarray)]
    assert [v.shape for v in held] == [w.shape, b.shape]
    # every block task refers to them by key: the pickled layer holds the weights' bytes once
    # (32 copies would be 4.7 MB)
    assert len(pickle.dumps(layer)) < 2 * w.nbytes


# ----------------------------------------------------------------------- dask.distributed


# (data kind, chunking) of the graphs the cluster test computes
_CLUSTER_RUNS = (("int", "uneven-in"), ("real", "out-odd"))


def _cluster_graph(rng, name, kind, chunking):
    """(lazy result, function computing it in memory) of case ``name`` on new data."""
    x_shape, w_shape, kwargs, transposed = CASES[name]
    x, w, b = _arrays(rng, x_shape, w_shape, kwargs, transposed, kind)
    algorithm = "auto" if kind == "int" else "reference"
    in_chunks, out_chunks = CHUNKINGS[chunking]
    on_dask = ndask.conv_transpose2d if transposed else ndask.conv2d
    in_memory = numbaconv.conv_transpose2d if transposed else numbaconv.conv2d
    y = on_dask(da.from_array(x, chunks=in_chunks(x_shape)), w, b, chunks=out_chunks,
                algorithm=algorithm, num_threads=1, **kwargs)
    return y, lambda: in_memory(x, w, b, algorithm=algorithm, **kwargs)


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # the workers must find every kernel signature in Numba's disk cache: compile them here first,
    # writeable and read-only arrays (data received from another worker is read-only)
    rng = np.random.default_rng(0)
    for x_shape, w_shape, kwargs, transposed in CASES.values():
        for dtype in (np.float32, np.float64):
            x, w, b = _arrays(rng, x_shape, w_shape, kwargs, transposed, "int", dtype)
            for array in (x, w, b):
                array.setflags(write=False)
            for a in (x, w, b):
                f = numbaconv.conv_transpose2d if transposed else numbaconv.conv2d
                f(np.array(x) if a is x else x, np.array(w) if a is w else w,
                  np.array(b) if a is b else b, **kwargs)
    # and the block calls of the graphs the test runs (block sizes choose their own algorithms),
    # so that the check does not depend on what other test modules compiled before
    for kind, chunking in _CLUSTER_RUNS:
        for name in CASES:
            _cluster_graph(rng, name, kind, chunking)[0].compute(scheduler="sync")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as c:
        yield c


def test_distributed_is_bit_identical_and_workers_never_recompile(client, rng):
    def run_all(kind, in_chunking):
        for name in CASES:
            y, in_memory = _cluster_graph(rng, name, kind, in_chunking)
            assert np.array_equal(client.compute(y).result(), in_memory()), \
                f"{name} {kind} {in_chunking} on the cluster"

    (kind, chunking), later = _CLUSTER_RUNS
    run_all(kind, chunking)
    first = client.run(ndask._compile_stats)
    assert len(first) == 2
    # one compile per worker process at most would be allowed; with the disk cache warm there
    # is none, and the kernels were loaded, not bypassed
    assert all(compiled == 0 and loaded > 0 for compiled, loaded in first.values()), first
    run_all(*later)
    assert client.run(ndask._compile_stats) == first, "a worker compiled or loaded again"
