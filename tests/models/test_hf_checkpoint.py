"""HF RT-DETR checkpoints as `model.checkpoint`: detection, config checks, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from rtq.errors import UserError
from rtq.models import build_model
from rtq.models.convert import save_hf
from rtq.models.hf_checkpoint import is_hf_checkpoint, read_hf_checkpoint
from rtq.models.hf_keys import hf_config, official_to_hf, variant_of_hf_config
from rtq.models.registry import VARIANTS, construct

NAME = "rtdetrv2_r18vd"


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return construct(VARIANTS[NAME]).state_dict()


@pytest.fixture(scope="module")
def hf_folder(r18_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "rtdetr_v2_r18vd"
    save_hf(official_to_hf(r18_state), NAME, folder)
    return folder


def v2_config(name: str = NAME, **changes: Any) -> dict[str, Any]:
    """A flat HF config dict of variant `name`, as config.json spells it."""
    top, backbone = hf_config(name)
    return {
        "model_type": "rt_detr_v2",
        **top,
        "backbone_config": {"model_type": "rt_detr_resnet", **backbone},
    } | changes


def with_config(folder: Path, tmp_path: Path, config: dict[str, Any]) -> Path:
    """A copy of `folder` whose config.json is `config` (a real transformers config, defaults filled in)."""
    transformers = pytest.importorskip("transformers")
    copy = tmp_path / "edited"
    copy.mkdir()
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    top = {k: v for k, v in config.items() if k not in ("model_type", "backbone_config")}
    backbone = {k: v for k, v in config["backbone_config"].items() if k != "model_type"}
    made = transformers.RTDetrV2Config(backbone_config=transformers.RTDetrResNetConfig(**backbone), **top)
    (copy / "config.json").write_text(made.to_json_string())
    return copy


def test_detection(hf_folder: Path, tmp_path: Path) -> None:
    assert is_hf_checkpoint(hf_folder) and is_hf_checkpoint(hf_folder / "model.safetensors")
    assert is_hf_checkpoint(tmp_path / "missing.safetensors")  # named like one: the reader says it is missing
    assert not is_hf_checkpoint(tmp_path) and not is_hf_checkpoint(tmp_path / "x.pth")


def test_folder_and_bare_file_load_strictly(hf_folder: Path, r18_state: dict, tmp_path: Path) -> None:
    model = build_model(NAME, hf_folder)
    for key, value in model.state_dict().items():
        assert torch.equal(value, r18_state[key]), key
    bare = tmp_path / "weights.safetensors"  # no config.json beside it: the variant comes from the shapes
    bare.symlink_to(hf_folder / "model.safetensors")
    checkpoint = read_hf_checkpoint(bare)
    assert checkpoint.variant == NAME and list(checkpoint.state) == list(r18_state)


def test_config_of_another_variant_is_named_with_the_configured_one(hf_folder: Path, tmp_path: Path) -> None:
    folder = with_config(hf_folder, tmp_path, v2_config("rtdetrv2_r34vd"))
    with pytest.raises(UserError) as err:
        build_model(NAME, folder)
    message = str(err.value)
    assert "\n" not in message
    assert "is a rtdetrv2_r34vd checkpoint" in message and f"model.name is {NAME}" in message


def test_discrete_config_needs_the_dsp_variant(hf_folder: Path, tmp_path: Path) -> None:
    folder = with_config(hf_folder, tmp_path, v2_config(decoder_method="discrete"))
    assert read_hf_checkpoint(folder).variant == f"{NAME}_dsp"
    build_model(f"{NAME}_dsp", folder)
    with pytest.raises(UserError, match=f"is a {NAME}_dsp checkpoint .* model.name is {NAME};"):
        build_model(NAME, folder)


def test_unrepresentable_config_fails_before_reading_weights(hf_folder: Path, tmp_path: Path) -> None:
    folder = with_config(hf_folder, tmp_path, v2_config(num_labels=91, decoder_n_points=3))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").write_bytes(b"")  # never read: the config fails first
    with pytest.raises(UserError) as err:
        build_model(NAME, folder)
    message = str(err.value)
    assert "\n" not in message and "cannot be represented in rtq" in message
    assert "num_labels=91 (rtq: 80)" in message and "decoder_n_points=3 (rtq: 4)" in message


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (v2_config(decoder_n_levels=4, num_feature_levels=4), "decoder_n_levels=4 (rtq: 3)"),
        (v2_config(decoder_offset_scale=1.0), "decoder_offset_scale=1.0 (rtq: 0.5)"),
        (v2_config(learn_initial_query=True), "learn_initial_query=True (rtq: False)"),
        (v2_config(backbone_config={"model_type": "hgnet_v2"}), "backbone_config.model_type='hgnet_v2'"),
        (v2_config(model_type="d_fine"), "model_type 'd_fine' is not RT-DETR"),
        (v2_config("rtdetrv2_r101vd", decoder_method="discrete"), "describes no rtq variant"),
        (v2_config(backbone_config={**v2_config()["backbone_config"], "depths": [2, 2, 3, 2]}), "depths"),
    ],
)
def test_unrepresentable_configs_are_named(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(UserError) as err:
        variant_of_hf_config(config, "ckpt")
    assert "\n" not in str(err.value) and expected in str(err.value)


def test_every_variant_and_rt_detr_v1_configs_are_recognised() -> None:
    for name in VARIANTS:
        assert variant_of_hf_config(v2_config(name)) == name
    v1 = {k: v for k, v in v2_config().items() if k not in ("decoder_method", "decoder_n_levels")}
    assert variant_of_hf_config({**v1, "model_type": "rt_detr"}) == NAME


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "is not a safetensors file (an empty file)"), (b"junk" * 64, "not a safetensors")],
)
def test_broken_weights_fail_in_one_line(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        build_model(NAME, path)
    assert "\n" not in str(err.value) and expected in str(err.value)


def test_folder_without_weights_or_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(v2_config()))
    with pytest.raises(UserError, match="has no model.safetensors"):
        read_hf_checkpoint(tmp_path, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="is a folder without config.json or model.safetensors"):
        build_model(NAME, empty)
