"""Non-invasive compare on a hand-built Conv->Relu->Conv->Add graph OpenVINO fuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("openvino")

from rtq.compare.metrics import error_stats, normalised_error  # noqa: E402
from rtq.compare.noninvasive import main, noninvasive_compare  # noqa: E402
from rtq.compare.noninvasive_modules import OnnxIndex, module_of_node, node_modules  # noqa: E402
from rtq.compare.noninvasive_probe import NonInvasiveOptions, StreamingStats  # noqa: E402


def _chain(path: Path) -> Path:
    """x -> Conv -> Relu -> Conv -> Add(relu) -> y; OpenVINO fuses Conv+Relu and Conv+Add."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(8, 8, 3, 3)).astype(np.float32) * 0.2, "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="/model/stem/conv1/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/model/stem/conv1/act/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/model/layers.0/conv2/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["y"], name="/model/layers.0/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _feeds(count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def test_boundaries_found_and_probe_proved_clean(tmp_path: Path) -> None:
    model = _chain(tmp_path / "chain.onnx")
    report = noninvasive_compare(
        model, model, _feeds(), tmp_path / "out", options=NonInvasiveOptions(strict=True)
    )
    assert report["boundaries_found"] >= 2
    assert "r1" in {row["tensor"] for row in report["boundaries"]}  # Conv+Relu output leaves its layer
    assert report["bit_identical"] and report["fusions_unchanged"] and report["baseline_deterministic"]
    # marking the Conv output that the Add reads changes how OpenVINO compiles the Add: named, dropped
    assert {row["tensor"] for row in report["invasive"]} <= {"c2"}
    assert report["layers_covered"] >= 1
    assert all(row["normalised_error"] < 1e-4 for row in report["boundaries"])
    assert (tmp_path / "out" / "report.md").read_text().count("bit-identical") == 1


def test_marking_inside_a_fusion_is_detected_and_named(tmp_path: Path) -> None:
    model = _chain(tmp_path / "chain.onnx")
    options = NonInvasiveOptions(extra_marks=("c1",), strict=True)  # Conv output inside the fused Conv+Relu
    report = noninvasive_compare(model, model, _feeds(), tmp_path / "out", options=options)
    invasive = {row["tensor"]: row for row in report["invasive"]}
    assert "c1" in invasive and "r1" not in invasive, report["invasive"]  # not the Relu c1's fusion broke
    assert "/model/stem/conv1/conv/Conv" in invasive["c1"]["changed"]
    assert "c1" not in {row["tensor"] for row in report["boundaries"]}
    assert report["bit_identical"] and report["fusions_unchanged"]  # after dropping it the proof holds
    assert "`c1`" in (tmp_path / "out" / "report.md").read_text()


def test_streaming_stats_equal_stacked_stats() -> None:
    rng = np.random.default_rng(2)
    pairs = [(rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7))) for _ in range(4)]
    acc = StreamingStats()
    for ref, got in pairs:
        acc.update(ref, got)
    stacked = error_stats(
        np.concatenate([r.ravel() for r, _ in pairs]), np.concatenate([g.ravel() for _, g in pairs])
    )
    result = acc.result()
    for key in ("max_abs", "mean_abs", "ref_max_abs", "size"):
        assert result[key] == pytest.approx(stacked[key], rel=1e-12)
    assert result["normalised_error"] == pytest.approx(normalised_error(stacked), rel=1e-12)
    assert result["feeds"] == 4


def test_module_grouping_torch_names_and_flat_chunks() -> None:
    assert (
        module_of_node("/model/backbone/res_layers.2/blocks.1/branch2a/conv/Conv")
        == "/model/backbone/res_layers.2"
    )
    assert module_of_node("/model/backbone/conv1/conv1_1/conv/Conv") == "/model/backbone/conv1"
    assert module_of_node("/model/decoder/enc_bbox_head/layers.0/MatMul") == "/model/decoder/enc_bbox_head"
    assert module_of_node("Conv_41") is None
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"Relu_{i}") for i in range(8)]
    graph = helper.make_graph(nodes, "flat", [], [])
    modules, how = node_modules(
        OnnxIndex.of(helper.make_model(graph)), {n.name: "Relu" for n in nodes}, chunks=4
    )
    assert len(set(modules.values())) == 4 and "chunks" in how


def test_fp32_module_table_and_recipe(tmp_path: Path) -> None:
    model = _chain(tmp_path / "chain.onnx")
    options = NonInvasiveOptions(max_module_error=-1.0, timing_runs=1)  # every module over: all excluded
    report = noninvasive_compare(model, model, _feeds(1), tmp_path / "out", options=options, fp32=model)
    modules = {row["module"]: row for row in report["modules"]}
    assert modules["/model/stem/conv1"]["int8_us"] is not None and modules["/model/stem/conv1"][
        "outputs"
    ] == ["r1"]
    from rtq.quant.recipes import load_recipe

    recipe = load_recipe(report["recipe"]["path"])
    assert "*stem.conv1" in recipe.exclude


def test_cli_bad_path_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.onnx"), "--reference", "x.onnx", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
