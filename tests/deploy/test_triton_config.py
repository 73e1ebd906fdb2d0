"""config.pbtxt from a graph: types, dims, the batch decision, options; checked by Triton's schema."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from rtq.deploy.graph_io import ModelSignature, TensorSpec
from rtq.deploy.triton_config import DeployOptions, build_config, config_text, parse_config
from rtq.errors import UserError


def _sig(
    inputs: list[TensorSpec], outputs: list[TensorSpec], batch: tuple[int, int] | None = None
) -> ModelSignature:
    return ModelSignature(Path("m.onnx"), tuple(inputs), tuple(outputs), batch)


F32 = np.dtype(np.float32)
DETECTOR = _sig(
    [TensorSpec("images", F32, ("N", 3, "H", "W")),
     TensorSpec("orig_target_sizes", np.dtype(np.int64), ("N", 2))],
    [TensorSpec("labels", np.dtype(np.int64), ("N", 300)), TensorSpec("boxes", F32, ("N", 300, 4)),
     TensorSpec("num_dets", np.dtype(np.int32), ("N", 1)), TensorSpec("keep", np.dtype(np.bool_), ("N",))],
)


def test_symbolic_batch_becomes_triton_batching_with_types_from_the_graph() -> None:
    options = DeployOptions(preferred_batch=(2, 4), max_queue_delay_us=100, instances=2)
    config = build_config(DETECTOR, "rtdetr", options)
    assert config.max_batch_size == 8 and config.platform == "onnxruntime_onnx"
    got = {io.name: (mc.DataType.Name(io.data_type), list(io.dims)) for io in [*config.input, *config.output]}
    assert got == {
        "images": ("TYPE_FP32", [3, -1, -1]), "orig_target_sizes": ("TYPE_INT64", [2]),
        "labels": ("TYPE_INT64", [300]), "boxes": ("TYPE_FP32", [300, 4]),
        "num_dets": ("TYPE_INT32", [1]), "keep": ("TYPE_BOOL", [1]),
    }
    assert config.output[3].HasField("reshape") and not config.output[3].reshape.shape  # batched scalar
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    group = config.instance_group[0]
    assert (group.count, group.kind) == (2, mc.ModelInstanceGroup.KIND_CPU)
    text = config_text(config)
    assert parse_config(text, "config.pbtxt") == config


def test_static_batch_one_is_served_unbatched_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sig = _sig([TensorSpec("images", F32, (1, 3, 416, 416))], [TensorSpec("output", F32, (1, 3549, 85))])
    with caplog.at_level(logging.WARNING, logger="rtq"):
        config = build_config(sig, "yolox", DeployOptions())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [1, 3, 416, 416]
    assert "defeats Triton's batching" in caplog.text
    with pytest.raises(UserError, match="--max-batch-size 4 cannot apply"):
        build_config(sig, "yolox", DeployOptions(max_batch_size=4))


def test_engine_profile_bounds_the_batch() -> None:
    sig = _sig([TensorSpec("x", F32, ("N", 4))], [TensorSpec("y", F32, ("N", 4))], batch=(1, 16))
    config = build_config(sig, "engine", DeployOptions(backend="tensorrt"))
    assert config.max_batch_size == 16 and config.platform == "tensorrt_plan"
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    with pytest.raises(UserError, match="exceeds the 16 engine"):
        build_config(sig, "engine", DeployOptions(backend="tensorrt", max_batch_size=32))
    with pytest.raises(UserError, match="min batch is 1"):
        narrow = _sig(list(sig.inputs), list(sig.outputs), (2, 16))
        build_config(narrow, "engine", DeployOptions(backend="tensorrt"))


def test_openvino_and_python_backends_name_their_files() -> None:
    ov = build_config(DETECTOR, "ov", DeployOptions(backend="openvino"))
    assert (ov.backend, ov.platform, ov.default_model_filename) == ("openvino", "", "model.onnx")
    py = build_config(DETECTOR, "py", DeployOptions(backend="python", runtime="openvino"))
    assert py.backend == "python" and py.parameters["runtime"].string_value == "openvino"
    assert py.parameters["model_file"].string_value == "model.onnx"
    assert py.parameters["inference_precision"].string_value == "f32"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(backend="tflite"), "backend 'tflite' is unknown"),
        (dict(kind="KIND_TPU"), "instance kind 'KIND_TPU' is unknown"),
        (dict(instances=0), "instances=0"),
        (dict(preferred_batch=(16,)), "preferred batch 16"),
        (dict(runtime="tvm"), "runtime 'tvm' is unknown"),
        (dict(inference_precision="int4"), "inference precision 'int4' is unknown"),
    ],
)
def test_bad_options_are_one_line(options: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        build_config(DETECTOR, "m", DeployOptions(**options))  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_bad_names_and_element_types_are_refused() -> None:
    with pytest.raises(UserError, match="not a folder name"):
        build_config(DETECTOR, "a/b", DeployOptions())
    f8 = helper.tensor_dtype_to_np_dtype(TensorProto.FLOAT8E4M3FN)
    with pytest.raises(UserError, match="Triton cannot carry"):
        build_config(_sig([TensorSpec("x", np.dtype(f8), ("N", 4))], [TensorSpec("y", F32, ("N", 4))]), "m",
                     DeployOptions())


def test_a_misspelt_field_fails_triton_schema_in_one_line() -> None:
    with pytest.raises(UserError, match="does not follow Triton's ModelConfig schema") as err:
        parse_config('name: "m"\nmax_batch: 4\n', "config.pbtxt")
    assert "\n" not in str(err.value)
