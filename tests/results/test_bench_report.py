"""The benchmark's Markdown report and its figures file: layout and ratios (from fixed timings)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from tiny_onnx import conv_model

from rtq.evaluate.bench_settings import load_settings
from rtq.evaluate.environment import cpu_description
from rtq.evaluate.ort_profile import profile_graph
from rtq.evaluate.timing import Timing
from rtq.paths import CONF_DIR
from rtq.results.analysis import ANALYSIS_HEADING, analysis_section
from rtq.results.bench_figures import bench_figures
from rtq.results.bench_report import render_report, timing_markdown

FIDELITY = {"ort_int8_modelopt": {"max_abs_score_diff": 0.5, "max_abs_top10_score_diff": 0.1,
                                  "mean_abs_score_diff": 0.01, "top1_label_agreement": 1.0,
                                  "reference_top1_score": 0.8}}
DESCRIPTIONS = {"ort_fp32": "ORT FP32", "ort_int8_modelopt": "ORT INT8"}


def _timings() -> dict[tuple[str, int], Timing]:
    return {
        ("ort_fp32", 1): Timing("ort_fp32", 1, [0.10, 0.12, 0.11]),
        ("ort_fp32", 4): Timing("ort_fp32", 4, [0.40, 0.40, 0.40]),
        ("ort_int8_modelopt", 1): Timing("ort_int8_modelopt", 1, [0.22, 0.22]),
        ("ort_int8_modelopt", 4): Timing("ort_int8_modelopt", 4, [0.80, 0.80]),
    }


def _environment() -> dict[str, object]:
    return {"cpu": cpu_description("model name : Test CPU\nflags : avx2 avx512_vnni\n"),
            "versions": {"onnxruntime": "x"}, "load_before": "1.0", "load_after": "2.0"}


def test_timing_table_has_ratios_to_ort_fp32_and_to_batch_1() -> None:
    table = timing_markdown(_timings(), DESCRIPTIONS)
    rows = [line for line in table.splitlines() if line.startswith("| ORT")]
    assert len(rows) == 4
    fp32_b1 = rows[0].split(" | ")
    assert fp32_b1[1:3] == ["1", "9.09"] and fp32_b1[-2] == "1.00x"
    int8_b4 = rows[3].split(" | ")
    assert int8_b4[1] == "4" and int8_b4[-2] == "0.50x"  # 5 img/s vs 10 img/s
    assert int8_b4[-1] == "1.10x |"  # 5 img/s vs 4.55 img/s at batch 1


def test_report_has_setup_table_graph_breakdown_and_kept_analysis(tmp_path: Path) -> None:
    settings = load_settings({"out": tmp_path / "bench.md", "checkpoint": "none", "batches": [1, 4]})
    settings.analysis_path.write_text("hand-written text\n")
    profile = profile_graph(onnx.load(conv_model(tmp_path / "tiny.onnx")))
    report = render_report(
        settings,
        "python -m rtq.bench --batches 1 4",
        _environment(),
        _timings(),
        DESCRIPTIONS,
        {"ort_fp32": profile},
        FIDELITY,
        {"bench_fp32": "cache"},
        analysis=analysis_section(settings.analysis_path, {}),
    )
    assert "python -m rtq.bench --batches 1 4" in report
    assert "Test CPU" in report and "avx512_vnni yes" in report and "amx_int8 no" in report
    assert ("ORT INT8: batch 1: 0.50x, paired per repetition 0.50x (IQR 0.48-0.52x), "
            "batch 4: 0.50x, paired per repetition 0.50x (IQR 0.50-0.50x) of ORT FP32 "
            "(paired median misses the 1.5x goal)") in report
    assert "top-1 score averages 0.8000" in report
    assert "| ORT FP32 | 0 | 0 | 0 | 0 | 0 | 0 | 2 |" in report
    assert f"\n{ANALYSIS_HEADING}\n" in report
    assert report.rstrip().endswith("hand-written text")
    assert analysis_section(tmp_path / "missing.analysis.md", {}) == ""


def test_figures_hold_what_the_report_shows(tmp_path: Path) -> None:
    profile = profile_graph(onnx.load(conv_model(tmp_path / "tiny.onnx")))
    figures = bench_figures({"batches": [1, 4]}, _environment(), _timings(), DESCRIPTIONS,
                            {"ort_fp32": profile}, FIDELITY, reference="ort_fp32", goal=1.5)
    json.dumps(figures)  # JSON-ready
    int8 = figures["ort_int8_modelopt"]
    assert int8["speedup"]["b4"] == pytest.approx(0.5)
    assert int8["paired_speedup"]["b1"]["median"] == pytest.approx(0.5)
    assert int8["batch_gain"]["b4"] == pytest.approx(5 / (1 / 0.22))
    assert int8["batch_ms"]["b1"]["median"] == pytest.approx(220.0)
    assert int8["meets_goal"] is False and int8["fidelity"]["reference_top1_score"] == 0.8
    assert figures["ort_fp32"]["ort_graph"]["float_conv"] == 2
    assert figures["ort_fp32"]["ort_graph"]["ops"]["Conv"] == 2
    assert "paired_speedup" not in figures["ort_fp32"] and figures["goal_speedup"] == 1.5


OPENVINO = {
    "ov_int8": {
        "source": "modelopt",
        "file": "model.int8.onnx",
        "compile": {"inference_precision": "bf16", "performance_hint": "LATENCY", "num_threads": 2,
                    "num_streams": None, "openvino": "2026.4.1", "device": "CPU", "profile": False},
        "fidelity_vs_source": {"source": "ort_int8_modelopt", **FIDELITY["ort_int8_modelopt"]},
        "layer_profile": {"total_ms": 50.0, "share": {"Convolution_u8": 0.5}, "ms": {"Convolution_u8": 25.0}},
    },
    "ov_nncf": {"source": "nncf", "file": "model.xml", "compile": {
        "inference_precision": "bf16", "performance_hint": "LATENCY", "num_threads": 2, "num_streams": None,
        "openvino": "2026.4.1", "device": "CPU", "profile": False}},
}


def _with_openvino_rows() -> tuple[dict[tuple[str, int], Timing], dict[str, str]]:
    timings = {**_timings(), ("ov_int8", 1): Timing("ov_int8", 1, [0.03, 0.04, 0.035]),
               ("ov_int8", 4): Timing("ov_int8", 4, [0.12, 0.13, 0.125]),
               ("ov_nncf", 1): Timing("ov_nncf", 1, [0.06, 0.08, 0.07]),
               ("ov_nncf", 4): Timing("ov_nncf", 4, [0.24, 0.26, 0.25])}
    return timings, {**DESCRIPTIONS, "ov_int8": "OpenVINO INT8", "ov_nncf": "NNCF"}


def test_report_lists_openvino_rows_settings_and_fidelity_vs_source(tmp_path: Path) -> None:
    settings = load_settings({"out": tmp_path / "bench.md", "checkpoint": "none"})
    timings, descriptions = _with_openvino_rows()
    report = render_report(settings, "python -m rtq.bench", _environment(), timings, descriptions, {},
                           FIDELITY, {}, openvino=OPENVINO, layers_file="bench.openvino_layers.md")
    assert "| OpenVINO INT8 | 1 | 28.57 |" in report  # timed beside ORT in the one table
    assert "- OpenVINO INT8: batch 1: 3.14x, paired per repetition" in report
    settings_row = "| OpenVINO INT8 | modelopt: `model.int8.onnx` | bf16 | LATENCY | 2 | plugin default | 1 |"
    assert settings_row in report
    assert "| OpenVINO INT8 | ORT INT8 | 0.5000 | 0.1000 | 0.0100 | 1.00 |" in report
    assert "`bench.openvino_layers.md`" in report and "avx512_bf16 no" in report
    assert "- OpenVINO INT8 over NNCF: batch 1: 2.00x (IQR 2.00-2.00x), batch 4: 2.00x" in report


def test_figures_group_openvino_settings_fidelity_and_profile() -> None:
    timings, descriptions = _with_openvino_rows()
    figures = bench_figures({"batches": [1, 4]}, _environment(), timings, descriptions, {}, FIDELITY,
                            reference="ort_fp32", goal=1.5, openvino=OPENVINO, goals={"ov_int8": 3.0})
    json.dumps(figures)
    row = figures["ov_int8"]
    assert row["openvino"]["compile"]["inference_precision"] == "bf16"
    assert row["openvino"]["source"] == "modelopt"
    assert row["fidelity_vs_source"]["source"] == "ort_int8_modelopt"
    assert row["layer_profile"]["share"]["Convolution_u8"] == 0.5
    assert row["paired_speedup"]["b4"]["median"] == pytest.approx(0.40 / 0.125) and row["meets_goal"] is True
    assert "openvino" not in figures["ort_fp32"] and row["goal_speedup"] == 3.0
    assert row["paired_vs"]["ov_nncf"]["b1"]["median"] == pytest.approx(2.0)


RAW = {"relative_l2": 0.05, "max_abs_diff": 3.5, "matched": 9, "reference_detections": 10,
       "matched_fraction": 0.9, "target_matched_fraction": 0.75, "score_abs_error_max": 0.12,
       "score_abs_error_mean": 0.03, "target_detections": 12, "iou_threshold": 0.5,
       "selection": "score >= 0.3"}


def test_yolox_report_has_no_torch_row_and_raw_fidelity_tables(tmp_path: Path) -> None:
    settings = load_settings({"out": tmp_path / "bench.md"}, config=CONF_DIR / "bench_yolox_nano.yaml")
    timings, descriptions = _with_openvino_rows()
    openvino = {"ov_int8": {**OPENVINO["ov_int8"], "source": "surgered",
                            "file": "model.unsigned_activations.onnx",
                            "fidelity_vs_source": {"source": "ort_int8_modelopt", **RAW}}}
    report = render_report(settings, "python -m rtq.bench --model yolox_nano", _environment(), timings,
                           descriptions, {}, {"ort_int8_modelopt": RAW, "ov_int8": RAW}, {},
                           openvino=openvino, layers_file="bench.openvino_layers.md")
    assert report.startswith("# CPU benchmark: yolox_nano, ONNX Runtime FP32/INT8 vs OpenVINO FP32/INT8")
    assert "PyTorch FP32" not in report and ", torch " not in report
    assert "- model: the ONNX file of `yolox_nano` (weights in it), no PyTorch row" in report
    assert "pipeline stages ['export', 'quantize_onnx']" in report and "`openvino_unsigned_concat`" in report
    assert "| OpenVINO INT8 | surgered: `model.unsigned_activations.onnx` | bf16 | LATENCY |" in report
    assert "| OpenVINO INT8 | ORT INT8 | 0.0500 | 3.500 | 9/10 (0.90) | 0.25 | 0.1200 | 0.0300 |" in report
    assert "| ORT INT8 | 0.0500 | 3.500 | 9/10 (0.90) | 0.25 | 0.1200 | 0.0300 |" in report
    assert "relative L2 = ||x - ref|| / ||ref||" in report and "IoU >= 0.5" in report
    assert "(paired median meets the 1.5x goal)" in report  # the YOLOX OpenVINO goal
