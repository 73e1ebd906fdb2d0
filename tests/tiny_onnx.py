"""Tiny ONNX graphs and feeds shared by the ORT profiling, quantization and timing tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_model(path: Path) -> Path:
    """Conv -> Relu -> Conv on [N,4,8,8] with a symbolic batch: enough for ORT's QDQ fusions."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def conv_add_model(path: Path) -> Path:
    """Conv -> Add -> Sigmoid with node names in two scopes (`/block/`, `/head/`)."""
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w1")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="/block/conv1"),
        helper.make_node("Add", ["c1", "x"], ["a"], name="/head/add"),
        helper.make_node("Sigmoid", ["a"], ["y"], name="/head/sigmoid"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=[w1],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def random_feeds(count: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """`count` feeds of input `x` [batch,4,8,8] for the models above."""
    rng = np.random.default_rng(1)
    return [{"x": rng.random((batch, 4, 8, 8), dtype=np.float32)} for _ in range(count)]
