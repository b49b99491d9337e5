"""Workspaces kept between calls.

An ``np.empty`` of more than a few hundred KiB comes back from the C allocator as fresh pages
(large freed blocks go back to the operating system), and the first touch of each page is a page
fault, about 2 us each here: 2 ms per call for 2.4 MB of scratch in one measurement. A layer asks
for the same workspaces on every call, so they are kept, one per named slot and Python thread
(calls from several Python threads never share one); buffers above a slot's size cap are not kept.
"""

import threading

import numpy as np

_kept = threading.local()


def buffer(slot, size, dtype, keep_bytes=64 << 20):
    """A 1-d array of ``size`` elements of ``dtype`` (contents undefined) for scratch ``slot``:
    the same memory as the previous call of this thread when that was large enough."""
    dtype = np.dtype(dtype)
    key = (slot, dtype.str)
    cache = getattr(_kept, "slots", None)
    if cache is None:
        cache = _kept.slots = {}
    buf = cache.get(key)
    if buf is not None and buf.size >= size:
        return buf[:size]
    buf = np.empty(size, dtype=dtype)
    if size * dtype.itemsize <= keep_bytes:
        cache[key] = buf
    return buf


def aligned(slot, size, dtype, align=64):
    """:func:`buffer` whose first element starts on an ``align``-byte boundary (vector loads of
    rows laid out from there never straddle cache lines)."""
    dtype = np.dtype(dtype)
    raw = buffer(slot, size + align // dtype.itemsize, dtype)
    skip = (-raw.ctypes.data % align) // dtype.itemsize
    return raw[skip:skip + size]
