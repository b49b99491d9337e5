"""``numbaconv shape`` and ``numbaconv summary``: shapes and costs from the command line.

A layer spec is a kind, a colon and comma-separated options::

    conv:OUT,kK[,sS][,pP][,dD][,gG|dw][,nobias][,reflect|replicate|circular]
    tconv:OUT,kK[,sS][,pP][,opA][,dD][,gG|dw][,nobias]
    pool:kK[,sS][,pP][,dD]

``K``, ``S``, ``P``, ``D``, ``A`` are an int or one per spatial dimension joined by ``x``
(``k3x5``); ``P`` may also be ``same``/``valid`` (conv) or ``LO_HI`` pairs (``p0_1x0_1``). ``dw``
means ``groups`` = the input channels (depthwise). ``pool`` stride defaults to its kernel. The
input shape is ``NxCxL`` (1-d layers) or ``NxCxHxW`` (2-d layers).

>>> from numbaconv.shape_cli import parse_layer
>>> parse_layer("conv:96,k11,s4", 3, nd=2)
Conv2d(3, 96, kernel_size=(11, 11), stride=(4, 4))
>>> parse_layer("tconv:128,k4,s2,p1", 256, nd=2).spec
'tconv:128,k4,s2,p1'
"""

import argparse
import re
import sys

from .layers import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .summary import CONVENTIONS, MODELS, Pool, model, summary

_KINDS = {"conv": {1: Conv1d, 2: Conv2d}, "tconv": {1: ConvTranspose1d, 2: ConvTranspose2d}}
_OPTION = re.compile(r"^(op|k|s|p|d|g)(.+)$")
_PAD_MODES = ("reflect", "replicate", "circular")


class SpecError(ValueError):
    """A layer spec that cannot be read."""


def _ints(text, nd, what):
    parts = text.split("x")
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, nd):
        raise SpecError(f"{what} must be an int or {nd} ints joined by 'x', got {text!r}")
    values = tuple(int(p) for p in parts)
    return values[0] if len(values) == 1 else values


def _padding(text, nd):
    if text in ("same", "valid"):
        return text
    if "_" not in text:
        return _ints(text, nd, "padding")
    parts = text.split("x")
    pairs = []
    for part in parts:
        lo, _, hi = part.partition("_")
        if not (lo.isdigit() and hi.isdigit()):
            raise SpecError(f"padding pairs are written LO_HI per dimension, got {text!r}")
        pairs.append((int(lo), int(hi)))
    if len(pairs) != nd:
        raise SpecError(f"padding {text!r} needs {nd} LO_HI pairs joined by 'x'")
    return tuple(pairs)


def parse_layer(spec, in_channels, nd=2):
    """The layer (or :class:`~numbaconv.summary.Pool`) described by ``spec``, taking
    ``in_channels`` channels. Raises :class:`SpecError` (a ValueError) saying what is wrong."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("conv", "tconv", "pool"):
        raise SpecError("a layer spec starts with 'conv:', 'tconv:' or 'pool:'")
    tokens = [t for t in rest.split(",") if t]
    out_channels = None
    if kind != "pool":
        if not tokens or not tokens[0].isdigit():
            raise SpecError(f"{kind} needs the output channels first, e.g. {kind}:64,k3")
        out_channels = int(tokens.pop(0))
    options = {}
    flags = set()
    for token in tokens:
        if token in ("nobias", "dw") + _PAD_MODES:
            flags.add(token)
            continue
        match = _OPTION.match(token)
        if not match:
            raise SpecError(f"unknown option {token!r} (expected kN, sN, pN, dN, gN, opN, dw, "
                            f"nobias or a padding mode)")
        key, value = match.groups()
        if key in options:
            raise SpecError(f"option {key!r} given twice")
        options[key] = value
    if "k" not in options:
        raise SpecError("the kernel size is missing (kN)")
    kwargs = {"kernel_size": _ints(options.pop("k"), nd, "kernel size")}
    for key, name in (("s", "stride"), ("d", "dilation")):
        if key in options:
            kwargs[name] = _ints(options.pop(key), nd, name)
    if "p" in options:
        kwargs["padding"] = _padding(options.pop("p"), nd)
    if kind == "pool":
        if options or flags:
            raise SpecError(f"pool takes kN, sN, pN and dN only, got "
                            f"{sorted(options) + sorted(flags)}")
        return Pool(**kwargs)
    if "g" in options and "dw" in flags:
        raise SpecError("give either gN or dw")
    if "g" in options:
        if not options["g"].isdigit():
            raise SpecError(f"groups must be an int, got {options['g']!r}")
        kwargs["groups"] = int(options.pop("g"))
    if "dw" in flags:
        kwargs["groups"] = in_channels
    if "op" in options:
        if kind != "tconv":
            raise SpecError("output padding (opN) applies to tconv only")
        kwargs["output_padding"] = _ints(options.pop("op"), nd, "output padding")
    modes = flags & set(_PAD_MODES)
    if len(modes) > 1:
        raise SpecError(f"more than one padding mode: {sorted(modes)}")
    if modes:
        kwargs["padding_mode"] = modes.pop()
    kwargs["bias"] = "nobias" not in flags
    return _KINDS[kind][nd](in_channels, out_channels, **kwargs)


def _dims(values, default):
    if all(v == default for v in values):
        return None
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _padding_text(padding):
    if isinstance(padding, str):
        return padding if padding != "valid" else None
    if padding and isinstance(padding[0], tuple):
        if all(lo == hi for lo, hi in padding):
            return _dims(tuple(lo for lo, _ in padding), 0)
        return "x".join(f"{lo}_{hi}" for lo, hi in padding)
    return _dims(tuple(padding), 0)


def layer_spec(layer):
    """The spec of a numbaconv layer: ``parse_layer(layer_spec(l), l.in_channels, nd)`` rebuilds
    it (up to the weights)."""
    parts = [f"{'tconv' if layer.transposed else 'conv'}:{layer.out_channels}",
             "k" + (_dims(layer.kernel_size, None) or "")]
    for prefix, value in (("s", _dims(layer.stride, 1)), ("p", _padding_text(layer.padding)),
                          ("op", _dims(layer.output_padding, 0)),
                          ("d", _dims(layer.dilation, 1))):
        if value:
            parts.append(prefix + value)
    if layer.groups != 1:
        parts.append("dw" if layer.groups == layer.in_channels else f"g{layer.groups}")
    if layer.bias is None:
        parts.append("nobias")
    if layer.padding_mode != "zeros":
        parts.append(layer.padding_mode)
    return ",".join(parts)


def pool_spec(pool):
    """The spec of a :class:`~numbaconv.summary.Pool`, e.g. ``pool:k3,s2,p1``."""
    def text(value, default):
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if isinstance(value, (tuple, list)) and value and isinstance(value[0], (tuple, list)):
            return "x".join(f"{lo}_{hi}" for lo, hi in value)
        return _dims(values, default)

    parts = ["pool:k" + text(pool.kernel_size, None)]
    for prefix, value, default in (("s", pool.stride, None), ("p", pool.padding, 0),
                                   ("d", pool.dilation, 1)):
        value_text = text(value, default)
        if value_text:
            parts.append(prefix + value_text)
    return ",".join(parts)


def parse_shape(text):
    """``'1x3x227x227'`` -> ``(1, 3, 227, 227)``; ValueError unless positive ints."""
    parts = text.lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a shape is positive ints joined by 'x' (NxCxHxW), got {text!r}")
    return tuple(int(p) for p in parts)


# ---------------------------------------------------------------------- commands

def _fail(command, message):
    print(f"numbaconv {command}: error: {message}", file=sys.stderr)
    return 2


def _print(result, fmt):
    if fmt == "markdown":
        print(result.to_markdown())
    elif fmt == "csv":
        print(result.to_csv(), end="")
    elif fmt == "json":
        print(result.to_json())
    else:
        print(f"input {'x'.join(map(str, result.input_shape))} -> output "
              f"{'x'.join(map(str, result.output_shape))}")
        print(result)


def shape_command(args):
    """Build the layers from their specs, one after another, and print the summary."""
    try:
        input_shape = parse_shape(args.input)
    except ValueError as err:
        return _fail("shape", err)
    nd = len(input_shape) - 2
    if nd not in (1, 2):
        return _fail("shape", f"the input shape must be NxCxL or NxCxHxW (1-d or 2-d layers), "
                              f"got {args.input!r}")
    entries, channels = [], input_shape[1]
    for index, spec in enumerate(args.layers, 1):
        try:
            layer = parse_layer(spec, channels, nd)
        except (ValueError, TypeError) as err:
            return _fail("shape", f"layer {index} ({spec}): {err}")
        entries.append((str(index), layer))
        channels = getattr(layer, "out_channels", channels)
    try:
        result = summary(entries, input_shape, convention=args.convention)
    except (ValueError, TypeError) as err:
        return _fail("shape", err)
    _print(result, args.format)
    return 0


def summary_command(args):
    try:
        input_shape = parse_shape(args.input) if args.input else MODELS[args.model][1]
        result = summary(model(args.model), input_shape, convention=args.convention)
    except (ValueError, TypeError) as err:
        return _fail("summary", err)
    _print(result, args.format)
    return 0


def _common(parser):
    parser.add_argument("--convention", choices=tuple(CONVENTIONS),
                        help="add the MACs a counting tool reports, reproduced exactly")
    parser.add_argument("--format", choices=("text", "markdown", "csv", "json"), default="text")


def register(sub):
    """Add the ``shape`` and ``summary`` sub-commands to ``numbaconv``'s argparse sub-parsers."""
    p_shape = sub.add_parser(
        "shape", help="output shapes, parameters, MACs/FLOPs and receptive fields of layer specs",
        description=__doc__.split(">>>")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: numbaconv shape 1x3x227x227 conv:96,k11,s4 conv:256,k5,p2 "
               "tconv:128,k4,s2,p1")
    p_shape.add_argument("input", help="input shape NxCxHxW (or NxCxL for 1-d layers)")
    p_shape.add_argument("layers", nargs="+", metavar="spec", help="layer specs, in order")
    _common(p_shape)
    p_shape.set_defaults(func=shape_command)
    p_summary = sub.add_parser(
        "summary", help="per-layer table of a built-in conv stack",
        description="Per-layer output shapes, parameters, MACs, FLOPs, bias adds and receptive "
                    "fields of a built-in model's convolutions: "
                    + "; ".join(f"{k}: {v[2]}" for k, v in MODELS.items()) + ".")
    p_summary.add_argument("--model", required=True, choices=tuple(MODELS))
    p_summary.add_argument("--input", help="input shape NxCxHxW (default: the model's usual)")
    _common(p_summary)
    p_summary.set_defaults(func=summary_command)
