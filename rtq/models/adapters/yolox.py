"""YOLOX pre- and post-processing around an ONNX network that has none of it built in.

The YOLOX ONNX export stops at raw per-anchor predictions, so letterboxing, box decoding, class-wise
NMS and the mapping back to original pixels live here. When the graph was extended with End2End
outputs (`rtq.surgery.end2end_nms`), decoding and NMS already happened on the device and
`postprocess` only undoes the letterbox, so one IO object serves both graph forms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtq.errors import UserError
from rtq.models.io import Detections, ImageMeta

END2END_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
RAW_OUTPUT = "output"


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 image with half-pixel centres and no antialiasing.

    This is the interpolation YOLOX was trained and evaluated with (OpenCV's INTER_LINEAR);
    Pillow's bilinear filter widens its kernel when shrinking, which shifts accuracy.
    """
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return image.copy()

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    img = image.astype(np.float32)
    top = img[y0] * (1.0 - wy)[:, None, None] + img[y1] * wy[:, None, None]
    out = top[:, x0] * (1.0 - wx)[None, :, None] + top[:, x1] * wx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def anchor_grid(input_size: int, strides: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell offsets [A,2] (x, y) and strides [A,1] in the order the YOLOX head emits anchors."""
    grids, expanded = [], []
    for stride in strides:
        side = input_size // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        expanded.append(np.full((side * side, 1), stride))
    return (np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32))


def decode_predictions(
    raw: np.ndarray, input_size: int, strides: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Raw head output [N,A,5+C] -> xyxy boxes [N,A,4] in network pixels and scores [N,A,C]."""
    grid, stride = anchor_grid(input_size, strides)
    if raw.shape[1] != grid.shape[0]:
        raise UserError(
            f"YOLOX output has {raw.shape[1]} anchors but input size {input_size} with strides "
            f"{tuple(strides)} gives {grid.shape[0]}: set the adapter's input_size/strides to the model's"
        )
    centre = (raw[..., 0:2] + grid) * stride
    size = np.exp(raw[..., 2:4]) * stride
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1).astype(np.float32)
    scores = (raw[..., 4:5] * raw[..., 5:]).astype(np.float32)
    return boxes, scores


def box_iou_one_to_many(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `others` [K,4] (areas without the +1 pixel convention)."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def classwise_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float, max_keep: int | None
) -> np.ndarray:
    """Indices kept by greedy NMS run separately per class, best score first, at most `max_keep`.

    Classes are separated by shifting each class's boxes to its own disjoint region, so a single
    greedy pass suppresses only within a class. Ties in score keep the lower index first, as
    ONNX Runtime's NonMaxSuppression does, so host and graph NMS pick the same boxes.
    """
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(np.abs(boxes).max()) * 2.0 + 1.0
    shifted = boxes + (labels.astype(np.float64) * span)[:, None]
    order = np.lexsort((np.arange(len(scores)), -scores))
    keep: list[int] = []
    suppressed = np.zeros(len(scores), dtype=bool)
    for rank, idx in enumerate(order):
        if suppressed[idx]:
            continue
        keep.append(int(idx))
        if len(keep) == max_keep:
            break
        rest = order[rank + 1 :]
        rest = rest[~suppressed[rest]]
        if len(rest) == 0:
            break
        suppressed[rest[box_iou_one_to_many(shifted[idx], shifted[rest]) > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


def best_class_only(scores: np.ndarray) -> np.ndarray:
    """Zero every class score of an anchor except its best one (first on ties), shape kept [..., C]."""
    best = np.argmax(scores, axis=-1)[..., None]
    out = np.zeros_like(scores)
    np.put_along_axis(out, best, np.take_along_axis(scores, best, axis=-1), axis=-1)
    return out


@dataclass
class YoloxIO:
    """`DetectorIO` for YOLOX ONNX models: letterbox in, decode + class-wise NMS out."""

    input_size: int = 416
    input_names: tuple[str, ...] = ("images",)
    strides: tuple[int, ...] | list[int] = (8, 16, 32)
    score_threshold: float = 0.001
    iou_threshold: float = 0.65
    max_detections: int | None = 100  # None: no cap per image (COCO then keeps 100 per class)
    pad_value: int = 114
    multi_label: bool = True  # False: each anchor keeps only its best class (YOLOX's own demo rule)

    def letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """RGB uint8 HWC -> BGR float32 CHW of side `input_size`, image at the top-left, and ratio."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"expected an RGB HxWx3 image, got shape {image.shape}: decode images as RGB")
        h, w = image.shape[:2]
        ratio = min(self.input_size / h, self.input_size / w)
        new_h, new_w = int(h * ratio), int(w * ratio)
        canvas = np.full((self.input_size, self.input_size, 3), self.pad_value, dtype=np.uint8)
        canvas[:new_h, :new_w] = resize_bilinear(image, new_h, new_w)
        return canvas[:, :, ::-1].transpose(2, 0, 1).astype(np.float32), ratio

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        """RGB uint8 images -> {"images": float32 [N,3,S,S]} (BGR, 0..255) and letterbox metadata."""
        tensors, metas = [], []
        for image in images:
            tensor, ratio = self.letterbox(image)
            tensors.append(tensor)
            metas.append(ImageMeta(width=image.shape[1], height=image.shape[0], scale=ratio))
        return {self.input_names[0]: np.stack(tensors)}, metas

    def postprocess(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        """Raw head output or End2End outputs -> detections in original pixels."""
        if all(name in outputs for name in END2END_OUTPUTS):
            return self._from_end2end(outputs, metas)
        if RAW_OUTPUT not in outputs:
            raise UserError(
                f"YOLOX outputs {sorted(outputs)} have neither {RAW_OUTPUT!r} nor {list(END2END_OUTPUTS)}: "
                "run the original YOLOX ONNX or one with the end2end_nms pass applied"
            )
        boxes, scores = decode_predictions(np.asarray(outputs[RAW_OUTPUT]), self.input_size, self.strides)
        return [self._nms_one(b, s, meta) for b, s, meta in zip(boxes, scores, metas, strict=True)]

    def nms_network_pixels(self, boxes: np.ndarray, scores: np.ndarray) -> Detections:
        """Class-wise NMS of one image's decoded boxes [A,4] / scores [A,C], boxes left in network pixels.

        Every (anchor, class) pair above the score threshold is a candidate, matching ONNX
        NonMaxSuppression on per-class scores, so the End2End graph reproduces it exactly.
        """
        if not self.multi_label:
            scores = best_class_only(scores)
        anchor, label = np.nonzero(scores > self.score_threshold)
        cand_scores = scores[anchor, label]
        keep = classwise_nms(boxes[anchor], cand_scores, label, self.iou_threshold, self.max_detections)
        return Detections(
            labels=label[keep].astype(np.int64),
            boxes=boxes[anchor[keep]].astype(np.float32),
            scores=cand_scores[keep].astype(np.float32),
        )

    def _nms_one(self, boxes: np.ndarray, scores: np.ndarray, meta: ImageMeta) -> Detections:
        dets = self.nms_network_pixels(boxes, scores)
        dets.boxes = self._to_original(dets.boxes, meta)
        return dets

    def _to_original(self, boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
        boxes = boxes / meta.scale
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, meta.width)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, meta.height)
        return boxes.astype(np.float32)

    def _from_end2end(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        num = np.asarray(outputs["num_dets"]).reshape(len(metas), -1)[:, 0]
        result = []
        for i, meta in enumerate(metas):
            k = int(num[i])
            result.append(
                Detections(
                    labels=np.asarray(outputs["det_classes"][i][:k]).astype(np.int64),
                    boxes=self._to_original(np.asarray(outputs["det_boxes"][i][:k], np.float32), meta),
                    scores=np.asarray(outputs["det_scores"][i][:k]).astype(np.float32),
                )
            )
        return result
