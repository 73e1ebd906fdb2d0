"""The TensorRT runner is Polygraphy's TrtRunner; plugins recorded at build time load first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtq.backends.tensorrt import compat
from rtq.backends.tensorrt.build import build_info_path
from rtq.backends.tensorrt.runner import engine_plugin_libraries, make_trt_runner
from rtq.errors import StageSkipped, UserError


def test_plugin_libraries_from_build_info(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    assert engine_plugin_libraries(plan) == []
    build_info_path(plan).write_text(json.dumps({"plugin_libraries": ["/opt/libfused.so"]}))
    assert engine_plugin_libraries(plan) == [Path("/opt/libfused.so")]


def test_runner_without_tensorrt_is_skipped(tmp_path: Path) -> None:
    if compat.tensorrt_available():
        pytest.skip("TensorRT is installed: covered by test_runner_is_polygraphy_trt_runner")
    with pytest.raises(StageSkipped, match="^TensorRT not installed$"):
        make_trt_runner(tmp_path / "model.plan")


def test_runner_is_polygraphy_trt_runner(tmp_path: Path) -> None:
    if not compat.tensorrt_available():
        pytest.skip("TensorRT not installed")
    with pytest.raises(UserError, match="build stage"):
        make_trt_runner(tmp_path / "missing.plan")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    from polygraphy.backend.trt import TrtRunner

    assert isinstance(make_trt_runner(plan, plugin_libraries=[]), TrtRunner)
