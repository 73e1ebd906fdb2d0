"""Reading a detector's ONNX file: a file that is no ONNX model, or no detector, is one user error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rtq.errors import UserError
from rtq.models.onnx_source import dynamic_batch_onnx, load_detector_onnx


def add_model(path: Path) -> Path:
    """A valid ONNX file with one Add node: loadable, but no image detector."""
    tensors = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in "abc"]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["c"])], "add", tensors[:2], tensors[2:])
    onnx.save(helper.make_model(graph), str(path))
    return path


def write_junk(path: Path, kind: str) -> Path:
    """Random bytes, a text file or an empty file under an .onnx name."""
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is not a model\n")
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind", ["random", "text", "empty"])
def test_a_file_that_is_no_onnx_model_is_one_user_error(tmp_path: Path, kind: str) -> None:
    path = write_junk(tmp_path / f"{kind}.onnx", kind)
    with pytest.raises(UserError) as err:
        load_detector_onnx(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "not a readable ONNX model" in message and "model.onnx_path=" in message


def test_an_onnx_model_that_is_no_detector_is_one_user_error(tmp_path: Path) -> None:
    path = add_model(tmp_path / "add.onnx")
    with pytest.raises(UserError) as err:
        dynamic_batch_onnx(path, tmp_path / "out" / "model.onnx")
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "image input" in message and "model.onnx_path=" in message
    assert not (tmp_path / "out" / "model.onnx").exists()
