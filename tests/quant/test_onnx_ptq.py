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
needs_yolox = pytest.mark.skipif(
    not MODEL.is_file() or CALIB is None, reason="models/yolox_nano.onnx or the coco_calib images are missing"
)


def _calib(n: int) -> np.ndarray:
    from rtq.data.calib import CalibrationImages

    feed, _ = YoloxIO().preprocess(list(CalibrationImages(CALIB, n)))  # type: ignore[arg-type]
    return feed["images"]


@needs_yolox
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


@needs_yolox
def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="calibration method"):
        quantize_onnx(MODEL, tmp_path / "x.onnx", np.zeros((1, 3, 416, 416), np.float32), method="percentile")
    with pytest.raises(UserError, match="shape"):
        quantize_onnx(MODEL, tmp_path / "x.onnx", np.zeros((3, 416, 416), np.float32))
    assert not (tmp_path / "x.onnx").exists()


def _two_input_model(path: Path) -> Path:
    """A Conv whose input is the image scaled by a second input (like RT-DETR's `orig_target_sizes`):
    the Conv's input quantizer can only be calibrated right when that input is fed its real values."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(32, 16, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(100.0, np.float32), "hundred"),
        numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "per_image"),
        numpy_helper.from_array(np.array([-1, 32], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Cast", ["sizes"], ["sizes_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["sizes_f"], ["size"], name="size", axes=[1], keepdims=1),
        helper.make_node("Div", ["size", "hundred"], ["gain"], name="gain"),
        helper.make_node("Reshape", ["gain", "per_image"], ["gain4"], name="gain4"),
        helper.make_node("Mul", ["images", "gain4"], ["scaled"], name="scale"),
        helper.make_node("Conv", ["scaled", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("ReduceMean", ["relu"], ["pooled"], name="pool", axes=[2, 3], keepdims=1),
        helper.make_node("Reshape", ["pooled", "flat"], ["out"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 16, 16, 16]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, ["N", 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 32])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_every_input_the_feeds_carry_is_calibrated(tmp_path: Path) -> None:
    """The second input is fed its real values (image sizes in the hundreds) at calibration: on
    anything else the Conv's input quantizer would get the wrong range and saturate or lose precision."""
    import onnxruntime as ort

    fp32 = _two_input_model(tmp_path / "fp32.onnx")
    rng = np.random.default_rng(1)
    feeds = [
        {
            "images": rng.random((4, 16, 16, 16), dtype=np.float32),
            "sizes": rng.integers(320, 1280, size=(4, 2)).astype(np.int64),
        }
        for _ in range(2)
    ]
    out = quantize_onnx(fp32, tmp_path / "int8.onnx", feeds, method="max")
    assert qdq_summary(onnx.load(str(out))).int8_by_op == {"Conv": 1}
    test = {
        "images": rng.random((3, 16, 16, 16), dtype=np.float32),
        "sizes": np.array([[1200, 1100]] * 3, np.int64),
    }
    expected = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, test)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, test)[0]
    assert np.abs(got - expected).max() < 0.03 * np.abs(expected).max()
    with pytest.raises(UserError, match=r"\['sizes'\] that the calibration feeds lack"):
        quantize_onnx(fp32, tmp_path / "x.onnx", feeds[0]["images"])
    assert not (tmp_path / "x.onnx").exists()
