"""RT-DETR post-processor: top-K over queries x classes, boxes to xyxy in original pixels.

The deploy form returns `(labels, boxes, scores)` with contiguous labels (0..C-1), the layout the
ONNX/TensorRT runners produce; the non-deploy form maps labels to COCO category ids like the
official evaluator does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# COCO category id of each contiguous class index 0..79 (ids 1..90 minus the ten unused ones).
_UNUSED_COCO_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in _UNUSED_COCO_IDS)


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Center/size boxes to corner boxes (same arithmetic as the reference implementation)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


class RTDETRPostProcessor(nn.Module):
    """Sigmoid scores, top-`num_top_queries` (query, class) pairs, boxes scaled to the original image."""

    def __init__(
        self, num_classes: int = 80, num_top_queries: int = 300, remap_mscoco_category: bool = True
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_top_queries = num_top_queries
        self.remap_mscoco_category = remap_mscoco_category
        self.deploy_mode = False
        # Query row of each kept entry in the last call, for matching entries across implementations.
        self.last_query_index: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_top_queries={self.num_top_queries}"

    def deploy(self) -> RTDETRPostProcessor:
        """Switch to the export form: a tuple of tensors, contiguous labels."""
        self.eval()
        self.deploy_mode = True
        return self

    def select(
        self, outputs: dict[str, torch.Tensor], orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels int64 [B, K], boxes float [B, K, 4] xyxy pixels, scores [B, K]) with contiguous labels.

        orig_target_sizes is [B, 2] holding (w, h) of each original image.
        """
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        boxes_xyxy = box_cxcywh_to_xyxy(boxes) * orig_target_sizes.repeat(1, 2).unsqueeze(1)
        scores, index = torch.topk(F.sigmoid(logits).flatten(1), self.num_top_queries, dim=-1)
        labels = index - index // self.num_classes * self.num_classes  # mod, kept export-friendly
        query = index // self.num_classes
        self.last_query_index = query
        picked = boxes_xyxy.gather(1, query.unsqueeze(-1).expand(-1, -1, boxes_xyxy.shape[-1]))
        return labels, picked, scores

    def forward(
        self, outputs: dict[str, torch.Tensor], orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | list[dict[str, torch.Tensor]]:
        labels, boxes, scores = self.select(outputs, orig_target_sizes)
        if self.deploy_mode:
            return labels, boxes, scores
        if self.remap_mscoco_category:
            table = torch.tensor(COCO_CATEGORY_IDS, dtype=torch.int64, device=labels.device)
            labels = table[labels]
        return [
            {"labels": lab, "boxes": box, "scores": sco}
            for lab, box, sco in zip(labels, boxes, scores, strict=True)
        ]
