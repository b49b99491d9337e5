"""The benchmark machinery: peers agree with the reference, the bench command runs end to end."""

import dataclasses
import json

import numpy as np
import pytest

from numbaconv import bench, cli, dispatch, peers, reference, suite
from numbaconv.problem import ConvProblem

from cases import all_cases


@pytest.mark.parametrize("peer", peers.PEERS, ids=lambda p: p.name)
def test_peers_compute_the_same_convolution(peer):
    if peer.unavailable():
        pytest.skip(peer.unavailable())
    rng = np.random.default_rng(0)
    checked = 0
    for case in all_cases(40):
        p = case.problem
        x, w, b = case.arrays(rng)
        try:
            run, to_numpy = peer.prepare(p, x, w, b, threads=1)
        except NotImplementedError:
            continue
        fn = reference.conv_transpose_nd if p.transposed else reference.conv_nd
        expected = fn(p, x, w, b, np.empty(p.output_shape, p.dtype))
        assert np.array_equal(to_numpy(run()), expected), f"{peer.name} on {case}"
        checked += 1
    assert checked >= 50


def test_descriptors_round_trip_and_shorthand():
    for layer in suite.LAYERS:
        assert ConvProblem.from_descriptor(str(layer.problem)) == layer.problem
    short = ConvProblem.from_descriptor("mb2ic64ih56oc32kh3ph1sh2")
    assert short == ConvProblem.for_conv((2, 64, 56, 56), (32, 64, 3, 3), stride=2, padding=1)
    with pytest.raises(ValueError, match="cannot parse"):
        ConvProblem.from_descriptor("ic64ih56kh3")   # no oc
    with pytest.raises(ValueError, match="neither a suite layer nor a descriptor"):
        bench.parse_layer("resnet9000")


def test_suite_layers_are_valid_and_named_uniquely():
    names = [layer.name for layer in suite.LAYERS]
    assert len(names) == len(set(names)) >= 20
    assert suite.get("resnet50_3x3_c128_28_b8").problem.batch == 8


def test_bench_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = cli.main(["bench", "mb1ic8ih12oc8kh3ph1", "deconv_mb1ic4ih6oc4kh3sh2ph1b",
                     "--repeats", "2", "--min-time", "0", "--rounds", "1", "--batch", "1", "2",
                     "--peers", "numpy-im2col", "--json", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "GEMM peak" in text and "numpy-im2col" in text and "geometric mean" in text
    report = json.loads(out.read_text())
    assert len(report["layers"]) == 4
    for layer in report["layers"]:
        auto = layer["results"]["numbaconv"]
        assert auto["status"] == "ok" and len(auto["samples"]) >= 2 and auto["extra_bytes"] >= 0
        assert layer["results"]["numpy-im2col"]["status"] == "ok"
    assert report["summary"]["numpy-im2col"]["layers"] == 4
    # plans run on every 2-d layer, under auto's choice for plans
    plans = {layer["name"]: layer["results"].get(bench.PLAN) for layer in report["layers"]}
    assert all(p["status"] == "ok" and len(p["samples"]) >= 2 for p in plans.values())
    # (the forward layer's choice, direct or gemm, depends on the build's vector width)
    def plan_choice(name):
        base, _, batch = name.rpartition("_b")
        problem = bench.parse_layer(base if batch.isdigit() else name).problem
        if batch.isdigit():
            problem = dataclasses.replace(problem, batch=int(batch))
        return dispatch.auto_choice(problem, prepared=True)

    assert {n: p["detail"] for n, p in plans.items()} == {n: plan_choice(n) for n in plans}
    assert plans["deconv_mb1ic4ih6oc4kh3sh2ph1b"]["detail"] == "gemm"
    assert report["summary"]["plan"]["layers"] == 4
    assert "numbaconv plans (weights prepared once)" in text


@pytest.mark.parametrize("argv, rounds", [([], 9), (["--quick"], 3), (["--rounds", "4"], 4),
                                          (["--quick", "--rounds", "5"], 5)])
def test_bench_rounds_default_to_nine_and_three_with_quick(monkeypatch, argv, rounds):
    seen = {}
    monkeypatch.setattr(bench, "run", lambda layers, **kwargs: seen.update(kwargs))
    assert cli.main(["bench", "mb1ic8ih12oc8kh3ph1"] + argv) == 0
    assert seen["rounds"] == rounds


@pytest.mark.parametrize("option", ["--rounds", "--repeats"])
def test_bench_counts_below_one_are_refused(option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "mb1ic8ih12oc8kh3ph1", option, "0"])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_bench_reports_a_wrong_candidate_instead_of_timing_it(monkeypatch):
    layer = bench.parse_layer("mb1ic4ih8oc4kh3ph1")

    class Wrong(peers.Peer):
        name = "numpy-im2col"

        def prepare(self, problem, x, w, b, threads):
            return (lambda: np.zeros(problem.output_shape, np.float32)), np.asarray

    monkeypatch.setattr(peers, "PEERS", (Wrong(),))
    results = bench.bench_layer(layer, 1, 1, 0.0, 1, None, ("numpy-im2col",),
                                np.random.default_rng(0))
    assert results["numpy-im2col"].status == "failed check"
    assert not results["numpy-im2col"].samples
    assert results["numbaconv"].status == "ok"


def test_demo_command_runs(capsys):
    assert cli.main(["demo", "resnet50_3x3_c128_28", "--repeats", "1"]) == 0
    assert "1x128x28x28" in capsys.readouterr().out


def test_bench_layouts_command(capsys):
    """``numbaconv bench-layouts`` times a 2-D, a transposed and a 3-D layer in both layouts
    (and torch when installed) and prints the ratios."""
    from numbaconv import layout_bench
    names = ["mobilenetv2_1x1_c192to32_28", "dcgan_t4x4s2_c512to256_4", "c3d_3x3x3_c256_4x14"]
    rows = layout_bench.run(names, min_time=0.01, rounds=1)
    assert [r["layer"] for r in rows] == names
    assert all(r["ours_first"] > 0 and r["ours_last"] > 0 for r in rows)
    assert "NHWC / NCHW speed: geometric mean" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown layers"):
        layout_bench.run(["no_such_layer"])


def test_asv_benchmarks_set_up_and_run():
    """The asv classes import and run on one small layer each (so they cannot rot unseen)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_layers.py"
    spec = importlib.util.spec_from_file_location("bench_layers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    layers = module.Layers()
    layers.setup("mobilenetv2_1x1_c192to32_28", "auto")
    layers.time_conv("mobilenetv2_1x1_c192to32_28", "auto")
    assert layers.track_gflops("mobilenetv2_1x1_c192to32_28", "auto") > 0
    plans = module.Plans()
    assert "dcgan_t4x4s2_c128to64_16" in plans.params[0]
    for name in ("mobilenetv2_1x1_c192to32_28", "mobilenetv2_dw3x3_c144_56_dgrad"):
        plans.setup(name)
        plans.time_plan(name)
        assert plans.track_gflops(name) > 0
    layouts = module.Layouts()
    assert "c3d_3x3x3_c64_16x56" in layouts.params[0]
    for layout in layouts.params[1]:
        layouts.setup("mobilenetv2_dw3x3_c144_56", layout)
        layouts.time_conv("mobilenetv2_dw3x3_c144_56", layout)
        assert layouts.track_gflops("mobilenetv2_dw3x3_c144_56", layout) > 0


def test_bench_grad_checks_and_times_a_depthwise_training_step():
    """bench-grad compares every gradient with torch's (when installed) before timing: a wrong
    gradient raises. Depthwise layers take groups from the layer table."""
    from numbaconv import grad_bench
    lines = []
    rows = grad_bench.run(["mobilenetv2_dw3x3s2_c96_112"], batches=(1,), min_time=0.01,
                          repeats=1, log=lines.append)
    assert [r["layer"] for r in rows] == ["mobilenetv2_dw3x3s2_c96_112"]
    assert rows[0]["numbaconv_ms"] > 0 and rows[0]["gflop"] > 0
    assert any(line.startswith("mobilenetv2_dw3x3s2_c96_112") for line in lines)
    with pytest.raises(ValueError, match="unknown layer"):
        grad_bench.run(["no_such_layer"])
