"""Thread control.

numbaconv parallelises with Numba's ``prange`` only; no kernel calls BLAS, so there is one thread
pool per call and never two taking turns. :func:`set_num_threads` sets Numba's count for
numbaconv's kernels and, for consistency with the rest of a NumPy program, the BLAS libraries'
count too.
"""

import contextlib

import numba

_controller = None

# None means "whatever Numba says for the calling thread"; set by set_num_threads().
_num_threads = None


def _blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def get_num_threads():
    """Number of threads numbaconv's kernels use for a call made from this thread."""
    return _num_threads if _num_threads is not None else numba_count()


_read_count = None


def numba_count():
    """``numba.get_num_threads()``: Numba's thread count for the calling thread, read straight
    from its threading layer once that runs (0.1 us a call here against 0.66 through Numba's
    function, which takes two locks to check that the layer is running)."""
    global _read_count
    if _read_count is None:
        n = numba.get_num_threads()  # starts the threading layer
        from numba.np.ufunc import parallel

        _read_count = getattr(parallel, "_get_num_threads", None) or numba.get_num_threads
        return n
    return _read_count()


def _check_count(n):
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise ValueError(f"number of threads must be an int in [1, {limit}] "
                         f"(NUMBA_NUM_THREADS), got {n!r}")


def set_num_threads(n):
    """Use ``n`` threads for numbaconv's kernels, and for BLAS calls made outside them.

    Applies to calls from every Python thread. ``n`` is at most ``numba.config.NUMBA_NUM_THREADS``
    (set by the ``NUMBA_NUM_THREADS`` environment variable before Numba starts).
    """
    global _num_threads
    _check_count(n)
    _num_threads = n
    numba.set_num_threads(n)
    for lib in _blas_controller().lib_controllers:
        lib.set_num_threads(n)


@contextlib.contextmanager
def num_threads(n):
    """Context manager: ``with numbaconv.num_threads(1): ...`` runs the block with ``n`` threads."""
    global _num_threads
    _check_count(n)
    saved, saved_numba = _num_threads, numba.get_num_threads()
    _num_threads = n
    numba.set_num_threads(n)
    try:
        yield
    finally:
        _num_threads = saved
        numba.set_num_threads(saved_numba)


def call(fn, *args):
    """``fn(*args)`` launched with the thread count set for the calling thread, as
    :func:`launch`; without entering a context manager (about a microsecond) when there is
    nothing to set."""
    n = _num_threads
    if n is None or n == numba_count():
        return fn(*args)
    with launch():
        return fn(*args)


@contextlib.contextmanager
def launch():
    """Set Numba's (thread-local) thread count for a kernel launch from the calling thread."""
    n = _num_threads
    if n is None or n == numba_count():
        yield
        return
    saved = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(saved)
