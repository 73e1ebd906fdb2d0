"""A tiny real detector for evaluation tests: one whole-image box per image, scored by mean brightness.

Its outputs are predictable from the inputs alone, so tests can check the evaluation loop's batching,
padding and box bookkeeping exactly, on ONNX Runtime (static or dynamic batch) and PyTorch alike.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "coco_val2017_mini"


def full_image_detector_onnx(path: Path, batch: int | None) -> Path:
    """labels [N,1]=0, boxes [N,1,4]=(0,0,w,h), scores [N,1]=mean(images); `batch=None`: dynamic."""
    n: int | str = "N" if batch is None else batch
    nodes = [
        helper.make_node("Cast", ["orig_target_sizes"], ["wh"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["wh", "wh"], ["zeros"]),
        helper.make_node("Concat", ["zeros", "wh"], ["xyxy"], axis=1),
        helper.make_node("Unsqueeze", ["xyxy", "axis1"], ["boxes"]),
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["scores"]),
        helper.make_node("Sub", ["scores", "scores"], ["zero_scores"]),
        helper.make_node("Cast", ["zero_scores"], ["labels"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "full_image_detector",
        inputs=[
            helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, "H", "W"]),
            helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, [n, 2]),
        ],
        outputs=[
            helper.make_tensor_value_info("labels", TensorProto.INT64, [n, 1]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 1, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n, 1]),
        ],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class FullImageDetector(torch.nn.Module):
    """The same detector in PyTorch."""

    def forward(
        self, images: torch.Tensor, orig_target_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        wh = orig_target_sizes.to(torch.float32)
        boxes = torch.cat([torch.zeros_like(wh), wh], dim=1).unsqueeze(1)
        scores = images.mean(dim=(1, 2, 3)).unsqueeze(1)
        return torch.zeros_like(scores, dtype=torch.int64), boxes, scores


