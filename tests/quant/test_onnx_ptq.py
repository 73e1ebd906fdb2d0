"""ONNX PTQ of the real YOLOX-Nano with modelopt on CPU, calibrated on real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rtq.errors import UserError
from rtq.models.adapters.yolox import YoloxIO
from rtq.models.onnx_source import dynamic_batch_onnx
from rtq.quant.onnx_ptq import qdq_summary, quantize_onnx

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "yolox_nano.onnx"
CALIB = next(
    (p for p in (ROOT / "data" / "coco_calib", ROOT.parent / "shared" / "data" / "coco_calib") if p.is_dir()),
    None,
)
pytestmark = pytest.mark.skipif(
    not MODEL.is_file() or CALIB is None, reason="models/yolox_nano.onnx or the coco_calib images are missing"
)


def _calib(n: int) -> np.ndarray:
    from rtq.data.calib import CalibrationImages

    feed, _ = YoloxIO().preprocess(list(CalibrationImages(CALIB, n)))  # type: ignore[arg-type]
    return feed["images"]


def test_quantize_excludes_nodes_and_keeps_dynamic_batch(tmp_path: Path) -> None:
    import onnxruntime as ort

    dyn, _ = dynamic_batch_onnx(MODEL, tmp_path / "dyn.onnx")
    out = quantize_onnx(
        dyn, tmp_path / "int8.onnx", _calib(4), method="max", exclude_nodes=["Conv_44", "Conv_47"]
    )
    model = onnx.load(str(out))
    summary = qdq_summary(model)
    assert sorted(summary.float_compute) == ["Conv_44", "Conv_47"]
    assert len(summary.int8_compute) == 111 and summary.quantize_nodes > 100
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (raw,) = session.run(None, {"images": _calib(2)})
    assert raw.shape == (2, 3549, 85) and np.isfinite(raw).all()
    assert not any(p.name.startswith("rtq_ptq_") for p in tmp_path.iterdir())  # work dir cleaned up


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="calibration method"):
        quantize_onnx(MODEL, tmp_path / "x.onnx", np.zeros((1, 3, 416, 416), np.float32), method="percentile")
    with pytest.raises(UserError, match="shape"):
        quantize_onnx(MODEL, tmp_path / "x.onnx", np.zeros((3, 416, 416), np.float32))
    assert not (tmp_path / "x.onnx").exists()
