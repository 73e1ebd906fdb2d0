"""ONNX Runtime runners (reference / fast) on small ONNX models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from polygraphy.comparator import Comparator, SimpleCompareFunc

from rtq.backends.onnxruntime import default_providers, make_onnxrt_runner
from rtq.errors import UserError


def conv_bn_relu_onnx(path: Path) -> Path:
    """Conv -> BatchNormalization -> Relu: ORT_ENABLE_ALL folds BN into the conv and fuses the Relu."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return conv_bn_relu_onnx(tmp_path_factory.mktemp("ort") / "conv_bn_relu.onnx")


@pytest.fixture(scope="module")
def feed() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def test_reference_and_fast_agree(model_path: Path, feed: dict[str, np.ndarray]) -> None:
    with make_onnxrt_runner(model_path, mode="reference") as ref, make_onnxrt_runner(model_path) as fast:
        ref_out = ref.infer(feed)["y"]
        fast_out = fast.infer(feed)["y"]
    assert ref_out.shape == (2, 4, 8, 8)
    assert ref_out.min() == 0.0 and ref_out.max() > 0.0
    np.testing.assert_allclose(fast_out, ref_out, rtol=1e-4, atol=1e-5)


def test_modes_differ_in_the_graph_they_run(model_path: Path, tmp_path: Path) -> None:
    for mode in ("reference", "fast"):
        with make_onnxrt_runner(model_path, mode=mode, optimized_model_path=tmp_path / f"{mode}.onnx"):
            pass
    reference_ops = [n.op_type for n in onnx.load(str(tmp_path / "reference.onnx")).graph.node]
    fast_ops = [n.op_type for n in onnx.load(str(tmp_path / "fast.onnx")).graph.node]
    assert reference_ops == ["Conv", "BatchNormalization", "Relu"]
    assert "BatchNormalization" not in fast_ops and len(fast_ops) < 3


def test_polygraphy_comparator_accepts_the_runners(model_path: Path, feed: dict[str, np.ndarray]) -> None:
    runners = [make_onnxrt_runner(model_path, mode="reference"), make_onnxrt_runner(model_path, mode="fast")]
    results = Comparator.run(runners, data_loader=[feed])
    assert bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=1e-4)))


def test_extra_outputs(model_path: Path, feed: dict[str, np.ndarray]) -> None:
    with make_onnxrt_runner(model_path, extra_outputs=["conv"], mode="reference") as runner:
        out = runner.infer(feed)
    assert list(out) == ["y", "conv"]
    with make_onnxrt_runner(model_path, extra_outputs="all", mode="reference") as runner:
        assert {"conv", "bn", "y"} <= set(runner.infer(feed))
    with pytest.raises(UserError, match="not_a_tensor"):
        make_onnxrt_runner(model_path, extra_outputs=["not_a_tensor"])


def test_user_errors(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.onnx"):
        make_onnxrt_runner(tmp_path / "missing.onnx")
    with pytest.raises(UserError, match="nolib.so"):
        make_onnxrt_runner(model_path, custom_op_library=tmp_path / "nolib.so")
    with pytest.raises(UserError, match="'turbo'"):
        make_onnxrt_runner(model_path, mode="turbo")  # type: ignore[arg-type]


def test_default_providers_end_with_cpu() -> None:
    providers = default_providers()
    assert providers[-1] == "CPUExecutionProvider"


def test_onnxruntime_extensions_custom_op(tmp_path: Path) -> None:
    extensions = pytest.importorskip("onnxruntime_extensions")

    @extensions.onnx_op(op_type="RtqTestTwiceMinusOne", inputs=[extensions.PyCustomOpDef.dt_float])
    def twice_minus_one(x: np.ndarray) -> np.ndarray:
        return 2.0 * x - 1.0

    node = helper.make_node("RtqTestTwiceMinusOne", ["x"], ["y"], domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    x = np.array([0.0, 1.0, 2.5], dtype=np.float32)
    with make_onnxrt_runner(path, mode="reference", ort_extensions=True) as runner:
        np.testing.assert_allclose(runner.infer({"x": x})["y"], [-1.0, 1.0, 4.0])
