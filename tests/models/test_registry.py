"""Variant table: every official RT-DETRv2 variant builds with exactly the official state dict."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from rtq.errors import UserError
from rtq.models import build_deploy_model, build_model, list_models
from rtq.models.hybrid_encoder import RepVggBlock
from rtq.models.registry import VARIANTS, construct
from rtq.paths import SHARED_DIR

KEYS_JSON = (
    SHARED_DIR / "fixtures" / "rtdetrv2_r18vd_parity" / "keys.json"
)
OFFICIAL = [
    "rtdetrv2_r18vd",
    "rtdetrv2_r34vd",
    "rtdetrv2_r50vd_m",
    "rtdetrv2_r50vd",
    "rtdetrv2_r101vd",
    "rtdetrv2_r18vd_dsp",
    "rtdetrv2_r34vd_dsp",
    "rtdetrv2_r50vd_m_dsp",
    "rtdetrv2_r50vd_dsp",
]


@pytest.fixture(scope="module")
def official_keys() -> dict:
    if not KEYS_JSON.is_file():
        pytest.skip(f"official key lists not found at {KEYS_JSON}")
    return json.loads(KEYS_JSON.read_text())["official"]


def test_names() -> None:
    assert sorted(OFFICIAL) == list_models() == sorted(VARIANTS)


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_equals_official(name: str, official_keys: dict) -> None:
    ref = official_keys[name]
    model = construct(VARIANTS[name])
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref["num_trainable_parameters"]
    assert model.decoder.decoder.eval_idx == ref["decoder_eval_idx"]
    assert model.decoder.cross_attn_method == ref["cross_attn_method"]


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UserError, match="rtdetrv2_r18vd.*rtdetrv2_r50vd"):
        build_model("rtdetr_r18")


def test_random_init_is_logged_and_forward_has_official_outputs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rtq.models.build"):
        model = build_model("rtdetrv2_r18vd")
    assert "random" in caplog.text
    assert not model.training
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 640, 640))
        enc = model.encoder(feats)
        out = model.decoder(enc)
    assert len(feats) == 3 and len(enc) == 3
    assert out["pred_logits"].shape == (1, 300, 80) and out["pred_boxes"].shape == (1, 300, 4)


def test_deploy_model_is_fused_and_returns_labels_boxes_scores() -> None:
    torch.manual_seed(0)
    model = build_deploy_model("rtdetrv2_r18vd")
    blocks = [m for m in model.modules() if isinstance(m, RepVggBlock)]
    assert len(blocks) == 12 and all(hasattr(b, "conv") and not hasattr(b, "conv1") for b in blocks)
    with torch.no_grad():
        labels, boxes, scores = model(torch.rand(2, 3, 640, 640), torch.tensor([[640, 480], [100, 200]]))
    assert labels.shape == (2, 300) and labels.dtype == torch.int64
    assert boxes.shape == (2, 300, 4) and scores.shape == (2, 300)
    assert int(labels.max()) < 80 and bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_wrong_input_size_is_reported() -> None:
    model = build_model("rtdetrv2_r18vd")
    with pytest.raises(ValueError, match="resize images"), torch.no_grad():
        model(torch.rand(1, 3, 320, 320))
