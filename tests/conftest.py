"""Test-session fixtures shared across test folders.

`rtdetr_qdq(name)` is a real RT-DETRv2 architecture (random weights) quantized with the shipped
`int8_default` recipe and exported as Q/DQ ONNX once per session: the graph passes and the
fusion-bug localiser are tested on it. It is exported at 320x320: the graph's structure (every
decoder layer, candidate and fusion cluster) is the same as at 640 and each run is about 4x faster.
`toy_qdq_path` is a synthetic graph (a few attention-like blocks, each with `sampling_offsets` and
`attention_weights` Linears reading one quantized query, plus decoys) quantized with modelopt INT8
and exported like a real model, so the localiser runs on the Q/DQ structure the RT-DETR export has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from ci_shared import pytest_runtest_makereport, pytest_sessionstart  # noqa: E402,F401 - CI policy hooks
from torch import nn

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


# Toy Q/DQ decoder graphs for the fusion-bug localiser and the localize stage.
TOY_LAYERS = 6


class _AttentionLikeBlock(nn.Module):
    """Two projections read one query (the fusion TensorRT gets wrong), around decoy layers."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim)
        self.sampling_offsets = nn.Linear(dim, 8)
        self.attention_weights = nn.Linear(dim, 4)
        self.out = nn.Linear(dim + 12, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = torch.relu(self.proj_in(x))
        offsets = self.sampling_offsets(query)
        weights = self.attention_weights(query).softmax(-1)
        return x + self.out(torch.cat([query, offsets, weights], -1))


class _ToyDetector(nn.Module):
    def __init__(self, num_layers: int, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, stride=4, padding=1)
        self.layers = nn.ModuleList(_AttentionLikeBlock(dim) for _ in range(num_layers))
        self.head = nn.Linear(dim, 5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images).flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@pytest.fixture(scope="session")
def toy_qdq_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy detector ([1,3,32,32] `images` -> `logits`), INT8-quantized and exported."""
    import modelopt.torch.quantization as mtq

    torch.manual_seed(0)
    model = _ToyDetector(TOY_LAYERS).eval()
    calib = [torch.rand(1, 3, 32, 32) for _ in range(2)]
    model = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: [m(x) for x in calib])
    path = tmp_path_factory.mktemp("toy") / "toy_qdq.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            (calib[0],),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["logits"],
        )
    return path


@pytest.fixture(scope="session")
def toy_qdq(toy_qdq_path: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    feeds = {"images": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}
    return onnx.load(str(toy_qdq_path)), feeds
