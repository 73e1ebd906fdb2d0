"""Hand-written analysis with `{{figure}}` placeholders filled from a run's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.errors import UserError
from rtq.evaluate.bench_settings import load_settings
from rtq.results.analysis import ANALYSIS_HEADING, analysis_section, render_analysis

FIGURES = {
    "ort_int8_modelopt": {"speedup": {"b1": 0.6843, "b4": 0.7}, "ort_graph": {"QLinearConv": 0}},
    "environment": {"cpu": {"cores": 2}, "load_before": "1.00 2.09 3.23"},
    "settings": {"batches": [1, 4]},
}


def test_placeholders_resolve_to_the_run_figures() -> None:
    text = render_analysis(
        "about {{ort_int8_modelopt.speedup.b1}}x ({{ ort_int8_modelopt.speedup.b1:.1f }}x) on "
        "{{environment.cpu.cores}} cores, {{ort_int8_modelopt.ort_graph.QLinearConv}} QLinearConv, "
        "load {{environment.load_before}}, batches {{settings.batches}}",
        FIGURES,
    )
    assert text == ("about 0.684x (0.7x) on 2 cores, 0 QLinearConv, load 1.00 2.09 3.23, batches 1, 4")


def test_a_placeholder_without_a_figure_is_one_clear_user_error() -> None:
    with pytest.raises(UserError, match=r"\{\{ort_int8_modelopt.speedup.b8\}\} names no figure") as err:
        render_analysis("x {{ort_int8_modelopt.speedup.b8}}", FIGURES, source="bench.analysis.md")
    message = str(err.value)
    assert "\n" not in message and "bench.analysis.md" in message and "b1, b4" in message
    with pytest.raises(UserError, match="names no figure"):
        render_analysis("{{missing_backend.speedup.b1}}", FIGURES)
    with pytest.raises(UserError, match="is a group of figures"):
        render_analysis("{{ort_int8_modelopt.speedup}}", FIGURES)
    with pytest.raises(UserError, match="format 'd'"):
        render_analysis("{{ort_int8_modelopt.speedup.b1:d}}", FIGURES)


def test_section_has_its_heading_and_is_empty_without_a_file(tmp_path: Path) -> None:
    path = tmp_path / "bench.analysis.md"
    assert analysis_section(path, FIGURES) == ""
    path.write_text("**Why.** {{ort_int8_modelopt.speedup.b4:.2f}}x\n")
    section = analysis_section(path, FIGURES)
    assert section.startswith(ANALYSIS_HEADING + "\n") and section.rstrip().endswith("**Why.** 0.70x")


def test_the_bench_analysis_names_only_figures_the_bench_writes() -> None:
    """Every placeholder of the shipped benchmark analysis resolves against the figures its last run
    wrote (the JSON beside the report), so the prose cannot quote a figure the bench no longer makes."""
    import json

    settings = load_settings()
    figures = json.loads(settings.figures_path.read_text())
    assert {"ort_fp32", "ov_int8_modelopt", "ov_int8_nncf"} <= set(figures)
    section = analysis_section(settings.analysis_path, figures)
    assert section.startswith(ANALYSIS_HEADING) and "{{" not in section
