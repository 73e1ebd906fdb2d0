"""The benchmark's OpenVINO rows: runners named like the ONNX, layer profiles, records (tiny models)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import conv_model

from rtq.backends.layers import EngineLayer
from rtq.evaluate.bench_openvino import _profile_figures, layer_profiles, openvino_records, openvino_runner
from rtq.evaluate.bench_settings import load_settings


def _layer(kind: str, precision: str, time_us: float | None) -> EngineLayer:
    return EngineLayer(name=f"{kind}-{precision}", type=kind, tactic="", input_precisions=(),
                       output_precisions=(), onnx_nodes=(), precision=precision, time_us=time_us)


def test_profile_figures_are_shares_by_type_and_precision() -> None:
    figures = _profile_figures([_layer("Convolution", "u8", 600.0), _layer("Convolution", "u8", 150.0),
                                _layer("Eltwise", "bf16", 250.0), _layer("Reshape", "f32", None)])
    assert figures["total_ms"] == pytest.approx(1.0)
    assert list(figures["share"]) == ["Convolution_u8", "Eltwise_bf16", "Reshape_f32"]
    assert figures["share"]["Convolution_u8"] == pytest.approx(0.75)
    assert figures["ms"]["Eltwise_bf16"] == pytest.approx(0.25)


def test_runner_profile_and_records_on_a_tiny_onnx(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "tiny.onnx")
    settings = load_settings({"out": tmp_path / "bench.md", "threads": 1})
    row = settings.openvino["ov_fp32"]
    # f32 everywhere: bf16 compiles only on CPUs that have it
    settings = replace(settings, openvino={**settings.openvino, "ov_int8_modelopt": row})
    feed = {"x": np.random.default_rng(0).random((2, 4, 8, 8), dtype=np.float32)}
    with openvino_runner("ov_fp32", row, model, model) as runner:
        out = runner.infer(feed)
    assert list(out) == ["y"] and out["y"].shape == (2, 8, 8, 8)
    paths = {"ov_fp32": model, "ov_int8_modelopt": model}
    text, figures = layer_profiles(settings, paths, paths, feed, {"ov_int8_modelopt": "OV INT8"})
    assert set(figures) == {"ov_int8_modelopt"}  # profiled rows that have a file
    profiled = figures["ov_int8_modelopt"]
    assert profiled["total_ms"] >= 0 and "Convolution_f32" in profiled["ms"]
    assert "### Layers by type and precision" in text and "OV INT8 (`ov_int8_modelopt`, f32" in text
    records = openvino_records(settings, paths)
    assert records["ov_fp32"]["compile"]["inference_precision"] == "f32"
    assert records["ov_int8_modelopt"]["source"] == "fp32" and records["ov_fp32"]["file"] == "tiny.onnx"
    assert records["ov_fp32"]["compile"]["openvino"]


def test_parallel_requests_runner_splits_the_batch_and_keeps_the_order(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "tiny.onnx")
    settings = load_settings({"out": tmp_path / "bench.md", "threads": 2})
    row = settings.openvino["ov_fp32_tput"]
    assert row.requests == 2 and row.settings.performance_hint == "THROUGHPUT"
    feed = {"x": np.random.default_rng(1).random((3, 4, 8, 8), dtype=np.float32)}
    with openvino_runner("tput", row, model, model) as split, openvino_runner(
        "one", settings.openvino["ov_fp32"], model, model
    ) as whole:
        for batch in (1, 3):
            part = {"x": feed["x"][:batch]}
            np.testing.assert_allclose(split.infer(part)["y"], whole.infer(part)["y"], rtol=1e-5, atol=1e-5)
