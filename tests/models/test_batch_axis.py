"""Following the batch through shape constants of static batch-1 graphs (merged axes, constants, refusals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtq.errors import UserError
from rtq.models.batch_axis import BatchAxisError
from rtq.models.onnx_source import dynamic_batch_onnx, make_batch_dynamic


def _model(
    nodes: list[onnx.NodeProto], x: list[int], y: list[int], inits: dict[str, np.ndarray]
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def _batched_equals_one_by_one(model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    whole = _run(model, x)
    for i in range(3):
        np.testing.assert_allclose(whole[i : i + 1], _run(model, x[i : i + 1]), atol=1e-6)


def test_batch_merged_with_heads_and_split_again_follows_any_batch() -> None:
    # attention-style heads: [1,4,6] -> [1,2,4,3] -> [batch*2 heads, 4, 3] -> MatMul -> back to [1,4,6]
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["a"], allowzero=1),
        helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["b", "s2"], ["c"], allowzero=1),
        helper.make_node("MatMul", ["c", "w"], ["d"]),
        helper.make_node("Reshape", ["d", "s3"], ["e"]),
        helper.make_node("Transpose", ["e"], ["f"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["f", "s4"], ["y"]),
    ]
    inits = {
        "s1": np.array([1, 4, 2, 3]),
        "s2": np.array([2, 4, -1]),
        "w": np.random.default_rng(1).normal(size=(3, 3)).astype(np.float32),
        "s3": np.array([1, 2, 4, 3]),
        "s4": np.array([1, 4, 6]),
    }
    model, report = make_batch_dynamic(_model(nodes, [1, 4, 6], [1, 4, 6], inits))
    assert len(report.reshapes) == 4 and report.inputs == ["x"] and report.outputs == ["y"]
    _batched_equals_one_by_one(model, (4, 6))


def test_a_constant_concatenated_to_the_batch_is_tiled_by_n() -> None:
    token = np.arange(4, dtype=np.float32).reshape(1, 1, 4)
    nodes = [helper.make_node("Concat", ["token", "x"], ["y"], axis=1)]
    model, report = make_batch_dynamic(_model(nodes, [1, 3, 4], [1, 4, 4], {"token": token}))
    assert report.tiled == ["token"]
    x = np.ones((5, 3, 4), np.float32)
    out = _run(model, x)
    assert out.shape == (5, 4, 4) and np.all(out[:, 0] == token[0, 0])


def test_a_whole_tensor_scatter_of_batch_0_becomes_its_updates() -> None:
    indices = np.indices((1, 3)).reshape(2, -1).T.reshape(1, 3, 2)
    nodes = [helper.make_node("ScatterND", ["zeros", "idx", "x"], ["y"])]
    inits = {"zeros": np.zeros((1, 3, 2), np.float32), "idx": indices.astype(np.int64)}
    model, report = make_batch_dynamic(_model(nodes, [1, 3, 2], [1, 3, 2], inits))
    assert report.scatters and len(model.graph.initializer) == 0
    _batched_equals_one_by_one(model, (3, 2))


def test_a_graph_that_mixes_images_is_refused_in_one_line(tmp_path: Path) -> None:
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)]
    model = _model(nodes, [1, 3, 2, 2], [1, 3, 2, 2], {"axes": np.array([0])})
    with pytest.raises(BatchAxisError, match="ReduceSum"):
        make_batch_dynamic(model)
    onnx.save(model, str(tmp_path / "mix.onnx"))
    with pytest.raises(UserError) as err:
        dynamic_batch_onnx(tmp_path / "mix.onnx", tmp_path / "out.onnx")
    assert (
        "\n" not in str(err.value) and "mix.onnx" in str(err.value) and "dynamic_batch=True" in str(err.value)
    )
    assert not (tmp_path / "out.onnx").exists()
