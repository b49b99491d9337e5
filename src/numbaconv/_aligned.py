"""Arrays that start on a cache line.

NumPy puts large arrays 16 bytes past a 64-byte boundary, so a vector load along their rows
straddles two cache lines, which costs Intel cores two loads. Arrays the kernels read many times
(weights kept by plans) are allocated from a line instead; kernels that read a caller's array
in place shift their blocks to its vector boundaries (:func:`row_shift`).
"""

import numpy as np

LINE = 64


def empty_aligned(shape, dtype):
    """An uninitialised C-contiguous array whose first element starts on a cache line."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + LINE, np.uint8)
    skip = -raw.ctypes.data % LINE
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def copy_aligned(a, dtype):
    """A C-contiguous copy of ``a`` in ``dtype`` that starts on a cache line."""
    copy = empty_aligned(np.shape(a), dtype)
    copy[...] = a
    return copy


def row_shift(a, row, lanes):
    """Elements from the start of ``a`` (flat, C-contiguous) to its first ``lanes``-element
    boundary in memory: a first block that wide starts every later block of ``lanes`` on a
    vector boundary, in each of its rows of ``row`` elements. 0 when ``a`` already starts on
    one, when the rows are not whole vectors (no one shift would serve every row) or when ``a``
    is not aligned to its element size."""
    if row % lanes or a.ctypes.data % a.itemsize:
        return 0
    return (-(a.ctypes.data // a.itemsize)) % lanes
