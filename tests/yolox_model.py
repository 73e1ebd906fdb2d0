"""The YOLOX-Nano ONNX and the COCO mini images that tests of real detections share."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.paths import PROJECT_ROOT, data_dir

YOLOX = PROJECT_ROOT / "models" / "yolox_nano.onnx"
needs_yolox = pytest.mark.skipif(not YOLOX.is_file(), reason="models/yolox_nano.onnx is missing")


def mini_coco_images() -> Path:
    """The coco_val2017_mini folder, or a skip naming what is missing."""
    folder = data_dir("coco_val2017_mini")
    if folder is None:
        pytest.skip("the coco_val2017_mini images are missing (../shared/data)")
    return folder


def dynamic_yolox(folder: Path, name: str = "yolox.onnx") -> Path:
    """YOLOX-Nano rewritten to a symbolic batch, written into `folder`."""
    from rtq.models.onnx_source import dynamic_batch_onnx

    return dynamic_batch_onnx(YOLOX, folder / name)[0]
