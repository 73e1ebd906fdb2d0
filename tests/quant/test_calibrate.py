"""quantize_model on a small stand-in detector: max and histogram calibration, summary counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from rtq.errors import UserError
from rtq.quant.calibrate import quantize_model
from rtq.quant.recipes import load_recipe, recipe_from_dict
from rtq.quant.summary import print_summary, quantizer_summary


class CrossAttn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.sampling_offsets = nn.Linear(d, 8)
        self.value_proj = nn.Linear(d, d)

    def forward(self, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q + self.value_proj(v).mean(1, keepdim=True) + self.sampling_offsets(q).mean(-1, keepdim=True)


class StandInDetector(nn.Module):
    """Conv backbone + Linear decoder with RT-DETR-like names and the deploy call signature."""

    def __init__(self, d: int = 8, queries: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, d, 3, stride=4, padding=1), nn.BatchNorm2d(d), nn.ReLU(),
                                      nn.Conv2d(d, d, 3, stride=4, padding=1))
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList([CrossAttn(d), CrossAttn(d)])
        self.decoder.score_head = nn.Linear(d, classes)
        self.decoder.bbox_head = nn.Linear(d, 4)
        self.query = nn.Parameter(torch.randn(queries, d))

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor):  # type: ignore[no-untyped-def]
        v = self.backbone(images).flatten(2).transpose(1, 2)
        q = self.query.unsqueeze(0).expand(images.shape[0], -1, -1)
        for layer in self.decoder.layers:
            q = layer(q, v)
        boxes = self.decoder.bbox_head(q).sigmoid() * orig_target_sizes.repeat(1, 2).unsqueeze(1)
        logits = self.decoder.score_head(q)
        scores, labels = F.sigmoid(logits).max(-1)
        return labels, boxes, scores


def feeds(count: int, batch: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.random((batch, 3, 32, 32), dtype=np.float32),
             "orig_target_sizes": np.full((batch, 2), 320, dtype=np.int64)} for _ in range(count)]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return StandInDetector().eval()


def test_int8_default_calibrates_weights_per_channel_and_inputs_per_tensor() -> None:
    model = quantize_model(make_model(), load_recipe("int8_default"), feeds(2), progress=False)
    conv = model.backbone[0]
    assert conv.weight_quantizer.amax.numel() == conv.out_channels  # axis 0
    assert conv.input_quantizer.amax.numel() == 1
    assert float(conv.input_quantizer.amax) == pytest.approx(
        max(float(f["images"].max()) for f in feeds(2)), rel=1e-6)  # max calibration
    assert not model.backbone[1].input_quantizer.is_enabled  # BatchNorm stays float


def test_histogram_percentile_clips_below_max() -> None:
    max_model = quantize_model(make_model(), load_recipe("int8_default"), feeds(2), progress=False)
    hist_model = quantize_model(make_model(), load_recipe("int8_histogram"), feeds(2), progress=False)
    conv_max, conv_hist = max_model.backbone[3].input_quantizer, hist_model.backbone[3].input_quantizer
    assert type(conv_hist._calibrator).__name__ == "HistogramCalibrator"
    assert 0 < float(conv_hist.amax) < float(conv_max.amax)
    # Linear inputs keep max calibration in this recipe
    lin_max = max_model.decoder.layers[0].value_proj.input_quantizer.amax
    lin_hist = hist_model.decoder.layers[0].value_proj.input_quantizer.amax
    assert torch.equal(lin_max, lin_hist)
    labels, boxes, scores = hist_model(**{k: torch.as_tensor(v) for k, v in feeds(1)[0].items()})
    assert torch.isfinite(boxes).all() and scores.shape == labels.shape


def test_entropy_method_runs() -> None:
    raw = {"name": "entropy", "base": "INT8_DEFAULT_CFG", "calib": {"method": "entropy"},
           "quantizers": [{"modules": "*", "quantizer": "input", "parent_class": "nn.Conv2d",
                           "calibrator": "histogram"}]}
    model = quantize_model(make_model(), recipe_from_dict(raw), feeds(2), progress=False)
    assert float(model.backbone[3].input_quantizer.amax) > 0


def test_linear_per_axis_inputs_get_one_scale_per_feature() -> None:
    model = quantize_model(make_model(), load_recipe("int8_linear_per_axis"), feeds(2), progress=True)
    assert model.decoder.layers[0].value_proj.input_quantizer.amax.shape[-1] == 8
    assert model.backbone[0].input_quantizer.amax.numel() == 1


def test_summary_counts_by_type_and_role() -> None:
    model = quantize_model(make_model(), load_recipe("int8_offsets_float"), feeds(1), progress=False)
    summary = quantizer_summary(model)
    # 2 convs; 2 layers x (value_proj) + score_head + bbox_head = 4 Linear; offsets excluded
    assert summary["by_type"] == {"Conv2d": {"input": 2, "weight": 2, "output": 0},
                                  "Linear": {"input": 4, "weight": 4, "output": 0}}
    assert summary["total"] == 12
    print_summary(summary)
    default = quantize_model(make_model(), load_recipe("int8_default"), feeds(1), progress=False)
    full = quantizer_summary(default)
    assert full["by_type"]["Linear"]["weight"] == 6


def test_empty_calibration_set_is_a_user_error() -> None:
    with pytest.raises(UserError, match="empty"):
        quantize_model(make_model(), load_recipe("int8_default"), [], progress=False)


def test_glob_matching_nothing_fails_before_calibration() -> None:
    recipe = recipe_from_dict({"name": "typo", "base": "INT8_DEFAULT_CFG", "exclude": ["*encoder"]})
    with pytest.raises(UserError, match=r"'\*encoder'"):
        quantize_model(make_model(), recipe, feeds(1), progress=False)
