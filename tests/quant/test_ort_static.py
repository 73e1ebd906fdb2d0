"""ORT's own quantize_static: the Q/DQ it places are fused by ORT's CPU transformers, scopes stay float."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from tiny_onnx import conv_add_model, conv_model, random_feeds

from rtq.errors import UserError
from rtq.evaluate.ort_profile import profile_graph, profile_onnxrt, profiles_markdown
from rtq.quant.ort_static import OrtVariant, ort_quantize_static, ort_variants


def test_ort_uint8_qdq_is_fused_into_qlinearconv(tmp_path: Path) -> None:
    fp32 = conv_model(tmp_path / "tiny.onnx")
    int8 = ort_quantize_static(fp32, tmp_path / "tiny.int8.onnx", random_feeds(4))
    before = profile_graph(onnx.load(int8))
    assert before.count("QuantizeLinear") > 0 and before.count("DequantizeLinear") > 0
    after = profile_onnxrt(int8, tmp_path / "graphs", intra_op_threads=1)
    assert after.count("QLinearConv") == 2
    assert after.count("float_conv") == 0
    fp32_profile = profile_onnxrt(fp32, tmp_path / "graphs", intra_op_threads=1)
    assert fp32_profile.count("float_conv") == 2 and fp32_profile.integer_compute == 0
    table = profiles_markdown({"fp32": fp32_profile, "int8": after})
    assert table.count("\n") == 4 and "| int8 | 2 |" in table
    assert after.quantized_float_compute == {}


def test_float_scopes_keep_elementwise_ops_float(tmp_path: Path) -> None:
    fp32 = conv_add_model(tmp_path / "tiny_add.onnx")
    wide = ("Conv", "MatMul", "Add")
    everything = ort_quantize_static(fp32, tmp_path / "all.onnx", random_feeds(4), op_types=wide)
    scoped = ort_quantize_static(fp32, tmp_path / "scoped.onnx", random_feeds(4), op_types=wide,
                                 float_scopes=("/head/",))
    graphs = tmp_path / "graphs"
    assert profile_onnxrt(everything, graphs, intra_op_threads=1).op_counts.get("QLinearAdd") == 1
    kept = profile_onnxrt(scoped, graphs, intra_op_threads=1)
    assert "QLinearAdd" not in kept.op_counts and kept.count("QLinearConv") == 1


def test_variants_are_read_from_config_entries() -> None:
    variants = ort_variants({
        "narrow": {"op_types": ["Conv", "MatMul"]},
        "scoped": {"op_types": ["Conv", "Add"], "float_scopes": ["/dec/"], "description": "scoped"},
    })
    assert variants["narrow"] == OrtVariant(("Conv", "MatMul"), (), "narrow")
    assert variants["scoped"] == OrtVariant(("Conv", "Add"), ("/dec/",), "scoped")
    with pytest.raises(UserError, match="'bad' has no op_types"):
        ort_variants({"bad": {"float_scopes": ["/x/"]}})
    with pytest.raises(UserError, match=r"unknown keys \['op_type'\]"):
        ort_variants({"typo": {"op_type": ["Conv"]}})
