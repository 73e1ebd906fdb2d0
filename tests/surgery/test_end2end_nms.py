"""End2End NMS pass on the real YOLOX-Nano: graph detections equal host decode + NMS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rtq.models.adapters.yolox import YoloxIO
from rtq.models.onnx_source import dynamic_batch_onnx
from rtq.surgery.base import apply_passes, run_passes

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "yolox_nano.onnx"
IMAGES = next(
    (
        p
        for p in (
            ROOT / "data" / "coco_val2017_mini" / "val2017",
            ROOT.parent / "shared" / "data" / "coco_val2017_mini" / "val2017",
        )
        if p.is_dir()
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    not MODEL.is_file() or IMAGES is None,
    reason="models/yolox_nano.onnx or the coco_val2017_mini images are missing",
)


def _outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def test_end2end_equals_host_nms_on_real_images_at_dynamic_batch(tmp_path: Path) -> None:
    from rtq.data.coco import load_rgb

    dyn, _ = dynamic_batch_onnx(MODEL, tmp_path / "dyn.onnx")
    e2e = tmp_path / "e2e.onnx"
    (report,) = run_passes(dyn, e2e, [{"name": "end2end_nms", "options": {"iou_threshold": 0.65}}])
    assert report.did_something and report.matched
    graph_outputs = {o.name: o for o in onnx.load(str(e2e)).graph.output}
    assert list(graph_outputs) == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    assert graph_outputs["det_boxes"].type.tensor_type.shape.dim[0].dim_param == "N"

    io = YoloxIO()
    assert IMAGES is not None
    images = [load_rgb(p) for p in sorted(IMAGES.glob("*.jpg"))[:3]]
    feed, metas = io.preprocess(images)
    host = io.postprocess(_outputs(dyn, feed), metas)
    graph = _outputs(e2e, feed)
    assert graph["num_dets"].shape == (3, 1) and graph["det_boxes"].shape == (3, 100, 4)
    for h, g in zip(host, io.postprocess(graph, metas), strict=True):
        assert len(h.scores) > 0
        np.testing.assert_array_equal(h.labels, g.labels)
        np.testing.assert_allclose(h.scores, g.scores, rtol=1e-6)
        np.testing.assert_allclose(h.boxes, g.boxes, atol=1e-3)
    # batch 1 of the same graph gives the first image's detections
    single = _outputs(e2e, {"images": feed["images"][:1]})
    n = int(single["num_dets"][0, 0])
    np.testing.assert_allclose(single["det_scores"][0, :n], graph["det_scores"][0, :n], rtol=1e-6)


def test_pass_reports_a_graph_without_the_raw_output() -> None:
    (report,) = apply_passes(
        onnx.load(str(MODEL)), [{"name": "end2end_nms", "options": {"output": "logits"}, "optional": True}]
    )[1]
    assert not report.did_something and "logits" in report.why_nothing()
