"""Checkpoint loading: official layouts, float16, and one-line errors for wrong files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from rtq.errors import UserError
from rtq.models import build_model
from rtq.models.registry import VARIANTS, construct


@pytest.fixture(scope="module")
def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return construct(VARIANTS["rtdetrv2_r18vd"]).state_dict()


@pytest.mark.parametrize("layout", ["ema", "model", "bare"])
def test_layouts_and_float16_load_strictly(layout: str, r18_state: dict, tmp_path: Path) -> None:
    half = {
        k: v.half() if v.dtype == torch.float32 and k != "decoder.anchors" else v
        for k, v in r18_state.items()
    }
    obj = {"ema": {"module": half}} if layout == "ema" else {"model": half} if layout == "model" else half
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = build_model("rtdetrv2_r18vd", path)
    loaded = model.state_dict()["decoder.enc_score_head.weight"]
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, r18_state["decoder.enc_score_head.weight"].half().float())


def test_missing_file_points_to_releases(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        build_model("rtdetrv2_r18vd", tmp_path / "nope.pth")
    message = str(err.value)
    assert "nope.pth" in message and "lyuwenyu/RT-DETR" in message and "model.checkpoint=PATH" in message


def test_other_variant_checkpoint_is_named_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save({"ema": {"module": construct(VARIANTS["rtdetrv2_r34vd"]).state_dict()}}, path)
    with pytest.raises(UserError) as err:
        build_model("rtdetrv2_r18vd", path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 1200
    assert "looks like rtdetrv2_r34vd" in message
    assert "unexpected keys: backbone.res_layers.0.blocks.2." in message


def test_trimmed_checkpoint_names_the_missing_keys(r18_state: dict, tmp_path: Path) -> None:
    trimmed = {k: v for k, v in r18_state.items() if not k.startswith("decoder.dec_bbox_head.2.")}
    path = tmp_path / "trimmed.pth"
    torch.save(trimmed, path)
    with pytest.raises(
        UserError, match=r"looks like rtdetrv2_r18vd.*missing keys: decoder\.dec_bbox_head\.2\."
    ):
        build_model("rtdetrv2_r18vd", path)


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(UserError, match="holds no state dict"):
        build_model("rtdetrv2_r18vd", path)


@pytest.mark.parametrize(
    ("content", "detail"), [(b"\x8f\x02junk" * 512, ""), (b"not a checkpoint\n", ""), (b"", "empty")]
)
def test_a_file_that_is_no_checkpoint_is_named_in_one_line(
    tmp_path: Path, content: bytes, detail: str
) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        build_model("rtdetrv2_r18vd", path)
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message
    assert f"{path} is not a PyTorch checkpoint" in message and detail in message
    assert "lyuwenyu/RT-DETR" in message and "model.checkpoint=PATH" in message


def test_a_checkpoint_with_other_objects_names_the_refused_class(r18_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "snapshot.pth"
    torch.save({"model": r18_state, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(UserError) as err:
        build_model("rtdetrv2_r18vd", path)
    message = str(err.value)
    assert "\n" not in message and "argparse.Namespace" in message and "state dict" in message
