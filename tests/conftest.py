"""Test-session fixtures shared across test folders.

`rtdetr_qdq(name)` is a real RT-DETRv2 architecture (random weights) quantized with the shipped
`int8_default` recipe and exported as Q/DQ ONNX once per session: the graph passes and the
fusion-bug localiser are tested on it. It is exported at 320x320: the graph's structure (every
decoder layer, candidate and fusion cluster) is the same as at 640 and each run is about 4x faster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

RTDETR_TEST_SIZE = 320


@pytest.fixture(scope="session")
def rtdetr_qdq(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`rtdetr_qdq(name)`: random-weight RT-DETRv2 quantized with int8_default on 1 image, exported once."""
    exported: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in exported:
            exported[name] = _export_rtdetr_qdq(name, tmp_path_factory.mktemp(name))
        return exported[name]

    return get


def _export_rtdetr_qdq(name: str, folder: Path) -> Path:
    from rtq.data.calib import CalibrationImages
    from rtq.export.onnx_export import export_onnx
    from rtq.models.postprocess import RTDETRPostProcessor
    from rtq.models.registry import construct, get_variant
    from rtq.models.rtdetr import RTDETRIO, RTDETRDeploy
    from rtq.paths import data_dir
    from rtq.quant.quantize import quantize
    from rtq.quant.recipes import load_recipe

    calib = data_dir("coco_calib")
    if calib is None:
        pytest.skip("coco_calib images not found (bundled data/ or ../shared)")
    torch.manual_seed(0)
    # build_deploy_model at a smaller input size: the registry's variant row with input_size changed
    variant = replace(get_variant(name), input_size=RTDETR_TEST_SIZE)
    model = RTDETRDeploy(construct(variant).eval(), RTDETRPostProcessor(num_classes=variant.num_classes))
    for module_name, module in model.named_modules():  # the official init zeroes these: make them count
        if module_name.endswith(("sampling_offsets", "attention_weights")):
            torch.nn.init.normal_(module.weight, std=0.02)
    io = RTDETRIO(RTDETR_TEST_SIZE)
    feeds = [io.preprocess([image])[0] for image in CalibrationImages(calib, max_images=1)]
    quantized = quantize(model, load_recipe("int8_default"), feeds)
    path = folder / f"{name}_qdq.onnx"
    export_onnx(quantized, path, image_size=RTDETR_TEST_SIZE)
    return path
