"""RF-DETR node groups for sensitivity analysis: ViT backbone, multi-scale projector, decoder + heads.

TorchScript exports (rfdetr's own, and transformers' RF-DETR) name nodes by module path, so the
split is by path segment: `.../backbone/...` without `projector` is the DINOv2 backbone,
`.../projector/...` the encoder-side projector, and every other node (two-stage proposals,
decoder, class and box heads) belongs to the decoder group.
"""

from __future__ import annotations

import onnx

from rtq.errors import UserError

GROUPS = ("backbone", "projector", "decoder")


def rfdetr_node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Node names of each group, in graph order; constants and identities are left out."""
    groups: dict[str, list[str]] = {name: [] for name in GROUPS}
    for node in model.graph.node:
        if node.op_type in ("Constant", "Identity"):
            continue
        parts = node.name.split("/")
        if "projector" in parts:
            groups["projector"].append(node.name)
        elif "backbone" in parts:
            groups["backbone"].append(node.name)
        else:
            groups["decoder"].append(node.name)
    if not groups["backbone"] or not groups["projector"]:
        raise UserError(
            "RF-DETR node names carry no module path (.../backbone/..., .../projector/...): export with "
            "the TorchScript exporter (torch.onnx.export(dynamo=False)) as rfdetr does"
        )
    return groups
