"""Torch fake-quant RT-DETRv2 r18vd vs its Q/DQ ONNX in ONNX Runtime reference mode, on real images.

What holds, measured with recipe int8_default calibrated on 2 images of coco_calib:

- float64 (`raw_output_fidelity(float64=True)`: a float64 copy of the torch model, its quantizers
  computing the ONNX Q/DQ formula, against the float64 twin of the exported graph): raw logits and
  boxes agree to 3e-15 / 5e-16 on 2 images, every query selected alike. This is the fidelity
  criterion (<= 1e-4): with float noise out of the way, any larger difference is the export's, and
  a 1% error in one activation scale shows up as a difference of order 1 (tested below).
- Every one of the 211 exported Q/DQ pairs reproduces its torch quantizer: fed the same tensor,
  ONNX Runtime's output equals the torch quantizer's bit for bit once the quantizer computes the
  ONNX formula (`x / s`); with modelopt's own formula (`x * (127 / amax)`) only elements sitting
  exactly on a rounding tie differ, 9 of 91 M. Before weights were snapped to the INT8 grid after
  calibration, the float16 checkpoint put 387 weights on such ties.
- float32, the graph as deployed: the raw outputs do NOT agree to 1e-4, and cannot. The first
  disagreement is one activation of `backbone.conv1.conv1_2`'s input quantizer whose float input
  differs by ~5e-6 (conv/BatchNorm accumulation order) and happens to lie on a rounding boundary.
  That flipped value moves the next layer's inputs by a whole step, which flips more values
  (21 after the next conv, 79 after the next, 22 M of 91 M quantizer outputs by the end). So about
  75% of the 300 queries selected from 8400 near-tied encoder scores differ, and on the common
  queries logits differ by up to ~1.0 and boxes by ~0.013 (normalised cx,cy,w,h). The bounds below
  are those measurements with a 2x margin; the test also checks that the divergence starts from
  float noise (not from a quantizer that differs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.nn as nn

SHARED = Path(__file__).resolve().parents[3] / "shared"
CHECKPOINT = SHARED / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"
CALIB = SHARED / "data" / "coco_calib"
EVAL_IMAGES = SHARED / "data" / "coco_val2017_mini" / "val2017"

Quantized = tuple[nn.Module, Path, list[dict[str, np.ndarray]]]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    if not CHECKPOINT.is_file() or not CALIB.is_dir() or not EVAL_IMAGES.is_dir():
        pytest.skip(f"shared fixtures absent: {CHECKPOINT} / {CALIB} / {EVAL_IMAGES}")
    from PIL import Image

    from rtq.export.onnx_export import export_raw_onnx
    from rtq.models import RTDETRIO, build_deploy_model
    from rtq.models.rtdetr import RawOutputs, raw_network
    from rtq.quant.calibrate import calibration_feeds, quantize_model
    from rtq.quant.recipes import load_recipe

    recipe = load_recipe("int8_default")
    recipe = replace(recipe, calib=replace(recipe.calib, max_images=2, batch_size=2))
    io = RTDETRIO()
    model = quantize_model(build_deploy_model("rtdetrv2_r18vd", CHECKPOINT), recipe,
                           calibration_feeds(recipe, io, CALIB), progress=False)
    raw_model = RawOutputs(raw_network(model))
    path = export_raw_onnx(raw_model, tmp_path_factory.mktemp("fidelity") / "raw_int8.onnx")
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(EVAL_IMAGES.glob("*.jpg"))[:2]]
    return model, path, [io.preprocess([image])[0] for image in images]


def _per_quantizer(quantized: Quantized, onnx_arithmetic: bool) -> dict[str, Any]:
    from rtq.models.rtdetr import RawOutputs, raw_network
    from rtq.quant.fidelity import quantizer_fidelity

    model, path, feeds = quantized
    return quantizer_fidelity(RawOutputs(raw_network(model)).eval(), path, {"images": feeds[0]["images"]},
                              onnx_arithmetic=onnx_arithmetic)


@pytest.fixture(scope="module")
def per_quantizer(quantized: Quantized) -> dict[str, Any]:
    return _per_quantizer(quantized, onnx_arithmetic=False)


def test_float64_raw_outputs_agree_to_1e_4(quantized: Quantized) -> None:
    from rtq.quant.fidelity import raw_output_fidelity

    model, path, feeds = quantized
    report = raw_output_fidelity(model, path, feeds, float64=True)
    assert report["images"] == 2 and report["queries"] == 600
    assert report["queries_selected_differently"] == 0
    assert report["detections_label_mismatches"] == 0
    assert report["pred_logits_max_abs"] <= 1e-4 and report["pred_boxes_max_abs"] <= 1e-4
    # Measured 2.7e-15 / 4.5e-16: the export is exact; anything near 1e-4 would already be a bug.
    assert report["pred_logits_max_abs"] <= 1e-10 and report["pred_boxes_max_abs"] <= 1e-10


def test_float64_check_catches_a_one_percent_scale_error(quantized: Quantized, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from rtq.quant.fidelity import raw_output_fidelity

    model, path, feeds = quantized
    proto = onnx.load(str(path))
    producers = {out: node for node in proto.graph.node for out in node.output}
    target = "/model/decoder/decoder/layers.0/linear1/input_quantizer/DequantizeLinear"
    node = next(n for n in proto.graph.node if n.name == target)
    scale_node = producers[node.input[1]]
    assert scale_node.op_type == "Constant"
    wrong = numpy_helper.to_array(scale_node.attribute[0].t) * np.float32(1.01)
    node.input[1] = "wrong_scale"
    proto.graph.initializer.append(numpy_helper.from_array(wrong, "wrong_scale"))
    onnx.save(proto, str(tmp_path / "wrong.onnx"))
    report = raw_output_fidelity(model, tmp_path / "wrong.onnx", feeds[:1], float64=True)
    assert report["pred_logits_max_abs"] > 1e-2


def test_onnx_arithmetic_reproduces_every_exported_quantizer_exactly(quantized: Quantized) -> None:
    report = _per_quantizer(quantized, onnx_arithmetic=True)
    assert report["pairs_compared"] == 211 and report["pairs_unmatched"] == 0
    assert report["same_input_max_abs_steps"] == 0.0
    assert report["same_input_bin_flips"] == 0


def test_each_exported_quantizer_reproduces_torch_on_the_same_input(per_quantizer: dict[str, Any]) -> None:
    assert per_quantizer["pairs_unmatched"] == 0
    assert per_quantizer["pairs_compared"] == 211
    assert per_quantizer["same_input_unflipped_max_abs_steps"] <= 1e-4
    # Only exact rounding ties may land differently: under one element in a million.
    assert per_quantizer["same_input_bin_flips"] <= 1e-6 * per_quantizer["elements"]
    weights = [row for row in per_quantizer["per_pair"] if "weight_quantizer" in row["name"]]
    assert len(weights) > 90
    assert sum(row["same_input_flips"] for row in weights) == 0  # weights were snapped to the grid


def test_end_to_end_divergence_starts_from_float_noise(per_quantizer: dict[str, Any]) -> None:
    rows = {row["name"]: row for row in per_quantizer["per_pair"]}
    first = per_quantizer["first_divergent"]
    assert first is not None, "INT8 torch and ORT now agree bit for bit: tighten the raw-output bounds"
    row = rows[first]
    # The first disagreement comes from float rounding of its input or from exact rounding ties
    # (modelopt rounds x * (127/amax), ONNX Runtime x / (amax/127)), never from a systematic error.
    assert row["input_max_abs"] < 1e-3 * row["step"]
    assert row["same_input_flips"] <= max(1e-5 * row["elements"], 0)
    assert row["same_input_flips"] > 0 or row["end_to_end_flips"] > 0


def test_float32_raw_outputs_agree_within_the_flip_cascade_bound(quantized: Quantized) -> None:
    from rtq.quant.fidelity import raw_output_fidelity

    model, path, feeds = quantized
    report = raw_output_fidelity(model, path, feeds[:1])
    assert report["images"] == 1 and report["queries"] == 300
    assert report["queries_selected_differently"] < report["queries"]  # realignment found common rows
    assert report["pred_logits_max_abs"] <= 2.0
    assert report["pred_logits_mean_abs"] <= 0.25
    assert report["pred_boxes_max_abs"] <= 0.03
    assert report["detections_scores_max_abs_sorted"] <= 0.05


def test_float64_verdict_applies_the_tolerance_to_logits_and_boxes() -> None:
    from rtq.quant.fidelity import float64_verdict

    base = {"raw_pred_logits_max_abs": 1.2, "raw_queries_selected_differently": 450.0, "raw_queries": 600.0}
    within, message = float64_verdict({**base, "raw_float64_pred_logits_max_abs": 3e-15,
                                       "raw_float64_pred_boxes_max_abs": 5e-16}, 1e-4) or (None, "")
    assert within is True and "logits 3e-15" in message and "450/600" in message
    outside = float64_verdict({**base, "raw_float64_pred_logits_max_abs": 1e-6,
                               "raw_float64_pred_boxes_max_abs": 2e-4}, 1e-4)
    assert outside is not None and outside[0] is False
    assert float64_verdict(base, 1e-4) is None  # no float64 comparison (not RT-DETR, or switched off)


def test_a_graph_without_float64_twin_is_recorded_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    import rtq.quant.fidelity as fidelity
    from rtq.errors import UserError

    message = "float64 twin: Conv `depthwise` has groups or dilation, which the rewrite does not cover"

    def no_twin(*_args: Any, **_kwargs: Any) -> dict[str, float]:
        raise UserError(message)

    monkeypatch.setattr(fidelity, "raw_output_fidelity", no_twin)
    keys = fidelity._float64_keys(nn.Identity(), Path("unused.onnx"), [])
    assert keys == {"raw_float64_error": message}
    assert fidelity.float64_verdict(keys, 1e-4) is None  # no verdict, so the stage logs no pass/fail
