"""YOLOX adapter and ONNX source: letterbox, decode, NMS, and the batch rewrite on the real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rtq.errors import UserError
from rtq.models.adapters.yolox import YoloxIO, anchor_grid, classwise_nms, decode_predictions, resize_bilinear
from rtq.models.io import ImageMeta
from rtq.models.onnx_source import (
    check_dynamic_batch,
    dynamic_batch_onnx,
    load_detector_onnx,
    make_batch_dynamic,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "yolox_nano.onnx"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="models/yolox_nano.onnx is not bundled")


def test_letterbox_keeps_aspect_puts_image_top_left_and_swaps_to_bgr() -> None:
    image = np.zeros((200, 100, 3), np.uint8)
    image[..., 0] = 255  # pure red in RGB
    feed, metas = YoloxIO(input_size=416).preprocess([image])
    x = feed["images"]
    assert x.shape == (1, 3, 416, 416) and x.dtype == np.float32
    assert metas[0] == ImageMeta(width=100, height=200, scale=416 / 200)
    assert x[0, 2, 0, 0] == 255 and x[0, 0, 0, 0] == 0  # red lands in the last (R of BGR) channel
    assert np.all(x[0, :, :, 208:] == 114)  # padding right of the 208-pixel-wide image


def test_resize_bilinear_matches_half_pixel_interpolation() -> None:
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, axis=2) * 10
    half = resize_bilinear(image, 2, 2)
    # half-pixel centres: each output pixel averages a 2x2 block
    assert half[..., 0].tolist() == [[25, 45], [105, 125]]


def test_decode_uses_grid_and_stride() -> None:
    grid, stride = anchor_grid(64, (8, 16, 32))
    assert grid.shape == (64 + 16 + 4, 2) and stride[0, 0] == 8 and stride[-1, 0] == 32
    raw = np.zeros((1, 84, 7), np.float32)
    raw[0, 9, 4] = 1.0  # anchor 9 = cell (x=1, y=1) of the stride-8 grid
    raw[0, 9, 5:] = [0.5, 0.25]
    boxes, scores = decode_predictions(raw, 64, (8, 16, 32))
    np.testing.assert_allclose(boxes[0, 9], [4, 4, 12, 12])  # centre 8, size exp(0)*8
    np.testing.assert_allclose(scores[0, 9], [0.5, 0.25])
    with pytest.raises(UserError, match="anchors"):
        decode_predictions(raw, 96, (8, 16, 32))


def test_classwise_nms_suppresses_within_a_class_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([0, 0, 1, 0])
    assert classwise_nms(boxes, scores, labels, 0.5, None).tolist() == [0, 2, 3]
    assert classwise_nms(boxes, scores, labels, 0.5, 2).tolist() == [0, 2]
    assert classwise_nms(boxes, scores, labels, 0.9, None).tolist() == [0, 1, 2, 3]


def test_postprocess_maps_back_to_original_pixels_and_names_missing_outputs() -> None:
    io = YoloxIO(input_size=64, score_threshold=0.1)
    raw = np.zeros((1, 84, 85), np.float32)
    raw[0, 9, 4], raw[0, 9, 5 + 3] = 1.0, 0.9
    dets = io.postprocess({"output": raw}, [ImageMeta(width=32, height=16, scale=2.0)])[0]
    assert dets.labels.tolist() == [3]
    np.testing.assert_allclose(dets.boxes[0], [2, 2, 6, 6])
    np.testing.assert_allclose(dets.scores, [0.9])
    with pytest.raises(UserError, match="end2end_nms"):
        io.postprocess({"logits": raw}, [ImageMeta(32, 16, 2.0)])


def test_missing_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_detector_onnx(tmp_path / "nope.onnx")


@needs_model
def test_batch_rewrite_gives_per_image_identical_outputs(tmp_path: Path) -> None:
    path, report = dynamic_batch_onnx(MODEL, tmp_path / "dyn.onnx")
    assert report.inputs == ["images"] and report.outputs == ["output"]
    assert len(report.reshapes) == 3  # the head's three [1, 85, -1] reshapes
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    rng = np.random.default_rng(0)
    feed = {"images": rng.uniform(0, 255, (4, 3, 416, 416)).astype(np.float32)}
    assert check_dynamic_batch(path, lambda n: {k: v[:n] for k, v in feed.items()}, batch=4) <= 1e-4


@needs_model
def test_batch_rewrite_without_reshape_fix_would_break(tmp_path: Path) -> None:
    """The Reshape constants really bake batch 1: renaming only the I/O dims fails at batch 2."""
    model, _ = make_batch_dynamic(load_detector_onnx(MODEL))
    for node in model.graph.node:
        if node.op_type == "Reshape":
            init = next(i for i in model.graph.initializer if i.name == node.input[1])
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([1, 85, -1], np.int64), init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    rng = np.random.default_rng(0)
    with pytest.raises(Exception):  # noqa: B017 - ORT raises its own runtime error type
        check_dynamic_batch(
            broken, lambda n: {"images": rng.uniform(0, 255, (n, 3, 416, 416)).astype(np.float32)}, batch=2
        )
