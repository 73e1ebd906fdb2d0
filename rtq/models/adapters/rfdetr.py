"""RF-DETR pre- and post-processing around the ONNX file the `rfdetr` package exports.

`RFDETR.export()` writes `input` [N,3,S,S] -> `dets` [N,Q,4] (normalised cx, cy, w, h of the
stretched square input, hence of the original image) and `labels` [N,Q,C] (raw logits, one slot
per class id: C = 91 for the COCO checkpoints, whose slot is the COCO category id itself, slot 0
and the ten unused ids included). Preprocessing, top-k selection and box scaling live outside the
graph, so this module reproduces `RFDETR.predict`: stretch to S x S with antialias-free half-pixel
bilinear on 0..1 floats, ImageNet normalisation; per-class sigmoid, top `num_select` (query, class)
pairs over the flattened grid (ties: lower flat index first), boxes times (w, h) clamped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from rtq.errors import UserError
from rtq.models.io import Detections, ImageMeta
from rtq.models.onnx_source import tensor_dims

INPUT = "input"
BOXES = "dets"
LOGITS = "labels"
EXPORT_FIX = "re-export with rfdetr's model.export(), whose ONNX has input -> dets, labels"


@dataclass
class RfdetrIO:
    """`DetectorIO` for RF-DETR ONNX exports: stretch + ImageNet norm in, sigmoid top-k out.

    The arithmetic shared with the transformers RF-DETR family (resize, normalisation, top-k,
    logit index -> COCO label) is `rtq.models.rfdetr_io`'s, imported on use so that importing the
    adapters stays free of torch; what the `rfdetr` package adds is here: its tensor names, boxes
    clamped to the image, a strict score threshold, and the check of a file's I/O.
    """

    input_size: int = 560  # rfdetr's `resolution` (base 560, nano 384, small 512, medium 576, large 704)
    input_names: tuple[str, ...] = (INPUT,)
    num_select: int | None = None  # pairs kept per image before the threshold; None: the query count
    score_threshold: float = 0.0  # strict `>` as predict(); COCO evaluation keeps every selected pair

    def preprocess(self, images: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[ImageMeta]]:
        """RGB uint8 images -> {"input": float32 [N,3,S,S]} normalised, and the original sizes."""
        from rtq.models.rfdetr_io import RfDetrIO

        return RfDetrIO(self.input_size, self.input_names).preprocess(images)

    def postprocess(self, outputs: dict[str, Any], metas: list[ImageMeta]) -> list[Detections]:
        """`dets` + `labels` of a batch -> per-image detections (contiguous labels, original pixels)."""
        from rtq.models.rfdetr_io import RfDetrIO

        if BOXES not in outputs or LOGITS not in outputs:
            raise UserError(
                f"RF-DETR outputs {sorted(outputs)} lack {BOXES!r} and {LOGITS!r}: {EXPORT_FIX}, "
                "or choose the adapter that fits this ONNX (model.adapter)"
            )
        boxes, logits = np.asarray(outputs[BOXES]), np.asarray(outputs[LOGITS])
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or logits.ndim != 3 or logits.shape[:2] != boxes.shape[:2]:
            raise UserError(
                f"RF-DETR outputs dets{list(boxes.shape)} / labels{list(logits.shape)} are not [N,Q,4] / "
                f"[N,Q,C]: {EXPORT_FIX}"
            )
        top_k = logits.shape[1] if self.num_select is None else self.num_select
        shared = RfDetrIO(self.input_size, top_k=top_k)
        result = []
        for image_boxes, image_logits, meta in zip(boxes, logits, metas, strict=True):
            dets = shared.detections(image_boxes, image_logits, meta)
            keep = dets.scores > self.score_threshold
            scale = np.array([meta.width, meta.height, meta.width, meta.height], dtype=np.float32)
            dets.labels, dets.scores = dets.labels[keep], dets.scores[keep]
            dets.boxes = np.clip(dets.boxes[keep], 0.0, scale).astype(np.float32)
            result.append(dets)
        return result

    def check_graph(self, model: onnx.ModelProto, where: str) -> None:
        """Fail in one line unless `model` has rfdetr's I/O contract at this adapter's input size."""
        weights = {init.name for init in model.graph.initializer}
        inputs = {i.name: tensor_dims(i) for i in model.graph.input if i.name not in weights}
        outputs = {o.name: tensor_dims(o) for o in model.graph.output}
        shape = inputs.get(self.input_names[0])
        contract = (
            shape is not None
            and len(inputs) == 1
            and {BOXES, LOGITS} <= set(outputs)
            and len(outputs[BOXES]) == 3
            and len(outputs[LOGITS]) == 3
        )
        found = f"inputs {inputs}, outputs {outputs}"
        if not contract:
            raise UserError(
                f"{where} is not an RF-DETR export ({found}, expected input -> dets, labels): {EXPORT_FIX}, "
                "or set model.adapter to this file's format"
            )
        if (
            shape is not None
            and shape[2:] != [self.input_size, self.input_size]
            and all(isinstance(d, int) for d in shape[2:])
        ):
            raise UserError(
                f"{where} takes {shape[2]}x{shape[3]} images but the rfdetr adapter's input_size is "
                f"{self.input_size}: set model.adapter_options.input_size={shape[2]} (its resolution)"
            )
