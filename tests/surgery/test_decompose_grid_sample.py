"""GridSample replaced by gathers: the same values as GridSample in ONNX Runtime and OpenVINO, at any
batch; the discrete mode follows RT-DETRv2's discrete sampling rule; other GridSample settings stay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rtq.surgery.base import run_passes

C, H, W, HG, WG = 8, 13, 17, 30, 4


def _grid_sample_model(path: Path, **attrs: object) -> Path:
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], name="sample", **attrs)
    graph = helper.make_graph(
        [node],
        "grid_sample",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W]),
            helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["N", HG, WG, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, HG, WG])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _decompose(src: Path, dst: Path, mode: str) -> Path:
    (report,) = run_passes(src, dst, [{"name": "decompose_grid_sample", "options": {"mode": mode}}])
    assert report.changed == [f"sample: GridSample -> {mode} gathers"] and not report.unmatched
    assert "GridSample" not in {n.op_type for n in onnx.load(str(dst)).graph.node}
    return dst


def _feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    grid = rng.uniform(-1.2, 1.2, (batch, HG, WG, 2)).astype(np.float32)  # some points off the map
    grid[0, 0, 0] = [-1.0, 1.0]  # exact corners
    return {"x": rng.normal(size=(batch, C, H, W)).astype(np.float32), "grid": grid}


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_bilinear_equals_grid_sample_in_onnx_runtime_and_openvino(tmp_path: Path) -> None:
    original = _grid_sample_model(
        tmp_path / "gs.onnx", mode="bilinear", padding_mode="zeros", align_corners=0
    )
    decomposed = _decompose(original, tmp_path / "gathers.onnx", "bilinear")
    import openvino as ov

    compiled = ov.Core().compile_model(str(decomposed), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for batch in (1, 3):
        feeds = _feeds(batch)
        want = _ort(original, feeds)
        np.testing.assert_allclose(_ort(decomposed, feeds), want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(compiled(feeds)[0], want, rtol=0, atol=1e-5)


def test_discrete_follows_the_rtdetrv2_rule(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    original = _grid_sample_model(tmp_path / "gs.onnx")
    decomposed = _decompose(original, tmp_path / "discrete.onnx", "discrete")
    feeds = _feeds(2)
    loc = (torch.from_numpy(feeds["grid"]) + 1) / 2  # the model's locations in 0..1
    col = (loc[..., 0] * W + 0.5).to(torch.int64).clamp(0, W - 1)  # truncation, as rtq.models.decoder
    row = (loc[..., 1] * H + 0.5).to(torch.int64).clamp(0, H - 1)
    index = (row * W + col).reshape(2, 1, -1).expand(-1, C, -1)
    want = torch.from_numpy(feeds["x"]).flatten(2).gather(2, index).reshape(2, C, HG, WG).numpy()
    np.testing.assert_array_equal(_ort(decomposed, feeds), want)


def test_other_settings_and_bad_options_are_one_line_each(tmp_path: Path) -> None:
    from rtq.errors import UserError

    border = _grid_sample_model(tmp_path / "border.onnx", padding_mode="border")
    spec = {"name": "decompose_grid_sample", "options": {}}
    with pytest.raises(UserError, match="sample: GridSample with padding_mode='border' is not decomposed"):
        run_passes(border, tmp_path / "out.onnx", [spec])
    (report,) = run_passes(border, tmp_path / "out.onnx", [{**spec, "optional": True}])
    assert not report.changed  # left in place
    with pytest.raises(UserError, match=r"mode='x'; known: mode in \['bilinear', 'discrete'\]"):
        run_passes(border, tmp_path / "out.onnx", [{**spec, "options": {"mode": "x"}}])
