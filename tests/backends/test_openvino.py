"""OpenVINO backend: compile, cache, run through Polygraphy, inspect, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtq.backends.layers import diff_engines, load_layer_list
from rtq.backends.openvino.compile import (
    OpenVinoSettings,
    build_compiled,
    build_json_path,
    compile_model,
    layers_json_path,
    read_model,
)
from rtq.backends.openvino.inspect import (
    fusions,
    inspection_markdown,
    onnx_node_of,
    onnx_op_types,
    runtime_layers,
)
from rtq.backends.openvino.runner import make_openvino_runner
from rtq.errors import UserError


def conv_relu_add(path: Path) -> Path:
    """x -> Conv -> Relu -> Conv -> Add(x): OpenVINO fuses the Relu (and the Add) into the Convs."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.1, "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])],
        [w1, w2],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_runner_matches_onnxruntime_with_dynamic_batch(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((3, 8, 16, 16)).astype(np.float32)
    with make_openvino_runner(path, OpenVinoSettings()) as runner:
        meta = runner.get_input_metadata(use_numpy_dtypes=False)
        assert list(meta.keys()) == ["x"] and tuple(meta["x"].shape)[0] == -1
        out = runner.infer({"x": x})
        single = runner.infer({"x": x[:1]})
    np.testing.assert_allclose(out["y"], reference(path, x), atol=1e-4)
    np.testing.assert_array_equal(single["y"], out["y"][:1])  # batch 1 == row of batch 3


def test_compiled_model_is_cached_by_content_and_keeps_its_layers(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    settings = OpenVinoSettings(profile=True)
    blob = build_compiled(path, tmp_path / "a" / "model.blob", settings, cache_dir=tmp_path / "cache")
    info = json.loads(build_json_path(blob).read_text())
    assert info["settings"]["inference_precision"] == "f32" and info["settings"]["openvino"]
    entries = list((tmp_path / "cache" / "openvino").iterdir())
    assert len(entries) == 1
    build_compiled(path, tmp_path / "b" / "model.blob", settings, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "openvino").iterdir())) == 1  # a hit, no second entry
    build_compiled(path, tmp_path / "c" / "model.blob", OpenVinoSettings(), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "openvino").iterdir())) == 2  # other settings, other key
    layers = load_layer_list(layers_json_path(blob))
    assert any("conv1" in layer.onnx_nodes for layer in layers)
    x = np.ones((2, 8, 16, 16), np.float32)
    with make_openvino_runner(blob, settings) as runner:  # the exported model, not recompiled
        np.testing.assert_allclose(runner.infer({"x": x})["y"], reference(path, x), atol=1e-4)


def test_inspector_maps_layers_to_onnx_nodes_and_lists_fusions(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    compiled = compile_model(path, OpenVinoSettings(profile=True))
    compiled({"x": np.ones((1, 8, 16, 16), np.float32)})
    layers = runtime_layers(compiled, path)
    op_types = onnx_op_types(path)
    fused = fusions(layers, op_types)
    assert any({"conv1", "relu1"} <= set(layer.onnx_nodes) for layer in fused)
    assert all(layer.time_us is not None for layer in layers if layer.type == "Convolution")
    text = inspection_markdown(layers, op_types, touching=["relu1"])
    assert "## Fusions" in text and "conv1 (Conv)" in text and "Layers touching `relu1`" in text


def test_marking_an_output_breaks_the_fusion_and_the_diff_shows_it(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    plain = runtime_layers(compile_model(path, OpenVinoSettings()), path)
    marked = runtime_layers(compile_model(path, OpenVinoSettings(), extra_outputs=["c1"]), path)
    diff = diff_engines(plain, marked, "plain", "marked", ignore_unmapped=True)
    assert not diff.identical_fusions
    assert any("relu1" in change.onnx_nodes for change in diff.fusion_changes)


def test_names_of_openvino_nodes_map_back_to_the_onnx_node_they_extend() -> None:
    known = frozenset({"/model/a/MatMul", "Conv_41"})
    assert onnx_node_of("/model/a/MatMul/DequantizationMultiply", known) == "/model/a/MatMul"
    assert onnx_node_of("Conv_41", known) == "Conv_41"
    assert onnx_node_of("Multiply_35731", known) is None


def test_an_onnx_openvino_cannot_read_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(UserError, match="is not an ONNX model"):
        read_model(junk)
    with pytest.raises(UserError, match="does not exist"):
        read_model(tmp_path / "missing.onnx")


def test_a_custom_op_without_an_extension_is_one_line(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    node = helper.make_node("fused_attn_offset_prediction", ["x"], ["y"], name="fused")
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", [x], [y])), path)
    with pytest.raises(UserError, match="no OpenVINO implementation of ONNX op.*fused_attn"):
        read_model(path)


def test_precision_hints_are_checked_against_what_would_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not an OpenVINO precision hint"):
        OpenVinoSettings(inference_precision="fp8")
    with pytest.raises(UserError, match="performance_hint"):
        OpenVinoSettings(performance_hint="FASTEST")
    path = conv_relu_add(tmp_path / "m.onnx")
    compiled = compile_model(path, OpenVinoSettings(inference_precision="f32"))
    assert "32" in str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    try:  # a CPU without native f16 substitutes another precision: that must not pass silently
        compile_model(path, OpenVinoSettings(inference_precision="f16"))
    except UserError as err:
        assert "does not support backend.inference_precision='f16'" in str(err)


def test_marking_an_unknown_tensor_is_one_line(tmp_path: Path) -> None:
    path = conv_relu_add(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="'nope' is not in"):
        read_model(path, extra_outputs=["nope"])
