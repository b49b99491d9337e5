"""Large results come from kept blocks: never one that a live result (or a view of it) uses."""

import numpy as np
import pytest

import numbaconv
from numbaconv import output_pool, reference

from threads import run_in_threads


@pytest.fixture(autouse=True)
def small_pool(monkeypatch):
    # results of 64 KiB and more are pooled here, so the tests stay small
    monkeypatch.setattr(output_pool, "MIN_BYTES", 64 << 10)
    saved = output_pool.limit()
    output_pool.release()
    yield
    output_pool.set_limit(saved)
    output_pool.release()


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, (1, 3, 64, 64)).astype(np.float32)
    w = rng.integers(-4, 5, (16, 3, 3, 3)).astype(np.float32)  # result: 256 KiB
    return x, w


def test_live_results_and_their_views_are_never_handed_out_again():
    x, w = _problem()
    expected = reference.conv2d(x, w, padding=1)
    first = numbaconv.conv2d(x, w, padding=1)
    second = numbaconv.conv2d(x, w, padding=1)
    assert not np.shares_memory(first, second)
    view = first[0, 5]
    del first
    third = numbaconv.conv2d(x, w, padding=1)
    assert not np.shares_memory(third, view) and not np.shares_memory(third, second)
    third[...] = -1
    np.testing.assert_array_equal(view, expected[0, 5])
    np.testing.assert_array_equal(second, expected)


def test_dropped_results_give_their_memory_back():
    x, w = _problem()
    addresses = set()
    for _ in range(5):
        y = numbaconv.conv2d(x, w, padding=1)
        assert y.flags.c_contiguous and y.flags.writeable and y.ctypes.data % 64 == 0
        addresses.add(y.ctypes.data)
        del y
    assert len(addresses) == 1
    assert output_pool.kept_bytes() < 2 * (16 * 64 * 64 * 4) + 1024


def test_the_most_recently_used_free_block_comes_first():
    # its memory is the likeliest to be in cache; two free blocks must not take turns
    x, w = _problem()
    first = numbaconv.conv2d(x, w, padding=1)
    second = numbaconv.conv2d(x, w, padding=1)
    a, b = first.ctypes.data, second.ctypes.data
    del first, second                      # both free; the second block was used last
    for _ in range(3):
        y = numbaconv.conv2d(x, w, padding=1)
        assert y.ctypes.data == b
        del y


def test_limit_zero_gives_ordinary_arrays_and_release_drops_free_blocks():
    x, w = _problem()
    kept = numbaconv.conv2d(x, w, padding=1)
    assert not kept.flags.owndata and output_pool.kept_bytes() > 0
    output_pool.release()
    assert output_pool.kept_bytes() > 0  # still in use by `kept`
    del kept
    output_pool.release()
    assert output_pool.kept_bytes() == 0
    output_pool.set_limit(0)
    y = numbaconv.conv2d(x, w, padding=1)
    assert y.flags.owndata and output_pool.kept_bytes() == 0
    np.testing.assert_array_equal(y, reference.conv2d(x, w, padding=1))


def test_results_beyond_the_limit_are_ordinary_arrays():
    x, w = _problem()
    output_pool.set_limit(300 << 10)  # one block of 256 KiB fits
    ys = [numbaconv.conv2d(x, w, padding=1) for _ in range(3)]
    assert [y.flags.owndata for y in ys] == [False, True, True]
    for y in ys:
        np.testing.assert_array_equal(y, reference.conv2d(x, w, padding=1))


def test_a_result_of_exactly_the_limit_is_kept():
    # the limit counts results' bytes; the block's alignment slack does not push it over
    x, w = _problem()
    output_pool.set_limit(16 * 64 * 64 * 4)
    y = numbaconv.conv2d(x, w, padding=1)
    assert not y.flags.owndata
    address = y.ctypes.data
    del y
    z = numbaconv.conv2d(x, w, padding=1)
    assert z.ctypes.data == address
    output_pool.set_limit(16 * 64 * 64 * 4 - 1)
    assert numbaconv.conv2d(x, w, padding=1).flags.owndata
    np.testing.assert_array_equal(z, reference.conv2d(x, w, padding=1))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_set_limit_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="nbytes"):
        output_pool.set_limit(bad)


def test_threads_never_share_a_live_result():
    results = {}

    def work(seed):
        x, w = _problem(seed)
        expected = reference.conv2d(x, w, padding=1)
        mine = []
        for _ in range(20):
            y = numbaconv.conv2d(x, w, padding=1)
            mine.append(y)
            if len(mine) > 2:
                mine.pop(0)
            np.testing.assert_array_equal(y, expected)
        results[seed] = mine

    errors = run_in_threads(work, 4)
    assert not errors
    live = [y for ys in results.values() for y in ys]
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            assert not np.shares_memory(a, b)
    for seed, ys in results.items():
        x, w = _problem(seed)
        for y in ys:
            np.testing.assert_array_equal(y, reference.conv2d(x, w, padding=1))
