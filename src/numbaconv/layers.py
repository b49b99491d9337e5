r"""Convolution layers with torch's constructors, initialisation, ``repr`` and ``state_dict``.

:class:`Conv1d`, :class:`Conv2d`, :class:`ConvTranspose1d` and :class:`ConvTranspose2d` hold a
``weight`` and an optional ``bias`` (NumPy arrays) and call the functions of
:mod:`numbaconv.functional` when called. They also answer shape and cost questions without
running anything: :attr:`~_ConvLayer.num_params`, :meth:`~_ConvLayer.output_shape`,
:meth:`~_ConvLayer.macs`, :meth:`~_ConvLayer.flops`, :meth:`~_ConvLayer.bias_adds` (all computed by
:class:`~numbaconv.problem.ConvProblem`).

Initialisation is torch's ``reset_parameters``: ``kaiming_uniform_(weight, a=sqrt(5))`` and a
uniform bias, which both come down to

.. math::
    \text{weight}, \text{bias} \sim \mathcal{U}\left(-\frac{1}{\sqrt{\text{fan\_in}}},
    \frac{1}{\sqrt{\text{fan\_in}}}\right), \qquad
    \text{fan\_in} = \text{weight.shape[1]} \cdot \prod \text{kernel\_size}

(``C_in / groups * prod(kernel)`` for a forward layer, ``C_out / groups * prod(kernel)`` for a
transposed one, whose weight is ``(C_in, C_out / groups, *kernel)``), drawn from ``rng``.

Examples
--------
>>> import numpy as np, numbaconv
>>> conv = numbaconv.Conv2d(3, 64, 3, padding=1, rng=0)
>>> conv
Conv2d(3, 64, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
>>> conv.weight.shape, conv.num_params
((64, 3, 3, 3), 1792)
>>> conv(np.ones((1, 3, 32, 32), np.float32)).shape
(1, 64, 32, 32)
>>> conv.output_shape((1, 3, 224, 224)), conv.macs((1, 3, 224, 224))
((1, 64, 224, 224), 86704128)
>>> up = numbaconv.ConvTranspose2d(3, 1, kernel_size=2, stride=2)
>>> up.macs((1, 3, 2, 2)), up.bias_adds((1, 3, 2, 2)), up.macs((1, 3, 2, 2), convention="torchinfo")
(48, 16, 208)
"""

import math
import numbers

import numpy as np

from . import _args, functional, padding_modes
from ._front import as_array
from .plan import plan_conv2d
from .plan_transposed import plan_conv_transpose2d
from .problem import ConvProblem

__all__ = ["Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d"]



def _channels(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _layer_dtype(dtype):
    if dtype is None:
        return np.dtype(np.float32)
    # torch dtypes (torch.float64) print as 'torch.float64'; accept them by name.
    text = str(dtype)
    name = text[len("torch."):] if text.startswith("torch.") else dtype
    try:
        resolved = np.dtype(name)
    except TypeError:
        resolved = None
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def _check_device(device):
    if device is not None and str(device) != "cpu":
        raise ValueError(f"device must be None or 'cpu' (numbaconv computes on the CPU), "
                         f"got {device!r}")


class _ConvLayer:
    """What the four layer classes share; see :class:`Conv2d` and :class:`ConvTranspose2d`."""

    _nd = 2
    transposed = False

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               bias, padding_mode, output_padding, device, dtype, rng):
        nd, kind = self._nd, type(self).__name__
        self.in_channels = _channels(in_channels, "in_channels")
        self.out_channels = _channels(out_channels, "out_channels")
        self.groups = _args.groups_arg(groups)
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) % self.groups:
                raise ValueError(f"{kind}: {name} must be divisible by groups, got {name}="
                                 f"{getattr(self, name)} and groups={self.groups}")
        self.kernel_size = _args.int_tuple(kernel_size, nd, "kernel_size", 1)
        self.stride = _args.int_tuple(stride, nd, "stride", 1)
        self.dilation = _args.int_tuple(dilation, nd, "dilation", 1)
        self.output_padding = _args.int_tuple(output_padding, nd, "output_padding", 0)
        if isinstance(padding, str):
            # resolved now so that a bad string or 'same' with a stride fails at construction
            if self.transposed:
                _args.transposed_padding(padding, nd)
            else:
                _args.conv_padding(padding, nd, self.kernel_size, self.stride, self.dilation)
            self.padding = padding
        else:
            pairs = _args.explicit_padding(padding, nd)
            # torch keeps symmetric padding as one int per dimension; keep pairs only if needed
            symmetric = all(lo == hi for lo, hi in pairs)
            self.padding = tuple(lo for lo, _ in pairs) if symmetric else pairs
        if self.transposed:
            for op, s, d in zip(self.output_padding, self.stride, self.dilation):
                if op >= max(s, d):
                    raise ValueError(f"{kind}: output_padding must be smaller than either stride "
                                     f"or dilation, got output_padding={self.output_padding}, "
                                     f"stride={self.stride}, dilation={self.dilation}")
        padding_modes.check_mode(padding_mode, kind)
        self.padding_mode = padding_mode
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"{kind}: bias must be True or False, got {bias!r}")
        _check_device(device)
        self.dtype = _layer_dtype(dtype)
        self._weight = np.empty(self.weight_shape, dtype=self.dtype)
        self._bias = np.empty(self.out_channels, dtype=self.dtype) if bias else None
        self.reset_parameters(rng)

    # ------------------------------------------------------------------ parameters

    @property
    def weight_shape(self):
        """``(C_out, C_in / groups, *kernel)``, or ``(C_in, C_out / groups, *kernel)`` if
        transposed."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        return (self.out_channels, self.in_channels // self.groups) + self.kernel_size

    @property
    def weight(self):
        """The weight array, of shape :attr:`weight_shape` and the layer's dtype.

        Assigning an array of that shape replaces it (converted to the layer's dtype, C-contiguous;
        no copy when it already is). In-place changes are seen by the next call.
        """
        return self._weight

    @weight.setter
    def weight(self, value):
        self._weight = self._parameter(value, "weight", self.weight_shape)

    @property
    def bias(self):
        """The bias array of shape ``(C_out,)``, or None. Assign an array or None."""
        return self._bias

    @bias.setter
    def bias(self, value):
        self._bias = None if value is None else self._parameter(value, "bias",
                                                                 (self.out_channels,))

    def _parameter(self, value, name, shape):
        array = as_array(value, name)
        if array.shape != shape:
            raise ValueError(f"{type(self).__name__}: {name} must have shape {shape}, got "
                             f"{array.shape}")
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real array, got dtype {array.dtype}")
        return np.ascontiguousarray(array, dtype=self.dtype)

    def fan_in(self):
        """``weight.shape[1] * prod(kernel_size)``, as torch computes it for initialisation."""
        return self.weight_shape[1] * math.prod(self.kernel_size)

    def reset_parameters(self, rng=None):
        """Draw weight and bias (in that order) from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

        ``rng`` is a :class:`numpy.random.Generator`, a seed, or None (fresh entropy).
        """
        generator = np.random.default_rng(rng)
        bound = 1.0 / math.sqrt(self.fan_in())
        for array in (self._weight, self._bias):
            if array is not None:
                # drawn in the layer's dtype, like torch: no float64 temporary for big layers
                generator.random(out=array, dtype=array.dtype)
                array *= 2 * bound
                array -= bound

    @property
    def num_params(self):
        """Learnable parameters: ``prod(weight_shape)`` plus ``C_out`` with a bias."""
        return self._weight.size + (0 if self._bias is None else self._bias.size)

    # ------------------------------------------------------------------ torch-compatible state

    def state_dict(self, *, prefix=""):
        """``{prefix + 'weight': weight, prefix + 'bias': bias}`` (bias only if present).

        The arrays themselves (not copies), under torch's key names and shapes, so
        ``torch_conv.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`` works.
        """
        state = {prefix + "weight": self._weight}
        if self._bias is not None:
            state[prefix + "bias"] = self._bias
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``weight`` (and ``bias``) from a mapping with torch's keys, e.g. a torch
        ``Conv2d``'s ``state_dict()``; values may be arrays or CPU tensors.

        Shapes must match exactly; values are copied into the existing arrays (converted to the
        layer's dtype). With ``strict`` a missing or unexpected key raises KeyError; without, the
        keys present are loaded. Returns ``(missing_keys, unexpected_keys)``.
        """
        expected = ["weight"] + (["bias"] if self._bias is not None else [])
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected} (expected exactly {expected})")
        arrays = {}
        for key in expected:
            if key in state_dict:
                value = as_array(state_dict[key], key)
                target = self._weight if key == "weight" else self._bias
                if value.shape != target.shape:
                    raise ValueError(f"size mismatch for {key}: copying a parameter of shape "
                                     f"{value.shape}, the shape in this "
                                     f"{type(self).__name__} is {target.shape}")
                arrays[key] = (target, value)
        for target, value in arrays.values():  # all checked before anything is changed
            np.copyto(target, value, casting="unsafe")
        return missing, unexpected

    @classmethod
    def from_torch(cls, module, *, dtype=None):
        """A layer with the hyper-parameters and a copy of the weights of a torch conv module."""
        kwargs = dict(stride=module.stride, padding=module.padding, dilation=module.dilation,
                      groups=module.groups, bias=module.bias is not None,
                      padding_mode=module.padding_mode,
                      dtype=dtype if dtype is not None else module.weight.dtype)
        if cls.transposed:
            kwargs["output_padding"] = module.output_padding
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, **kwargs)
        layer.load_state_dict(module.state_dict())
        return layer

    # ------------------------------------------------------------------ shapes and costs

    def _batched(self, input_shape):
        shape = tuple(input_shape)
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in shape):
            raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}")
        if len(shape) not in (self._nd + 1, self._nd + 2):
            raise ValueError(f"{self!r} takes inputs of shape (N, C, *spatial) or (C, *spatial) "
                             f"with {self._nd} spatial dimension(s), got {shape}")
        batched = shape if len(shape) == self._nd + 2 else (1,) + shape
        if batched[1] != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels, got input of "
                             f"shape {shape}")
        return batched, len(shape) == self._nd + 1

    def problem(self, input_shape, *, output_size=None, dtype=None):
        """The :class:`~numbaconv.problem.ConvProblem` this layer solves on ``input_shape``.

        ``input_shape`` is ``(N, C_in, *spatial)`` or unbatched ``(C_in, *spatial)`` (batch 1).
        ``output_size`` (transposed layers only) sets ``output_padding`` as torch's ``forward``
        does. Raises ValueError naming the rule if the layer cannot take that input.
        """
        batched, _ = self._batched(input_shape)
        dtype = self.dtype if dtype is None else dtype
        has_bias = self._bias is not None
        if not self.transposed:
            if output_size is not None:
                raise TypeError("output_size applies to transposed layers only")
            return ConvProblem.for_conv(batched, self.weight_shape, bias=has_bias,
                                        stride=self.stride, padding=self.padding,
                                        dilation=self.dilation, groups=self.groups, dtype=dtype)
        output_padding = self.output_padding
        if output_size is not None:
            from ._front import output_padding_for
            output_padding = output_padding_for(output_size, self._nd, batched, self.weight_shape,
                                                self.stride, self.padding, self.dilation)
        return ConvProblem.for_conv_transpose(batched, self.weight_shape, bias=has_bias,
                                              stride=self.stride, padding=self.padding,
                                              output_padding=output_padding, groups=self.groups,
                                              dilation=self.dilation, dtype=dtype)

    def output_shape(self, input_shape, *, output_size=None):
        """Shape of the result for an input of ``input_shape`` (batched or not, as given).

        Forward, per spatial dimension: ``floor((i + p_lo + p_hi - d (k - 1) - 1) / s) + 1``;
        transposed: ``(i - 1) s - p_lo - p_hi + d (k - 1) + output_padding + 1``.
        """
        shape = self.problem(input_shape, output_size=output_size).output_shape
        return shape[1:] if self._batched(input_shape)[1] else shape

    def macs(self, input_shape, *, convention=None, output_size=None):
        """Multiply-accumulates of the weight products (bias adds excluded).

        Forward: ``N * C_out * prod(out_spatial) * C_in / groups * prod(kernel)``. Transposed,
        counted on the input grid where the products happen:
        ``N * C_in * prod(in_spatial) * C_out / groups * prod(kernel)``. ``convention`` names a
        counting tool whose number to return instead (see :data:`numbaconv.summary.CONVENTIONS`).
        """
        from .summary import convention_macs

        return convention_macs(self.problem(input_shape, output_size=output_size), convention)

    def flops(self, input_shape, *, output_size=None):
        """``2 * macs(input_shape)``: one multiply and one add per weight product."""
        return self.problem(input_shape, output_size=output_size).flops

    def bias_adds(self, input_shape, *, output_size=None):
        """Bias additions: one per output element if the layer has a bias, else 0."""
        return self.problem(input_shape, output_size=output_size).bias_adds

    # ------------------------------------------------------------------ computing

    def _explicit_padding(self):
        if self.transposed:
            return _args.transposed_padding(self.padding, self._nd)
        return _args.conv_padding(self.padding, self._nd, self.kernel_size, self.stride,
                                  self.dilation)

    def _pad_input(self, x):
        """The input padded by ``padding_mode`` (not zeros), checked as torch checks it."""
        return padding_modes.pad(as_array(x, "input"), self._explicit_padding(),
                                 self.padding_mode, repr(self))

    def backward(self, grad_output, input=None):
        """Gradients ``(dL/dinput, dL/dweight, dL/dbias)`` for ``grad_output = dL/d(output)``.

        ``input`` defaults to the input of the layer's last call (kept by reference, not copied:
        pass it explicitly if it was modified since). ``dL/dbias`` is None without a bias. With
        ``padding_mode`` other than zeros, the gradient of the padded input is folded back onto
        the positions each padded element copies (as torch's autograd does).

        >>> import numpy as np, numbaconv
        >>> layer = numbaconv.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
        >>> x = np.ones((2, 3, 8, 8), np.float32)
        >>> dx, dw, db = layer.backward(np.ones(layer(x).shape, np.float32))
        >>> dx.shape, dw.shape, db.shape
        ((2, 3, 8, 8), (4, 3, 3, 3), (4,))
        """
        from . import grad

        x = getattr(self, "_last_input", None) if input is None else input
        if x is None:
            raise ValueError(f"{self!r}.backward: no input: call the layer first or pass input=")
        x = as_array(x, "input")
        g = as_array(grad_output, "grad_output")
        bias = self._bias is not None
        nd = self._nd
        if self.transposed:
            from ._front import output_padding_for

            batched, _ = self._batched(x.shape)
            op = output_padding_for(g.shape[-nd:], nd, batched, self.weight_shape, self.stride,
                                    self.padding, self.dilation)
            vjp = grad.conv_transpose2d_vjp if nd == 2 else grad.conv_transpose1d_vjp
            if self.padding_mode == "zeros":
                return vjp(x, self._weight, g, self.stride, self.padding, op, self.groups,
                           self.dilation, bias=bias)
            # the layer is fold(full transposed result) + bias: the gradient of the full result
            # is grad_output padded by the mode (the adjoint of the fold)
            gp = padding_modes.pad(g, self._explicit_padding(), self.padding_mode, repr(self))
            dx, dw, _ = vjp(x, self._weight, gp, self.stride, 0, op, self.groups, self.dilation,
                            bias=False)
            return dx, dw, (grad._bias_of(g, nd + 1) if bias else None)
        vjp = grad.conv2d_vjp if nd == 2 else grad.conv1d_vjp
        if self.padding_mode == "zeros":
            return vjp(x, self._weight, g, self.stride, self.padding, self.dilation, self.groups,
                       bias=bias)
        padded = self._pad_input(x)
        dxp, dw, db = vjp(padded, self._weight, g, self.stride, 0, self.dilation, self.groups,
                          bias=bias)
        return (padding_modes.fold(dxp, x.shape, self._explicit_padding(), self.padding_mode),
                dw, db)

    # ------------------------------------------------------------------ text

    def extra_repr(self):
        """The part of the ``repr`` inside the parentheses, written as torch writes it."""
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if isinstance(self.padding, str) or any(p != 0 for p in self.padding):
            text += f", padding={self.padding}"
        if self.dilation != (1,) * self._nd:
            text += f", dilation={self.dilation}"
        if self.output_padding != (0,) * self._nd:
            text += f", output_padding={self.output_padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self._bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    @property
    def spec(self):
        """The layer in the compact form ``numbaconv shape`` reads, e.g. ``conv:64,k3,p1``."""
        from .shape_cli import layer_spec

        return layer_spec(self)


class Conv2d(_ConvLayer):
    r"""2-D convolution layer, as ``torch.nn.Conv2d``.

    .. math::
        \text{out}(n, c_o) = \text{bias}(c_o) + \sum_{c_i} \text{weight}(c_o, c_i) \star
        \text{input}(n, c_i)

    with :math:`\star` the 2-D cross-correlation and :math:`c_i` running over the input channels
    of :math:`c_o`'s group. Output size per spatial dimension:

    .. math::
        H_{out} = \left\lfloor \frac{H + p_t + p_b - d (k - 1) - 1}{s} \right\rfloor + 1

    Parameters
    ----------
    in_channels, out_channels : int
        Both divisible by ``groups``.
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int), ((top, bottom), (left, right)), 'valid' or 'same'
        ``'same'`` needs stride 1.
    groups : int
    bias : bool
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}
        How the border is padded (as torch; the cost counts are the same).
    device : None or 'cpu'
        Accepted for torch compatibility.
    dtype : float32 (default) or float64, as a NumPy dtype, name or torch dtype
    rng : numpy.random.Generator or int, optional
        Source of the initial weights (keyword only).

    Attributes
    ----------
    weight : numpy.ndarray, shape (C_out, C_in / groups, kH, kW)
    bias : numpy.ndarray, shape (C_out,), or None

    Calling the layer on an array of shape (N, C_in, H, W) or (C_in, H, W) returns
    ``numbaconv.conv2d(input, weight, bias, ...)``, shape (N, C_out, H_out, W_out).

    Examples
    --------
    >>> import numbaconv
    >>> numbaconv.Conv2d(3, 10, 5).num_params, numbaconv.Conv2d(3, 10, 5, bias=False).num_params
    (760, 750)
    >>> numbaconv.Conv2d(32, 512, 5, padding=1, stride=2).output_shape((32, 128, 128))
    (512, 63, 63)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, 0, device, dtype, rng)

    def __call__(self, input):
        self._last_input = input
        if self.padding_mode == "zeros":
            return functional.conv2d(input, self._weight, self._bias, self.stride, self.padding,
                                     self.dilation, self.groups)
        return functional.conv2d(self._pad_input(input), self._weight, self._bias, self.stride,
                                 0, self.dilation, self.groups)

    def plan(self, *, algorithm="auto", exact=False):
        """A :class:`~numbaconv.plan.Conv2dPlan` of the layer's current weight and bias, for
        inference: the layer's results with the weights prepared once (with ``'auto'`` a plan
        may take Winograd where a call of the layer would not; ``exact=True`` keeps it to exact
        algorithms). It holds copies, so changes to the layer's weights after this call do not
        reach it (plan again)."""
        return plan_conv2d(self._weight, self._bias, self.stride, self.padding, self.dilation,
                           self.groups, padding_mode=self.padding_mode, algorithm=algorithm,
                           exact=exact)


class Conv1d(_ConvLayer):
    """1-D convolution layer, as ``torch.nn.Conv1d``: input (N, C_in, L) or (C_in, L), weight
    (C_out, C_in / groups, k). Arguments as for :class:`Conv2d`, one value per dimension.

    >>> import numbaconv
    >>> numbaconv.Conv1d(16, 33, 3, stride=2)
    Conv1d(16, 33, kernel_size=(3,), stride=(2,))
    >>> numbaconv.Conv1d(16, 33, 3, stride=2).output_shape((20, 16, 50))
    (20, 33, 24)
    """

    _nd = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None, *, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, 0, device, dtype, rng)

    def __call__(self, input):
        self._last_input = input
        if self.padding_mode == "zeros":
            return functional.conv1d(input, self._weight, self._bias, self.stride, self.padding,
                                     self.dilation, self.groups)
        return functional.conv1d(self._pad_input(input), self._weight, self._bias, self.stride,
                                 0, self.dilation, self.groups)


class ConvTranspose2d(_ConvLayer):
    r"""2-D transposed convolution layer, as ``torch.nn.ConvTranspose2d``.

    Every input element scatters ``input(n, c_i, y, x) * weight(c_i, j)`` onto the output channels
    of its group (see :func:`numbaconv.conv_transpose2d`). Output size per spatial dimension:

    .. math::
        H_{out} = (H - 1) s - p_t - p_b + d (k - 1) + a + 1

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (int, int) or ((top, bottom), (left, right))
        Rows/columns removed from the borders of the full result.
    output_padding : int or (int, int)
        :math:`a`, smaller than stride or dilation.
    groups : int
    bias : bool
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}
        torch accepts only zeros; other modes make the layer the adjoint of :class:`Conv2d`
        with that mode (see :func:`numbaconv.conv_transpose2d`).
    device, dtype, rng
        As for :class:`Conv2d`.

    Attributes
    ----------
    weight : numpy.ndarray, shape (C_in, C_out / groups, kH, kW)
    bias : numpy.ndarray, shape (C_out,), or None

    Calling the layer takes torch's optional ``output_size`` (sets ``output_padding``).

    Examples
    --------
    >>> import numbaconv
    >>> up = numbaconv.ConvTranspose2d(32, 16, kernel_size=3, stride=2, padding=1)
    >>> up.output_shape((32, 128, 128)), up.output_shape((32, 128, 128), output_size=(256, 256))
    ((16, 255, 255), (16, 256, 256))
    """

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, *, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, output_padding, device, dtype, rng)

    def __call__(self, input, output_size=None):
        self._last_input = input
        return functional.conv_transpose2d(input, self._weight, self._bias, self.stride,
                                           self.padding, self.output_padding, self.groups,
                                           self.dilation, output_size=output_size,
                                           padding_mode=self.padding_mode)

    def plan(self, *, algorithm="auto", exact=False):
        """A :class:`~numbaconv.plan_transposed.ConvTranspose2dPlan` of the layer's current
        weight and bias (see :meth:`Conv2d.plan`), for ``padding_mode='zeros'`` layers; its
        calls take no ``output_size`` (the layer's ``output_padding`` holds)."""
        if self.padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d.plan: plans of transposed layers take zero "
                             f"padding only, the layer has padding_mode={self.padding_mode!r}")
        return plan_conv_transpose2d(self._weight, self._bias, self.stride, self.padding,
                                     self.output_padding, self.groups, self.dilation,
                                     algorithm=algorithm, exact=exact)


class ConvTranspose1d(_ConvLayer):
    """1-D transposed convolution layer, as ``torch.nn.ConvTranspose1d``: input (N, C_in, L),
    weight (C_in, C_out / groups, k). See :class:`ConvTranspose2d`.

    >>> import numbaconv
    >>> numbaconv.ConvTranspose1d(4, 2, 3, stride=2).output_shape((1, 4, 10))
    (1, 2, 21)
    """

    _nd = 1
    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None, *, rng=None):
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, output_padding, device, dtype, rng)

    def __call__(self, input, output_size=None):
        self._last_input = input
        return functional.conv_transpose1d(input, self._weight, self._bias, self.stride,
                                           self.padding, self.output_padding, self.groups,
                                           self.dilation, output_size=output_size,
                                           padding_mode=self.padding_mode)
