"""keep_float: chosen nodes of a Q/DQ graph read float again, every other quantizer untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtq.errors import UserError
from rtq.quant.qdq_edit import keep_float, quantized_nodes


def qdq_chain() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x -Q/DQ-> Conv(DQ per-channel int8 w1) -Q/DQ-> Conv(DQ w2) -> y; returns model and float weights."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    inits, nodes = [], []

    def weight(name: str, w: np.ndarray) -> str:
        scale = np.abs(w).reshape(w.shape[0], -1).max(axis=1) / 127
        q = np.round(w / scale[:, None, None, None]).astype(np.int8)
        inits.extend(
            [
                numpy_helper.from_array(q, f"{name}_q"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_s"),
                numpy_helper.from_array(np.zeros(w.shape[0], np.int8), f"{name}_z"),
            ]
        )
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_q", f"{name}_s", f"{name}_z"],
                [f"{name}_dq"],
                name=f"{name}_DQ",
                axis=0,
            )
        )
        return f"{name}_dq"

    def act(name: str, tensor: str, scale: float) -> str:
        inits.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), f"{name}_as"),
                numpy_helper.from_array(np.array(0, np.int8), f"{name}_az"),
            ]
        )
        nodes.append(
            helper.make_node(
                "QuantizeLinear", [tensor, f"{name}_as", f"{name}_az"], [f"{name}_q"], name=f"{name}_Q"
            )
        )
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_q", f"{name}_as", f"{name}_az"],
                [f"{name}_d"],
                name=f"{name}_ADQ",
            )
        )
        return f"{name}_d"

    nodes.append(
        helper.make_node(
            "Conv", [act("a1", "x", 0.05), weight("w1", w1)], ["c1"], name="conv1", pads=[1, 1, 1, 1]
        )
    )
    nodes.append(helper.make_node("Conv", [act("a2", "c1", 0.1), weight("w2", w2)], ["y"], name="conv2"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w1, w2


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_keep_every_node_float_is_the_float_graph() -> None:
    model, w1, w2 = qdq_chain()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert quantized_nodes(model) == ["conv1", "conv2"]
    floated = keep_float(model, ["conv1", "conv2"])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in floated.graph.node)
    onnx.checker.check_model(floated)
    # the float weights are the dequantized int8 ones (per output channel), not the originals
    weights = {t.name: numpy_helper.to_array(t) for t in floated.graph.initializer}
    np.testing.assert_allclose(weights["w1_dq_float"], w1, atol=np.abs(w1).max() / 127)
    assert not np.allclose(run(floated, x), run(model, x), atol=1e-4)  # quantization did something


def test_keep_one_node_float_leaves_the_other_quantizers() -> None:
    model, _, _ = qdq_chain()
    floated = keep_float(model, ["conv2"])
    names = {n.name for n in floated.graph.node}
    assert {"a1_Q", "a1_ADQ", "w1_DQ"} <= names and not {"a2_Q", "a2_ADQ", "w2_DQ"} & names
    assert quantized_nodes(floated) == ["conv1"]
    assert len(model.graph.node) == 8  # the input model is not edited


def test_an_unknown_node_is_one_line() -> None:
    model, _, _ = qdq_chain()
    with pytest.raises(UserError, match="'conv9' is not in the graph"):
        keep_float(model, ["conv9"])
