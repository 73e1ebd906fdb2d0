"""Benchmark settings: `conf/bench.yaml` holds the defaults, overrides replace keys, typos are user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.errors import UserError
from rtq.evaluate.bench_settings import BENCH_CONFIG, load_settings
from rtq.paths import PROJECT_ROOT, SHARED_DIR


def test_defaults_come_from_the_yaml_with_project_paths_resolved() -> None:
    settings = load_settings()
    assert settings.model == "rtdetrv2_r18vd" and settings.batches == (1, 4)
    assert settings.checkpoint is not None and settings.checkpoint.is_relative_to(SHARED_DIR)
    assert settings.out == PROJECT_ROOT / "experiments" / "bench_rtdetrv2_r18vd.md"
    assert settings.figures_path.name == "bench_rtdetrv2_r18vd.json"
    assert settings.analysis_path.name == "bench_rtdetrv2_r18vd.analysis.md"
    variants = {"ort_int8_ortqdq", "ort_int8_ortqdq_wide", "ort_int8_ortqdq_wide_dec"}
    assert set(settings.ort_variants) == variants
    assert settings.ort_variants["ort_int8_ortqdq_wide_dec"].float_scopes == ("/model/decoder/",)


def test_overrides_replace_keys_and_unknown_keys_are_user_errors(tmp_path: Path) -> None:
    settings = load_settings({"batches": [2], "out": tmp_path / "b.md", "threads": None})
    assert settings.batches == (2,) and settings.out == tmp_path / "b.md" and settings.threads >= 1
    with pytest.raises(UserError, match=r"unknown bench settings \['batch'\]"):
        load_settings({"batch": [2]})
    config = tmp_path / "bench.yaml"
    config.write_text(BENCH_CONFIG.read_text().replace("ort_int8_ortqdq_wide:", "reference:"))
    with pytest.raises(UserError, match=r"ort_variants \['reference'\]"):
        load_settings(config=config)
