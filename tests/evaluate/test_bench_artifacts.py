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
