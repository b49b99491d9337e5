"""``padding_mode``: what the border of the input holds, as in ``torch.nn.Conv2d``.

``'zeros'`` is the kernels' own zero padding. ``'reflect'`` (mirror without repeating the edge),
``'replicate'`` (repeat the edge) and ``'circular'`` (wrap around) pad the input explicitly
(``np.pad``, one copy of the input) and then convolve with no padding, exactly as torch does;
:func:`fold` is the adjoint, for gradients.

Transposed convolution with a mode (torch refuses all but zeros) is defined as the adjoint of the
convolution with that mode, as the zero-padded transposed convolution is the adjoint of the
zero-padded convolution: the full (unpadded) transposed result is computed, then :func:`fold`
adds every border element onto the output element that the convolution's padding would copy
there, and the bias is added last (:func:`transposed_call`). With ``'zeros'`` the fold is a crop,
which is exactly ``padding``'s meaning in torch's transposed convolution.
"""

import numpy as np

from . import _args
from ._front import as_array, bias_vector, compute_dtype, copy_out

#: torch's padding_mode names and the ``np.pad`` mode that pads the same values.
MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def check_mode(mode, where):
    if mode not in MODES:
        raise ValueError(f"{where}: padding_mode must be one of {tuple(MODES)}, got {mode!r}")


def check_sizes(sizes, pairs, mode, where, what="input"):
    """torch's conditions on a padded ``what`` of these spatial ``sizes``: reflect needs padding
    smaller than the size, circular no larger than it."""
    for size, (lo, hi) in zip(sizes, pairs):
        if mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(f"{where}: padding_mode='reflect' needs padding smaller than the "
                             f"{what} size, got padding {(lo, hi)} for size {size}")
        if mode == "circular" and max(lo, hi) > size:
            raise ValueError(f"{where}: padding_mode='circular' needs padding no larger than "
                             f"the {what} size, got padding {(lo, hi)} for size {size}")


def pad(x, pairs, mode, where, first_axis=None):
    """``x`` padded on ``len(pairs)`` axes from ``first_axis`` (default: its last axes) by
    ``(low, high)`` pairs with ``mode`` (not ``'zeros'``), after :func:`check_sizes`."""
    nd = len(pairs)
    first = x.ndim - nd if first_axis is None else first_axis
    check_sizes(x.shape[first:first + nd], pairs, mode, where)
    width = ((0, 0),) * first + tuple(pairs) + ((0, 0),) * (x.ndim - first - nd)
    return np.pad(x, width, mode=MODES[mode])


def fold(grad_padded, shape, pairs, mode, first_axis=None, overwrite=False):
    """Adjoint of :func:`pad`: sum every padded position onto the element it copies (``shape``
    is the unpadded array's; the padded axes start at ``first_axis``, default: the last
    ``len(pairs)`` axes). Per axis, each element is its interior value plus the border positions
    that copy it, in order. Works in place on ``grad_padded`` if ``overwrite`` (else on a copy),
    then returns a contiguous copy of the interior."""
    result = grad_padded if overwrite else grad_padded.copy()
    nd = len(pairs)
    first = result.ndim - nd if first_axis is None else first_axis
    interior = [slice(None)] * result.ndim
    for i, (lo, hi) in enumerate(pairs):
        axis = first + i
        n = shape[axis]
        for j in list(range(lo)) + list(range(lo + n, lo + n + hi)):
            dst, src = list(interior), list(interior)
            dst[axis], src[axis] = lo + _source(j - lo, n, mode), j
            result[tuple(dst)] += result[tuple(src)]
        interior[axis] = slice(lo, lo + n)
    return np.ascontiguousarray(result[tuple(interior)])


def _source(i, n, mode):
    """The element of an axis of size ``n`` that padded position ``i`` (< 0 or >= n) copies."""
    if mode == "reflect":
        i = abs(i)
        return 2 * (n - 1) - i if i >= n else i
    if mode == "replicate":
        return min(max(i, 0), n - 1)
    if mode == "circular":
        return i % n
    raise ValueError(f"padding_mode {mode!r} has no source positions")


def transposed_call(fn, func, nd, channels_last, input, weight, bias, hyper, mode, out):
    """Transposed convolution with padding ``mode`` (not ``'zeros'``), the adjoint of the
    convolution that pads its input by ``mode``.

    ``fn(input, weight, None, padding=0, output_size=..., **rest of hyper)`` computes the full
    transposed result; its spatial axes are folded by ``hyper['padding']`` (output size
    ``full - low - high``, as with zero padding) and the bias is added. ``output_size``, if
    given, is the folded size."""
    check_mode(mode, func)
    pairs = _args.transposed_padding(hyper["padding"], nd)
    dtype = compute_dtype((("input", input), ("weight", weight), ("bias", bias)))
    x = as_array(input, "input").astype(dtype, copy=False)
    call = dict(hyper, padding=0)
    size = hyper.get("output_size")
    if size is not None:
        size = tuple(size) if isinstance(size, (tuple, list)) else (size,)
        spatial = size[2:] if len(size) == nd + 2 else size
        if len(spatial) == nd:  # otherwise fn reports the length
            size = tuple(int(s) + lo + hi for s, (lo, hi) in zip(spatial, pairs))
        call["output_size"] = size
    full = fn(x, weight, None, **call)
    first = full.ndim - nd - (1 if channels_last else 0)
    shape = list(full.shape)
    for i, (lo, hi) in enumerate(pairs):
        shape[first + i] -= lo + hi
        if shape[first + i] < 1:
            raise ValueError(f"{func}: padding {pairs} leaves no output: the unpadded output has "
                             f"spatial size {full.shape[first:first + nd]}")
    check_sizes(shape[first:first + nd], pairs, mode, func, what="output")
    y = fold(full, tuple(shape), pairs, mode, first, overwrite=True)
    channels = y.shape[-1] if channels_last else y.shape[first - 1]
    b = bias_vector(func, bias, dtype, channels)
    if b is not None:
        y += b.reshape((channels,) + (() if channels_last else (1,) * nd))
    return copy_out(func, y, out)
