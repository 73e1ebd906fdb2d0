"""Q/DQ graphs the fusion-bug localiser is tested on, each built once per test session.

The synthetic graph (a few attention-like blocks, each with `sampling_offsets` and
`attention_weights` Linears reading one quantized query, plus decoy Linears/Convs) is quantized
with modelopt INT8 and exported like a real model, so candidate discovery and cluster matching run
on the same Q/DQ structure the RT-DETR export has. The RT-DETRv2 graphs are the real architecture
(random weights), quantized with the shipped `int8_default` recipe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

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
