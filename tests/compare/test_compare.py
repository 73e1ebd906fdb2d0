"""rtq.compare: Polygraphy comparison of two ONNX variants, detection matching, layer-wise, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rtq.compare.compare import CompareSettings, compare_onnx
from rtq.compare.metrics import detection_match_report, error_stats, match_image
from rtq.surgery.base import run_passes
from rtq.surgery.example_model import export_example

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cmp")
    qdq = export_example(d / "qdq.onnx", num_layers=2)
    run_passes(qdq, d / "fused.onnx", ["fuse_attn_offset_prediction"])
    return {"qdq": qdq, "fused": d / "fused.onnx", "fp32": export_example(d / "fp32.onnx", 2, quantize=False)}


def _feeds(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"query": rng.normal(size=(2, 10, 32)).astype(np.float32)} for _ in range(n)]


def test_error_stats() -> None:
    ref = np.array([1.0, 2.0, -4.0, 0.0])
    s = error_stats(ref, ref + np.array([0.0, 0.5, 0.0, 0.0]))
    assert s["max_abs"] == 0.5 and s["mean_abs"] == 0.125 and s["median_abs"] == 0.0
    assert s["max_rel"] == pytest.approx(0.25, rel=1e-5)
    assert error_stats(ref, ref[:3])["shape_mismatch"] is True


def test_detection_matching_ignores_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 50, 60, 60]], np.float32)
    ref = {"labels": np.array([1, 2, 3]), "boxes": boxes, "scores": np.array([0.9, 0.8, 0.1], np.float32)}
    perm = [2, 0, 1]
    tgt = {"labels": ref["labels"][perm], "boxes": boxes[perm] + 0.5,
           "scores": ref["scores"][perm] + np.float32(0.01)}
    n_ref, n_tgt, matched, errors = match_image(ref, tgt, score_threshold=0.3)
    assert (n_ref, n_tgt, matched) == (2, 2, 2)
    assert max(errors) == pytest.approx(0.01, abs=1e-6)
    wrong_label = dict(tgt, labels=np.array([3, 7, 2]))
    assert match_image(ref, wrong_label, score_threshold=0.3)[2] == 1
    batch = {k: v[None] for k, v in ref.items()}
    summary = detection_match_report([batch], [{k: v[None] for k, v in tgt.items()}], top_k=3)
    assert summary["matched_fraction"] == 1.0 and summary["reference_detections"] == 3


def test_compare_fused_against_qdq(graphs: dict[str, Path], tmp_path: Path) -> None:
    report = compare_onnx(graphs["qdq"], graphs["fused"], _feeds(2), tmp_path, CompareSettings(atol=1e-2))
    out = report["outputs"]["output"]
    assert out["polygraphy_passed"] and out["max_abs"] < 1e-2 and out["size"] == 2 * 2 * 10 * 32
    for name in ("results.json", "report.json", "report.md"):
        assert (tmp_path / name).is_file()
    from polygraphy.comparator import RunResults

    saved = RunResults.load(str(tmp_path / "results.json"))
    assert [name for name, _ in saved] == ["reference", "target"]
    saved_report = json.loads((tmp_path / "report.json").read_text())
    assert saved_report["outputs"]["output"]["max_abs"] == out["max_abs"]
    assert "| `output` |" in (tmp_path / "report.md").read_text()


def test_layerwise_finds_the_first_diverging_tensor(graphs: dict[str, Path], tmp_path: Path) -> None:
    # FP32 vs Q/DQ: the first tensor that differs is the first quantized projection output of layer 0.
    report = compare_onnx(graphs["fp32"], graphs["qdq"], _feeds(1), tmp_path,
                          CompareSettings(layer_threshold=1e-3), layerwise=True)
    lw = report["layerwise"]
    assert lw["compared_tensors"] > 10 and lw["exceeding"] > 0
    assert lw["first_exceeding"][0]["tensor"].startswith("/layers.0/")
    assert "sampling_offsets/MatMul" in lw["first_exceeding"][0]["tensor"]
    assert "## Layer-wise" in (tmp_path / "report.md").read_text()
    assert report["summary"]["first_diverging_tensor"] == lw["first_exceeding"][0]["tensor"]
    assert report["summary"]["max_abs_error"] == report["outputs"]["output"]["max_abs"] > 0


def test_cli_runs_and_fails_cleanly(graphs: dict[str, Path], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "rtq.compare", "--reference", str(graphs["qdq"]), "--num-images", "1",
           "--atol", "0.01"]
    ok = subprocess.run([*cmd, "--target", str(graphs["fused"]), "--out", str(tmp_path / "a")], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "a" / "report.md").is_file()
    bad = subprocess.run([*cmd, "--target", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "b")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "missing.onnx" in bad.stderr
