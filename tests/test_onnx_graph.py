"""mark_outputs: originals first, new outputs typed by shape inference, unknown types guessed or left open."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from rtq.onnx_graph import computed_tensors, mark_outputs


def _model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["relu"]),
        helper.make_node("Shape", ["relu"], ["shape"]),
        helper.make_node("Neg", ["relu"], ["y"]),
        helper.make_node("Mystery", ["relu"], ["mystery"], domain="custom.unknown"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("custom.unknown", 1)])


def _outputs(model: onnx.ModelProto) -> list[tuple[str, int, list[int | str] | None]]:
    rows = []
    for o in model.graph.output:
        t = o.type.tensor_type
        rows.append((o.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]
                     if t.HasField("shape") else None))
    return rows


def test_marked_outputs_are_typed_by_inference_after_the_originals() -> None:
    model = _model()
    marked = mark_outputs(model, ["shape", "relu", "y", "relu"])
    assert _outputs(marked) == [("y", TensorProto.FLOAT, ["N", 3]), ("shape", TensorProto.INT64, [2]),
                                ("relu", TensorProto.FLOAT, ["N", 3])]
    assert len(model.graph.output) == 1  # the input model is left alone
    ort_model = mark_outputs(_model(), ["shape", "relu"])
    del ort_model.graph.node[3]
    session = ort.InferenceSession(ort_model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, shape, relu = session.run(None, {"x": np.array([[-1.0, 2.0, 3.0]], np.float32)})
    assert shape.tolist() == [1, 3] and relu.tolist() == [[0.0, 2.0, 3.0]]


def test_an_untyped_tensor_is_guessed_from_its_producer_or_left_open() -> None:
    guessed = mark_outputs(_model(), ["mystery"])
    assert _outputs(guessed)[1] == ("mystery", TensorProto.FLOAT, ["mystery_dim0", "mystery_dim1"])
    open_type = mark_outputs(_model(), ["mystery"], guess=False)
    assert not open_type.graph.output[1].type.HasField("tensor_type")


def test_computed_tensors_skip_constants() -> None:
    model = _model()
    model.graph.node.insert(0, helper.make_node("Constant", [], ["c"], value_float=1.0))
    assert computed_tensors(model) == ["relu", "shape", "y", "mystery"]
