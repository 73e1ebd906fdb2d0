"""The server's rules checked offline, each on a config broken the way a hand edit breaks it."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_onnx import conv_model

from rtq.deploy.triton_check import check_model_dir, model_dir_problems
from rtq.deploy.triton_config import DeployOptions
from rtq.deploy.triton_repo import write_triton_model
from rtq.errors import UserError

BROKEN = [
    # (what the hand edit replaces, with what, the problem reported)
    ("max_batch_size: 8", "max_batch_size: -1", "max_batch_size -1 must be non-negative"),
    ("dynamic_batching {\n}", "dynamic_batching {\n  preferred_batch_size: 16\n}",
     "preferred size 16 must be positive and <= max_batch_size 8"),
    ("  dims: 8\n  dims: 8\n  dims: 8\n}", "  dims: 0\n  dims: 8\n  dims: 8\n}",
     "each dimension must be >= 1"),
    ("  data_type: TYPE_FP32\n  dims: 8", "  dims: 8", "model output 'y' must specify 'data_type'"),
    ('name: "conv"', 'name: "other"', "config name 'other' differs from its folder name 'conv'"),
    ('platform: "onnxruntime_onnx"', 'platform: "tensorrt_plan"', "does not go with backend 'onnxruntime'"),
    ("  dims: 4\n", "  dims: 5\n", "do not match the graph's [4, 8, 8]"),
    ('name: "x"', 'name: "z"', "model input 'z' is not a graph input"),
    ("kind: KIND_CPU", "kind: KIND_CPU\n  gpus: 0", "KIND_CPU must not list gpus"),
]


@pytest.fixture(scope="module")
def conv_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("conv")
    return write_triton_model(conv_model(folder / "conv.onnx"), folder / "repo", "conv").model_dir


def test_a_generated_folder_has_no_problem(conv_repo: Path) -> None:
    assert model_dir_problems(conv_repo) == []
    assert check_model_dir(conv_repo).name == "conv"


@pytest.mark.parametrize(("old", "new", "problem"), BROKEN, ids=[b[2][:30] for b in BROKEN])
def test_each_broken_rule_is_reported(
    conv_repo: Path, tmp_path: Path, old: str, new: str, problem: str
) -> None:
    import shutil

    folder = tmp_path / "conv"
    shutil.copytree(conv_repo, folder)
    text = (folder / "config.pbtxt").read_text()
    assert old in text
    (folder / "config.pbtxt").write_text(text.replace(old, new, 1))
    problems = model_dir_problems(folder)
    assert any(problem in p for p in problems), problems
    with pytest.raises(UserError) as err:
        check_model_dir(folder)
    assert "\n" not in str(err.value)


def test_backend_kinds_and_missing_files(tmp_path: Path) -> None:
    onnx_path = conv_model(tmp_path / "conv.onnx")
    ov = write_triton_model(onnx_path, tmp_path / "repo", "ov", DeployOptions(backend="openvino")).model_dir
    config = ov / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    assert any("openvino backend runs on CPU only" in p for p in model_dir_problems(ov))
    (ov / "1" / "model.onnx").unlink()
    assert any("1/model.onnx is missing" in p for p in model_dir_problems(ov))
    (ov / "1").rmdir()
    assert any("no numeric version folder" in p for p in model_dir_problems(ov))
