"""fuse_attn_offset_prediction on real modelopt Q/DQ exports: structure, numerics, failures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import plugins.fused_attn_offset_prediction.ort_op as ort_op
from plugins.fused_attn_offset_prediction.ort_model import to_ort_domain
from plugins.fused_attn_offset_prediction.reference import OP_TYPE, ORT_DOMAIN, FusedAttnOffsetParams
from rtq.errors import UserError
from rtq.surgery.base import run_passes
from rtq.surgery.example_model import export_example


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuse")
    return {
        "qdq": export_example(d / "qdq.onnx", num_layers=2),
        "distinct": export_example(d / "distinct.onnx", num_layers=3, distinct_scales=True, seed=1),
        "fp32": export_example(d / "fp32.onnx", num_layers=2, quantize=False),
    }


def _run(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray],
         outputs: list[str] | None = None) -> list:
    if isinstance(model, Path):
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    else:
        sess = ort.InferenceSession(model.SerializeToString(), ort_op.session_options(),
                                    providers=["CPUExecutionProvider"])
    return sess.run(outputs, feed)


def _feed(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"query": np.random.default_rng(seed).normal(size=(batch, 10, 32)).astype(np.float32)}


def _projection_matmuls(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and ("sampling_offsets" in n.name or "attention_weights" in n.name)]


def test_one_plugin_node_per_layer_and_same_outputs(exports: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fused.onnx"
    reports = run_passes(exports["qdq"], out, [{"name": "fuse_attn_offset_prediction"}])
    assert reports[0].matched == ["/layers.0", "/layers.1"]
    model = onnx.load(str(out))
    plugin_nodes = [n for n in model.graph.node if n.op_type == OP_TYPE]
    assert len(plugin_nodes) == 2
    assert all(n.domain == "" for n in plugin_nodes)
    assert _projection_matmuls(model) == []
    for i, node in enumerate(plugin_nodes):
        assert list(node.output) == [f"/layers.{i}/sampling_offsets/Add_output_0",
                                     f"/layers.{i}/attention_weights/Add_output_0"]
        assert len(node.input) == 1  # same calibrated scale -> one quantized query
        params = FusedAttnOffsetParams.from_attributes(node)
        assert params.sampling_offsets.weight.shape == (48, 32)
        assert params.attention_weights.weight.shape == (24, 32)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"rtq"

    ort_model = to_ort_domain(model)
    assert {n.domain for n in ort_model.graph.node if n.op_type == OP_TYPE} == {ORT_DOMAIN}
    assert any(o.domain == ORT_DOMAIN for o in ort_model.opset_import)
    assert model.graph.node[[n.op_type for n in model.graph.node].index(OP_TYPE)].domain == ""
    for batch in (1, 3):  # dynamic batch survives the surgery
        feed = _feed(batch, seed=batch)
        ref = _run(exports["qdq"], feed)[0]
        got = _run(ort_model, feed)[0]
        assert got.shape == ref.shape == (batch, 10, 32)
        # Float rounding may flip a rare downstream int8 rounding step; all else agrees to float precision.
        close = np.isclose(got, ref, rtol=1e-5, atol=1e-5)
        assert close.mean() > 0.95, f"{(~close).sum()} of {close.size} elements differ"
        assert np.abs(got - ref).max() < 1e-2


def test_plugin_outputs_equal_unfused_projections(exports: dict[str, Path], tmp_path: Path) -> None:
    """Each layer: the reference op on the graph's own int8 query equals the unfused Q/DQ branch outputs,
    and the ORT op in the fused graph equals the reference op on the same int8 inputs."""
    fused_path = tmp_path / "fused.onnx"
    mark_both = {"name": "mark_extra_outputs", "options": {"preset": "both"}}
    run_passes(exports["distinct"], fused_path, ["fuse_attn_offset_prediction", mark_both])
    fused = onnx.load(str(fused_path))
    plugin_nodes = [n for n in fused.graph.node if n.op_type == OP_TYPE]
    assert len(plugin_nodes) == 3
    assert all(len(n.input) == 2 for n in plugin_nodes)  # two input scales -> x_q0, x_q1
    quantized_inputs = [name for n in plugin_nodes for name in n.input]
    marked = tmp_path / "marked.onnx"
    run_passes(exports["distinct"], marked, [
        {"name": "mark_extra_outputs", "options": {"preset": "both", "names": quantized_inputs}}])
    feed = _feed(2)
    ref_names = [o.name for o in onnx.load(str(marked)).graph.output]
    ref = dict(zip(ref_names, _run(marked, feed, ref_names), strict=True))
    mark_inputs = {"name": "mark_extra_outputs", "options": {"names": quantized_inputs}}
    run_passes(fused_path, fused_path, [mark_inputs])
    fused_names = quantized_inputs + [o for n in plugin_nodes for o in n.output]
    fused_ort = to_ort_domain(onnx.load(str(fused_path)))
    got = dict(zip(fused_names, _run(fused_ort, feed, fused_names), strict=True))
    from plugins.fused_attn_offset_prediction.reference import fused_attn_offset_prediction

    for node in plugin_nodes:
        params = FusedAttnOffsetParams.from_attributes(node)
        assert params.attention_weights.input_scale == pytest.approx(2 * params.sampling_offsets.input_scale,
                                                                     rel=1e-5)
        x0, x1 = (ref[name] for name in node.input)
        assert x0.dtype == np.int8 and not np.array_equal(x0, x1)
        expected = fused_attn_offset_prediction(x0, x1, params)
        for out_name, want in zip(node.output, expected, strict=True):
            np.testing.assert_allclose(want, ref[out_name], rtol=1e-5, atol=1e-5, err_msg=out_name)
        ort_expected = fused_attn_offset_prediction(got[node.input[0]], got[node.input[1]], params)
        for out_name, want in zip(node.output, ort_expected, strict=True):
            np.testing.assert_allclose(got[out_name], want, rtol=1e-6, atol=1e-6, err_msg=out_name)


def test_fp32_graph_is_a_clear_error(exports: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="fuse_attn_offset_prediction.*no QuantizeLinear nodes.*quant recipe"):
        run_passes(exports["fp32"], tmp_path / "x.onnx", ["fuse_attn_offset_prediction"])


def test_broken_layer_is_named_in_the_report(exports: dict[str, Path], tmp_path: Path) -> None:
    model = onnx.load(str(exports["qdq"]))
    target = "/layers.1/sampling_offsets/MatMul"
    matmul = next(n for n in model.graph.node if n.name == target)
    identity = onnx.helper.make_node("Identity", [matmul.input[1]], ["broken_w"], name="break")
    matmul.input[1] = "broken_w"
    model.graph.node.insert(list(model.graph.node).index(matmul), identity)
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    reports = run_passes(broken, tmp_path / "out.onnx", ["fuse_attn_offset_prediction"])
    assert reports[0].matched == ["/layers.0"]
    reasons = [str(u) for u in reports[0].unmatched]
    expected = f"/layers.1: MatMul '{target}' input 1 is not a DequantizeLinear"
    assert any(r.startswith(expected) for r in reasons), reasons


def test_model_without_the_pattern_is_a_clear_error(exports: dict[str, Path], tmp_path: Path) -> None:
    # A quantized graph whose projections no longer share an input: the pair cannot be formed.
    model = onnx.load(str(exports["qdq"]))
    for node in model.graph.node:
        if node.op_type == "MatMul" and "attention_weights" in node.name:
            node.name = node.name.replace("attention_weights", "other_proj")
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    with pytest.raises(UserError, match="layers.0: MatMul .*sampling_offsets.* has no partner projection"):
        run_passes(plain, tmp_path / "out.onnx", ["fuse_attn_offset_prediction"])


def test_layer_filter_option(exports: dict[str, Path], tmp_path: Path) -> None:
    reports = run_passes(exports["qdq"], tmp_path / "out.onnx",
                         [{"name": "fuse_attn_offset_prediction", "options": {"layers": r"layers\.1$"}}])
    assert reports[0].matched == ["/layers.1"]
    model = onnx.load(str(tmp_path / "out.onnx"))
    assert _projection_matmuls(model) == ["/layers.0/sampling_offsets/MatMul",
                                          "/layers.0/attention_weights/MatMul"]



def test_onnx_ptq_form_with_int8_initializers(exports: dict[str, Path], tmp_path: Path) -> None:
    """modelopt ONNX PTQ writes DQ(int8 initializer [K, N], axis 1) -> MatMul with no Transpose."""
    from modelopt.onnx.quantization import quantize

    ptq = tmp_path / "ptq.onnx"
    calib = np.random.default_rng(0).normal(size=(4, 10, 32)).astype(np.float32)
    quantize(onnx_path=str(exports["fp32"]), quantize_mode="int8", calibration_data={"query": calib},
             calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=str(ptq), log_level="ERROR")
    weight_dqs = [n for n in onnx.load(str(ptq)).graph.node
                  if n.op_type == "DequantizeLinear" and "MatMul" in n.input[0]]
    assert weight_dqs, "expected DequantizeLinear nodes reading int8 weight initializers"
    fused_path = tmp_path / "fused.onnx"
    mark_both = {"name": "mark_extra_outputs", "options": {"preset": "both"}}
    reports = run_passes(ptq, fused_path, ["fuse_attn_offset_prediction", mark_both])
    assert reports[0].matched == ["/layers.0", "/layers.1"]
    marked = tmp_path / "marked.onnx"
    run_passes(ptq, marked, [mark_both])
    fused = onnx.load(str(fused_path))
    first = list(next(n for n in fused.graph.node if n.op_type == OP_TYPE).output)
    feed = _feed(2)
    ref, got = _run(marked, feed, first), _run(to_ort_domain(fused), feed, first)
    for name, r, g in zip(first, ref, got, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5, err_msg=name)

@pytest.mark.parametrize(("variant", "layers"), [("rtdetrv2_r18vd", 3), ("rtdetrv2_r50vd", 6)])
def test_real_rtdetrv2_qdq_export(
    variant: str, layers: int, rtdetr_qdq: Callable[[str], Path], tmp_path: Path
) -> None:
    """Real RT-DETRv2 Q/DQ exports (modelopt INT8 default, random weights): fuse every decoder layer."""
    from rtq.debug.inputs import sample_images
    from rtq.models.family import get_family

    qdq = rtdetr_qdq(variant)
    fused_path = tmp_path / "fused.onnx"
    reports = run_passes(qdq, fused_path, ["fuse_attn_offset_prediction",
                                           {"name": "mark_extra_outputs", "options": {"preset": "both"}}])
    assert len(reports[0].matched) == layers, reports[0].to_markdown()
    fused = onnx.load(str(fused_path))
    plugin_nodes = [n for n in fused.graph.node if n.op_type == OP_TYPE]
    assert len(plugin_nodes) == layers
    assert _projection_matmuls(fused) == []
    for node in plugin_nodes:
        params = FusedAttnOffsetParams.from_attributes(node)
        assert params.sampling_offsets.weight.shape[0] == 2 * params.attention_weights.weight.shape[0]
    outputs = [o.name for o in fused.graph.output]
    assert outputs[:3] == ["labels", "boxes", "scores"] and len(outputs) == 3 + 2 * layers

    # The plugin outputs of the first layer see the same int8 query in both graphs: float-level agreement.
    marked = tmp_path / "marked.onnx"
    run_passes(qdq, marked, [{"name": "mark_extra_outputs", "options": {"preset": "both"}}])
    feed = get_family("rtdetr").graph_feeds(onnx.load(str(qdq)), sample_images(None, 1))
    first = list(plugin_nodes[0].output)
    ref = _run(marked, feed, first)
    got = _run(to_ort_domain(fused), feed, first)
    for name, r, g in zip(first, ref, got, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=name)
