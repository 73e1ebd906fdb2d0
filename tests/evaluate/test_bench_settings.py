"""Benchmark settings: `conf/bench.yaml` holds the defaults, overrides replace keys, typos are user errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtq.errors import UserError
from rtq.evaluate.bench_settings import BENCH_CONFIG, bench_config, load_settings
from rtq.paths import CONF_DIR, PROJECT_ROOT, SHARED_DIR


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


def test_openvino_rows_take_the_compile_settings_with_their_overrides() -> None:
    settings = load_settings({"threads": 3})
    rows = settings.openvino
    assert {"ov_fp32", "ov_int8_modelopt", "ov_int8_nncf", "ov_int8_modelopt_tput"} <= set(rows)
    assert rows["ov_fp32"].settings.inference_precision == "f32"  # the FP32 row stays FP32
    assert rows["ov_int8_modelopt"].settings.inference_precision == "bf16"
    assert all(row.settings.num_threads == 3 for row in rows.values())  # null: the bench's threads
    assert [rows[n].source_backend for n in ("ov_fp32", "ov_int8_modelopt", "ov_int8_nncf")] == [
        "ort_fp32", "ort_int8_modelopt", "ort_fp32"
    ]
    assert settings.profile_rows == ("ov_int8_modelopt", "ov_int8_attention", "ov_int8_onnx", "ov_int8_nncf")
    # a row of its own recipe: ORT does not time that file, so its fidelity reference is FP32
    assert rows["ov_int8_attention"].recipe == "int8_attention"
    assert rows["ov_int8_attention"].source_backend == "ort_fp32"
    assert settings.nncf.preset == "mixed" and settings.nncf.model_type == "transformer"
    assert settings.layers_path.name == "bench_rtdetrv2_r18vd.openvino_layers.md"
    assert settings.figures()["nncf"]["model_type"] == "transformer"
    goals = settings.goals()  # the OpenVINO INT8 rows have their own goal, the FP32 rows none
    assert goals["ov_int8_modelopt"] == 3.0 and "ov_fp32" not in goals and "ort_int8_ortqdq" not in goals


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("source: nncf", "source: tflite", r"openvino row 'ov_int8_nncf': needs source"),
        ("performance_hint: LATENCY", "performance_hint: FAST", "performance_hint='FAST'"),
        ("profile_rows: [ov_int8_modelopt", "profile_rows: [ov_missing", r"profile_rows \['ov_missing'\]"),
        ("preset: mixed", "preset: fastest", "openvino.nncf.preset='fastest'"),
        ("    ov_fp32:", "    ort_fp32:", r"openvino.rows \['ort_fp32'\]"),
        ("recipe: int8_attention\n      desc", "recipe: nope\n      desc", "recipe=.nope. needs"),
    ],
)
def test_bad_openvino_sections_are_user_errors(tmp_path: Path, old: str, new: str, message: str) -> None:
    config = tmp_path / "bench.yaml"
    text = BENCH_CONFIG.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError, match=message):
        load_settings(config=config)


YOLOX_CONFIG = CONF_DIR / "bench_yolox_nano.yaml"


def test_yolox_config_is_onnx_only_with_the_pipeline_int8_chain_and_surgered_openvino_row() -> None:
    assert bench_config("yolox_nano") == YOLOX_CONFIG and bench_config("rtdetrv2_r18vd") == BENCH_CONFIG
    settings = load_settings(config=YOLOX_CONFIG)
    assert settings.model == "yolox_nano" and settings.torch_row is False and settings.checkpoint is None
    assert settings.recipe == "onnx_int8_max" and settings.int8_stages == ("export", "quantize_onnx")
    assert settings.surgery == "openvino_unsigned_concat" and settings.fidelity == "raw"
    assert settings.coco_ap and not load_settings().coco_ap  # AP beside speed for YOLOX's real weights
    assert settings.ort_variants == {} and settings.batches == (1, 4)
    rows = settings.openvino
    assert {name: row.source for name, row in rows.items()} == {
        "ov_fp32": "fp32", "ov_int8": "surgered", "ov_int8_nncf": "nncf"
    }
    # the surgered file computes what the Q/DQ file does: ORT INT8 on that file is its reference
    assert rows["ov_int8"].source_backend == "ort_int8_modelopt"
    assert settings.nncf.preset == "performance" and settings.nncf.model_type == "none"
    assert settings.goals() == {"ov_int8": 1.5, "ov_int8_nncf": 1.5}
    assert settings.out.name == "bench_yolox_nano.md"
    assert settings.layers_path.name == "bench_yolox_nano.openvino_layers.md"
    figures = settings.figures()
    assert figures["torch_row"] is False and figures["surgery"] == "openvino_unsigned_concat"
    assert figures["int8_stages"] == ["export", "quantize_onnx"] and figures["fidelity"] == "raw"
    rtdetr = load_settings().figures()  # RT-DETR's figures keep their keys
    assert not {"torch_row", "surgery", "int8_stages", "fidelity"} & set(rtdetr)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("surgery: openvino_unsigned_concat", "surgery: null", "source surgered need `surgery`"),
        ("surgery: openvino_unsigned_concat", "surgery: no_such_pass", "no conf/surgery/no_such_pass.yaml"),
        ("fidelity: raw", "fidelity: ap", "fidelity: 'ap' is unknown"),
        ("model: yolox_nano", "model: yolox_huge", "unknown model name 'yolox_huge'"),
    ],
)
def test_bad_yolox_settings_are_user_errors(tmp_path: Path, old: str, new: str, message: str) -> None:
    config = tmp_path / "bench.yaml"
    text = YOLOX_CONFIG.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError, match=message):
        load_settings(config=config)
