r"""Model summaries: per-layer output shapes, parameters, MACs, FLOPs and receptive fields.

:func:`summary` walks a sequence of convolution layers (and shape-only entries: :class:`Pool`,
:class:`Branch`, :class:`Add`, :class:`Concat`) from an input shape and tabulates, per layer and in
total, the true arithmetic:

* **MACs**: multiply-accumulates of the weight products. Forward:
  :math:`N C_{out} \prod o \cdot C_{in}/G \prod k`. Transposed, counted on the input grid where the
  products happen: :math:`N C_{in} \prod i \cdot C_{out}/G \prod k`.
* **FLOPs** :math:`= 2 \times` MACs (a multiply and an add per product).
* **bias adds**, separately: one per output element when the layer has a bias.

Counting tools disagree, mostly on transposed convolutions and on bias adds. ``convention=``
adds a column with the number a tool reports, reproduced exactly (see :data:`CONVENTIONS`). With
:math:`M` the true MACs, :math:`B` the bias adds and :math:`O = N \prod o \cdot \prod
\text{weight.shape}` (every weight at every *output* position; :math:`O = M` for a forward
convolution, larger for a transposed one) and :math:`N` the batch size (ptflops reports the count
of one sample, the average over the batch):

==================  ===========  ============================================================
convention          counts       tool and versions checked
==================  ===========  ============================================================
``numbaconv``       M            the true count
``fvcore``          M            fvcore 0.1.5 ``FlopCountAnalysis`` (bias not counted)
``ultralytics-thop`` M           ultralytics-thop 2.2.3 ``profile``
``ptflops``         (M + B)/N    ptflops 0.7.5 ``get_model_complexity_info`` (default backend)
``ptflops-aten``    M + B        ptflops 0.7.5 with ``backend='aten'`` (whole batch)
``ptflops-legacy``  (O + B)/N    ptflops 0.7.2.2 to 0.7.4 (transposed on the output grid)
``thop``            O            thop 0.1.1 (the ``thop`` package, before ultralytics-thop)
``torchinfo``       O + B        torchinfo 1.8.0 ``summary(...).total_mult_adds``
==================  ===========  ============================================================

Only convolutions are counted: the shape-only entries cost nothing here (tools count pooling,
additions and activations in various ways).

Examples
--------
>>> import numbaconv
>>> from numbaconv.summary import Pool
>>> net = [("conv1", numbaconv.Conv2d(3, 16, 3, padding=1)), ("pool", Pool(2)),
...        ("up", numbaconv.ConvTranspose2d(16, 8, 2, stride=2))]
>>> s = numbaconv.summary(net, (1, 3, 32, 32), convention="torchinfo")
>>> print(s)
layer  spec           output shape  params     MACs      FLOPs  bias adds  RF  torchinfo MACs
-----  -------------  ------------  ------  -------  ---------  ---------  --  --------------
conv1  conv:16,k3,p1  1x16x32x32       448  442,368    884,736     16,384   3         458,752
pool   pool:k2,s2     1x16x16x16         -        -          -          -   4               -
up     tconv:8,k2,s2  1x8x32x32        520  131,072    262,144      8,192   4         532,480
total                                  968  573,440  1,146,880     24,576             991,232
>>> s.totals["macs"], s.rows[2]["torchinfo"], s.output_shape
(573440, 532480, (1, 8, 32, 32))
"""

import csv
import functools
import io
import json
import math
import numbers

from . import _args, shapes
from .layers import Conv2d, ConvTranspose2d, _ConvLayer

__all__ = ["summary", "Summary", "Pool", "Branch", "Add", "Concat", "CONVENTIONS",
           "convention_macs", "MODELS", "model"]

CONVENTIONS = {
    "numbaconv": "true weight multiply-accumulates; transposed layers on the input grid",
    "fvcore": "fvcore 0.1.5 FlopCountAnalysis: the true count, bias adds not counted",
    "ultralytics-thop": "ultralytics-thop 2.2.3: the true count, bias adds not counted",
    "ptflops": "ptflops 0.7.5: the true count plus the bias adds, per sample",
    "ptflops-aten": "ptflops 0.7.5 with backend='aten': the true count plus the bias adds",
    "ptflops-legacy": "ptflops 0.7.2.2-0.7.4: transposed layers on the output grid, plus bias "
                      "adds, per sample",
    "thop": "thop 0.1.1: transposed layers on the output grid, bias adds not counted",
    "torchinfo": "torchinfo 1.8.0: (weights + biases) times output positions",
}
"""Names accepted by ``convention=``, with what each counts."""


def convention_macs(problem, convention=None):
    """MACs of a :class:`~numbaconv.problem.ConvProblem` as ``convention`` counts them.

    ``None`` or ``'numbaconv'`` gives the true count ``problem.macs``; see :data:`CONVENTIONS`.

    >>> from numbaconv.problem import ConvProblem
    >>> p = ConvProblem.for_conv_transpose((1, 3, 2, 2), (3, 1, 2, 2), bias=True, stride=2)
    >>> {name: convention_macs(p, name) for name in CONVENTIONS}  # doctest: +NORMALIZE_WHITESPACE
    {'numbaconv': 48, 'fvcore': 48, 'ultralytics-thop': 48, 'ptflops': 64, 'ptflops-aten': 64,
     'ptflops-legacy': 208, 'thop': 192, 'torchinfo': 208}
    """
    convention = "numbaconv" if convention is None else convention
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be None or one of {tuple(CONVENTIONS)}, got "
                         f"{convention!r}")
    true, bias = problem.macs, problem.bias_adds
    # Every weight met at every output position: what the output-grid tools multiply out.
    grid = problem.batch * math.prod(problem.out_size) * math.prod(problem.weight_shape)
    # ptflops reports the average over the batch: the count of one sample (always a whole number)
    per_sample = max(problem.batch, 1)
    return {"numbaconv": true, "fvcore": true, "ultralytics-thop": true,
            "ptflops": (true + bias) // per_sample, "ptflops-aten": true + bias,
            "ptflops-legacy": (grid + bias) // per_sample,
            "thop": grid, "torchinfo": grid + bias}[convention]


# ---------------------------------------------------------------------- shape-only entries

class Pool:
    """A pooling window (max or average): changes the spatial size, not the channels; costs
    nothing here. Output size as for a convolution with the same kernel, stride, padding and
    dilation (``ceil_mode=False``).

    >>> Pool(3, stride=2, padding=1).output_shape((1, 64, 112, 112))
    (1, 64, 56, 56)
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1):
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation

    def _geometry(self, nd):
        kernel = _args.int_tuple(self.kernel_size, nd, "kernel_size", 1)
        stride = _args.int_tuple(self.stride, nd, "stride", 1)
        dilation = _args.int_tuple(self.dilation, nd, "dilation", 1)
        pads = _args.explicit_padding(self.padding, nd)
        return kernel, stride, pads, dilation

    def output_shape(self, input_shape):
        nd = len(input_shape) - 2
        kernel, stride, pads, dilation = self._geometry(nd)
        size = shapes.conv_output_size(tuple(input_shape[2:]), kernel, stride, pads, dilation)
        return tuple(input_shape[:2]) + size

    @property
    def spec(self):
        from .shape_cli import pool_spec

        return pool_spec(self)

    def __repr__(self):
        return (f"Pool(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation})")


class Branch:
    """Continue from the output of the earlier entry named ``source`` (``'input'``: the network
    input), e.g. the shortcut of a residual block that has a downsampling convolution."""

    def __init__(self, source):
        self.source = source

    @property
    def spec(self):
        return f"from:{self.source}"

    def __repr__(self):
        return f"Branch({self.source!r})"


class Add:
    """Element-wise sum with the output of entry ``source`` (a residual connection): the shapes
    must be equal."""

    def __init__(self, source):
        self.source = source

    @property
    def spec(self):
        return f"add:{self.source}"

    def __repr__(self):
        return f"Add({self.source!r})"


class Concat:
    """Channel concatenation with the output of entry ``source`` (a U-Net skip connection).

    The spatial sizes must be equal, or with ``crop=True`` the source may be larger and is
    center-cropped (offset ``(larger - smaller) // 2``), as in the original U-Net.
    """

    def __init__(self, source, crop=False):
        self.source, self.crop = source, bool(crop)

    @property
    def spec(self):
        return f"cat:{self.source}" + (",crop" if self.crop else "")

    def __repr__(self):
        return f"Concat({self.source!r}, crop={self.crop})"


_PASS_THROUGH = (Pool, Branch, Add, Concat)


# ---------------------------------------------------------------------- receptive fields

class _Node:
    """How one entry's output positions map back to its input positions, per dimension."""

    __slots__ = ("kind", "prev", "source", "geometry", "offset")

    def __init__(self, kind, prev, source=None, geometry=None, offset=None):
        self.kind, self.prev, self.source = kind, prev, source
        self.geometry, self.offset = geometry, offset


def _transposed_inputs(a, b, k, s, p, d):
    """Input interval of a transposed convolution that output positions ``a..b`` depend on.

    Output ``o`` receives input ``i`` through tap ``t`` when ``i * s - p + t * d == o``. Shifting
    ``o`` by ``s`` shifts the inputs by one, so one period at each end decides the bounds.
    """
    def inputs(o):
        return [(o + p - t * d) // s for t in range(k) if (o + p - t * d) % s == 0]

    lows = [min(v) for o in range(a, min(b, a + s - 1) + 1) if (v := inputs(o))]
    highs = [max(v) for o in range(max(a, b - s + 1), b + 1) if (v := inputs(o))]
    if not lows:
        return None
    return min(lows), max(highs)


class _Fields:
    """Receptive fields of the entries of a summary: the width of the network-input interval
    that one output position depends on, maximised over positions (borders ignored)."""

    def __init__(self, nodes, nd):
        self.nodes, self.nd = nodes, nd
        self.span = functools.lru_cache(maxsize=None)(self._span)

    def _span(self, index, dim, a, b):
        # Walk back along the chain; recurse only where two paths merge (Add, Concat).
        while index >= 0:
            node = self.nodes[index]
            if node.kind == "conv":
                k, s, p, d = (g[dim] for g in node.geometry)
                a, b = a * s - p, b * s - p + (k - 1) * d
            elif node.kind == "tconv":
                k, s, p, d = (g[dim] for g in node.geometry)
                inputs = _transposed_inputs(a, b, k, s, p, d)
                if inputs is None:
                    return None
                a, b = inputs
            elif node.kind == "branch":
                index = node.source
                continue
            else:
                off = node.offset[dim] if node.offset else 0
                spans = [x for x in (self.span(node.prev, dim, a, b),
                                     self.span(node.source, dim, a + off, b + off))
                         if x is not None]
                return (min(x[0] for x in spans), max(x[1] for x in spans)) if spans else None
            index = node.prev
        return a, b

    def field(self, index):
        result = []
        for dim in range(self.nd):
            # Transposed layers make the width depend on the position, periodically in the
            # product of their strides: one period covers every case.
            period = math.prod(n.geometry[1][dim] for n in self.nodes[:index + 1]
                               if n.kind == "tconv")
            widths = [x[1] - x[0] + 1 for o in range(min(period, 4096))
                      if (x := self.span(index, dim, o, o)) is not None]
            result.append(max(widths, default=0))
        return tuple(result)


# ---------------------------------------------------------------------- the summary

def _shape_text(shape):
    return "x".join(map(str, shape))


def _rf_text(rf):
    if rf is None:
        return ""
    return str(rf[0]) if len(set(rf)) == 1 else "x".join(map(str, rf))


class Summary:
    """The result of :func:`summary`.

    Attributes
    ----------
    input_shape, output_shape : tuple of int
    convention : str or None
    rows : list of dict
        One per entry: ``name``, ``spec`` (compact layer description), ``kind``, ``input_shape``,
        ``output_shape``, ``params``, ``macs``, ``flops``, ``bias_adds``, ``receptive_field``
        (tuple per spatial dimension) and, with a convention, the tool's count under the
        convention's name. Shape-only entries have zero costs.
    totals : dict
        ``params``, ``macs``, ``flops``, ``bias_adds`` (and the convention's count) summed.
    layers : list
        The entries, in order.
    """

    _COLUMNS = ("params", "macs", "flops", "bias_adds")

    def __init__(self, input_shape, rows, layers, convention):
        self.input_shape, self.rows, self.layers = input_shape, rows, layers
        self.convention = convention
        self.output_shape = rows[-1]["output_shape"] if rows else input_shape
        keys = self._COLUMNS + ((convention,) if convention else ())
        self.totals = {k: sum(r[k] for r in rows) for k in keys}

    def _table(self, numbers):
        """Header and body cells as strings; ``numbers`` formats one integer."""
        header = ["layer", "spec", "output shape", "params", "MACs", "FLOPs", "bias adds", "RF"]
        keys = list(self._COLUMNS)
        if self.convention:
            header.append(f"{self.convention} MACs")
            keys.append(self.convention)
        body = []
        for row in self.rows:
            costs = [numbers(row[k]) if row["kind"] == "conv" else "-" for k in keys]
            body.append([row["name"], row["spec"], _shape_text(row["output_shape"])] + costs[:4]
                        + [_rf_text(row["receptive_field"])] + costs[4:])
        total = [numbers(self.totals[k]) for k in keys]
        body.append(["total", "", ""] + total[:4] + [""] + total[4:])
        return header, body

    def to_text(self):
        """A plain-text table (what ``str`` gives), numbers with thousands separators."""
        header, body = self._table(lambda v: f"{v:,}")
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        left = {0, 1, 2}

        def line(cells):
            return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        lines = [line(header), line(["-" * w for w in widths])]
        lines += [line(r) for r in body]
        return "\n".join(lines)

    def to_markdown(self):
        """A Markdown table (GitHub flavour)."""
        header, body = self._table(lambda v: f"{v:,}")
        align = ["---" if i < 3 else "---:" for i in range(len(header))]
        rows = [header, align] + body
        return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)

    def to_csv(self):
        """CSV with plain integers, shapes written ``NxCxHxW``, and a ``total`` row."""
        keys = list(self._COLUMNS) + ([self.convention] if self.convention else [])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["layer", "spec", "input_shape", "output_shape"] + keys
                        + ["receptive_field"])
        for row in self.rows:
            writer.writerow([row["name"], row["spec"], _shape_text(row["input_shape"]),
                             _shape_text(row["output_shape"])] + [row[k] for k in keys]
                            + [_rf_text(row["receptive_field"])])
        writer.writerow(["total", "", _shape_text(self.input_shape),
                         _shape_text(self.output_shape)] + [self.totals[k] for k in keys] + [""])
        return out.getvalue()

    def to_json(self):
        """``{"input_shape", "output_shape", "convention", "rows", "totals"}`` as JSON text."""
        return json.dumps({"input_shape": list(self.input_shape),
                           "output_shape": list(self.output_shape),
                           "convention": self.convention, "rows": self.rows,
                           "totals": self.totals}, indent=1)

    def __str__(self):
        return self.to_text()

    def __repr__(self):
        return (f"<Summary of {len(self.rows)} entries, input {_shape_text(self.input_shape)}, "
                f"{self.totals['params']:,} params, {self.totals['macs']:,} MACs>")


def _entries(layers):
    named = []
    for index, entry in enumerate(layers):
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            name, entry = entry
        else:
            name = str(index)
        if not isinstance(entry, (_ConvLayer,) + _PASS_THROUGH):
            raise TypeError(f"summary: entry {name!r} must be a numbaconv convolution layer, a "
                            f"Pool, Branch, Add or Concat, or a (name, entry) pair, got "
                            f"{type(entry).__name__}")
        if any(name == other for other, _ in named) or name == "input":
            raise ValueError(f"summary: entry name {name!r} is used twice (or is 'input')")
        named.append((name, entry))
    return named


def summary(layers, input_shape=None, *, convention=None):
    """Shapes and costs of a sequence of layers applied to ``input_shape``, per layer and in total.

    Parameters
    ----------
    layers : sequence or str
        Entries applied in order, each taking the previous one's output: numbaconv convolution
        layers, :class:`Pool`, :class:`Branch`, :class:`Add`, :class:`Concat`, or ``(name,
        entry)`` pairs (default names are the positions ``'0'``, ``'1'``, ...). A string names a
        built-in model (see :data:`MODELS`).
    input_shape : tuple of int
        ``(N, C, *spatial)``; optional for a built-in model (its usual input).
    convention : str, optional
        Add the MACs a counting tool reports, as a column (see :data:`CONVENTIONS`).

    Returns
    -------
    Summary
        Printable as a table; ``rows``, ``totals``, ``to_markdown()``, ``to_csv()``, ``to_json()``.

    Raises
    ------
    ValueError, TypeError
        If an entry cannot take its input; the message names the entry, its spec and the rule.
    """
    if isinstance(layers, str):
        name = layers
        layers = model(name)
        if input_shape is None:
            input_shape = MODELS[name][1]
    if input_shape is None:
        raise TypeError("summary: input_shape is required (N, C, *spatial)")
    if convention is not None and convention not in CONVENTIONS:
        raise ValueError(f"convention must be None or one of {tuple(CONVENTIONS)}, got "
                         f"{convention!r}")
    shape = tuple(int(v) if isinstance(v, numbers.Integral) else v for v in input_shape)
    if len(shape) < 3 or not all(isinstance(v, numbers.Integral) and v >= 1 for v in shape):
        raise ValueError(f"summary: input_shape must be (N, C, *spatial) with positive ints, "
                         f"got {input_shape!r}")
    nd = len(shape) - 2
    entries = _entries(layers)
    outputs = {"input": (shape, -1)}   # name -> (output shape, node index)
    nodes, rows, current = [], [], shape
    for index, (name, entry) in enumerate(entries):
        try:
            row, node, current_out = _step(entry, current, outputs, nd, index, convention)
        except (ValueError, TypeError) as err:
            raise type(err)(f"layer {name} ({_spec(entry)}) on input {_shape_text(current)}: "
                            f"{err}") from None
        row = {"name": name, "spec": _spec(entry), **row}
        nodes.append(node)
        rows.append(row)
        outputs[name] = (current_out, index)
        current = current_out
    fields = _Fields(nodes, nd)
    for index, row in enumerate(rows):
        row["receptive_field"] = fields.field(index)
    return Summary(shape, rows, [e for _, e in entries], convention)


def _spec(entry):
    return entry.spec


def _source(outputs, source):
    if source not in outputs:
        raise ValueError(f"no earlier entry named {source!r}")
    return outputs[source]


def _step(entry, shape, outputs, nd, index, convention):
    """(row costs, receptive-field node, output shape) of one entry on an input of ``shape``."""
    prev = index - 1
    zero = {"kind": "pass", "input_shape": shape, "params": 0, "macs": 0, "flops": 0,
            "bias_adds": 0}
    if convention:
        zero[convention] = 0
    if isinstance(entry, _ConvLayer):
        if entry._nd != nd:
            raise ValueError(f"a {entry._nd}-d layer cannot take a {nd}-d input")
        problem = entry.problem(shape)
        pads = tuple(lo for lo, _ in problem.padding)
        node = _Node("tconv" if entry.transposed else "conv", prev,
                     geometry=(problem.kernel_size, problem.stride, pads, problem.dilation))
        row = {"kind": "conv", "input_shape": shape, "output_shape": problem.output_shape,
               "params": problem.params, "macs": problem.macs, "flops": problem.flops,
               "bias_adds": problem.bias_adds}
        if convention:
            row[convention] = convention_macs(problem, convention)
        return row, node, problem.output_shape
    if isinstance(entry, Pool):
        kernel, stride, pads, dilation = entry._geometry(nd)
        out = entry.output_shape(shape)
        node = _Node("conv", prev, geometry=(kernel, stride, tuple(lo for lo, _ in pads),
                                             dilation))
        return {**zero, "output_shape": out}, node, out
    src_shape, src = _source(outputs, entry.source)
    if isinstance(entry, Branch):
        return {**zero, "output_shape": src_shape}, _Node("branch", prev, src), src_shape
    if isinstance(entry, Add):
        if src_shape != shape:
            raise ValueError(f"Add needs equal shapes, but {entry.source!r} gives "
                             f"{_shape_text(src_shape)}")
        return {**zero, "output_shape": shape}, _Node("add", prev, src), shape
    # Concat
    if src_shape[0] != shape[0]:
        raise ValueError(f"Concat needs equal batch sizes, {entry.source!r} gives "
                         f"{_shape_text(src_shape)}")
    spatial, src_spatial = shape[2:], src_shape[2:]
    if spatial != src_spatial and not (entry.crop and all(
            s >= c for s, c in zip(src_spatial, spatial))):
        rule = "at least as large (crop=True)" if entry.crop else "equal (or crop=True)"
        raise ValueError(f"Concat needs spatial sizes {rule}, but {entry.source!r} gives "
                         f"{_shape_text(src_shape)}")
    offset = tuple((s - c) // 2 for s, c in zip(src_spatial, spatial))
    out = (shape[0], shape[1] + src_shape[1]) + spatial
    return {**zero, "output_shape": out}, _Node("concat", prev, src, offset=offset), out


# ---------------------------------------------------------------------- built-in models

def _vgg16(rng):
    # torchvision's vgg16 "features": 13 3x3 convolutions with bias, 5 max-pools; names as there
    # (each convolution is followed by a ReLU, which takes the next index).
    Conv = functools.partial(Conv2d, rng=rng)
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    entries, channels, index = [], 3, 0
    for v in plan:
        if v == "M":
            entries.append((f"features.{index}", Pool(2, 2)))
            index += 1
        else:
            entries.append((f"features.{index}", Conv(channels, v, 3, padding=1)))
            channels, index = v, index + 2
    return entries


def _resnet18(rng):
    # torchvision's resnet18 up to the average pool: bias-free convolutions (BatchNorm follows).
    Conv = functools.partial(Conv2d, rng=rng)
    entries = [("conv1", Conv(3, 64, 7, stride=2, padding=3, bias=False)),
               ("maxpool", Pool(3, stride=2, padding=1))]
    channels, last = 64, "maxpool"
    for stage, (width, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], 1):
        for block in range(2):
            s = stride if block == 0 else 1
            p = f"layer{stage}.{block}"
            entries += [(f"{p}.conv1", Conv(channels, width, 3, stride=s, padding=1,
                                            bias=False)),
                        (f"{p}.conv2", Conv(width, width, 3, padding=1, bias=False))]
            if s != 1 or channels != width:
                entries += [(f"{p}.shortcut", Branch(last)),
                            (f"{p}.downsample.0", Conv(channels, width, 1, stride=s,
                                                       bias=False)),
                            (f"{p}.add", Add(f"{p}.conv2"))]
            else:
                entries.append((f"{p}.add", Add(last)))
            channels, last = width, f"{p}.add"
    return entries


def _mobilenet_v2(rng):
    # torchvision's mobilenet_v2 "features" (width 1.0): inverted residual blocks of a 1x1
    # expansion, a 3x3 depthwise and a 1x1 projection, all bias-free.
    Conv = functools.partial(Conv2d, rng=rng)
    entries = [("features.0.0", Conv(3, 32, 3, stride=2, padding=1, bias=False))]
    channels, index = 32, 1
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride, hidden, p = (s if i == 0 else 1), channels * t, f"features.{index}.conv"
            block_input = entries[-1][0]
            convs = [] if t == 1 else [Conv(channels, hidden, 1, bias=False)]
            convs += [Conv(hidden, hidden, 3, stride=stride, padding=1, groups=hidden,
                           bias=False),
                      Conv(hidden, c, 1, bias=False)]
            for j, conv in enumerate(convs):
                # torchvision wraps all but the projection in Conv2dNormActivation (".0")
                entries.append((f"{p}.{j}.0" if j < len(convs) - 1 else f"{p}.{j}", conv))
            if stride == 1 and channels == c:
                entries.append((f"features.{index}.add", Add(block_input)))
            channels, index = c, index + 1
    entries.append((f"features.{index}.0", Conv(channels, 1280, 1, bias=False)))
    return entries


def _unet(rng):
    # Ronneberger et al. 2015: unpadded 3x3 convolutions, 2x2 max-pools, 2x2 stride-2 up-
    # convolutions, skip connections center-cropped and concatenated; 572x572 in, 388x388 out.
    Conv = functools.partial(Conv2d, rng=rng)
    entries, channels = [], 1
    for level, width in enumerate([64, 128, 256, 512, 1024], 1):
        if level > 1:
            entries.append((f"pool{level - 1}", Pool(2)))
        entries += [(f"enc{level}.conv1", Conv(channels, width, 3)),
                    (f"enc{level}.conv2", Conv(width, width, 3))]
        channels = width
    for level, width in zip([4, 3, 2, 1], [512, 256, 128, 64]):
        entries += [(f"up{level}", ConvTranspose2d(channels, width, 2, stride=2, rng=rng)),
                    (f"cat{level}", Concat(f"enc{level}.conv2", crop=True)),
                    (f"dec{level}.conv1", Conv(2 * width, width, 3)),
                    (f"dec{level}.conv2", Conv(width, width, 3))]
        channels = width
    entries.append(("head", Conv(64, 2, 1)))
    return entries


MODELS = {
    "vgg16": (_vgg16, (1, 3, 224, 224), "VGG-16 convolutional layers (torchvision names)"),
    "resnet18": (_resnet18, (1, 3, 224, 224), "ResNet-18 up to the average pool"),
    "mobilenet_v2": (_mobilenet_v2, (1, 3, 224, 224), "MobileNetV2 features (width 1.0)"),
    "unet": (_unet, (1, 1, 572, 572), "U-Net of Ronneberger et al. 2015, unpadded"),
}
"""Built-in conv stacks: ``name -> (builder, usual input shape, description)``."""


def model(name, *, rng=0):
    """The entries of the built-in model ``name`` (see :data:`MODELS`), as ``(name, entry)``
    pairs; the layers are initialised from ``rng``.

    >>> import numbaconv
    >>> s = numbaconv.summary(model("vgg16"), (1, 3, 224, 224))
    >>> s.totals["params"], s.totals["macs"], s.output_shape
    (14714688, 15346630656, (1, 512, 7, 7))
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
    import numpy as np

    return MODELS[name][0](np.random.default_rng(rng))

