"""The real quantized RT-DETRv2 r18vd both fidelity test modules compare, built once per session."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from rtq.paths import SHARED_DIR

SHARED = SHARED_DIR
CHECKPOINT = SHARED / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"
CALIB = SHARED / "data" / "coco_calib"
EVAL_IMAGES = SHARED / "data" / "coco_val2017_mini" / "val2017"
Quantized = tuple[nn.Module, Path, list[dict[str, np.ndarray]]]


@pytest.fixture(scope="session")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    """Fake-quant RT-DETRv2 r18vd (int8_default, 2 calibration images), its raw ONNX and 2 feeds."""
    if not CHECKPOINT.is_file() or not CALIB.is_dir() or not EVAL_IMAGES.is_dir():
        pytest.skip(f"shared fixtures absent: {CHECKPOINT} / {CALIB} / {EVAL_IMAGES}")
    from PIL import Image

    from rtq.export.onnx_export import export_raw_onnx
    from rtq.models import RTDETRIO, build_deploy_model
    from rtq.models.rtdetr import RawOutputs, raw_network
    from rtq.quant.calibrate import calibration_feeds, quantize_model
    from rtq.quant.recipes import load_recipe

    recipe = load_recipe("int8_default")
    recipe = replace(recipe, calib=replace(recipe.calib, max_images=2, batch_size=2))
    io = RTDETRIO()
    model = quantize_model(build_deploy_model("rtdetrv2_r18vd", CHECKPOINT), recipe,
                           calibration_feeds(recipe, io, CALIB), progress=False)
    raw_model = RawOutputs(raw_network(model))
    path = export_raw_onnx(raw_model, tmp_path_factory.mktemp("fidelity") / "raw_int8.onnx")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(EVAL_IMAGES.glob("*.jpg"))[:2]]
    return model, path, [io.preprocess([image])[0] for image in images]
