"""What TensorRT's ``EfficientNMS_TRT`` plugin computes, in NumPy: the reference its ONNX Runtime op runs.

Semantics follow NVIDIA/TensorRT ``plugin/efficientNMSPlugin`` (README.md and
efficientNMSInference.cu at a892d222):

- a (box, class) element is a candidate when ``score >= score_threshold`` (``gte_mp`` in
  ``EfficientNMSFilter``) and the class is not ``background_class``;
- candidates are sorted by score, descending, and only the best ``num_selected_boxes`` go into NMS
  (``EfficientNMSParameters::numSelectedBoxes``: 4096 by default, set to 5000 in
  ``EfficientNMSPlugin::initialize`` on devices with 64 Ki registers per block, 2000 on Jetson TX);
- greedy NMS in that order: a candidate is dropped when its IoU with a kept box of the same class
  (any class with ``class_agnostic``) is ``>= iou_threshold``; IoU is taken on corner boxes reordered to
  min/max, and is 0 for a non-positive intersection or union;
- at most ``max_output_boxes`` are kept per image, in score order; outputs are zero-filled past
  ``num_detections`` (``cudaMemsetAsync(..., 0x00, ...)`` in ``EfficientNMSDispatch``), boxes always in
  corner coding, classes int32.

Not covered (rtq's End2End graphs do not use them): the fused box decoder (third ``anchors`` input),
``score_activation`` and the ONNX-indices output variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OP_TYPE = "EfficientNMS_TRT"
PLUGIN_VERSION = "1"
ORT_DOMAIN = "ai.onnx.contrib"
NUM_SELECTED_BOXES = 5000  # TensorRT's value on every current GPU (see the module docstring)


@dataclass(frozen=True)
class EfficientNmsAttributes:
    """The plugin's attributes as rtq writes them on the node."""

    score_threshold: float
    iou_threshold: float
    max_output_boxes: int
    background_class: int = -1
    class_agnostic: int = 0
    box_coding: int = 0  # 0: corners [x1, y1, x2, y2]; 1: centre and size [x, y, w, h]
    score_activation: int = 0

    def node_attributes(self) -> dict[str, object]:
        return {"plugin_version": PLUGIN_VERSION, **self.__dict__}


def _corners(boxes: np.ndarray, box_coding: int) -> np.ndarray:
    if box_coding == 0:
        return boxes
    if box_coding == 1:
        centre, half = boxes[..., :2], boxes[..., 2:] / np.float32(2)
        return np.concatenate([centre - half, centre + half], axis=-1)
    raise ValueError(f"box_coding={box_coding}: EfficientNMS_TRT knows 0 (corners) and 1 (centre-size)")


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one corner box with many, float32, as TensorRT's `IOU` (reordered corners, no +1)."""
    a = np.concatenate([np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])])
    b = np.concatenate(
        [np.minimum(others[:, :2], others[:, 2:]), np.maximum(others[:, :2], others[:, 2:])], 1
    )
    wh = np.clip(np.minimum(a[2:], b[:, 2:]) - np.maximum(a[:2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((inter > 0) & (union > 0), inter / union, np.float32(0))
    return iou.astype(np.float32)


def efficient_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    attrs: EfficientNmsAttributes,
    num_selected: int = NUM_SELECTED_BOXES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """boxes [N, A, 4] (or [N, A, 1, 4]), scores [N, A, C] -> num_detections [N, 1] int32, detection_boxes
    [N, K, 4], detection_scores [N, K], detection_classes [N, K] int32, with K = max_output_boxes."""
    if attrs.score_activation:
        raise ValueError("score_activation=1 is not covered by the reference op; feed activated scores")
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if boxes.ndim == 4:  # [N, A, 1, 4]: one box shared by every class
        boxes = boxes[:, :, 0]
    n, anchors, classes = scores.shape
    if boxes.shape != (n, anchors, 4):
        raise ValueError(f"boxes {boxes.shape} do not match scores {scores.shape}")
    k = int(attrs.max_output_boxes)
    num = np.zeros((n, 1), np.int32)
    out_boxes = np.zeros((n, k, 4), np.float32)
    out_scores = np.zeros((n, k), np.float32)
    out_classes = np.zeros((n, k), np.int32)
    for i in range(n):
        corners = _corners(boxes[i], attrs.box_coding)
        flat = scores[i].reshape(-1)
        keep = flat >= np.float32(attrs.score_threshold)
        if 0 <= attrs.background_class < classes:
            keep &= (np.arange(flat.size) % classes) != attrs.background_class
        element = np.flatnonzero(keep)
        order = element[np.argsort(-flat[element], kind="stable")][:num_selected]
        kept_by_class: dict[int, list[int]] = {}
        count = 0
        for index in order:
            anchor, cls = divmod(int(index), classes)
            group = -1 if attrs.class_agnostic else cls
            previous = kept_by_class.setdefault(group, [])
            if previous and np.any(
                _iou(corners[anchor], corners[previous]) >= np.float32(attrs.iou_threshold)
            ):
                continue
            previous.append(anchor)
            out_boxes[i, count], out_scores[i, count], out_classes[i, count] = (
                corners[anchor],
                flat[index],
                cls,
            )
            count += 1
            if count == k:
                break
        num[i, 0] = count
    return num, out_boxes, out_scores, out_classes
