"""The debug command lines load detectors by config name and ask the family, never the name."""

from __future__ import annotations

import pytest

from rtq.debug.inputs import model_config, model_family
from rtq.errors import UserError
from rtq.paths import PROJECT_ROOT


def test_model_config_resolves_the_project_root_and_applies_overrides() -> None:
    config = model_config("yolox_nano")
    assert config["onnx_path"] == f"{PROJECT_ROOT}/models/yolox_nano.onnx"
    assert model_config("rtdetrv2_r18vd", checkpoint="w.pth", input_size=None)["checkpoint"] == "w.pth"
    assert model_config("rtdetrv2_r18vd", input_size=None)["input_size"] == 640  # None keeps the config


def test_family_picks_the_probe_kind() -> None:
    assert model_family("yolox_nano").source == "onnx"
    assert model_family("rtdetrv2_r50vd").source == "torch"


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(UserError, match="rtdetrv2_r18vd"):
        model_config("rtdetr_typo")
