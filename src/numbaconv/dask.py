r"""Convolution of dask arrays: images larger than memory, on one machine or a cluster.

:func:`conv2d` and :func:`conv_transpose2d` take a (possibly unbatched) dask array and return a
lazy dask array with the result of :func:`numbaconv.conv2d` / :func:`numbaconv.conv_transpose2d`.
Every output block is computed by the in-memory function on an input block cut from the image with
the exact halo it needs, so the blocks can run on any dask scheduler, ``dask.distributed`` included.

How blocks are cut
------------------
The output chunks are chosen first (``chunks=``, or by default mapped from the input chunks) and
the input each one needs is derived from them, one spatial axis at a time (input size :math:`I`,
kernel :math:`k`, stride :math:`s`, dilation :math:`d`, padding :math:`p_{lo}`, dilated extent
:math:`e = d (k - 1) + 1`):

* forward: output rows :math:`[o_0, o_1)` read the padded input rows
  :math:`[o_0 s - p_{lo},\ (o_1 - 1) s - p_{lo} + e)`. The part inside the image is cut out, the
  part outside becomes the block's own (asymmetric) zero padding. Block offsets are multiples of the
  stride by construction, so strided outputs stay on the global grid.
* transposed: input row :math:`i` reaches output rows :math:`i s + j d - p_{lo}`, :math:`0 \le j <
  k`. The block takes every input row that reaches :math:`[o_0, o_1)` (and at most a few more real
  rows whose contributions fall outside it), and crops its own result to exactly those rows through
  its padding and output padding.

Batch chunks map to output batch chunks one to one. The input channel axis may be chunked only
along whole groups (every chunk a multiple of ``C_in / groups`` channels, e.g. any chunking of a
depthwise convolution); each chunk then gives the output channels of its groups. Other channel
chunkings raise ValueError: rechunk with ``x.rechunk({1: -1})`` (or ``{0: -1}`` unbatched).

What is equal to what
---------------------
The algorithm is resolved once, on the whole problem (``'auto'`` picks what the in-memory call
would pick, see :func:`numbaconv.explain`), and forced on every block. Then:

* integer-valued data whose partial sums are exactly representable (for float32 below
  :math:`2^{24}`): the result equals the in-memory result bit for bit for every exact algorithm;
* any data: the result equals ``numbaconv.conv2d(x.compute(), ..., algorithm=A)`` bit for bit
  when algorithm ``A`` sums every output element in an order that does not depend on the image
  size (``'reference'`` always does; see the algorithm table in the README for the kernels).

Weights and bias enter the task graph once, as their own keys: the distributed scheduler ships
them to each worker once, however many blocks there are.

Examples
--------
>>> import pytest; da = pytest.importorskip("dask.array")
>>> import numpy as np, numbaconv, numbaconv.dask
>>> x = da.ones((1, 2, 50, 40), dtype=np.float32, chunks=(1, 2, 16, 16))
>>> w = np.ones((3, 2, 3, 3), np.float32)
>>> y = numbaconv.dask.conv2d(x, w, stride=2, padding=1)
>>> y.shape, y.chunks[2:]
((1, 3, 25, 20), ((9, 8, 8), (9, 8, 3)))
>>> np.array_equal(y.compute(), numbaconv.conv2d(x.compute(), w, stride=2, padding=1))
True
"""

import operator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

import numbaconv

__all__ = ["conv2d", "conv_transpose2d"]


class _AxisBlock(NamedTuple):
    """How one output chunk of one spatial axis is computed.

    The block's input is rows ``[start, stop)`` of the image, or, when ``start == stop`` (no
    image row reaches the chunk), one row of zeros; ``lo``/``hi`` are its padding, ``extra`` its
    output padding (transposed only), ``size`` the chunk's length.
    """

    start: int
    stop: int
    lo: int
    hi: int
    extra: int
    size: int

    @property
    def in_size(self):
        return max(self.stop - self.start, 1)


def _ceil_div(a, b):
    return -(-a // b)


def _forward_axis(o0, o1, size, kernel, stride, dilation, pad_lo):
    """:class:`_AxisBlock` of forward output rows ``[o0, o1)``."""
    first = o0 * stride - pad_lo
    end = (o1 - 1) * stride - pad_lo + dilation * (kernel - 1) + 1
    start, stop = max(first, 0), min(end, size)
    if start >= stop:
        # every window of the chunk lies in the padding: one explicit zero row stands in for it
        return _AxisBlock(0, 0, 0, end - first - 1, 0, o1 - o0)
    return _AxisBlock(start, stop, start - first, end - stop, 0, o1 - o0)


def _transposed_axis(o0, o1, size, kernel, stride, dilation, pad_lo):
    """:class:`_AxisBlock` of transposed output rows ``[o0, o1)``.

    Works in uncropped coordinates ``u = o + pad_lo``, where input row ``i`` writes rows
    ``i * stride + j * dilation``. The block starts at a row whose first write is at or before
    ``u0`` (so its own crop ``lo`` is non-negative) and ends late enough that its uncropped
    extent reaches ``u1``; only at the image's last row may it fall short, by at most the global
    output padding, which the block then adds as its own.
    """
    extent = dilation * (kernel - 1) + 1
    u0, u1 = o0 + pad_lo, o1 + pad_lo
    first_reaching = _ceil_div(u0 - extent + 1, stride)
    start = max(0, min(first_reaching, u0 // stride, size - 1))
    stop = min(size, max((u1 - 1) // stride + 1, _ceil_div(u1 - extent, stride) + 1))
    full = (stop - start - 1) * stride + extent
    lo = u0 - start * stride
    rest = full - lo - (o1 - o0)
    return _AxisBlock(start, stop, lo, max(rest, 0), max(-rest, 0), o1 - o0)


def _default_out_chunks(in_chunks, out_size, transposed, stride, pad_lo):
    """Output chunks that follow the input chunks: each input boundary ``B`` maps to the first
    output row whose window (forward) or first write (transposed) starts at or after ``B``."""
    bounds = {0, out_size}
    position = 0
    for c in in_chunks[:-1]:
        position += c
        b = position * stride - pad_lo if transposed else _ceil_div(position + pad_lo, stride)
        bounds.add(min(max(b, 0), out_size))
    bounds = sorted(bounds)
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def _offsets(chunks):
    starts = [0]
    for c in chunks:
        starts.append(starts[-1] + c)
    return starts


@dataclass(frozen=True)
class _BlockSpec:
    """Everything one block task needs besides its input pieces, weight and bias.

    Kept in one object so that dask does not look inside it for keys.
    """

    transposed: bool
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    output_padding: tuple
    algorithm: str
    num_threads: object
    zero_shape: object  # shape of the all-zero input of a block no image row reaches, else None
    dtype: object


def _run_block(pieces, weight, bias, spec):
    """Worker side: assemble the input block and convolve it in memory."""
    if spec.zero_shape is not None:
        x = np.zeros(spec.zero_shape, spec.dtype)
    elif len(pieces) == 1 and len(pieces[0]) == 1:
        x = pieces[0][0]
    else:
        x = np.block(pieces)
    kwargs = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                  groups=spec.groups, algorithm=spec.algorithm)
    saved = None
    if spec.num_threads is not None:
        import numba

        # numba's thread count is per calling thread, so concurrent dask threads do not race
        saved = numba.get_num_threads()
        numba.set_num_threads(spec.num_threads)
    try:
        if spec.transposed:
            return numbaconv.conv_transpose2d(x, weight, bias,
                                              output_padding=spec.output_padding, **kwargs)
        return numbaconv.conv2d(x, weight, bias, **kwargs)
    finally:
        if saved is not None:
            numba.set_num_threads(saved)


def _as_numpy(value):
    if value is None:
        return None
    try:
        return np.asarray(value)
    except (RuntimeError, TypeError):  # a torch tensor that requires grad
        return np.asarray(value.detach().cpu())


def _convolve(fname, x, weight, bias, *, transposed, stride, padding, dilation, groups,
              output_padding, output_size, algorithm, chunks, num_threads, exact=False):
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from dask.array.core import Array as GraphArray

    if da.Array is not GraphArray:
        # the blocks are written as a task graph; the expression backend builds arrays otherwise
        raise NotImplementedError(
            f"{fname}: numbaconv.dask needs dask's graph-based arrays; the expression backend "
            f"(dask config 'array.query-planning': True) is not supported yet")
    x = da.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fname}: input must have shape (N, C, H, W) or (C, H, W), got shape "
                         f"{x.shape}")
    if x.ndim == 3:
        return _convolve(fname, x[None], weight, bias, transposed=transposed, stride=stride,
                         padding=padding, dilation=dilation, groups=groups,
                         output_padding=output_padding, output_size=output_size,
                         algorithm=algorithm, chunks=chunks, num_threads=num_threads,
                         exact=exact)[0]
    if any(np.isnan(c) for axis in x.chunks for c in axis):
        raise ValueError(f"{fname}: input chunk sizes must be known; call "
                         f"x.compute_chunk_sizes() first")
    if num_threads is not None and (isinstance(num_threads, bool)
                                    or not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be None or a positive int, got {num_threads!r}")
    w, b = _as_numpy(weight), _as_numpy(bias)

    # The in-memory function on an empty batch validates every argument with its own rules and
    # messages and gives the computation dtype, without computing anything.
    probe = np.empty((0,) + x.shape[1:], x.dtype)
    if algorithm == "tune":
        raise ValueError("numbaconv.dask: algorithm='tune' is not supported: blocks of different "
                         "shapes could be tuned to different algorithms; tune the in-memory call "
                         "and pass the name it chose (numbaconv.tuning.choices())")
    common = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  algorithm=algorithm, exact=exact)
    if transposed:
        dtype = numbaconv.conv_transpose2d(probe, w, b, output_padding=output_padding,
                                           output_size=output_size, **common).dtype
    else:
        dtype = numbaconv.conv2d(probe, w, b, **common).dtype
    explained = numbaconv.explain(
        x.shape, w.shape, b is not None, stride, padding, dilation, groups,
        transposed=transposed, output_padding=output_padding, output_size=output_size,
        dtype=dtype, exact=exact)
    problem = explained.problem
    name = explained.choice if algorithm == "auto" else algorithm

    # channel chunks: whole groups only
    c_in_group = problem.in_channels // problem.groups
    c_out_group = problem.out_channels // problem.groups
    c_chunks = x.chunks[1]
    if any(c % c_in_group for c in c_chunks):
        raise ValueError(
            f"{fname}: the input channel axis is chunked as {c_chunks}; each chunk must hold "
            f"whole groups (a multiple of C_in / groups = {c_in_group} channels) because an "
            f"output channel needs every input channel of its group. Rechunk the channel axis "
            f"into one chunk: x.rechunk({{1: -1}}) (or {{0: -1}} for an unbatched input).")

    # spatial output chunks, then the input block of each
    out_size = problem.out_size
    if chunks is None:
        out_chunks = tuple(
            _default_out_chunks(x.chunks[2 + a], out_size[a], transposed, problem.stride[a],
                                problem.padding[a][0]) for a in range(2))
    else:
        from dask.array.core import normalize_chunks

        out_chunks = normalize_chunks(chunks, shape=out_size, dtype=dtype)
    plan_axis = _transposed_axis if transposed else _forward_axis
    axes = []
    for a in range(2):
        starts = _offsets(out_chunks[a])
        axes.append([plan_axis(o0, o1, problem.in_size[a], problem.kernel_size[a],
                               problem.stride[a], problem.dilation[a], problem.padding[a][0])
                     for o0, o1 in zip(starts, starts[1:])])

    _check_blocks_supported(fname, name, x, c_chunks, c_in_group, axes, w.shape, b is not None,
                            problem, dtype)

    token = tokenize(fname, x, w, b, stride, padding, dilation, groups, output_padding,
                     output_size, name, out_chunks, num_threads)
    out_name = f"numbaconv-{fname}-{token}"
    halo_name = f"numbaconv-{fname}-input-{token}"
    w_name, b_name = f"numbaconv-weight-{token}", f"numbaconv-bias-{token}"
    wc = np.ascontiguousarray(w, dtype=dtype)
    bc = None if b is None else np.ascontiguousarray(b, dtype=dtype)

    layer = {}
    c_starts = _offsets(c_chunks)
    out_c_chunks = tuple(c // c_in_group * c_out_group for c in c_chunks)
    for jc, (c0, c1) in enumerate(zip(c_starts, c_starts[1:])):
        g0, g1 = c0 // c_in_group, c1 // c_in_group
        # each chunk's groups: the weight rows of those groups (forward weights are indexed
        # by output channel, transposed ones by input channel) and their biases, one key each
        rows = slice(c0, c1) if transposed else slice(g0 * c_out_group, g1 * c_out_group)
        layer[(w_name, jc)] = wc if len(c_chunks) == 1 else np.ascontiguousarray(wc[rows])
        if bc is not None:
            layer[(b_name, jc)] = bc if len(c_chunks) == 1 else \
                np.ascontiguousarray(bc[g0 * c_out_group:g1 * c_out_group])

    h_starts, w_starts = _offsets(x.chunks[2]), _offsets(x.chunks[3])
    for jn, n in enumerate(x.chunks[0]):
        for jc, c in enumerate(c_chunks):
            spec_common = dict(transposed=transposed, stride=problem.stride,
                               dilation=problem.dilation, groups=c // c_in_group,
                               algorithm=name, num_threads=num_threads, dtype=x.dtype)
            for jh, hb in enumerate(axes[0]):
                for jw, wb in enumerate(axes[1]):
                    degenerate = hb.start == hb.stop or wb.start == wb.stop
                    pieces = [] if degenerate else [
                        [_piece(layer, x.name, halo_name, (jn, jc, jh, jw), ih, iw, hb, wb,
                                h_starts, w_starts)
                         for iw in _touching(w_starts, wb.start, wb.stop)]
                        for ih in _touching(h_starts, hb.start, hb.stop)]
                    spec = _BlockSpec(
                        padding=((hb.lo, hb.hi), (wb.lo, wb.hi)),
                        output_padding=(hb.extra, wb.extra),
                        zero_shape=(n, c, hb.in_size, wb.in_size) if degenerate else None,
                        **spec_common)
                    layer[(out_name, jn, jc, jh, jw)] = (
                        _run_block, pieces, (w_name, jc),
                        (b_name, jc) if bc is not None else None, spec)

    graph = HighLevelGraph.from_collections(out_name, layer, dependencies=[x])
    out_chunks_all = (x.chunks[0], out_c_chunks) + tuple(out_chunks)
    return da.Array(graph, out_name, chunks=out_chunks_all, dtype=dtype,
                    meta=np.empty((0, 0, 0, 0), dtype))


def _touching(starts, lo, hi):
    """Indices of the chunks (boundaries ``starts``) that overlap ``[lo, hi)``."""
    return [j for j, (a, b) in enumerate(zip(starts, starts[1:])) if a < hi and b > lo and a < b]


def _piece(layer, x_name, halo_name, block, ih, iw, hb, wb, h_starts, w_starts):
    """Key of the part of input chunk ``(ih, iw)`` that the block needs.

    A part smaller than its chunk is its own task, so only the halo travels between workers.
    """
    jn, jc = block[:2]
    source = (x_name, jn, jc, ih, iw)
    h0, h1 = max(hb.start, h_starts[ih]) - h_starts[ih], min(hb.stop, h_starts[ih + 1]) - \
        h_starts[ih]
    w0, w1 = max(wb.start, w_starts[iw]) - w_starts[iw], min(wb.stop, w_starts[iw + 1]) - \
        w_starts[iw]
    if (h0, h1, w0, w1) == (0, h_starts[ih + 1] - h_starts[ih], 0, w_starts[iw + 1] - w_starts[iw]):
        return source
    key = (halo_name,) + tuple(block) + (ih, iw)
    layer[key] = (operator.getitem, source,
                  (slice(None), slice(None), slice(h0, h1), slice(w0, w1)))
    return key


def _check_blocks_supported(fname, name, x, c_chunks, c_in_group, axes, w_shape, has_bias,
                            problem, dtype):
    """Raise :class:`numbaconv.UnsupportedAlgorithm` if the forced algorithm refuses a block.

    Blocks differ from the whole problem only in size, padding and group count; the distinct
    block shapes are few, so each is asked once, before anything runs.
    """
    seen = set()
    for n in set(x.chunks[0]) or {1}:
        for c in set(c_chunks):
            groups = c // c_in_group
            if problem.transposed:
                w_block = (c,) + tuple(w_shape[1:])
            else:
                w_block = (groups * (problem.out_channels // problem.groups),) + \
                    tuple(w_shape[1:])
            for hb in axes[0]:
                for wb in axes[1]:
                    key = (n, c, hb.in_size, hb.lo, hb.hi, hb.extra, wb.in_size, wb.lo, wb.hi,
                           wb.extra)
                    if key in seen:
                        continue
                    seen.add(key)
                    block = numbaconv.explain(
                        (n, c, hb.in_size, wb.in_size), w_block, has_bias, problem.stride,
                        ((hb.lo, hb.hi), (wb.lo, wb.hi)), problem.dilation, groups,
                        transposed=problem.transposed, output_padding=(hb.extra, wb.extra),
                        dtype=dtype)
                    reason = block.reasons.get(name)
                    if reason is not None:
                        raise numbaconv.UnsupportedAlgorithm(
                            f"{fname}: algorithm {name!r}, chosen for the whole problem "
                            f"{problem}, cannot compute its block {block.problem}: {reason}. "
                            f"Choose other chunks or another algorithm.")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto", exact=False, chunks=None, num_threads=None):
    r"""2-D convolution of a dask array, block by block; same result as :func:`numbaconv.conv2d`.

    Parameters
    ----------
    input : dask.array.Array, shape (N, C_in, H, W) or (C_in, H, W)
        Any chunking of the batch and spatial axes; the channel axis in one chunk or in chunks of
        whole groups. A NumPy array is wrapped with ``dask.array.asarray``.
    weight : array_like, shape (C_out, C_in / groups, kH, kW)
        An in-memory array; it enters the graph once.
    bias : array_like, shape (C_out,), optional
    stride, padding, dilation, groups
        As in :func:`numbaconv.conv2d` (``'same'``, ``'valid'`` and asymmetric
        ``((top, bottom), (left, right))`` padding included).
    algorithm : str, optional
        Resolved once on the whole problem (``'auto'``: the in-memory choice) and used for every
        block; raises :class:`numbaconv.UnsupportedAlgorithm` before computing if it refuses a
        block.
    exact : bool, optional
        As in :func:`numbaconv.conv2d`. An inexact algorithm (``'winograd'``, which ``'auto'`` may
        pick unless ``exact=True``) cuts each block into its own tiles, so blocks agree with the
        in-memory result within the algorithm's error bound, not bit for bit.
    chunks : int, tuple or tuple of tuples, optional
        Chunks of the output's spatial axes (H_out, W_out), in any form
        ``dask.array.core.normalize_chunks`` accepts. Default: the input's spatial chunks mapped
        through the stride, so each block reads its own input chunk plus a thin halo.
    num_threads : int, optional
        Numba threads per block task (default: the worker's setting). With several dask threads
        per worker, ``cores / threads`` avoids oversubscription.

    Returns
    -------
    dask.array.Array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
        Lazy; batch chunks as the input's, output channels in one chunk (or one per input channel
        chunk), spatial chunks as ``chunks``.

    Raises
    ------
    ValueError, TypeError
        For the arguments :func:`numbaconv.conv2d` refuses, and for a channel chunking that
        splits a group.

    See Also
    --------
    numbaconv.dask : how blocks are cut, and what is bit-for-bit equal to the in-memory result.
    """
    return _convolve("conv2d", input, weight, bias, transposed=False, stride=stride,
                     padding=padding, dilation=dilation, groups=groups, output_padding=0,
                     output_size=None, algorithm=algorithm, chunks=chunks,
                     num_threads=num_threads, exact=exact)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, output_size=None, algorithm="auto", exact=False, chunks=None,
                     num_threads=None):
    r"""2-D transposed convolution of a dask array; same result as
    :func:`numbaconv.conv_transpose2d`.

    Parameters
    ----------
    input : dask.array.Array, shape (N, C_in, H, W) or (C_in, H, W)
        Chunked as for :func:`conv2d`.
    weight : array_like, shape (C_in, C_out / groups, kH, kW)
    bias : array_like, shape (C_out,), optional
    stride, padding, output_padding, groups, dilation, output_size
        As in :func:`numbaconv.conv_transpose2d`.
    algorithm, exact, chunks, num_threads
        As in :func:`conv2d`. The default ``chunks`` start output chunks where an input chunk's
        first row writes (``B * stride - padding``).

    Returns
    -------
    dask.array.Array, shape (N, C_out, H_out, W_out) or (C_out, H_out, W_out)
    """
    return _convolve("conv_transpose2d", input, weight, bias, transposed=True, stride=stride,
                     padding=padding, dilation=dilation, groups=groups,
                     output_padding=output_padding, output_size=output_size,
                     algorithm=algorithm, chunks=chunks, num_threads=num_threads, exact=exact)


def _compile_stats():
    """Numba compilation in this process, over numbaconv's kernels: ``(compiled, loaded)``.

    ``compiled`` counts signatures compiled here (on-disk cache misses), ``loaded`` those loaded
    from Numba's on-disk cache. Run it on dask workers (``client.run``) to check that they load
    the kernels instead of compiling them, and never compile again for later tasks.
    """
    import sys

    from numba.core.dispatcher import Dispatcher

    compiled = loaded = 0
    for module_name, module in list(sys.modules.items()):
        if module is None or not module_name.startswith("numbaconv."):
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, Dispatcher):
                compiled += sum(obj.stats.cache_misses.values())
                loaded += sum(obj.stats.cache_hits.values())
    return compiled, loaded
