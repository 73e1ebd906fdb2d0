"""The benchmark's pipeline overrides: the same `python -m rtq.run` settings for RT-DETR and YOLOX."""

from __future__ import annotations

from rtq.evaluate.bench_artifacts import pipeline_overrides
from rtq.evaluate.bench_settings import load_settings
from rtq.paths import CONF_DIR


def test_checkpoint_override_only_for_models_that_take_one() -> None:
    rtdetr = pipeline_overrides(load_settings({"checkpoint": "none"}))
    assert "model=rtdetrv2_r18vd" in rtdetr and "model.checkpoint=null" in rtdetr
    yolox = pipeline_overrides(load_settings(config=CONF_DIR / "bench_yolox_nano.yaml"))
    assert "model=yolox_nano" in yolox and not any(o.startswith("model.checkpoint") for o in yolox)
    assert any(o.startswith("data.calib.source=") for o in yolox)


def test_a_row_recipe_is_made_at_its_own_level() -> None:
    """A torch recipe quantizes before export; a `level: onnx` one quantizes the exported FP32 ONNX."""
    from rtq.evaluate.bench_artifacts import recipe_stages

    assert recipe_stages("int8_default") == ("quantize", "export")
    assert recipe_stages("int8_attention") == ("quantize", "export")
    assert recipe_stages("onnx_int8_all_max") == ("export", "quantize_onnx")
