"""RF-DETR pre- and post-processing on the host, as transformers' `RfDetrImageProcessor` and
`post_process_object_detection` do it, in numpy so every backend gets the same feeds.

Preprocessing: scale to 0..1, bilinear resize to the square resolution (half-pixel centres, no
antialiasing: the processor rescales, then resizes the float image with antialias off), ImageNet
mean/std. Postprocessing: sigmoid over the logits, top-k over queries x classes, cxcywh -> xyxy
scaled to the original size. Logit index = COCO category id (RF-DETR's 91-way head), so entries
whose index is no COCO category (0 and the ten unused ids) are dropped and the rest are mapped to
the contiguous labels 0..79 the evaluator expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rtq.errors import UserError
from rtq.models.io import Detections, ImageMeta
from rtq.models.postprocess import COCO_CATEGORY_IDS

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], dtype=np.float32)

# logit index (COCO category id) -> contiguous label, -1 where the index is no COCO category
_LABEL_OF_INDEX = np.full(91, -1, dtype=np.int64)
_LABEL_OF_INDEX[list(COCO_CATEGORY_IDS)] = np.arange(len(COCO_CATEGORY_IDS))


def resize_bilinear_float(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of a float HWC image (half-pixel centres, edge clamp, no antialiasing),
    the arithmetic of `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`."""
    in_h, in_w = image.shape[:2]

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        half = np.float32(0.5)
        src = (np.arange(n_out, dtype=np.float32) + half) * np.float32(n_in / n_out) - half
        src = np.maximum(src, np.float32(0.0))
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, wy = axis(in_h, out_h)
    x0, x1, wx = axis(in_w, out_w)
    top = image[y0] * (np.float32(1.0) - wy)[:, None, None] + image[y1] * wy[:, None, None]
    return np.asarray(top[:, x0] * (np.float32(1.0) - wx)[None, :, None] + top[:, x1] * wx[None, :, None])


def to_pixel_values(image: np.ndarray, side: int) -> np.ndarray:
    """RGB uint8 HWC -> float32 CHW at `side` x `side`, normalised like `RfDetrImageProcessor`."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"expected an RGB HxWx3 image, got shape {image.shape}: decode images as RGB")
    scaled = image.astype(np.float32) * np.float32(1 / 255)
    resized = resize_bilinear_float(scaled, side, side)
    normalised = (resized - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


@dataclass
class RfDetrIO:
    """`DetectorIO` of an RF-DETR graph `images -> (boxes, logits)` (or the rfdetr export's names)."""

    input_size: int = 384
    input_names: tuple[str, ...] = ("images",)
    output_names: tuple[str, ...] = ("boxes", "logits")
    top_k: int = 300

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        batch = np.stack([to_pixel_values(image, self.input_size) for image in images])
        metas = [ImageMeta(width=image.shape[1], height=image.shape[0]) for image in images]
        return {self.input_names[0]: batch}, metas

    def postprocess(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        missing = [name for name in self.output_names if name not in outputs]
        if missing:
            raise UserError(
                f"RF-DETR outputs {sorted(outputs)} lack {missing}: run a graph exported by the rfdetr family"
            )
        boxes = np.asarray(outputs[self.output_names[0]])
        logits = np.asarray(outputs[self.output_names[1]])
        return [self.detections(boxes[i], logits[i], meta) for i, meta in enumerate(metas)]

    def detections(self, boxes: np.ndarray, logits: np.ndarray, meta: ImageMeta) -> Detections:
        """One image: RT-DETR's deploy-form sigmoid top-k decode (`decode_raw`), then COCO labels."""
        from rtq.models.rtdetr import decode_raw

        decoded = decode_raw(logits, boxes, np.asarray([meta.width, meta.height]), self.top_k)
        index, xyxy, scores = decoded["labels"][0], decoded["boxes"][0], decoded["scores"][0]
        labels = _LABEL_OF_INDEX[index] if logits.shape[-1] == 91 else index
        keep = labels >= 0
        return Detections(
            labels=labels[keep].astype(np.int64),
            boxes=xyxy[keep].astype(np.float32),
            scores=scores[keep].astype(np.float32),
        )
