"""Large results in memory that earlier results gave back.

A new array of more than 32 MiB comes from the operating system as fresh pages, which are
zeroed and mapped on first touch: for a 33.5 MB result (32 x 512 x 512 float32) that took longer
than the convolution itself (4.7 ms per call against 2.4 ms with ``out=``, measured on 2 cores).
So results of at least :data:`MIN_BYTES` are views of blocks this module keeps: a block is handed
out again only when nothing refers to it any more (the caller dropped the result and every view
of it; checked by reference count under a lock), so a live result is never overwritten.

Blocks serving at most :func:`limit` bytes of results are kept (256 MiB by default; each block
also holds up to 64 bytes of alignment slack, not counted); when a result does not fit in a free
block, the least recently used free blocks are dropped to make room, and a result that would
still exceed the limit is an ordinary new array. ``set_limit(0)`` turns the pool off;
:func:`release` drops every free block. A result's ``base`` is its block (a uint8 array), so
``result.flags.owndata`` is False.
"""

import math
import sys
import threading

import numpy as np

MIN_BYTES = 16 << 20
_ALIGN = 64

_lock = threading.Lock()
_blocks = []  # uint8 arrays, least recently used first
_limit = 256 << 20


def limit():
    """Bytes of results the pool's blocks may serve."""
    return _limit


def set_limit(nbytes):
    """Keep blocks for at most ``nbytes`` of results (0: no pool; every result is a new
    array)."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an int >= 0, got {nbytes!r}")
    with _lock:
        _limit = nbytes
        _trim(0)


def release():
    """Drop every block nothing refers to (results still alive keep theirs)."""
    with _lock:
        _blocks[:] = [_blocks[i] for i in range(len(_blocks)) if not _free(_blocks, i)]


def kept_bytes():
    """Bytes of blocks held now, free or in use (alignment slack included)."""
    with _lock:
        return sum(b.nbytes for b in _blocks)


def _refs(blocks, i):
    return sys.getrefcount(blocks[i])


# references to a block that nothing else holds, counted the way _free counts them (the list's
# and getrefcount's own); measured once, as interpreters may count differently
_FREE_REFS = _refs([np.empty(1, dtype=np.uint8)], 0)
if _FREE_REFS not in (1, 2):  # an interpreter that counts in unforeseen ways: no pool
    _limit = 0


def _free(blocks, i):
    """Whether nothing but the pool refers to ``blocks[i]`` (no result or view of it alive)."""
    return _refs(blocks, i) <= _FREE_REFS


def _trim(extra):
    """Drop free blocks, oldest first, until a result of ``extra`` more bytes fits under the
    limit (blocks counted without their alignment slack)."""
    total = sum(b.nbytes - _ALIGN for b in _blocks)
    i = 0
    while total + extra > _limit and i < len(_blocks):
        if _free(_blocks, i):
            total -= _blocks.pop(i).nbytes - _ALIGN
        else:
            i += 1
    return total + extra <= _limit


def empty(shape, dtype):
    """An uninitialised C-contiguous array, from a kept block when it is large enough to pay."""
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    need = nbytes + _ALIGN
    with _lock:
        # the most recently used fitting block first: its lines are likeliest still in cache
        # (taking the least recently used made two free blocks alternate, each call writing
        # memory the last one had not touched: 1x1 C64->256 at batch 8, 26 MB results, 4.7-5.0
        # against 3.0-3.3 ms a call)
        for i in range(len(_blocks) - 1, -1, -1):
            if need <= _blocks[i].nbytes <= 2 * need and _free(_blocks, i):
                block = _blocks.pop(i)
                _blocks.append(block)  # most recently used last
                return _view(block, shape, dtype, nbytes)
        if _limit == 0 or not _trim(nbytes):
            return np.empty(shape, dtype=dtype)
        block = np.empty(need, dtype=np.uint8)
        _blocks.append(block)
        return _view(block, shape, dtype, nbytes)


def _view(block, shape, dtype, nbytes):
    skip = -block.ctypes.data % _ALIGN
    return block[skip:skip + nbytes].view(dtype).reshape(shape)
