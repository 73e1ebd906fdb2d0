"""Reading what a model takes and gives: ONNX files, and engines through the ONNX they were built from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from deploy_models import stand_in_engine
from onnx import TensorProto, helper
from tiny_onnx import conv_model

from rtq.deploy.graph_io import engine_signature, onnx_signature
from rtq.errors import UserError


def _tensorrt_reads_plans() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Runtime")


def test_onnx_signature_keeps_names_types_and_symbolic_dims(tmp_path: Path) -> None:
    sig = onnx_signature(conv_model(tmp_path / "conv.onnx"))
    assert [(s.name, s.dtype, s.dims) for s in sig.inputs] == [("x", np.dtype(np.float32), ("N", 4, 8, 8))]
    assert [(s.name, s.dims) for s in sig.outputs] == [("y", ("N", 8, 8, 8))]
    assert sig.batch_range is None


def test_engine_io_comes_from_the_onnx_its_build_record_names(tmp_path: Path) -> None:
    onnx_path = conv_model(tmp_path / "model.int8.onnx")
    plan = stand_in_engine(tmp_path, onnx_path, max_batch=16)
    sig = engine_signature(plan)
    assert sig.source == plan
    assert [s.name for s in sig.inputs] == ["x"] and [s.name for s in sig.outputs] == ["y"]
    assert sig.batch_range == (1, 16)
    assert "model.int8.onnx" in sig.notes[0]


@pytest.mark.skipif(_tensorrt_reads_plans(), reason="TensorRT is installed: it reads the plan itself")
def test_engine_without_its_onnx_and_without_tensorrt_is_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"stand-in")
    with pytest.raises(UserError, match="pass --onnx") as err:
        engine_signature(plan)
    assert "\n" not in str(err.value)
    assert engine_signature(plan, conv_model(tmp_path / "conv.onnx")).inputs[0].name == "x"


def test_a_graph_without_inputs_is_refused(tmp_path: Path) -> None:
    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    const = helper.make_node("Constant", [], ["y"], value=value)
    graph = helper.make_graph([const], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "no_inputs.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(UserError, match="has no graph inputs"):
        onnx_signature(path)


@pytest.mark.parametrize("content", [None, b"not an onnx file"])
def test_missing_or_unreadable_model_files_are_one_line(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        onnx_signature(path)
    assert "model.onnx" in str(err.value) and "\n" not in str(err.value)
