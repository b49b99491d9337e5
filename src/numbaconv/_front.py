"""What every public entry point does before any arithmetic: turn the user's arguments into
contiguous arrays of one floating dtype and a validated :class:`~numbaconv.problem.ConvProblem`.

Dtype rule: float32 and float64 are computed in their own precision; float16 is computed in
float32; bool and integer arrays count as float64; if any array is float64 everything is. Complex,
object, string and extended-precision arrays raise TypeError.
"""

import math

import numpy as np

from . import output_pool, shapes
from .problem import ConvProblem


def as_array(value, name):
    """``np.asarray(value)``; CPU torch tensors arrive zero-copy, ones that require grad detached."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (RuntimeError, TypeError) as err:
        detach = getattr(value, "detach", None)
        if detach is None:
            raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from err
        return np.asarray(detach().cpu())


def _float_kind(array, name):
    dt = array.dtype
    if dt.kind in "biu":
        return np.float64
    if dt.kind == "f":
        if dt.itemsize <= 4:
            return np.float32
        if dt.itemsize == 8:
            return np.float64
        raise TypeError(f"{name} has dtype {dt}: extended precision is not supported, "
                        f"convert to float64")
    if dt.kind == "c":
        raise TypeError(f"{name} has complex dtype {dt}: complex convolution is not supported")
    raise TypeError(f"{name} has dtype {dt}: expected a real numeric dtype (float32, float64, "
                    f"integer or bool)")


def compute_dtype(named_arrays):
    """The dtype the convolution is computed and returned in (see the module docstring)."""
    kinds = [_float_kind(a, name) for name, a in named_arrays if a is not None]
    return np.dtype(np.float64 if np.float64 in kinds else np.float32)


class Prepared:
    """Contiguous operands, the batched problem, and how to shape the result for the user."""

    __slots__ = ("problem", "x", "w", "b", "unbatched", "originals", "runs")

    def __init__(self, problem, x, w, b, unbatched, originals, runs=None):
        self.problem, self.x, self.w, self.b = problem, x, w, b
        self.unbatched, self.originals = unbatched, originals
        # for calls with remembered arguments: what the caller may remember about running this
        # problem (shared by all such calls; see functional._run)
        self.runs = runs

    @property
    def result_shape(self):
        shape = self.problem.output_shape
        return shape[1:] if self.unbatched else shape


def prepare(func, nd, input, weight, bias, *, transposed, stride, padding, dilation, groups,
            output_padding=0, output_size=None):
    """Validate and normalise the arguments of ``func`` (its name is used in messages)."""
    key = _repeat_key(func, nd, input, weight, bias, transposed, stride, padding, dilation,
                      groups, output_padding, output_size)
    if key is not None:
        seen = _SEEN.get(key)
        if seen is not None and _usable(input, seen[1]) and _usable(weight, seen[1]) and (
                bias is None or _usable(bias, seen[1])):
            problem, _, x_shape, runs = seen
            unbatched = len(x_shape) != input.ndim
            return Prepared(problem, input.reshape(x_shape) if unbatched else input, weight,
                            bias, unbatched, (input, weight, bias), runs)
    prepared = _prepare(func, nd, input, weight, bias, transposed=transposed, stride=stride,
                        padding=padding, dilation=dilation, groups=groups,
                        output_padding=output_padding, output_size=output_size)
    if key is not None:
        if len(_SEEN) >= 1024:
            _SEEN.clear()
        problem = prepared.problem
        prepared.runs = {}
        _SEEN[key] = (problem, np.dtype(problem.dtype), prepared.x.shape, prepared.runs)
    return prepared


# Arguments already validated, by _repeat_key: a repeated call (a layer in a loop) with arrays
# that need no conversion skips the checks and the problem's construction (5.4 -> 1.5 us).
_SEEN = {}


def _repeat_key(func, nd, x, w, b, transposed, stride, padding, dilation, groups,
                output_padding, output_size):
    """A key that fixes the problem and the dtypes, for the common argument types only (arrays;
    plain ints or tuples of them, nested once for padding, which may also be a string); None
    for anything else. Plain ints only, since ``1 == True == 1.0`` as keys, and the validation
    treats those differently."""
    if not (type(x) is np.ndarray and type(w) is np.ndarray and (b is None or type(b) is np.ndarray)
            and type(groups) is int and output_size is None and _plain(stride)
            and _plain(dilation) and _plain(output_padding)
            and (type(padding) is str or _plain(padding))):
        return None
    return (func, nd, transposed, x.shape, x.dtype, w.shape, w.dtype,
            None if b is None else (b.shape, b.dtype), stride, padding, dilation, groups,
            output_padding)


def _plain(value):
    """Whether ``value`` is an int, or a tuple of ints and tuples of ints (bools excluded)."""
    kind = type(value)
    if kind is int:
        return True
    if kind is not tuple:
        return False
    for v in value:  # loops, not all(): a generator costs half a microsecond here
        k = type(v)
        if k is int:
            continue
        if k is not tuple:
            return False
        for i in v:
            if type(i) is not int:
                return False
    return True


def _usable(a, dtype):
    """Whether the kernels can take ``a`` as it is (what _operand would return unchanged)."""
    flags = a.flags
    return flags.c_contiguous and flags.writeable and a.dtype == dtype


def _prepare(func, nd, input, weight, bias, *, transposed, stride, padding, dilation, groups,
             output_padding, output_size):
    x = as_array(input, "input")
    w = as_array(weight, "weight")
    b = None if bias is None else as_array(bias, "bias")
    dtype = compute_dtype((("input", x), ("weight", w), ("bias", b)))

    if x.ndim not in (nd + 1, nd + 2):
        layout = f"(N, C, {', '.join('DHW'[3 - nd:]) if nd > 1 else 'L'})"
        raise ValueError(f"{func}: input must have shape {layout} or the unbatched form without "
                         f"N ({nd + 2} or {nd + 1} dimensions), got shape {x.shape}")
    if w.ndim != nd + 2:
        kind = "(C_in, C_out / groups, *kernel)" if transposed else "(C_out, C_in / groups, *kernel)"
        raise ValueError(f"{func}: weight must have {nd + 2} dimensions {kind}, got shape "
                         f"{w.shape}")
    unbatched = x.ndim == nd + 1
    x_shape = (1,) + x.shape if unbatched else x.shape

    if transposed:
        if output_size is not None:
            output_padding = output_padding_for(output_size, nd, x_shape, w.shape, stride,
                                                 padding, dilation)
        problem = ConvProblem.for_conv_transpose(
            x_shape, w.shape, bias=b is not None, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, dilation=dilation, dtype=dtype)
    else:
        problem = ConvProblem.for_conv(
            x_shape, w.shape, bias=b is not None, stride=stride, padding=padding,
            dilation=dilation, groups=groups, dtype=dtype)

    if b is not None and b.shape != (problem.out_channels,):
        raise ValueError(f"{func}: bias must have shape ({problem.out_channels},) (one value per "
                         f"output channel), got {b.shape}")

    xc = _operand(x, dtype, "input").reshape(x_shape)
    wc = _operand(w, dtype, "weight")
    bc = None if b is None else _operand(b, dtype, "bias")
    return Prepared(problem, xc, wc, bc, unbatched, (x, w, b))


def _operand(a, dtype, name):
    """C-contiguous, native-endian, writeable ``a`` in ``dtype``: one Numba specialisation per
    dtype. Read-only arrays are copied, since Numba compiles them as a separate array type."""
    if not (a.flags.c_contiguous and a.dtype == dtype):
        check_fits(a.size * dtype.itemsize, f"a contiguous {dtype} copy of the {name}")
    c = np.ascontiguousarray(a, dtype=dtype)
    return c if c.flags.writeable else c.copy()


def bias_vector(func, b, dtype, c_out):
    """The bias as a contiguous ``dtype`` vector of ``c_out`` values, or None (for the paths
    that do not go through :func:`prepare`)."""
    if b is None:
        return None
    bias = as_array(b, "bias")
    if bias.shape != (c_out,):
        raise ValueError(f"{func}: bias must have shape ({c_out},) (one value per output "
                         f"channel), got {bias.shape}")
    return _operand(bias, dtype, "bias")


def copy_out(func, y, out):
    """``y``, or ``y`` copied into ``out`` after checking that ``out`` can hold it."""
    if out is None:
        return y
    if (not isinstance(out, np.ndarray) or out.shape != y.shape or out.dtype != y.dtype
            or not out.flags.writeable):
        raise ValueError(f"{func}: out must be a writeable {y.dtype} array of shape {y.shape}, "
                         f"got {getattr(out, 'dtype', type(out).__name__)} "
                         f"{getattr(out, 'shape', '')}")
    out[...] = y
    return out


def output_padding_for(output_size, nd, x_shape, w_shape, stride, padding, dilation):
    size = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,)
    if len(size) == nd + 2:  # torch also accepts the full (N, C, *spatial) size
        size = size[2:]
    if len(size) != nd:
        raise ValueError(f"output_size must have {nd} spatial entries (or {nd + 2} with N and C), "
                         f"got {output_size!r}")
    return shapes.transposed_output_padding(tuple(x_shape[2:]), size, tuple(w_shape[2:]),
                                            stride, padding, dilation)


def output_array(prepared, out):
    """The array the result is written to: ``out`` after validation, or a new one.

    Returns ``(result, batched_view)``: what to give back to the user and the batched
    C-contiguous view of it that kernels write.
    """
    problem = prepared.problem
    shape, dtype = prepared.result_shape, np.dtype(problem.dtype)
    if out is None:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes >= _CHECK_FROM:  # the message is built only then: formatting costs microseconds
            check_fits(nbytes, f"the output {shape} ({dtype})")
        result = (np.empty(shape, dtype=dtype) if nbytes < output_pool.MIN_BYTES
                  else output_pool.empty(shape, dtype))
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != shape:
            raise ValueError(f"out must have the output shape {shape}, got {out.shape}")
        if out.dtype != dtype:
            raise TypeError(f"out must have the computation dtype {dtype}, got {out.dtype}")
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        for name, a in zip(("input", "weight", "bias"), prepared.originals):
            if a is not None and np.may_share_memory(out, a):
                raise ValueError(f"out must not overlap {name}")
        result = out
    return result, result.reshape(problem.output_shape)


def available_memory():
    """Bytes the kernel reports as available for new allocations (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# Allocations below this size are not checked: reading the kernel's figure costs about 20 us,
# more than a small convolution.
_CHECK_FROM = 64 << 20


def check_fits(nbytes, what):
    """Raise MemoryError, naming the size, if ``nbytes`` cannot be allocated here.

    With memory overcommit an oversized ``np.empty`` succeeds and the process is killed later,
    when the pages are touched; asking first turns that into an ordinary exception.
    """
    if nbytes < _CHECK_FROM:
        return
    available = available_memory()
    if available is not None and nbytes > available:
        raise MemoryError(f"{what} needs {nbytes / 2**30:.2f} GiB but only "
                          f"{available / 2**30:.2f} GiB of memory is available")
