"""unsigned_activations: activation Q/DQ int8 (zp 0) -> uint8 (zp 128); same values, weights untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from rtq.errors import UserError
from rtq.surgery.base import apply_passes, run_passes

PASS = "unsigned_activations"


def _qdq_graph(extra_consumer: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(DQ int8 w1) -> c1; Concat(c1, x) -> Q/DQ -> Conv(Q/DQ of float w2) -> y.

    Every Q/DQ shares one int8 zero-point initializer `zp`, so the test sees that only the activation
    pairs get their own uint8 zero point. `extra_consumer` makes the Concat quantizer also feed an Identity.
    """
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(np.array(0, np.int8), "zp"),
        nh.from_array(np.array(0.02, np.float32), "s_x"),
        nh.from_array(np.array(0.05, np.float32), "s_cat"),
        nh.from_array(rng.integers(-127, 128, (2, 2, 1, 1)).astype(np.int8), "w1_q"),
        nh.from_array(np.array(0.01, np.float32), "s_w1"),
        nh.from_array(rng.normal(size=(3, 4, 3, 3)).astype(np.float32), "w2_f"),
        nh.from_array(np.array(0.03, np.float32), "s_w2"),
    ]
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s_x", "zp"], ["x_q"], name="x_Q"),
        h.make_node("DequantizeLinear", ["x_q", "s_x", "zp"], ["x_dq"], name="x_DQ"),
        h.make_node("DequantizeLinear", ["w1_q", "s_w1", "zp"], ["w1"], name="w1_DQ"),
        h.make_node("Conv", ["x_dq", "w1"], ["c1"], name="Conv_1", kernel_shape=[1, 1]),
        h.make_node("Concat", ["c1", "x"], ["cat"], name="Concat_1", axis=1),
        h.make_node("QuantizeLinear", ["cat", "s_cat", "zp"], ["cat_q"], name="cat_Q"),
        h.make_node("DequantizeLinear", ["cat_q", "s_cat", "zp"], ["cat_dq"], name="cat_DQ"),
        h.make_node("QuantizeLinear", ["w2_f", "s_w2", "zp"], ["w2_q"], name="w2_Q"),
        h.make_node("DequantizeLinear", ["w2_q", "s_w2", "zp"], ["w2"], name="w2_DQ"),
        h.make_node("Conv", ["cat_dq", "w2"], ["y"], name="Conv_2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]
    outputs = [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])]
    if extra_consumer:
        nodes.append(h.make_node("Identity", ["cat_q"], ["cat_q_copy"], name="Probe"))
        outputs.append(h.make_tensor_value_info("cat_q_copy", TensorProto.INT8, [1, 4, 6, 6]))
    graph = h.make_graph(nodes, "qdq_toy", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                         outputs, inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)  # value_info carries the int8 type of cat_q, x_q


def _fp32_graph() -> onnx.ModelProto:
    w = nh.from_array(np.ones((2, 4, 1, 1), np.float32), "w")
    nodes = [h.make_node("Concat", ["x", "x"], ["cat"], axis=1), h.make_node("Conv", ["cat", "w"], ["y"])]
    graph = h.make_graph(nodes, "fp32_toy", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray, optimize: bool = False) -> np.ndarray:
    opts = ort.SessionOptions()
    if not optimize:  # plain ONNX semantics: no fused QLinear kernels
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["y"], {"x": x})[0])


def _zero_points(model: onnx.ModelProto) -> dict[str, tuple[str, np.ndarray]]:
    """Node name -> (zero-point initializer name, value) for every Q/DQ node."""
    inits = {t.name: nh.to_array(t) for t in model.graph.initializer}
    return {n.name: (n.input[2], inits[n.input[2]]) for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear")}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    return {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}


def _is_u8_128(zp: np.ndarray) -> bool:
    return zp.dtype == np.uint8 and bool(np.all(zp == 128))


def _is_i8_0(zp: np.ndarray) -> bool:
    return zp.dtype == np.int8 and not np.any(zp)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    # spans past the saturation points of both activation quantizers (0.02 * 127, 0.05 * 127)
    return np.random.default_rng(1).uniform(-8, 8, (1, 2, 6, 6)).astype(np.float32)


def test_after_concat_rewrites_only_the_concat_quantizer(x: np.ndarray) -> None:
    model = _qdq_graph()
    out, (report,) = apply_passes(model, [PASS])
    zps = _zero_points(out)
    assert _is_u8_128(zps["cat_Q"][1]) and _is_u8_128(zps["cat_DQ"][1])
    assert zps["cat_Q"][0] == zps["cat_DQ"][0] != "zp"  # a new initializer, shared by the pair
    for name in ("x_Q", "x_DQ", "w1_DQ", "w2_Q", "w2_DQ"):  # not after a Concat / weights
        assert zps[name][0] == "zp" and _is_i8_0(zps[name][1]), name
    assert _elem_types(out)["cat_q"] == TensorProto.UINT8
    assert _elem_types(out)["x_q"] == TensorProto.INT8
    assert report.matched == ["QuantizeLinear 'cat_Q' after Concat 'Concat_1'"]
    assert len(report.changed) == 1 and "uint8 128" in report.changed[0]
    onnx.checker.check_model(out)
    onnx.shape_inference.infer_shapes(out, strict_mode=True)  # the recorded types agree with the ops
    np.testing.assert_array_equal(_run(out, x), _run(model, x))
    # ORT's fused kernels take a u8 rather than s8 path; the values still agree to float rounding
    np.testing.assert_allclose(_run(out, x, optimize=True), _run(model, x, optimize=True), atol=1e-4)


def test_all_rewrites_every_activation_pair_but_no_weight(x: np.ndarray) -> None:
    model = _qdq_graph()
    out, (report,) = apply_passes(model, [{"name": PASS, "options": {"after": "all"}}])
    zps = _zero_points(out)
    for name in ("x_Q", "x_DQ", "cat_Q", "cat_DQ"):
        assert _is_u8_128(zps[name][1]), name
    assert zps["x_Q"][0] != zps["cat_Q"][0]
    for name in ("w1_DQ", "w2_Q", "w2_DQ"):
        assert zps[name][0] == "zp" and _is_i8_0(zps[name][1]), name
    assert len(report.changed) == 2
    assert {_elem_types(out)[t] for t in ("x_q", "cat_q")} == {TensorProto.UINT8}
    np.testing.assert_array_equal(_run(out, x), _run(model, x))


def test_quantizer_with_a_non_dq_consumer_is_left_and_reported(tmp_path: Path) -> None:
    src = tmp_path / "probe.onnx"
    onnx.save(_qdq_graph(extra_consumer=True), str(src))
    with pytest.raises(UserError, match=r"cat_Q.*also feeds Identity"):
        run_passes(src, tmp_path / "out.onnx", [PASS])
    everything = {"name": PASS, "options": {"after": "all"}}
    out, (report,) = apply_passes(_qdq_graph(extra_consumer=True), [everything])
    assert len(report.changed) == 1 and "x_Q" in report.changed[0]
    assert _is_i8_0(_zero_points(out)["cat_Q"][1])


def test_nothing_to_do_says_why_in_one_line(tmp_path: Path) -> None:
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(_fp32_graph(), str(fp32))
    with pytest.raises(UserError, match="no QuantizeLinear node: not a Q/DQ graph") as err:
        run_passes(fp32, tmp_path / "out.onnx", [PASS])
    assert "\n" not in str(err.value)

    model = _qdq_graph()  # drop the Concat's quantizer: Conv_2 reads the Concat output in float
    model.graph.node.remove(next(n for n in model.graph.node if n.name == "cat_Q"))
    dq = next(n for n in model.graph.node if n.name == "cat_DQ")
    model.graph.node.remove(dq)
    next(n for n in model.graph.node if n.name == "Conv_2").input[0] = "cat"
    _, (report,) = apply_passes(model, [{"name": PASS, "optional": True}])
    assert not report.did_something
    assert report.why_nothing() == ("qdq_toy: none of the 1 activation QuantizeLinear nodes reads a Concat "
                                    "output (after: concat); after: all would consider them all")

    once, _ = apply_passes(_qdq_graph(), [PASS])
    _, (again,) = apply_passes(once, [{"name": PASS, "optional": True}])
    assert "already uint8" in again.why_nothing()


def test_bad_options() -> None:
    with pytest.raises(UserError, match="after='convs'"):
        apply_passes(_qdq_graph(), [{"name": PASS, "options": {"after": "convs"}}])
    with pytest.raises(UserError, match="unknown option"):
        apply_passes(_qdq_graph(), [{"name": PASS, "options": {"only_concat": True}}])
