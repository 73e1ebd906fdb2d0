"""Fusion-bug localisation with the fault-injection simulator on real Q/DQ graphs.

The synthetic graph (a few attention-like blocks, each with `sampling_offsets` and
`attention_weights` Linears reading one quantized query, plus decoy Linears/Convs) is quantized
with modelopt INT8 and exported like a real model, so candidate discovery and cluster matching run
on the same Q/DQ structure the RT-DETR export has.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rtq.debug.localize import localize
from rtq.debug.oracles import FaultInjectionOracle, output_error
from rtq.debug.structure import find_candidates, find_fusion_clusters, select_clusters

NUM_LAYERS = 6


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
def toy_qdq(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    import modelopt.torch.quantization as mtq

    torch.manual_seed(0)
    model = _ToyDetector(NUM_LAYERS).eval()
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
    feeds = {"images": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)}
    return onnx.load(str(path)), feeds


def _offset_clusters(model: onnx.ModelProto, layers: list[int]) -> list:
    return select_clusters(find_fusion_clusters(model), "sampling_offsets", layers)


def test_candidates_come_from_structure(toy_qdq: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    model, _ = toy_qdq
    candidates = find_candidates(model)
    kinds = {c.kind for c in candidates}
    assert kinds == {"quantized_compute", "bias_add", "concat"}
    assert any(c.node == "/stem/Conv" for c in candidates)
    # the graph output itself is never a candidate, shape Concats (int64) are not either
    assert all(c.tensor not in {o.name for o in model.graph.output} for c in candidates)
    assert all(c.tensor != "/Concat_output_0" for c in candidates)
    assert len(find_candidates(model, include=r"layers\.2/")) == 9


def test_fault_only_when_cluster_unprotected(toy_qdq: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    model, feeds = toy_qdq
    (cluster,) = _offset_clusters(model, [1])
    oracle = FaultInjectionOracle(model, feeds, [cluster])
    assert oracle.evaluate(frozenset()) > 0.01
    for inside in ("/layers.1/attention_weights/MatMul_output_0", "/layers.1/sampling_offsets/Add_output_0"):
        assert oracle.evaluate(frozenset({inside})) == 0.0
    assert oracle.evaluate(frozenset({"/layers.2/sampling_offsets/Add_output_0"})) > 0.01
    assert oracle.builds == 4
    assert output_error({"a": np.ones(3)}, {"a": np.ones(3)}) == 0.0


@pytest.mark.parametrize("layer", [0, 3, NUM_LAYERS - 1])
def test_localizes_single_fault(
    toy_qdq: tuple[onnx.ModelProto, dict[str, np.ndarray]], layer: int, tmp_path: Path
) -> None:
    model, feeds = toy_qdq
    oracle = FaultInjectionOracle(model, feeds, _offset_clusters(model, [layer]))
    result = localize(model, oracle, out_dir=tmp_path)
    assert result.status == "localized"
    (found,) = result.minimal_set
    assert found.startswith(f"/layers.{layer}/")
    assert found.split("/")[2] in {"sampling_offsets", "attention_weights"}
    assert set(result.equivalents[found]) | {found} == {
        f"/layers.{layer}/{proj}/{op}_output_0"
        for proj in ("sampling_offsets", "attention_weights")
        for op in ("MatMul", "Add")
    }
    assert result.error_after <= result.threshold < result.error_before
    assert result.builds == oracle.builds
    search_builds = result.builds - len(result.equivalents[found])
    assert search_builds <= 3 + math.ceil(math.log2(result.num_candidates)) < result.num_candidates
    report = (tmp_path / "report.md").read_text()
    assert found in report
    patched = onnx.load(str(tmp_path / "model.localized.onnx"))
    assert found in {o.name for o in patched.graph.output}
    assert oracle.evaluate(frozenset({found})) == 0.0


def test_localizes_two_faults(toy_qdq: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    model, feeds = toy_qdq
    oracle = FaultInjectionOracle(model, feeds, _offset_clusters(model, [1, 4]))
    result = localize(model, oracle, verify_equivalents=False)
    assert sorted(t.split("/")[1] for t in result.minimal_set) == ["layers.1", "layers.4"]
    assert result.builds <= 2 + 2 * (math.ceil(math.log2(result.num_candidates)) + 2)
    assert result.builds < result.num_candidates


def test_reduced_precision_fault_is_milder(toy_qdq: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    model, feeds = toy_qdq
    clusters = _offset_clusters(model, [2])
    saturating = FaultInjectionOracle(model, feeds, clusters).evaluate(frozenset())
    half = FaultInjectionOracle(model, feeds, clusters, fault="fp16").evaluate(frozenset())
    assert 0.0 < half < saturating


# ---------------------------------------------------------------- real RT-DETRv2 Q/DQ graphs


def _rtdetr_qdq(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight RT-DETRv2 quantized with int8_default on 2 images and exported (cached per session)."""
    pytest.importorskip("rtq.models.registry", reason="rtq.models not available")
    from rtq.data.calib import CalibrationImages
    from rtq.debug.__main__ import _data_dir, generic_feeds_rtdetr
    from rtq.export.onnx_export import export_onnx
    from rtq.models.registry import build_deploy_model
    from rtq.quant.calibrate import quantize_model
    from rtq.quant.recipes import load_recipe

    calib = _data_dir("coco_calib")
    if calib is None:
        pytest.skip("coco_calib images not found (bundled data/ or ../shared)")
    path = tmp_path_factory.getbasetemp() / f"{name}_qdq.onnx"
    if not path.is_file():
        torch.manual_seed(0)
        model = build_deploy_model(name)
        feeds = [generic_feeds_rtdetr(image) for image in CalibrationImages(calib, max_images=2)]
        model = quantize_model(model, load_recipe("int8_default"), feeds, progress=False)
        export_onnx(model, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "layers"), [("rtdetrv2_r18vd", [1]), ("rtdetrv2_r50vd", [4]), ("rtdetrv2_r50vd", [0, 5])]
)
def test_localizes_fault_in_rtdetr(
    name: str, layers: list[int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    from rtq.debug.__main__ import _images, generic_feeds

    path = _rtdetr_qdq(name, tmp_path_factory)
    model = onnx.load(str(path))
    clusters = _offset_clusters(model, layers)
    assert [c.layer_index for c in clusters] == layers
    oracle = FaultInjectionOracle(model, generic_feeds(model, _images(None, 1)), clusters)
    result = localize(model, oracle, verify_equivalents=False)
    assert result.status == "localized"
    found_layers = sorted(int(t.split("layers.")[1].split("/")[0]) for t in result.minimal_set)
    assert found_layers == layers
    assert all("/cross_attn/" in t for t in result.minimal_set)
    assert result.builds <= 2 + len(layers) * (math.ceil(math.log2(result.num_candidates)) + 2)
    assert result.builds * 5 < result.num_candidates
