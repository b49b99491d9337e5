"""``padding_mode``: what the border of the input holds, as in ``torch.nn.Conv2d``.

``'zeros'`` is the kernels' own zero padding. ``'reflect'`` (mirror without repeating the edge),
``'replicate'`` (repeat the edge) and ``'circular'`` (wrap around) pad the input explicitly
(``np.pad``, one copy of the input) and then convolve with no padding, exactly as torch does;
:func:`fold` is the adjoint, for gradients.
"""

import numpy as np

#: torch's padding_mode names and the ``np.pad`` mode that pads the same values.
MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def check_mode(mode, where):
    if mode not in MODES:
        raise ValueError(f"{where}: padding_mode must be one of {tuple(MODES)}, got {mode!r}")


def pad(x, pairs, mode, where, first_axis=None):
    """``x`` padded on ``len(pairs)`` axes from ``first_axis`` (default: its last axes) by
    ``(low, high)`` pairs with ``mode`` (not ``'zeros'``), after torch's checks: reflect needs
    padding smaller than the size, circular no larger than it."""
    nd = len(pairs)
    first = x.ndim - nd if first_axis is None else first_axis
    for size, (lo, hi) in zip(x.shape[first:first + nd], pairs):
        if mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(f"{where}: padding_mode='reflect' needs padding smaller than the "
                             f"input size, got padding {(lo, hi)} for size {size}")
        if mode == "circular" and max(lo, hi) > size:
            raise ValueError(f"{where}: padding_mode='circular' needs padding no larger than "
                             f"the input size, got padding {(lo, hi)} for size {size}")
    width = ((0, 0),) * first + tuple(pairs) + ((0, 0),) * (x.ndim - first - nd)
    return np.pad(x, width, mode=MODES[mode])


def fold(grad_padded, shape, pairs, mode):
    """Adjoint of :func:`pad`: sum the gradient of every padded position onto the input element
    it copies (``shape`` is the unpadded input's)."""
    result = grad_padded
    nd = len(pairs)
    for i, (lo, hi) in enumerate(pairs):
        axis = result.ndim - nd + i
        n = shape[axis]
        source = np.arange(-lo, n + hi)
        if mode == "reflect":
            source = np.abs(source)
            source = np.where(source >= n, 2 * (n - 1) - source, source)
        elif mode == "replicate":
            source = np.clip(source, 0, n - 1)
        else:  # circular
            source = source % n
        folded = np.zeros(result.shape[:axis] + (n,) + result.shape[axis + 1:],
                          dtype=result.dtype)
        np.add.at(folded, (slice(None),) * axis + (source,), result)
        result = folded
    return result
