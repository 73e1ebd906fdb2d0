"""Engine inspector JSON parsing and engine fusion diffs, on JSON written to TensorRT's format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rtq.backends.layers import diff_engines, diff_markdown, write_diff_report, write_layers_report
from rtq.backends.tensorrt.inspect import (
    load_layers,
    parse_engine_information,
    parse_metadata,
    precision_of,
)

US, RS = "\x1f", "\x1e"


def _tensor(name: str, fmt: str, dims: list[int]) -> dict[str, Any]:
    return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt}


def _onnx(*names: str, sep: str = US) -> str:
    return sep.join(f"[ONNX Layer: {n}]" for n in names)


DECODER_NODES = [f"/model/decoder/layers.0/cross_attn/{op}" for op in (
    "sampling_offsets/MatMul", "sampling_offsets/Add", "attention_weights/MatMul", "attention_weights/Add",
    "Softmax", "Reshape", "GridSample", "Mul", "ReduceSum",
)]


def _engine(direct: bool) -> dict[str, Any]:
    """A DETAILED inspector dump: conv+relu fusion, a reformat layer with no metadata, a Myelin
    region covering many decoder nodes; `direct=False` splits the attention projections out."""
    layers: list[dict[str, Any]] = [
        {
            "Name": "/model/backbone/conv1/Conv + /model/backbone/conv1/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [_tensor("images_int8", "Row major linear Int8 format", [-1, 3, 640, 640])],
            "Outputs": [_tensor("/model/backbone/conv1/Relu_output_0", "Channel major Int8 format where "
                                "channel % 32 == 0", [-1, 32, 320, 320])],
            "ParameterType": "Convolution",
            "TacticName": "sm89_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32kcrs",
            "TacticValue": "0x8c9a3e1f00000000",
            "Metadata": _onnx("/model/backbone/conv1/Conv", "/model/backbone/conv1/Relu",
                              "/model/backbone/conv1/input_quantizer/QuantizeLinear"),
        },
        {
            "Name": "Reformatting CopyNode for Input Tensor 0 to {ForeignNode[/model/decoder]}",
            "LayerType": "Reformat",
            "Inputs": [_tensor("a", "Channel major Int8 format where channel % 32 == 0", [-1, 256, 20, 20])],
            "Outputs": [_tensor("b", "Row major linear FP32 format", [-1, 256, 20, 20])],
            "TacticValue": "0x0000000000000000",
            "Metadata": "",
        },
    ]
    if direct:
        layers.append({
            "Name": "{ForeignNode[/model/decoder/layers.0/cross_attn/sampling_offsets/MatMul...ReduceSum]}",
            "LayerType": "Myelin",
            "Inputs": [_tensor("query", "Row major linear FP32 format", [-1, 300, 256])],
            "Outputs": [_tensor("attn_out", "Row major linear Half format", [-1, 300, 256])],
            "TacticName": "__myl_MulAdd_0x1",
            "TacticValue": "0x0000000000000000",
            "Metadata": _onnx(*DECODER_NODES[:4]) + RS + _onnx(*DECODER_NODES[4:]),
        })
    else:
        layers += [
            {
                "Name": "/model/decoder/layers.0/cross_attn/sampling_offsets/MatMul",
                "LayerType": "gemm",
                "Inputs": [_tensor("query", "Row major linear Int8 format", [-1, 300, 256])],
                "Outputs": [_tensor("offsets", "Row major linear FP32 format", [-1, 300, 192])],
                "TacticName": "sm89_xmma_gemm_i8f32_i8i32_f32_tn_n",
                "Metadata": _onnx(*DECODER_NODES[:2]),
            },
            {
                "Name": "/model/decoder/layers.0/cross_attn/attention_weights/MatMul",
                "LayerType": "gemm",
                "Inputs": [_tensor("query", "Row major linear Int8 format", [-1, 300, 256])],
                "Outputs": [_tensor("weights", "Row major linear FP32 format", [-1, 300, 96])],
                "TacticName": "sm89_xmma_gemm_i8f32_i8i32_f32_tn_n",
                "Metadata": _onnx(*DECODER_NODES[2:4]),
            },
            {
                "Name": "{ForeignNode[/model/decoder/layers.0/cross_attn/Softmax...ReduceSum]}",
                "LayerType": "Myelin",
                "Inputs": [_tensor("offsets", "Row major linear FP32 format", [-1, 300, 192])],
                "Outputs": [_tensor("attn_out", "Row major linear FP32 format", [-1, 300, 256])],
                "TacticValue": "0x0000000000000000",
                "Metadata": _onnx(*DECODER_NODES[4:]),
            },
        ]
    return {"Layers": layers, "Bindings": ["images", "orig_target_sizes", "labels", "boxes", "scores"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Row major linear FP32 format", "fp32"),
        ("Row major linear Half format", "fp16"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Channel major Int8 format where channel % 32 == 0", "int8"),
        ("Row major linear INT32 format", "int32"),
        ("Row major linear Int64 format", "int64"),
        ("Row major linear BFloat16 format", "bf16"),
        ("Float", "fp32"),
        ("Bool", "bool"),
        ("something else", ""),
    ],
)
def test_precision_of(text: str, expected: str) -> None:
    assert precision_of(text) == expected


def test_parse_metadata_both_separators_and_dedup() -> None:
    meta = _onnx("a/Conv", "a/Relu") + RS + _onnx("b/Add", "a/Conv")
    assert parse_metadata(meta) == ("a/Conv", "a/Relu", "b/Add")
    assert parse_metadata("") == ()
    assert parse_metadata("[ONNX Layer: name with [brackets]]") == ("name with [brackets]",)


def test_parse_layers_detailed() -> None:
    layers = parse_engine_information(json.dumps(_engine(direct=True)))
    assert [layer.type for layer in layers] == ["CaskConvolution", "Reformat", "Myelin"]
    conv, reformat, myelin = layers
    assert conv.input_precisions == ("int8",) and conv.output_precisions == ("int8",)
    assert conv.tactic.startswith("sm89_xmma_fprop")
    assert conv.onnx_nodes[-1].endswith("QuantizeLinear")
    assert reformat.onnx_nodes == () and reformat.tactic == "0x0000000000000000"
    assert reformat.output_precisions == ("fp32",)
    assert myelin.onnx_nodes == tuple(DECODER_NODES)
    assert myelin.output_precisions == ("fp16",)


def test_parse_layers_names_only() -> None:
    layers = parse_engine_information({"Layers": ["conv1", "relu1"], "Bindings": ["x", "y"]})
    summary = [(layer.name, layer.type, layer.onnx_nodes) for layer in layers]
    assert summary == [("conv1", "", ()), ("relu1", "", ())]


def test_parse_rejects_missing_layers() -> None:
    with pytest.raises(ValueError, match="Layers"):
        parse_engine_information({"Bindings": []})


def test_diff_finds_split_fusion_only() -> None:
    a = parse_engine_information(_engine(direct=True))
    b = parse_engine_information(_engine(direct=False))
    diff = diff_engines(a, b, "int8_direct", "int8_extra_outputs")
    assert not diff.identical_fusions
    assert len(diff.fusion_changes) == 1
    change = diff.fusion_changes[0]
    assert change.onnx_nodes == sorted(DECODER_NODES)
    assert [layer.type for layer in change.layers_a] == ["Myelin"]
    assert sorted(layer.type for layer in change.layers_b) == ["Myelin", "gemm", "gemm"]
    assert change.only_in_a == [] and change.only_in_b == []
    # conv and the metadata-less reformat layer are matched across engines, unchanged.
    assert diff.precision_changes == []


def test_diff_identical_engines_and_precision_change() -> None:
    a = parse_engine_information(_engine(direct=True))
    assert diff_engines(a, a).identical_fusions
    changed = _engine(direct=True)
    changed["Layers"][0]["Outputs"][0]["Format/Datatype"] = "Row major linear Half format"
    diff = diff_engines(a, parse_engine_information(changed))
    assert diff.identical_fusions
    assert len(diff.precision_changes) == 1
    assert diff.precision_changes[0].layer_b.output_precisions == ("fp16",)


def test_diff_reports_renamed_nodes() -> None:
    a = parse_engine_information(_engine(direct=True))
    renamed = _engine(direct=True)
    renamed["Layers"][2]["Metadata"] = _onnx("fused_attn_offset_prediction_0", *DECODER_NODES[4:])
    diff = diff_engines(a, parse_engine_information(renamed))
    (change,) = diff.fusion_changes
    assert change.only_in_a == sorted(DECODER_NODES[:4])
    assert change.only_in_b == ["fused_attn_offset_prediction_0"]


def test_reports_written(tmp_path: Path) -> None:
    engine_json = tmp_path / "model.layers.json"
    engine_json.write_text(json.dumps(_engine(direct=True)))
    layers = load_layers(engine_json)
    json_path, md_path = write_layers_report(layers, tmp_path / "layers_report")
    assert json.loads(json_path.read_text())[2]["type"] == "Myelin"
    assert "| 2 |" in md_path.read_text()

    diff = diff_engines(layers, parse_engine_information(_engine(direct=False)), "direct", "extra")
    json_path, md_path = write_diff_report(diff, tmp_path / "engine_diff")
    assert len(json.loads(json_path.read_text())["fusion_changes"]) == 1
    markdown = md_path.read_text()
    assert markdown == diff_markdown(diff)
    assert "Fusion change 1 (9 ONNX nodes)" in markdown
