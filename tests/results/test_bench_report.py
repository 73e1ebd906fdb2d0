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
