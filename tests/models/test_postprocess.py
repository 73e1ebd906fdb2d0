"""RT-DETR post-processing: top-K over queries x classes, xyxy in original pixels, COCO remap."""

from __future__ import annotations

import torch

from rtq.models.postprocess import COCO_CATEGORY_IDS, RTDETRPostProcessor, box_cxcywh_to_xyxy


def test_box_conversion() -> None:
    out = box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]]))
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.3, 0.6, 0.7]]))


def test_deploy_returns_topk_labels_boxes_scores_in_pixels() -> None:
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 2, 1] = 3.0  # best: query 2, class 1
    logits[0, 0, 3] = 1.0  # second: query 0, class 3
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.25, 0.5, 0.5, 1.0]]])
    post = RTDETRPostProcessor(num_classes=4, num_top_queries=2).deploy()
    labels, out_boxes, scores = post({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 100]]))
    assert labels.tolist() == [[1, 3]] and labels.dtype == torch.int64
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([[3.0, 1.0]])))
    torch.testing.assert_close(out_boxes[0, 0], torch.tensor([0.0, 0.0, 100.0, 100.0]))
    torch.testing.assert_close(out_boxes[0, 1], torch.tensor([80.0, 40.0, 120.0, 60.0]))
    assert post.last_query_index is not None and post.last_query_index.tolist() == [[2, 0]]


def test_non_deploy_maps_labels_to_coco_category_ids() -> None:
    logits = torch.full((1, 2, 80), -10.0)
    logits[0, 0, 79] = 5.0
    logits[0, 1, 11] = 4.0
    post = RTDETRPostProcessor(num_top_queries=2)
    (result,) = post({"pred_logits": logits, "pred_boxes": torch.rand(1, 2, 4)}, torch.tensor([[10, 10]]))
    assert result["labels"].tolist() == [90, 13]
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[11] == 13
