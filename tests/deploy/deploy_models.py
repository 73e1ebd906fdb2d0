"""Models the deployment tests serve: rtq's own artifacts where quick, tiny graphs otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tiny_onnx import conv_model, random_feeds

from tests.yolox_model import YOLOX, dynamic_yolox, mini_coco_images, needs_yolox

__all__ = ["YOLOX", "needs_yolox"]  # re-exported for the deployment tests


def end2end_yolox(folder: Path) -> Path:
    """YOLOX-Nano with a symbolic batch and NMS in the graph (num_dets/det_boxes/det_scores/det_classes)."""
    from rtq.surgery.base import run_passes

    dynamic = dynamic_yolox(folder, "model.onnx")
    out = folder / "model.end2end_nms.onnx"
    run_passes(dynamic, out, [{"name": "end2end_nms", "options": {}}])
    return out


def qdq_conv(folder: Path) -> Path:
    """The tiny conv model quantized to INT8 Q/DQ by ONNX Runtime (symbolic batch N kept)."""
    from rtq.quant.ort_static import ort_quantize_static

    fp32 = conv_model(folder / "conv.onnx")
    return ort_quantize_static(fp32, folder / "conv.int8.onnx", random_feeds(4))


def stand_in_engine(folder: Path, onnx_path: Path, max_batch: int = 16) -> Path:
    """A run directory's `model.plan` + `model.build.json` as the build stage leaves them.

    The plan bytes are not an engine (TensorRT cannot be installed here); the I/O comes from the
    ONNX the build record names, which is what rtq reads when TensorRT cannot open the plan.
    """
    plan = folder / "model.plan"
    plan.write_bytes(b"stand-in for a TensorRT engine")
    shape = [1, 4, 8, 8]
    profile = {"min": shape, "opt": [max(1, max_batch // 2), *shape[1:]], "max": [max_batch, *shape[1:]]}
    info = {"onnx": str(onnx_path), "config": {"precision": "int8_qdq", "profiles": {"x": profile}}}
    (folder / "model.build.json").write_text(json.dumps(info))
    return plan


def yolox_images(count: int) -> np.ndarray:
    """`count` real COCO images letterboxed as YOLOX wants them, when the shared images are there."""
    from rtq.data.coco import load_rgb
    from rtq.models.adapters.yolox import YoloxIO
    folder = mini_coco_images()
    paths = sorted((folder / "val2017").glob("*.jpg"))[:count]
    feed, _ = YoloxIO().preprocess([load_rgb(p) for p in paths])
    return np.asarray(feed["images"])
