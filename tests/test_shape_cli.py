"""``numbaconv shape`` / ``numbaconv summary`` and the layer spec grammar."""

import csv
import io
import json
import subprocess
import sys

import pytest

import numbaconv
from numbaconv.cli import main
from numbaconv.shape_cli import SpecError, layer_spec, parse_layer, parse_shape
from numbaconv.summary import MODELS, Pool


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_issue_example(capsys):
    code, out, err = _run(capsys, "shape", "1x3x227x227", "conv:96,k11,s4", "conv:256,k5,p2",
                          "tconv:128,k4,s2,p1")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "input 1x3x227x227 -> output 1x128x110x110"
    rows = [line.split() for line in lines[3:]]
    # layer, spec, output shape, params, MACs, FLOPs, bias adds, receptive field
    assert rows[0] == ["1", "conv:96,k11,s4", "1x96x55x55", "34,944", "105,415,200",
                       "210,830,400", "290,400", "11"]
    assert rows[1] == ["2", "conv:256,k5,p2", "1x256x55x55", "614,656", "1,858,560,000",
                       "3,717,120,000", "774,400", "27"]
    # 256 x 55 x 55 inputs, each meeting 128 x 4 x 4 weights; (55 - 1) * 2 - 2 + 4 = 110
    assert rows[2] == ["3", "tconv:128,k4,s2,p1", "1x128x110x110", "524,416", "1,585,971,200",
                       "3,171,942,400", "1,548,800", "31"]
    assert rows[3] == ["total", "1,174,016", "3,549,946,400", "7,099,892,800", "2,613,600"]


def test_shape_formats_and_convention(capsys):
    args = ("shape", "2x3x32x32", "conv:8,k3,p1", "pool:k2", "tconv:4,k2,s2,nobias")
    code, out, _ = _run(capsys, *args, "--format", "csv", "--convention", "thop")
    assert code == 0
    table = list(csv.DictReader(io.StringIO(out)))
    assert [r["output_shape"] for r in table] == ["2x8x32x32", "2x8x16x16", "2x4x32x32",
                                                  "2x4x32x32"]
    assert int(table[2]["macs"]) == 2 * 8 * 16 * 16 * 4 * 4        # input grid
    assert int(table[2]["thop"]) == 2 * 4 * 32 * 32 * 8 * 4        # output grid
    code, out, _ = _run(capsys, *args, "--format", "json")
    data = json.loads(out)
    assert data["output_shape"] == [2, 4, 32, 32] and data["totals"]["bias_adds"] == 2 * 8 * 1024
    code, out, _ = _run(capsys, *args, "--format", "markdown")
    assert out.splitlines()[0].startswith("| layer | spec |")


def test_shape_1d(capsys):
    code, out, _ = _run(capsys, "shape", "1x2x100", "conv:4,k5,s2,p2,reflect", "tconv:2,k4,s2,p1")
    assert code == 0
    assert "1x4x50" in out and "1x2x100" in out.splitlines()[-2]


@pytest.mark.parametrize("argv,message", [
    (["1x3x8x8", "conv:4,k3", "conv:8,k9"],
     "layer 2 (conv:8,k9) on input 1x4x6x6: kernel size (9, 9) (dilated extent (9, 9)) is "
     "larger than the padded input size (6, 6)"),
    (["1x3x8x8", "conv:4,k3", "tconv:8,k3,p5"], "layer 2 (tconv:8,k3,p5) on input 1x4x6x6: "
                                                "padding ((5, 5), (5, 5)) crops away"),
    (["1x3x8x8", "conv:4,k3,s2,psame"], "layer 1 (conv:4,k3,s2,psame): padding='same' requires "
                                        "stride 1"),
    (["1x6x8x8", "conv:4,k3,g4"], "layer 1 (conv:4,k3,g4): Conv2d: in_channels must be "
                                  "divisible by groups, got in_channels=6 and groups=4"),
    (["1x3x8x8", "conv:4,k3,x2"], "layer 1 (conv:4,k3,x2): unknown option 'x2'"),
    (["1x3x8x8", "conv:k3"], "layer 1 (conv:k3): conv needs the output channels first"),
    (["1x3x8x8", "conv:4,s2"], "layer 1 (conv:4,s2): the kernel size is missing (kN)"),
    (["1x3x8x8", "conv:4,k3x3x3"], "kernel size must be an int or 2 ints joined by 'x'"),
    (["1x3x8x8", "conv:4,k3,op1"], "output padding (opN) applies to tconv only"),
    (["1x3x8x8", "tconv:4,k3,s2,op2"], "output_padding must be smaller than either stride"),
    (["1x3x8x8", "dense:4"], "a layer spec starts with 'conv:', 'tconv:' or 'pool:'"),
    (["1x3x8x8", "pool:k2,nobias"], "pool takes kN, sN, pN and dN only"),
    (["1x3x8x0", "conv:4,k3"], "a shape is positive ints joined by 'x'"),
    (["1x3x8x8x8", "conv:4,k3"], "the input shape must be NxCxL or NxCxHxW"),
])
def test_shape_errors_name_the_layer_and_rule(capsys, argv, message):
    code, out, err = _run(capsys, "shape", *argv)
    assert code == 2 and out == ""
    assert err.startswith("numbaconv shape: error: ")
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", sorted(MODELS))
def test_summary_command(capsys, name):
    code, out, err = _run(capsys, "summary", "--model", name)
    assert code == 0 and err == ""
    expected = numbaconv.summary(name)
    assert out.splitlines()[0].endswith("x".join(map(str, expected.output_shape)))
    assert out.splitlines()[-1].split()[1:3] == [f"{expected.totals['params']:,}",
                                                 f"{expected.totals['macs']:,}"]


def test_summary_command_options_and_errors(capsys):
    code, out, _ = _run(capsys, "summary", "--model", "resnet18", "--input", "2x3x64x64",
                        "--convention", "ptflops", "--format", "csv")
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and table[-1]["output_shape"] == "2x512x2x2"
    assert int(table[-1]["ptflops"]) * 2 == int(table[-1]["macs"])   # per sample, no bias
    code, out, err = _run(capsys, "summary", "--model", "resnet18", "--input", "1x4x64x64")
    assert code == 2 and "layer conv1 (conv:64,k7,s2,p3,nobias) on input 1x4x64x64: Conv2d" in err
    code, out, err = _run(capsys, "summary", "--model", "unet", "--input", "1x1x64x64")
    assert code == 2 and "kernel size (3, 3)" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "--model", "alexnet"])
    assert exit_info.value.code == 2


def test_console_script_exit_code_without_traceback():
    result = subprocess.run([sys.executable, "-m", "numbaconv.cli", "shape", "1x3x8x8",
                             "conv:4,k9"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "layer 1 (conv:4,k9) on input 1x3x8x8" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("spec,in_channels,nd", [
    ("conv:96,k11,s4", 3, 2),
    ("conv:64,k3,p1,nobias", 64, 2),
    ("conv:32,k3x5,s2x1,p1x2,d2", 8, 2),
    ("conv:32,k3,psame,dw", 32, 2),
    ("conv:12,k3,g4,reflect", 8, 2),
    ("conv:4,k3,p0_1x1_1", 4, 2),
    ("tconv:128,k4,s2,p1", 256, 2),
    ("tconv:8,k3,s2,p1,op1,d2,g2,nobias", 4, 2),
    ("conv:6,k5,s2,p2", 4, 1),
    ("tconv:2,k4,s3,op2", 4, 1),
])
def test_spec_round_trip(spec, in_channels, nd):
    layer = parse_layer(spec, in_channels, nd)
    assert layer.spec == layer_spec(layer) == spec
    assert layer.in_channels == in_channels and layer._nd == nd


def test_spec_meaning():
    layer = parse_layer("conv:32,k3x5,s2x1,p1x2,d2,g4,nobias", 8)
    assert (layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
            layer.groups, layer.bias) == (32, (3, 5), (2, 1), (1, 2), (2, 2), 4, None)
    assert parse_layer("conv:8,k3,dw", 8).groups == 8
    assert isinstance(parse_layer("conv:8,k1", 3, nd=1), numbaconv.Conv1d)
    pool = parse_layer("pool:k3,s2,p1", 8)
    assert isinstance(pool, Pool) and pool.spec == "pool:k3,s2,p1"
    assert parse_layer("pool:k2", 8).spec == "pool:k2,s2"
    assert parse_shape("1X3x224x224") == (1, 3, 224, 224)
    with pytest.raises(SpecError, match="option 'k' given twice"):
        parse_layer("conv:8,k3,k5", 3)
    with pytest.raises(SpecError, match="give either gN or dw"):
        parse_layer("conv:8,k3,g2,dw", 8)
