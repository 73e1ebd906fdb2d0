"""Fusion-bug localisation with the fault-injection simulator on real Q/DQ graphs.

The toy graph (conftest.py) checks the search's details fast; the RT-DETRv2 graphs check that it
finds exactly the planted faults among every candidate of the real architecture, in far fewer
builds than there are candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from rtq.compare.metrics import output_error
from rtq.debug.localize import localize
from rtq.debug.oracles import FaultInjectionOracle
from rtq.debug.structure import find_candidates, find_fusion_clusters, select_clusters

NUM_LAYERS = 6  # blocks of the toy detector in conftest.py


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
    assert NUM_LAYERS == len(_offset_clusters(model, list(range(10))))
    (cluster,) = _offset_clusters(model, [1])
    oracle = FaultInjectionOracle(model, feeds, [cluster])
    assert oracle.evaluate(frozenset()) > 0.01
    for inside in ("/layers.1/attention_weights/MatMul_output_0", "/layers.1/sampling_offsets/Add_output_0"):
        assert oracle.evaluate(frozenset({inside})) == 0.0
    assert oracle.evaluate(frozenset({"/layers.2/sampling_offsets/Add_output_0"})) > 0.01
    assert oracle.builds == 4
    assert output_error()([{"a": np.ones(3)}], [{"a": np.ones(3)}]) == 0.0


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


def _check_rtdetr_localization(qdq_path: Path, layers: list[int]) -> None:
    """Plant faults in the decoder layers `layers`, search all candidates, expect exactly those layers."""
    from rtq.debug.inputs import sample_images
    from rtq.models.family import get_family

    model = onnx.load(str(qdq_path))
    clusters = _offset_clusters(model, layers)
    assert [c.layer_index for c in clusters] == layers
    feeds = get_family("rtdetr").graph_feeds(model, sample_images(None, 1))
    oracle = FaultInjectionOracle(model, feeds, clusters)
    result = localize(model, oracle, verify_equivalents=False)
    assert result.status == "localized"
    planted = {t for c in clusters for t in c.tensors}
    # exactly one tensor per planted fusion, each inside the planted cluster's tensors
    assert len(result.minimal_set) == len(layers)
    assert set(result.minimal_set) <= planted
    found_layers = sorted(int(t.split("layers.")[1].split("/")[0]) for t in result.minimal_set)
    assert found_layers == layers
    assert all("/cross_attn/" in t for t in result.minimal_set)
    assert result.error_after <= result.threshold < result.error_before
    # the cost is recorded and logarithmic in the candidates, not linear
    assert result.builds == oracle.builds == len(result.trace)
    assert result.builds <= 2 + len(layers) * (math.ceil(math.log2(result.num_candidates)) + 2)
    assert result.builds * 5 < result.num_candidates


@pytest.mark.parametrize("layers", [[1], [0, 2]])
def test_localizes_fault_in_rtdetr_r18vd(rtdetr_qdq: Callable[[str], Path], layers: list[int]) -> None:
    _check_rtdetr_localization(rtdetr_qdq("rtdetrv2_r18vd"), layers)


@pytest.mark.parametrize("layers", [[4], [0, 5]])
def test_localizes_fault_in_rtdetr_r50vd(rtdetr_qdq: Callable[[str], Path], layers: list[int]) -> None:
    _check_rtdetr_localization(rtdetr_qdq("rtdetrv2_r50vd"), layers)
