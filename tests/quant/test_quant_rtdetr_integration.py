"""The real RT-DETRv2 r18vd: recipe -> calibration -> Q/DQ ONNX with symbolic batch -> ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rtq.paths import SHARED_DIR

SHARED = SHARED_DIR
CHECKPOINT = SHARED / "fixtures" / "rtdetrv2_r18vd_parity" / "checkpoint.pth"
CALIB = SHARED / "data" / "coco_calib"


@pytest.mark.slow
def test_r18vd_int8_export_runs_in_ort(tmp_path: Path) -> None:
    if not CHECKPOINT.is_file() or not CALIB.is_dir():
        pytest.skip(f"shared fixtures absent: {CHECKPOINT.parent} / {CALIB}")
    from dataclasses import replace

    from rtq.backends.onnxruntime import reference_session
    from rtq.export.onnx_export import export_onnx, qdq_node_counts
    from rtq.models import RTDETRIO, build_deploy_model
    from rtq.quant.calibrate import calibration_feeds, quantize_model
    from rtq.quant.recipes import load_recipe
    from rtq.quant.summary import quantizer_summary

    recipe = load_recipe("int8_offsets_float")
    recipe = replace(recipe, calib=replace(recipe.calib, max_images=2, batch_size=2))
    feeds = calibration_feeds(recipe, RTDETRIO(), CALIB)
    model = quantize_model(build_deploy_model("rtdetrv2_r18vd", CHECKPOINT), recipe, feeds, progress=False)

    summary = quantizer_summary(model)
    assert summary["by_type"]["Conv2d"]["weight"] > 50
    offsets = model.get_submodule("model.decoder.decoder.layers.0.cross_attn.sampling_offsets")
    assert not offsets.input_quantizer.is_enabled and not offsets.weight_quantizer.is_enabled

    path = export_onnx(model, tmp_path / "r18vd_int8.onnx")
    proto = onnx.load(str(path))
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "N"
               for v in list(proto.graph.input) + list(proto.graph.output))
    counts = qdq_node_counts(proto)
    assert counts["QuantizeLinear"] == counts["DequantizeLinear"] > 150

    session = reference_session(path)
    batch = {k: np.concatenate([v, v[::-1]]) for k, v in feeds[0].items()}  # 4 images
    labels, boxes, scores = session.run(["labels", "boxes", "scores"], batch)
    assert scores.shape[0] == boxes.shape[0] == labels.shape[0] == 4
    np.testing.assert_allclose(scores[0], scores[3], atol=1e-6)  # same image, other slot
