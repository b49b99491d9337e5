"""Summaries and counting conventions: the true counts, and each tool's number reproduced exactly.

The conventions are checked against the real tools (ptflops, thop, fvcore, torchinfo; installed by
the ``peers`` extra) on single layers of every kind and on whole VGG-16 and ResNet-18 conv stacks.
Without the tools those tests skip; the rest needs only NumPy.
"""

import contextlib
import csv
import io
import json
import math
import warnings
from importlib import metadata

import numpy as np
import pytest

import numbaconv
from numbaconv import reference, shapes
from numbaconv.summary import CONVENTIONS, MODELS, Add, Branch, Concat, Pool, model, summary

# ---------------------------------------------------------------------- the issue's example

SEED_COUNTS = {"numbaconv": 48, "fvcore": 48, "ultralytics-thop": 48, "ptflops": 64,
               "ptflops-aten": 64, "ptflops-legacy": 208, "thop": 192, "torchinfo": 208}


def test_issue_example_every_convention():
    # ConvTranspose2d(3, 1, kernel_size=2, stride=2) on 1x3x2x2: 48 true MACs + 16 bias adds;
    # ptflops up to 0.7.4 and torchinfo 208, old thop 192, fvcore 48 (ptflops 0.7.5: 64).
    layer = numbaconv.ConvTranspose2d(3, 1, kernel_size=2, stride=2)
    assert layer.macs((1, 3, 2, 2)) == 48
    assert layer.bias_adds((1, 3, 2, 2)) == 16
    assert layer.flops((1, 3, 2, 2)) == 96
    assert {c: layer.macs((1, 3, 2, 2), convention=c) for c in CONVENTIONS} == SEED_COUNTS
    assert set(SEED_COUNTS) == set(CONVENTIONS)


def test_conventions_agree_on_forward_layers_up_to_bias():
    layer = numbaconv.Conv2d(8, 16, 3, padding=1, groups=2)
    shape = (2, 8, 10, 12)
    true, bias = 2 * 16 * 10 * 12 * (8 // 2) * 9, 2 * 16 * 10 * 12
    counts = {c: layer.macs(shape, convention=c) for c in CONVENTIONS}
    # ptflops reports one sample's count (its average over the batch of 2)
    assert counts == {"numbaconv": true, "fvcore": true, "ultralytics-thop": true, "thop": true,
                      "ptflops": (true + bias) // 2, "ptflops-legacy": (true + bias) // 2,
                      "ptflops-aten": true + bias,
                      "torchinfo": true + bias}


def test_unknown_convention():
    with pytest.raises(ValueError, match="convention must be None or one of"):
        numbaconv.Conv2d(1, 1, 1).macs((1, 1, 2, 2), convention="flopco")
    with pytest.raises(ValueError, match="convention must be None or one of"):
        summary([numbaconv.Conv2d(1, 1, 1)], (1, 1, 2, 2), convention="ptflop")


# ---------------------------------------------------------------------- tables

def _small_net():
    return [("conv1", numbaconv.Conv2d(3, 16, 3, padding=1, rng=0)), ("pool", Pool(2)),
            ("up", numbaconv.ConvTranspose2d(16, 8, 2, stride=2, rng=0))]


def test_summary_rows_and_totals():
    s = summary(_small_net(), (1, 3, 32, 32), convention="torchinfo")
    conv1, pool, up = s.rows
    assert conv1["output_shape"] == (1, 16, 32, 32)
    assert conv1["params"] == 16 * 3 * 9 + 16
    assert conv1["macs"] == 16 * 32 * 32 * 3 * 9
    assert conv1["flops"] == 2 * conv1["macs"]
    assert conv1["bias_adds"] == 16 * 32 * 32
    assert pool == {**pool, "kind": "pass", "output_shape": (1, 16, 16, 16), "params": 0,
                    "macs": 0, "torchinfo": 0}
    assert up["input_shape"] == (1, 16, 16, 16) and up["output_shape"] == (1, 8, 32, 32)
    assert up["macs"] == 16 * 16 * 16 * 8 * 4                # on the input grid
    assert up["torchinfo"] == 32 * 32 * (16 * 8 * 4 + 8)     # (weights + biases) x outputs
    assert s.totals == {k: sum(r[k] for r in s.rows)
                        for k in ("params", "macs", "flops", "bias_adds", "torchinfo")}
    assert s.output_shape == (1, 8, 32, 32)
    assert [r["receptive_field"] for r in s.rows] == [(3, 3), (4, 4), (4, 4)]
    assert [r["spec"] for r in s.rows] == ["conv:16,k3,p1", "pool:k2,s2", "tconv:8,k2,s2"]


def test_text_markdown_csv_json():
    s = summary(_small_net(), (1, 3, 32, 32), convention="fvcore")
    text = str(s).splitlines()
    assert text[0].split() == ["layer", "spec", "output", "shape", "params", "MACs", "FLOPs",
                               "bias", "adds", "RF", "fvcore", "MACs"]
    assert text[2].split() == ["conv1", "conv:16,k3,p1", "1x16x32x32", "448", "442,368",
                               "884,736", "16,384", "3", "442,368"]
    assert text[-1].split() == ["total", "968", "573,440", "1,146,880", "24,576", "573,440"]
    md = s.to_markdown().splitlines()
    assert md[0].startswith("| layer | spec | output shape | params | MACs |")
    assert md[1].startswith("| --- | --- | --- | ---: |")
    assert md[3] == "| pool | pool:k2,s2 | 1x16x16x16 | - | - | - | - | 4 | - |"
    table = list(csv.DictReader(io.StringIO(s.to_csv())))
    assert [r["layer"] for r in table] == ["conv1", "pool", "up", "total"]
    assert table[2]["macs"] == "131072" and table[2]["output_shape"] == "1x8x32x32"
    assert table[3]["macs"] == "573440" and table[3]["fvcore"] == "573440"
    data = json.loads(s.to_json())
    assert data["totals"]["params"] == 968 and data["rows"][2]["receptive_field"] == [4, 4]


@pytest.mark.parametrize("chain", [
    [(3, 1, 0, 1), (3, 1, 0, 1)],
    [(7, 2, 3, 1), (3, 2, 1, 1), (3, 1, 1, 1), (3, 1, 1, 1)],
    [(3, 1, 2, 2), (5, 3, 0, 1), (1, 1, 0, 1), (3, 1, 4, 4)],
])
def test_receptive_field_of_forward_chains_matches_shapes(chain):
    layers = [numbaconv.Conv2d(2, 2, k, stride=s, padding=p, dilation=d) for k, s, p, d in chain]
    s = summary(layers, (1, 2, 300, 300))
    for i, row in enumerate(s.rows):
        expected = shapes.receptive_field([(k, s_, d) for k, s_, _, d in chain[:i + 1]])
        assert row["receptive_field"] == (expected, expected)


def _measured_field(layers, length):
    """The widest set of inputs one central output depends on, found by convolving impulses
    with all-ones weights (no cancellation) through the reference implementation."""
    width = 0
    sizes = []
    for i in range(length):
        x = np.zeros((1, 1, length))
        x[0, 0, i] = 1
        for layer in layers:
            ones = np.ones(layer.weight_shape)
            if layer.transposed:
                x = reference.conv_transpose1d(x, ones, None, layer.stride, layer.padding,
                                               layer.output_padding, 1, layer.dilation)
            else:
                x = reference.conv1d(x, ones, None, layer.stride, layer.padding,
                                     layer.dilation)
        sizes.append(x[0, 0])
    responses = np.array(sizes)                  # [input position, output position]
    out_len = responses.shape[1]
    for o in range(out_len // 3, 2 * out_len // 3):   # away from the borders
        hit = np.nonzero(responses[:, o])[0]
        if len(hit):
            width = max(width, hit.max() - hit.min() + 1)
    return width


@pytest.mark.parametrize("specs", [
    [("c", 3, 1, 1, 1), ("t", 4, 2, 1, 1), ("c", 3, 1, 1, 1)],
    [("c", 5, 2, 2, 1), ("t", 3, 2, 1, 1), ("t", 2, 2, 0, 1), ("c", 3, 1, 1, 2)],
    [("t", 3, 3, 0, 2), ("c", 2, 1, 0, 1)],
    [("t", 1, 3, 0, 1), ("c", 3, 1, 1, 1)],   # stride larger than the kernel: gaps
])
def test_receptive_field_with_transposed_layers_matches_impulses(specs):
    layers = []
    for kind, k, s, p, d in specs:
        cls = numbaconv.ConvTranspose1d if kind == "t" else numbaconv.Conv1d
        layers.append(cls(1, 1, k, stride=s, padding=p, dilation=d, bias=False))
    length = 40
    s = summary(layers, (1, 1, length))
    for i in range(len(layers)):
        assert s.rows[i]["receptive_field"] == (_measured_field(layers[:i + 1], length),), i


def test_graph_entries():
    net = [("a", numbaconv.Conv2d(3, 8, 3)),            # 10 -> 8
           ("b", numbaconv.Conv2d(8, 8, 3)),            # 8 -> 6
           ("side", Branch("input")),
           ("c", numbaconv.Conv2d(3, 8, 5)),            # 10 -> 6
           ("sum", Add("b")),
           ("cat", Concat("a", crop=True))]             # 8 cropped to 6
    s = summary(net, (2, 3, 10, 10))
    shapes_ = {r["name"]: r["output_shape"] for r in s.rows}
    assert shapes_ == {"a": (2, 8, 8, 8), "b": (2, 8, 6, 6), "side": (2, 3, 10, 10),
                       "c": (2, 8, 6, 6), "sum": (2, 8, 6, 6), "cat": (2, 16, 6, 6)}
    fields = {r["name"]: r["receptive_field"][0] for r in s.rows}
    assert fields == {"a": 3, "b": 5, "side": 1, "c": 5, "sum": 5, "cat": 5}


@pytest.mark.parametrize("net,shape,message", [
    ([numbaconv.Conv2d(3, 8, 3), numbaconv.Conv2d(8, 8, 5)], (1, 3, 6, 6),
     r"layer 1 \(conv:8,k5\) on input 1x8x4x4: kernel size \(5, 5\) .* is larger than the "
     r"padded input size \(4, 4\)"),
    ([numbaconv.Conv2d(3, 8, 3), numbaconv.Conv2d(4, 8, 1)], (1, 3, 6, 6),
     r"layer 1 \(conv:8,k1\) on input 1x8x4x4: Conv2d\(4, 8, .*\) expects 4 input channels"),
    ([numbaconv.ConvTranspose2d(3, 8, 3, padding=3)], (1, 3, 1, 1),
     r"layer 0 \(tconv:8,k3,p3\) .*crops away the whole output"),
    ([numbaconv.Conv1d(3, 8, 3)], (1, 3, 6, 6), r"a 1-d layer cannot take a 2-d input"),
    ([("a", numbaconv.Conv2d(3, 8, 3)), ("s", Add("input"))], (1, 3, 6, 6),
     r"layer s \(add:input\) .*Add needs equal shapes, but 'input' gives 1x3x6x6"),
    ([("a", numbaconv.Conv2d(3, 8, 3)), ("c", Concat("input"))], (1, 3, 6, 6),
     r"Concat needs spatial sizes equal \(or crop=True\)"),
    ([("a", Branch("nowhere"))], (1, 3, 6, 6), r"no earlier entry named 'nowhere'"),
    ([("a", Pool(2)), ("a", Pool(2))], (1, 3, 8, 8), r"entry name 'a' is used twice"),
])
def test_impossible_layers_are_named(net, shape, message):
    with pytest.raises(ValueError, match=message):
        summary(net, shape)


def test_bad_entries():
    with pytest.raises(TypeError, match="entry '0' must be a numbaconv convolution layer"):
        summary([object()], (1, 1, 4, 4))
    with pytest.raises(ValueError, match="input_shape must be"):
        summary([Pool(2)], (1, 1, 4, 0))
    with pytest.raises(TypeError, match="input_shape is required"):
        summary([Pool(2)])


# ---------------------------------------------------------------------- built-in models

@pytest.mark.parametrize("name,params,macs,output", [
    # VGG-16 / ResNet-18 conv parameters: 138,357,544 and 11,689,512 in torchvision, less the
    # classifier (and ResNet's 9,600 BatchNorm parameters).
    ("vgg16", 14_714_688, 15_346_630_656, (1, 512, 7, 7)),
    ("resnet18", 11_166_912, 1_813_561_344, (1, 512, 7, 7)),
    ("mobilenet_v2", 2_189_760, 299_494_272, (1, 1280, 7, 7)),
    ("unet", 31_030_658, 150_428_424_448, (1, 2, 388, 388)),
])
def test_builtin_models(name, params, macs, output):
    s = summary(name)
    assert (s.totals["params"], s.totals["macs"], s.output_shape) == (params, macs, output)
    assert s.input_shape == MODELS[name][1]


def test_builtin_model_receptive_fields():
    assert summary("resnet18").rows[-1]["receptive_field"] == (435, 435)
    assert summary("vgg16").rows[-1]["receptive_field"] == (212, 212)
    with pytest.raises(ValueError, match="model must be one of"):
        model("alexnet")


# ---------------------------------------------------------------------- against the real tools

def _torch():
    return pytest.importorskip("torch")


def _torch_layer(layer, device="cpu"):
    """The torch module with ``layer``'s hyper-parameters (weights are irrelevant to counts)."""
    nn = _torch().nn
    kwargs = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                  groups=layer.groups, bias=layer.bias is not None, device=device)
    if layer.transposed:
        kwargs["output_padding"] = layer.output_padding
        cls = nn.ConvTranspose1d if layer._nd == 1 else nn.ConvTranspose2d
    else:
        kwargs["padding_mode"] = layer.padding_mode
        cls = nn.Conv1d if layer._nd == 1 else nn.Conv2d
    return cls(layer.in_channels, layer.out_channels, layer.kernel_size, **kwargs)


def _ptflops(module, x):
    ptflops = pytest.importorskip("ptflops")
    # ptflops swaps torch.mul & co. for wrappers without __name__; torch imports _dynamo lazily
    # (meta tensors do) and that import fails on them, so it must happen first.
    import torch._dynamo  # noqa: F401
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        macs, _ = ptflops.get_model_complexity_info(
            module, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False,
            input_constructor=lambda _: x)
    version = tuple(int(v) for v in metadata.version("ptflops").split(".")[:3])
    return macs, "ptflops" if version >= (0, 7, 5) else "ptflops-legacy"


def _ptflops_aten(module, x):
    ptflops = pytest.importorskip("ptflops")
    if tuple(int(v) for v in metadata.version("ptflops").split(".")[:3]) < (0, 7, 5):
        pytest.skip("the 'ptflops-aten' convention is checked for ptflops 0.7.5")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        macs, _ = ptflops.get_model_complexity_info(
            module, tuple(x.shape[1:]), as_strings=False, print_per_layer_stat=False,
            input_constructor=lambda _: x, backend="aten")
    return macs, "ptflops-aten"


def _thop(module, x):
    thop = pytest.importorskip("thop")
    macs, _ = thop.profile(module, inputs=(x,), verbose=False)
    # the old 'thop' package is 0.1.x; its successor ultralytics-thop (same module) is 2.x
    convention = "ultralytics-thop" if int(thop.__version__.split(".")[0]) >= 2 else "thop"
    return macs, convention


def _fvcore(module, x):
    fvcore_nn = pytest.importorskip("fvcore.nn")
    analysis = fvcore_nn.FlopCountAnalysis(module, x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analysis.total(), "fvcore"


def _torchinfo(module, x):
    torchinfo = pytest.importorskip("torchinfo")
    stats = torchinfo.summary(module, input_data=x, verbose=0, device=x.device)
    return stats.total_mult_adds, "torchinfo"


TOOLS = {"ptflops": _ptflops, "ptflops-aten": _ptflops_aten, "thop": _thop, "fvcore": _fvcore,
         "torchinfo": _torchinfo}


def _exact(value):
    assert float(value) == int(value), value
    return int(value)


L, T = numbaconv.Conv2d, numbaconv.ConvTranspose2d
LAYERS = [
    (L(3, 8, 3, padding=1), (2, 3, 9, 11)),
    (L(8, 16, 3, stride=2, padding=1, bias=False), (1, 8, 15, 15)),
    (L(8, 8, 3, dilation=2, padding=2), (1, 8, 12, 10)),
    (L(8, 16, (3, 5), stride=(2, 1), groups=4), (1, 8, 13, 17)),
    (L(16, 16, 3, padding=1, groups=16, bias=False), (1, 16, 10, 10)),
    (L(16, 32, 3, groups=16), (3, 16, 7, 9)),
    (L(4, 4, 4, padding="same", padding_mode="reflect"), (1, 4, 9, 9)),
    (numbaconv.Conv1d(4, 6, 5, stride=2, padding=2), (2, 4, 33)),
    (T(3, 1, 2, stride=2), (1, 3, 2, 2)),
    (T(8, 4, 4, stride=2, padding=1), (1, 8, 7, 7)),
    (T(8, 4, 3, stride=2, padding=1, output_padding=1, bias=False), (2, 8, 5, 6)),
    (T(8, 8, 3, stride=(2, 3), groups=4, dilation=2), (1, 8, 4, 5)),
    (T(4, 6, 1), (1, 4, 5, 5)),
    (numbaconv.ConvTranspose1d(4, 2, 3, stride=3, padding=1), (1, 4, 9)),
]


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("layer,shape", LAYERS, ids=[f"{l.spec}-{'x'.join(map(str, s))}"
                                                     for l, s in LAYERS])
def test_convention_matches_tool_on_layer(tool, layer, shape):
    torch = _torch()
    module = _torch_layer(layer)
    x = torch.zeros(shape)
    counted, convention = TOOLS[tool](module, x)
    assert _exact(counted) == layer.macs(shape, convention=convention), convention
    assert tuple(module(x).shape) == layer.output_shape(shape)


def _Stack(entries, rows, device):
    """A torch module running a summary's entries: real convolutions, and for pools, sums and
    concatenations stand-ins of the right shape that no tool counts."""
    torch = _torch()

    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList()
            self.plan = []
            for (name, entry), row in zip(entries, rows):
                if isinstance(entry, numbaconv.layers._ConvLayer):
                    self.convs.append(_torch_layer(entry, device))
                    self.plan.append((name, len(self.convs) - 1, None))
                elif isinstance(entry, Branch):
                    self.plan.append((name, None, entry.source))
                else:
                    self.plan.append((name, None, (row["output_shape"],
                                                   getattr(entry, "source", None))))
            self.seen = {}

        def forward(self, x):
            outputs = {"input": x}
            for name, conv, other in self.plan:
                if conv is not None:
                    x = self.convs[conv](x)
                elif isinstance(other, str):
                    x = outputs[other]
                else:
                    # built from views of its inputs, so that a tracer keeps the layers before
                    # it, and of operations no tool counts
                    shape, source = other
                    parts = [x] + ([outputs[source]] if source else [])
                    first = torch.cat([p.reshape(-1)[:1] for p in parts])[:1]
                    x = first.reshape((1,) * len(shape)).expand(shape)
                outputs[name] = x
                self.seen[name] = tuple(x.shape)
            return x

    return Stack()


@pytest.mark.parametrize("name", ["vgg16", "resnet18"])
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_convention_matches_tool_on_model(name, tool):
    torch = _torch()
    torch.set_num_threads(1)
    entries = model(name)
    s = summary(entries, MODELS[name][1], convention="numbaconv")
    # fvcore traces the model, so it needs real tensors; the others read shapes only.
    device = "cpu" if tool == "fvcore" else "meta"
    stack = _Stack(entries, s.rows, device)
    x = torch.zeros(MODELS[name][1], device=device)
    counted, convention = TOOLS[tool](stack, x)
    expected = summary(entries, MODELS[name][1], convention=convention)
    assert _exact(counted) == expected.totals[convention]
    assert stack.seen == {r["name"]: r["output_shape"] for r in s.rows}
    assert sum(p.numel() for p in stack.parameters()) == s.totals["params"]


def test_per_layer_counts_on_resnet18_match_fvcore():
    torch = _torch()
    fvcore_nn = pytest.importorskip("fvcore.nn")
    torch.set_num_threads(1)
    entries = model("resnet18")
    s = summary(entries, (1, 3, 64, 64), convention="fvcore")
    stack = _Stack(entries, s.rows, "cpu")
    analysis = fvcore_nn.FlopCountAnalysis(stack, torch.zeros(1, 3, 64, 64))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_module = analysis.by_module()
    convs = [r["fvcore"] for r in s.rows if r["kind"] == "conv"]
    assert [by_module[f"convs.{i}"] for i in range(len(convs))] == convs


def test_builtin_models_shapes_and_params_match_torch():
    torch = _torch()
    for name, (_, input_shape, _) in MODELS.items():
        entries = model(name)
        s = summary(entries, input_shape)
        stack = _Stack(entries, s.rows, "meta")
        stack(torch.zeros(input_shape, device="meta"))
        assert stack.seen == {r["name"]: r["output_shape"] for r in s.rows}, name
        assert sum(p.numel() for p in stack.parameters()) == s.totals["params"], name
        assert math.prod(s.output_shape) > 0
