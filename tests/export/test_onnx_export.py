"""export_onnx on small stand-in detectors: symbolic batch, Q/DQ nodes, ORT at batch 1 and 4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from rtq.backends.onnxruntime import reference_session
from rtq.errors import UserError
from rtq.export.onnx_export import check_symbolic_batch, export_onnx, qdq_node_counts
from rtq.quant.calibrate import quantize_model
from rtq.quant.fidelity import torch_vs_onnx
from rtq.quant.recipes import load_recipe

SIZE = 32


class StandInDeploy(nn.Module):
    """Conv backbone + Linear head + top-k, with the deploy signature and output layout."""

    def __init__(self, d: int = 8, k: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, d, 3, stride=4, padding=1), nn.ReLU(),
                                      nn.Conv2d(d, d, 3, stride=2, padding=1))
        self.decoder = nn.Module()
        self.decoder.sampling_offsets = nn.Linear(d, d)
        self.decoder.score_head = nn.Linear(d, classes)
        self.decoder.bbox_head = nn.Linear(d, 4)
        self.k = k

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor):  # type: ignore[no-untyped-def]
        q = self.backbone(images).flatten(2).transpose(1, 2)
        q = q + self.decoder.sampling_offsets(q)
        boxes = self.decoder.bbox_head(q).sigmoid() * orig_target_sizes.repeat(1, 2).unsqueeze(1)
        logits = self.decoder.score_head(q)
        classes = logits.shape[-1]
        scores, index = torch.topk(logits.sigmoid().flatten(1), self.k, dim=-1)
        labels = index % classes
        boxes = boxes.gather(1, (index // classes).unsqueeze(-1).repeat(1, 1, 4))
        return labels, boxes, scores


class Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, 4, 1), EigHead())

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor):  # type: ignore[no-untyped-def]
        y = self.head(images)
        return y, y, y


class EigHead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x[:, :, :2, :2]).real


def feed(batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(100, 900, size=(batch, 2)).astype(np.int64)
    return {"images": rng.random((batch, 3, SIZE, SIZE), dtype=np.float32), "orig_target_sizes": sizes}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return StandInDeploy().eval()


@pytest.fixture(scope="module")
def quantized_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = quantize_model(make_model(), load_recipe("int8_default"), [feed(2, 0)], progress=False)
    path = export_onnx(model, tmp_path_factory.mktemp("q") / "model.onnx", image_size=SIZE)
    return model, path


def dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_fp32_export_has_symbolic_batch_everywhere(tmp_path: Path) -> None:
    path = export_onnx(make_model(), tmp_path / "fp32.onnx", image_size=SIZE)
    proto = onnx.load(str(path))
    assert [v.name for v in proto.graph.input] == ["images", "orig_target_sizes"]
    assert [v.name for v in proto.graph.output] == ["labels", "boxes", "scores"]
    assert dims(proto.graph.input[0]) == ["N", 3, SIZE, SIZE]
    assert dims(proto.graph.input[1]) == ["N", 2]
    assert all(dims(v)[0] == "N" for v in proto.graph.output)
    assert qdq_node_counts(proto) == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    assert proto.ir_version <= 8  # opset 17 needs IR 8; older runtimes read it
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


def test_static_batch_is_detected(tmp_path: Path) -> None:
    path = export_onnx(make_model(), tmp_path / "static.onnx", image_size=SIZE, dynamic_batch=False)
    with pytest.raises(RuntimeError, match="images \\(dim 0 = 1\\)"):
        check_symbolic_batch(onnx.load(str(path)))


def test_quantized_export_has_qdq_and_batch_independent_results(
    quantized_onnx: tuple[nn.Module, Path],
) -> None:
    _, path = quantized_onnx
    counts = qdq_node_counts(path)
    assert counts["QuantizeLinear"] == counts["DequantizeLinear"] == 10  # 5 layers x (input, weight)
    session = reference_session(path)
    batch4 = feed(4, 1)
    outputs4 = session.run(None, batch4)
    for i in range(4):
        single = {k: v[i : i + 1] for k, v in batch4.items()}
        for out4, out1 in zip(outputs4, session.run(None, single), strict=True):
            np.testing.assert_array_equal(out4[i : i + 1], out1)


def test_fake_quant_torch_matches_onnx(quantized_onnx: tuple[nn.Module, Path]) -> None:
    model, path = quantized_onnx
    report = torch_vs_onnx(model, path, [feed(2, 3), feed(4, 4)])
    assert report["images"] == 6
    assert report["label_mismatches_matched"] == 0
    assert report["scores_max_abs_sorted"] < 1e-4
    assert report["boxes_max_abs_matched"] < 1e-2


def test_simplified_export_keeps_symbolic_batch(tmp_path: Path) -> None:
    path = export_onnx(make_model(), tmp_path / "slim.onnx", image_size=SIZE, simplify=True)
    proto = onnx.load(str(path))
    assert all(dims(v)[0] == "N" for v in list(proto.graph.input) + list(proto.graph.output))
    out = reference_session(path).run(None, feed(3, 5))
    assert out[2].shape == (3, 5)


def test_unsupported_op_names_op_and_module(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"aten::linalg_eigvals.*'head\.1' \(EigHead\)"):
        export_onnx(Unexportable(), tmp_path / "bad.onnx", image_size=SIZE)
    assert not list(tmp_path.iterdir())
