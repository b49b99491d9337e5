"""Normalisation of the hyper-parameter arguments (stride, padding, dilation, ...).

Each function takes what a user may pass (an int, a tuple, a string) and returns a tuple with one
entry per spatial dimension, or raises a ValueError/TypeError that names the argument and the rule.
"""

import numbers
import operator


def _as_int(value, name):
    # Accept Python and NumPy integers, reject bool (an easy typo for an int) and floats.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    return operator.index(value)


def int_tuple(value, nd, name, minimum):
    """``value`` as a tuple of ``nd`` ints, each >= ``minimum``.

    Accepts an int (repeated over the dimensions) or a sequence of exactly ``nd`` ints.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
        values = tuple(_as_int(v, name) for v in value)
    else:
        values = (_as_int(value, name),) * nd
    for v in values:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values


def explicit_padding(value, nd, name="padding"):
    """Explicit padding as ``nd`` pairs ``(low, high)`` of non-negative ints.

    Forms: ``p`` (all sides), ``(p_h, p_w)`` (symmetric per dimension) and
    ``((top, bottom), (left, right))`` (asymmetric); entries of the last two forms may be mixed.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"{name} must be an int, a tuple of {nd} ints or a tuple of {nd} "
                             f"(low, high) pairs, got {value!r}")
        pairs = []
        for entry in value:
            if isinstance(entry, (tuple, list)):
                if len(entry) != 2:
                    raise ValueError(f"{name}: each per-dimension entry must be an int or a "
                                     f"(low, high) pair, got {entry!r}")
                pairs.append((_as_int(entry[0], name), _as_int(entry[1], name)))
            else:
                p = _as_int(entry, name)
                pairs.append((p, p))
    else:
        p = _as_int(value, name)
        pairs = [(p, p)] * nd
    for low, high in pairs:
        if low < 0 or high < 0:
            raise ValueError(f"{name} must be non-negative, got {value!r}")
    return tuple(pairs)


def same_pads(kernel_size, dilation):
    """Padding that keeps the size for stride 1, as ``(low, high)`` pairs.

    The total pad is ``dilation * (kernel - 1)``; when it is odd the extra element goes to the
    high side (bottom/right), as in torch.
    """
    pads = []
    for k, d in zip(kernel_size, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def tf_same_pads(in_size, kernel_size, stride, dilation):
    """TensorFlow's ``'SAME'``: pads giving ``ceil(in / stride)`` outputs, the odd one at the
    high side, for any stride and dilation."""
    pads = []
    for i, k, s, d in zip(in_size, kernel_size, stride, dilation):
        total = max((-(-i // s) - 1) * s + d * (k - 1) + 1 - i, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def conv_padding(value, nd, kernel_size, stride, dilation, in_size=None):
    """Resolve ``padding`` of a forward convolution, including ``'valid'``, ``'same'`` (torch:
    stride 1) and ``'same_tf'`` (TensorFlow's rule, any stride; needs ``in_size``)."""
    if isinstance(value, str):
        if value == "valid":
            return ((0, 0),) * nd
        if value == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' requires stride 1 (as in torch), got "
                                 f"stride={stride}; padding='same_tf' gives TensorFlow's "
                                 f"'SAME' for any stride")
            return same_pads(kernel_size, dilation)
        if value == "same_tf":
            if in_size is None:
                raise ValueError("padding='same_tf' depends on the input size: it is accepted "
                                 "by the functions (conv1d, conv2d), not by layers")
            return tf_same_pads(in_size, kernel_size, stride, dilation)
        raise ValueError(f"padding must be an int, a tuple, 'valid', 'same' or 'same_tf', got "
                         f"{value!r}")
    return explicit_padding(value, nd)


def transposed_padding(value, nd):
    """Resolve ``padding`` of a transposed convolution (``'same'`` has no meaning there)."""
    if isinstance(value, str):
        if value == "valid":
            return ((0, 0),) * nd
        if value == "same":
            raise ValueError("padding='same' is not supported for transposed convolution: its "
                             "output size is set by stride, padding and output_padding")
        raise ValueError(f"padding must be an int, a tuple or 'valid', got {value!r}")
    return explicit_padding(value, nd)


def groups_arg(value):
    groups = _as_int(value, "groups")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    return groups
