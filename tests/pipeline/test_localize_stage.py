"""The `localize` pipeline stage on the toy Q/DQ graph: config in, reports and row summary out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from rtq.backends.tensorrt.compat import tensorrt_available
from rtq.cache import ArtifactCache
from rtq.errors import StageSkipped, UserError
from rtq.models.family import Detector, get_family
from rtq.models.io import ImageMeta
from rtq.pipeline.artifacts import Artifacts
from rtq.pipeline.stage import STAGES, StageContext
from rtq.pipeline.stages.localize import check_settings, stage_localize

REPO = Path(__file__).resolve().parents[2]


class _ToyIO:
    """Pre-processing of the toy graph (32x32 `images` in 0..1); post-processing is not used here."""

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        arrays = [np.asarray(Image.fromarray(im).resize((32, 32)), np.float32) / 255.0 for im in images]
        return {"images": np.stack(arrays).transpose(0, 3, 1, 2).copy()}, []

    def postprocess(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list:
        raise NotImplementedError


LOCALIZE_DEFAULTS = OmegaConf.load(REPO / "conf" / "config.yaml")["localize"]


def _context(tmp_path: Path, onnx_path: Path | None, **localize: object) -> StageContext:
    data_root = REPO / "data" / "coco_val2017_mini"
    if not data_root.is_dir():
        pytest.skip("bundled coco_val2017_mini not found")
    cfg = OmegaConf.create(
        {
            "data": {"root": str(data_root), "max_images": None},
            "backend": {"name": "onnxruntime"},
            "localize": {**OmegaConf.to_container(LOCALIZE_DEFAULTS), **localize},
        }
    )
    detector = Detector("toy", get_family("onnx"), _ToyIO(), source_onnx=onnx_path)  # type: ignore[arg-type]
    artifacts = Artifacts(source_onnx=onnx_path, onnx=onnx_path, qdq_onnx=onnx_path)
    return StageContext(cfg, tmp_path / "run", detector, ArtifactCache(tmp_path / "cache"), artifacts)


def test_stage_is_registered() -> None:
    spec = STAGES["localize"]
    assert spec.run is stage_localize and spec.section == "localize" and spec.needs == ("qdq_onnx",)


def test_stage_writes_reports_and_row(toy_qdq_path: Path, tmp_path: Path) -> None:
    ctx = _context(tmp_path, toy_qdq_path, oracle="fault", fault_layers=[2], verify_equivalents=False)
    result = stage_localize(ctx)
    outputs = result.outputs
    out_dir = ctx.run_dir / "localize"
    assert outputs[:2] == [out_dir / "report.md", out_dir / "report.json"]
    assert all(p.is_file() for p in outputs)
    summary = result.record["localize"]
    assert summary["status"] == "localized"
    (found,) = summary["minimal_set"]
    assert found.startswith("/layers.2/")
    assert summary["error_after"] < summary["error_before"]
    assert 0 < summary["builds"] < summary["candidates"]
    assert found in (out_dir / "report.md").read_text()
    assert outputs[2] == out_dir / "toy.localized.onnx"
    assert ctx.artifacts.graph == toy_qdq_path  # a simulated fix never replaces the model under test


def test_tensorrt_oracle_without_tensorrt_skips(toy_qdq_path: Path, tmp_path: Path) -> None:
    if tensorrt_available():
        pytest.skip("TensorRT is installed: the stage would build engines")
    with pytest.raises(StageSkipped, match="TensorRT not installed"):
        stage_localize(_context(tmp_path, toy_qdq_path, oracle="tensorrt"))


def test_bad_settings_are_user_errors(toy_qdq_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="localize.oracle='gpu'"):
        check_settings({"oracle": "gpu", "num_images": 1})
    with pytest.raises(UserError, match="localize.num_images=0"):
        check_settings({"oracle": "fault", "num_images": 0})
    with pytest.raises(UserError, match="fault_layers"):
        stage_localize(_context(tmp_path, toy_qdq_path, fault_layers=[17]))
