"""The EfficientNMS_TRT reference op: TensorRT's documented rules, its ONNX Runtime form, and the End2End
pass's two NMS forms agreeing on real YOLOX-Nano images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from plugins.efficient_nms_trt.reference import EfficientNmsAttributes, efficient_nms
from tests.yolox_model import dynamic_yolox, mini_coco_images, needs_yolox

ATTRS = EfficientNmsAttributes(score_threshold=0.5, iou_threshold=0.5, max_output_boxes=3)


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([rows], np.float32)


def test_thresholds_are_inclusive_and_nms_is_per_class() -> None:
    boxes = _boxes((0, 0, 10, 10), (0, 0, 10, 10), (0, 5, 10, 15), (50, 50, 60, 60))
    # anchor 1 duplicates anchor 0; anchor 2 overlaps anchor 0 with IoU exactly 1/3
    scores = np.array([[[0.9, 0.0], [0.8, 0.7], [0.6, 0.0], [0.5, 0.4]]], np.float32)
    num, out_boxes, out_scores, classes = efficient_nms(boxes, scores, ATTRS)
    assert num.tolist() == [[3]] and num.dtype == np.int32 and classes.dtype == np.int32
    # 0.9 (anchor 0, class 0); 0.8 (anchor 1, class 0) is suppressed (IoU 1 >= 0.5); 0.7 is class 1,
    # so anchor 1 survives there; 0.6 (IoU 1/3 < 0.5) is kept; max_output_boxes=3 stops before 0.5
    assert out_scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.7), pytest.approx(0.6)]]
    assert classes.tolist() == [[0, 1, 0]]
    np.testing.assert_array_equal(out_boxes[0, 2], [0, 5, 10, 15])
    at_threshold = EfficientNmsAttributes(score_threshold=0.5, iou_threshold=1 / 3, max_output_boxes=10)
    num, _, out_scores, _ = efficient_nms(boxes, scores, at_threshold)
    assert 0.6 not in np.round(out_scores, 3).tolist()[0]  # IoU == threshold suppresses (>=)
    assert pytest.approx(0.5) in out_scores[0].tolist()  # score == threshold is kept (>=)


def test_class_agnostic_background_padding_and_the_candidate_cap() -> None:
    boxes = _boxes((0, 0, 10, 10), (0, 0, 10, 10), (20, 20, 30, 30))
    scores = np.array([[[0.9, 0.1], [0.1, 0.8], [0.2, 0.7]]], np.float32)
    agnostic = EfficientNmsAttributes(
        score_threshold=0.5, iou_threshold=0.5, max_output_boxes=5, class_agnostic=1
    )
    num, out_boxes, out_scores, classes = efficient_nms(boxes, scores, agnostic)
    assert num.tolist() == [[2]] and classes[0, :2].tolist() == [0, 1]
    assert not out_scores[0, 2:].any() and not out_boxes[0, 2:].any() and not classes[0, 2:].any()
    background = EfficientNmsAttributes(
        score_threshold=0.5, iou_threshold=0.5, max_output_boxes=5, background_class=0
    )
    assert efficient_nms(boxes, scores, background)[3][0, :2].tolist() == [1, 1]
    capped = efficient_nms(boxes, scores, EfficientNmsAttributes(0.5, 0.5, 5), num_selected=1)
    assert capped[0].tolist() == [[1]]  # only the best candidate enters NMS


def test_onnx_runtime_runs_the_trt_form_through_the_reference_op(tmp_path: Path) -> None:
    from rtq.backends.onnxruntime import make_graph_runner

    node = helper.make_node(
        "EfficientNMS_TRT", ["boxes", "scores"], ["num", "b", "s", "c"], name="nms", **ATTRS.node_attributes()
    )
    graph = helper.make_graph(
        [node],
        "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4, 2])],
        [helper.make_tensor_value_info("num", TensorProto.INT32, ["N", 1]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("c", TensorProto.INT32, ["N", 3])],
    )  # fmt: skip
    path = tmp_path / "nms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    boxes = np.repeat(_boxes((0, 0, 10, 10), (0, 0, 10, 10), (0, 5, 10, 15), (50, 50, 60, 60)), 2, axis=0)
    scores = np.random.default_rng(0).random((2, 4, 2), dtype=np.float32)
    with make_graph_runner(path, "trt_form", tmp_path) as runner:
        got = runner.infer({"boxes": boxes, "scores": scores})
    for name, want in zip(("num", "b", "s", "c"), efficient_nms(boxes, scores, ATTRS), strict=True):
        np.testing.assert_array_equal(got[name], want)


@needs_yolox
def test_both_end2end_forms_give_the_same_detections_on_real_images(tmp_path: Path) -> None:
    from rtq.backends.onnxruntime import make_graph_runner
    from rtq.data.coco import load_rgb
    from rtq.models.adapters.yolox import YoloxIO
    from rtq.surgery.base import run_passes

    images = mini_coco_images()
    dyn = dynamic_yolox(tmp_path, "dyn.onnx")
    forms = {}
    for nms in ("onnx", "efficient_nms_trt"):
        forms[nms] = tmp_path / f"{nms}.onnx"
        (report,) = run_passes(dyn, forms[nms], [{"name": "end2end_nms", "options": {"nms": nms}}])
        assert report.did_something
    assert "EfficientNMS_TRT" in {n.op_type for n in onnx.load(str(forms["efficient_nms_trt"])).graph.node}
    feed, _ = YoloxIO().preprocess([load_rgb(p) for p in sorted(images.rglob("*.jpg"))[:3]])
    outputs = {}
    for nms, path in forms.items():
        with make_graph_runner(path, nms, tmp_path) as runner:
            outputs[nms] = runner.infer(feed)
    assert outputs["onnx"]["num_dets"].min() > 0
    for name in ("num_dets", "det_boxes", "det_scores", "det_classes"):
        assert outputs["onnx"][name].dtype == outputs["efficient_nms_trt"][name].dtype
        np.testing.assert_array_equal(outputs["onnx"][name], outputs["efficient_nms_trt"][name])


def test_an_unknown_nms_form_is_named() -> None:
    from rtq.surgery.end2end_nms import end2end_nms

    report = end2end_nms(None, {"nms": "soft"})
    assert "nms='soft'" in report.unmatched[0].reason and "efficient_nms_trt" in report.unmatched[0].reason
