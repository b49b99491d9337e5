"""The description of one convolution: shapes, hyper-parameters and dtype, computed once.

A :class:`ConvProblem` is what the front end builds from the user's arguments, what the
dispatcher chooses an algorithm for, and what tests and benchmarks are labelled with: its ``str``
is a compact descriptor such as ``mb1ic64ih56iw56oc64kh3kw3ph1pw1``.
"""

import math
import re
from dataclasses import dataclass, field

import numpy as np

from . import _args

_AXES = {1: "w", 2: "hw", 3: "dhw"}
_TOKEN = re.compile(r"(mb|ic|oc|op[dhw]|i[dhw]|k[dhw]|s[dhw]|p[dhw]|d[dhw]|g)(\d+(?:_\d+)?)")


@dataclass(frozen=True)
class ConvProblem:
    """One convolution, forward or transposed, over ``nd`` spatial dimensions (1, 2 or 3).

    Attributes
    ----------
    batch, in_channels, out_channels, groups : int
    in_size, kernel_size, stride, dilation : tuple of int, one entry per spatial dimension
    padding : tuple of (low, high) pairs, one per spatial dimension
    transposed : bool
        True for a transposed convolution (``conv_transpose*``).
    output_padding : tuple of int
        Extra size added at the high end of each spatial dimension (transposed only).
    dtype : str
        ``'float32'`` or ``'float64'``: the precision the convolution is computed in.
    bias : bool
        Whether a bias is added.

    Construction validates every rule (channels divisible by groups, positive output size, ...)
    and raises ValueError naming the argument and the rule.
    """

    batch: int
    in_channels: int
    out_channels: int
    in_size: tuple
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int = 1
    transposed: bool = False
    output_padding: tuple = None
    dtype: str = "float32"
    bias: bool = False
    out_size: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        nd = len(self.in_size)
        if nd not in _AXES:
            raise ValueError(f"only 1, 2 or 3 spatial dimensions are supported, got {nd}")
        if self.output_padding is None:
            object.__setattr__(self, "output_padding", (0,) * nd)
        for name in ("kernel_size", "stride", "padding", "dilation", "output_padding"):
            if len(getattr(self, name)) != nd:
                raise ValueError(f"{name} must have {nd} entries, got {getattr(self, name)!r}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)
        self._check()
        object.__setattr__(self, "out_size", self._out_size())
        self._check_out_size()

    # ------------------------------------------------------------------ validation

    def _check(self):
        if self.batch < 0:
            raise ValueError(f"batch size must be >= 0, got {self.batch}")
        for name in ("in_channels", "out_channels", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(s < 1 for s in self.in_size):
            raise ValueError(f"input spatial size must be >= 1 in every dimension, got "
                             f"{self.in_size}")
        if any(k < 1 for k in self.kernel_size):
            raise ValueError(f"kernel size must be >= 1 in every dimension, got "
                             f"{self.kernel_size}")
        if any(s < 1 for s in self.stride):
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if any(d < 1 for d in self.dilation):
            raise ValueError(f"dilation must be >= 1, got {self.dilation}")
        if any(p < 0 for pair in self.padding for p in pair):
            raise ValueError(f"padding must be non-negative, got {self.padding}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{name} must be divisible by groups, got {name}="
                                 f"{getattr(self, name)} and groups={self.groups}")
        if self.transposed:
            for op, s, d in zip(self.output_padding, self.stride, self.dilation):
                if not 0 <= op < max(s, d):
                    raise ValueError(
                        f"output_padding must be >= 0 and smaller than either stride or dilation "
                        f"in each dimension, got output_padding={self.output_padding}, "
                        f"stride={self.stride}, dilation={self.dilation}")
        elif any(self.output_padding):
            raise ValueError("output_padding applies to transposed convolution only")

    def _out_size(self):
        sizes = []
        for i, k, s, (lo, hi), d, op in zip(self.in_size, self.kernel_size, self.stride,
                                            self.padding, self.dilation, self.output_padding):
            span = d * (k - 1) + 1
            if self.transposed:
                sizes.append((i - 1) * s + span - lo - hi + op)
            else:
                sizes.append((i + lo + hi - span) // s + 1)
        return tuple(sizes)

    def _check_out_size(self):
        if all(o >= 1 for o in self.out_size):
            return
        if self.transposed:
            raise ValueError(f"padding {self.padding} crops away the whole output: computed "
                             f"output size {self.out_size} for input size {self.in_size}")
        padded = tuple(i + lo + hi for i, (lo, hi) in zip(self.in_size, self.padding))
        span = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
        raise ValueError(f"kernel size {self.kernel_size} (dilated extent {span}) is larger than "
                         f"the padded input size {padded}: computed output size {self.out_size}")

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_conv(cls, input_shape, weight_shape, *, bias=False, stride=1, padding=0, dilation=1,
                 groups=1, dtype="float32"):
        """Problem of ``conv{nd}d`` from a batched input shape ``(N, C_in, *spatial)`` and a
        weight shape ``(C_out, C_in / groups, *kernel)``."""
        return _memoised(cls._for_conv, (False, input_shape, weight_shape, bias, stride,
                                         padding, dilation, groups, dtype))

    @classmethod
    def _for_conv(cls, input_shape, weight_shape, bias, stride, padding, dilation, groups,
                  dtype):
        nd = _spatial_dims(input_shape, weight_shape)
        n, c_in = input_shape[:2]
        c_out, c_in_g = weight_shape[:2]
        kernel = tuple(weight_shape[2:])
        groups = _args.groups_arg(groups)
        stride = _args.int_tuple(stride, nd, "stride", 1)
        dilation = _args.int_tuple(dilation, nd, "dilation", 1)
        padding = _args.conv_padding(padding, nd, kernel, stride, dilation,
                                     tuple(input_shape[2:]))
        if c_in % groups:
            raise ValueError(f"in_channels must be divisible by groups, got in_channels={c_in} "
                             f"and groups={groups}")
        if c_in_g * groups != c_in:
            raise ValueError(f"weight of shape {tuple(weight_shape)} expects {c_in_g * groups} "
                             f"input channels (weight.shape[1] * groups = {c_in_g} * {groups}) "
                             f"but the input has {c_in}")
        return cls(n, c_in, c_out, tuple(input_shape[2:]), kernel, stride, padding, dilation,
                   groups, False, None, dtype, bool(bias))

    @classmethod
    def for_conv_transpose(cls, input_shape, weight_shape, *, bias=False, stride=1, padding=0,
                           output_padding=0, groups=1, dilation=1, dtype="float32"):
        """Problem of ``conv_transpose{nd}d`` from a batched input shape ``(N, C_in, *spatial)``
        and a weight shape ``(C_in, C_out / groups, *kernel)``."""
        return _memoised(cls._for_conv_transpose,
                         (True, input_shape, weight_shape, bias, stride, padding, output_padding,
                          groups, dilation, dtype))

    @classmethod
    def _for_conv_transpose(cls, input_shape, weight_shape, bias, stride, padding,
                            output_padding, groups, dilation, dtype):
        nd = _spatial_dims(input_shape, weight_shape)
        n, c_in = input_shape[:2]
        kernel = tuple(weight_shape[2:])
        groups = _args.groups_arg(groups)
        stride = _args.int_tuple(stride, nd, "stride", 1)
        dilation = _args.int_tuple(dilation, nd, "dilation", 1)
        output_padding = _args.int_tuple(output_padding, nd, "output_padding", 0)
        padding = _args.transposed_padding(padding, nd)
        if weight_shape[0] != c_in:
            raise ValueError(f"weight of shape {tuple(weight_shape)} expects {weight_shape[0]} "
                             f"input channels (weight.shape[0]; transposed weights are "
                             f"(C_in, C_out / groups, *kernel)) but the input has {c_in}")
        return cls(n, c_in, weight_shape[1] * groups, tuple(input_shape[2:]), kernel, stride,
                   padding, dilation, groups, True, output_padding, dtype, bool(bias))

    @classmethod
    def from_descriptor(cls, text):
        """Parse a descriptor as written by ``str(problem)``, e.g. ``mb1ic64ih56oc64kh3ph1``.

        Missing width entries copy the height ones (``ih56`` means 56x56, ``kh3`` a 3x3 kernel),
        ``mb`` defaults to 1, a ``deconv_`` prefix makes it transposed, a trailing ``b`` adds a
        bias and a ``_float64`` suffix sets the dtype. Only 2-d descriptors may omit the width.
        """
        body = text.strip()
        transposed = body.startswith("deconv_")
        body = body[len("deconv_"):] if transposed else body
        dtype = "float32"
        for name in ("float32", "float64"):
            if body.endswith("_" + name):
                body, dtype = body[:-len(name) - 1], name
        bias = body.endswith("b")
        body = body[:-1] if bias else body
        fields = {}
        pos = 0
        for match in _TOKEN.finditer(body):
            if match.start() != pos:
                break
            fields[match.group(1)] = match.group(2)
            pos = match.end()
        if pos != len(body) or "ic" not in fields or "oc" not in fields:
            raise ValueError(f"cannot parse convolution descriptor {text!r}: expected tokens like "
                             f"mb1ic64ih56iw56oc64kh3kw3sh1sw1ph1pw1dh1dw1g1, 'ic' and 'oc' "
                             f"required")
        axes = "".join(a for a in "dhw" if f"i{a}" in fields) or "hw"
        if axes == "h":
            axes = "hw"

        def per_axis(prefix, default):
            values = []
            for a in axes:
                raw = fields.get(prefix + a, fields.get(prefix + "h", default))
                values.append(raw)
            return values

        ints = lambda vals: tuple(int(v) for v in vals)  # noqa: E731
        pads = tuple((int(v.split("_")[0]), int(v.split("_")[-1]))
                     for v in per_axis("p", "0"))
        groups = int(fields.get("g", 1))
        c_in, c_out = int(fields["ic"]), int(fields["oc"])
        return cls(int(fields.get("mb", 1)), c_in, c_out, ints(per_axis("i", "1")),
                   ints(per_axis("k", "1")), ints(per_axis("s", "1")), pads,
                   ints(per_axis("d", "1")), groups, transposed,
                   ints(per_axis("op", "0")) if transposed else None, dtype, bias)

    # ------------------------------------------------------------------ derived quantities

    @property
    def nd(self):
        """Number of spatial dimensions."""
        return len(self.in_size)

    @property
    def input_shape(self):
        return (self.batch, self.in_channels) + self.in_size

    @property
    def weight_shape(self):
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    @property
    def output_shape(self):
        return (self.batch, self.out_channels) + self.out_size

    @property
    def params(self):
        """Number of learnable parameters: weights plus bias."""
        return math.prod(self.weight_shape) + (self.out_channels if self.bias else 0)

    @property
    def macs(self):
        """Multiply-accumulates of the weight products (bias adds excluded).

        Forward: every output element takes ``C_in / groups * prod(kernel)`` products.
        Transposed: counted on the input grid, every input element meets
        ``C_out / groups * prod(kernel)`` weights; products that the padding crops away are
        counted too, since they are computed.
        """
        k = math.prod(self.kernel_size)
        if self.transposed:
            return (self.batch * self.in_channels * math.prod(self.in_size)
                    * (self.out_channels // self.groups) * k)
        return (self.batch * self.out_channels * math.prod(self.out_size)
                * (self.in_channels // self.groups) * k)

    @property
    def flops(self):
        """Floating-point operations of the weight products: ``2 * macs`` (bias adds excluded)."""
        return 2 * self.macs

    @property
    def bias_adds(self):
        """Additions of the bias: one per output element when there is a bias."""
        return math.prod(self.output_shape) if self.bias else 0

    @property
    def is_depthwise(self):
        """One group per input channel (``groups == in_channels``), any channel multiplier."""
        return self.groups == self.in_channels

    def lifted_to_2d(self):
        """The same 1-d problem as a 2-d one with a unit leading spatial dimension."""
        if self.nd != 1:
            raise ValueError(f"lifted_to_2d applies to 1-d problems, this one is {self.nd}-d")
        return ConvProblem(self.batch, self.in_channels, self.out_channels, (1,) + self.in_size,
                           (1,) + self.kernel_size, (1,) + self.stride,
                           ((0, 0),) + self.padding, (1,) + self.dilation, self.groups,
                           self.transposed, (0,) + self.output_padding, self.dtype, self.bias)

    def __str__(self):
        axes = _AXES[self.nd]
        parts = [f"mb{self.batch}ic{self.in_channels}"]
        parts += [f"i{a}{v}" for a, v in zip(axes, self.in_size)]
        parts.append(f"oc{self.out_channels}")
        if self.groups != 1:
            parts.append(f"g{self.groups}")
        parts += [f"k{a}{v}" for a, v in zip(axes, self.kernel_size)]
        parts += [f"s{a}{v}" for a, v in zip(axes, self.stride) if v != 1]
        for a, (lo, hi) in zip(axes, self.padding):
            if lo == hi and lo:
                parts.append(f"p{a}{lo}")
            elif lo != hi:
                parts.append(f"p{a}{lo}_{hi}")
        parts += [f"d{a}{v}" for a, v in zip(axes, self.dilation) if v != 1]
        parts += [f"op{a}{v}" for a, v in zip(axes, self.output_padding) if v]
        if self.bias:
            parts.append("b")
        prefix = "deconv_" if self.transposed else ""
        suffix = "" if self.dtype == "float32" else f"_{self.dtype}"
        return prefix + "".join(parts) + suffix


def _spatial_dims(input_shape, weight_shape):
    if len(input_shape) != len(weight_shape):
        raise ValueError(f"input (batched shape {tuple(input_shape)}) and weight (shape "
                         f"{tuple(weight_shape)}) must have the same number of dimensions")
    nd = len(input_shape) - 2
    if nd not in _AXES:
        raise ValueError(f"expected 1, 2 or 3 spatial dimensions, got input shape "
                         f"{tuple(input_shape)}")
    return nd


# Problems built from the same arguments: a repeated call (a layer in a loop) skips the
# validation, which costs about as much as the kernel of a small convolution.
_MEMO = {}
_MEMO_SIZE = 1024


def _memoised(build, args):
    """``build(*args[1:])``, remembered by argument values (problems are immutable); errors are
    raised every time, as they are never remembered."""
    key = _memo_key(args)
    if key is None:
        return build(*args[1:])
    problem = _MEMO.get(key)
    if problem is None:
        problem = build(*args[1:])
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.clear()
        _MEMO[key] = problem
    return problem


def _memo_key(value):
    """A hashable key that tells apart every value the constructors treat differently (``True``
    from ``1``, a NumPy integer from an int, a list from a tuple), or None for values of other
    types, which are not remembered. Plain ints, and tuples of them (shapes), are their own
    keys; every other key is a tuple that starts with a type."""
    kind = type(value)
    if kind is int:
        return value
    if kind is tuple or kind is list:
        # a loop rather than a generator of recursive calls: this runs on every call
        parts = [kind]
        plain = kind is tuple
        for v in value:
            k = type(v)
            if k is int:
                parts.append(v)
                continue
            plain = False
            part = (k, v) if k is bool or k is str or v is None else _memo_key(v)
            if part is None:
                return None
            parts.append(part)
        return value if plain else tuple(parts)
    if kind in (bool, str, float) or value is None:
        return (kind, value)
    if isinstance(value, np.dtype):
        return (np.dtype, value.str)
    if isinstance(value, np.generic):
        return (kind, value.item())
    if isinstance(value, type) and issubclass(value, np.generic):
        return (type, value)
    return None
