"""Version-dependent decisions of the TensorRT backend (pure parts run without TensorRT)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rtq.backends.tensorrt import compat
from rtq.errors import StageSkipped, UserError

ROOT = Path(__file__).resolve().parents[2]
TRT_10 = compat.TrtFeatures.from_version("10.13.0.35")
TRT_11 = compat.TrtFeatures.from_version("11.1.0")
TRT_8 = compat.TrtFeatures.from_version("8.6.1")


def test_parse_version() -> None:
    assert compat.parse_version("10.13.0.35") == (10, 13)
    assert compat.parse_version("11.0") == (11, 0)
    with pytest.raises(ValueError):
        compat.parse_version("ten")


def test_features_by_version() -> None:
    assert TRT_8.needs_explicit_batch_flag and not TRT_10.needs_explicit_batch_flag
    assert TRT_10.has_strongly_typed_flag and not TRT_11.has_strongly_typed_flag
    assert TRT_11.always_strongly_typed and not TRT_10.always_strongly_typed
    assert TRT_10.has_precision_flags and not TRT_11.has_precision_flags
    assert TRT_10.has_load_library and not TRT_8.has_load_library
    assert TRT_10.inspector_io_key == "Bindings" and TRT_11.inspector_io_key == "I/O Tensors"


@pytest.mark.parametrize("features", [TRT_10, TRT_11])
@pytest.mark.parametrize("precision", ["int8_qdq", "int8_fp16", "fp16", "fp32"])
def test_strongly_typed_never_sets_precision_flags(features: compat.TrtFeatures, precision: str) -> None:
    settings = compat.network_settings(features, precision, strongly_typed=True)
    assert settings.strongly_typed
    assert not settings.fp16_flag and not settings.int8_flag
    assert settings.convert_onnx_to_fp16 == (precision in ("fp16", "int8_fp16"))
    built = {"int8_qdq": "int8 fp32", "int8_fp16": "int8 fp16", "fp16": "fp16", "fp32": "fp32"}
    assert settings.built == built[precision]  # the same engine on TensorRT 10 and 11
    assert settings.strongly_typed_flag == (features is TRT_10)
    assert settings.explicit_batch is None


def test_weakly_typed_on_trt10_uses_builder_flags() -> None:
    int8 = compat.network_settings(TRT_10, "int8_qdq", strongly_typed=False)
    assert (int8.strongly_typed, int8.int8_flag, int8.fp16_flag, int8.convert_onnx_to_fp16) == (
        False,
        True,
        True,
        False,
    )
    fp16 = compat.network_settings(TRT_10, "fp16", strongly_typed=False)
    assert fp16.fp16_flag and not fp16.int8_flag and not fp16.convert_onnx_to_fp16
    fp32 = compat.network_settings(TRT_10, "fp32", strongly_typed=False)
    assert not fp32.fp16_flag and not fp32.int8_flag
    # weakly typed INT8 lets the builder pick fp16 around it: the row must say int8 fp16, not int8
    assert (
        int8.built == "int8 fp16" and compat.network_settings(TRT_10, "int8_fp16", False).built == "int8 fp16"
    )


def test_trt11_ignores_weak_typing_request() -> None:
    settings = compat.network_settings(TRT_11, "fp16", strongly_typed=False)
    assert settings.strongly_typed and settings.convert_onnx_to_fp16 and not settings.fp16_flag


def test_trt8_sets_explicit_batch() -> None:
    assert compat.network_settings(TRT_8, "fp32").explicit_batch is True


def test_unknown_precision_is_a_user_error() -> None:
    with pytest.raises(UserError, match="int4"):
        compat.network_settings(TRT_10, "int4")


def test_engine_io_names_both_schemas() -> None:
    assert compat.engine_io_names({"Bindings": ["images", "boxes"]}) == ["images", "boxes"]
    trt11 = {"I/O Tensors": [{"Name": "images", "IOMode": "Input"}, {"Name": "boxes", "IOMode": "Output"}]}
    assert compat.engine_io_names(trt11) == ["images", "boxes"]


def _tiny_float_model(path: Path) -> None:
    weights = [
        numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w"),
        numpy_helper.from_array(np.ones((4, 4), np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm0"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm1"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_convert_onnx_to_fp16_keeps_float32_io(tmp_path: Path) -> None:
    src, dst = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    _tiny_float_model(src)
    compat.convert_onnx_to_fp16(src, dst)
    model = onnx.load(str(dst))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert TensorProto.FLOAT16 in {init.data_type for init in model.graph.initializer}
    assert "Cast" in {node.op_type for node in model.graph.node}


def test_import_tensorrt_matches_availability() -> None:
    if compat.tensorrt_available():
        assert compat.parse_version(compat.import_tensorrt().__version__)[0] >= 8
    else:
        with pytest.raises(StageSkipped, match="^TensorRT not installed$"):
            compat.import_tensorrt()


def test_load_plugin_library_that_does_not_exist() -> None:
    if not compat.tensorrt_available():
        pytest.skip("TensorRT not installed")
    with pytest.raises(UserError, match="does not exist"):
        compat.load_plugin_libraries(compat.import_tensorrt(), [Path("/nonexistent/libplugin.so")])


class _Registry:
    """`IPluginRegistry.load_library` as TensorRT documents it: a handle, or None on failure."""

    def __init__(self, handle: object) -> None:
        self.handle, self.calls = handle, 0

    def load_library(self, path: str) -> object:
        self.calls += 1
        return self.handle


def _trt_with(registry: _Registry) -> compat.TensorRTModule:
    from types import SimpleNamespace

    trt = SimpleNamespace(__version__="10.13.0", get_plugin_registry=lambda: registry)
    return cast(compat.TensorRTModule, trt)


def test_a_plugin_library_loads_once_per_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_LOADED_LIBRARIES", {})
    library = tmp_path / "libplugin.so"
    library.write_bytes(b"\x7fELF")
    registry = _Registry(handle="handle")
    assert compat.load_plugin_libraries(_trt_with(registry), [library]) == ["handle"]
    assert compat.load_plugin_libraries(_trt_with(registry), [library]) == ["handle"]
    assert registry.calls == 1  # a second load_library of the same creators would return None


def test_a_library_tensorrt_cannot_load_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_LOADED_LIBRARIES", {})
    library = tmp_path / "libbroken.so"
    library.write_bytes(b"\x7fELF")
    with pytest.raises(UserError, match=r"could not load plugin library .*libbroken\.so"):
        compat.load_plugin_libraries(_trt_with(_Registry(handle=None)), [library])
    assert not compat._LOADED_LIBRARIES


def test_gpu_name_asks_the_driver_not_torch() -> None:
    """rtq installs CPU torch, which sees no GPU even where TensorRT runs: the name comes from libcuda."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from rtq.backends.tensorrt import compat\n"
        "from rtq.errors import StageSkipped\n"
        "try:\n    name = compat.gpu_name(); assert name\n"
        "except StageSkipped as err:\n    assert 'no CUDA GPU' in str(err)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_int8_fp16_conversion_keeps_the_qdq_pairs_and_runs(tmp_path: Path) -> None:
    """modelopt's autocast on a Q/DQ graph: Q/DQ kept, float parts fp16, fp32 I/O, close to the fp32 graph."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
        helper.make_node("MatMul", ["xd", "w"], ["mm"], name="mm"),
        helper.make_node("Relu", ["mm"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
            numpy_helper.from_array(weight, "w"),
        ],
    )
    src, dst = tmp_path / "qdq.onnx", tmp_path / "qdq.fp16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    compat.convert_onnx_to_fp16(src, dst)
    model = onnx.load(str(dst))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    assert {i.name: i.data_type for i in model.graph.initializer}["w"] == TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    x = rng.normal(size=(3, 16)).astype(np.float32)
    want, got = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for p in (src, dst)
    )
    assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-2 * (1 + np.abs(want).max())
