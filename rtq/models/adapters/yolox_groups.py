"""YOLOX node groups for sensitivity analysis: stem, dark2..dark5, neck and one head per stride."""

from __future__ import annotations

import onnx

from rtq.errors import UserError
from rtq.onnx_graph import GraphIndex


def _conv_resolution(index: GraphIndex, model: onnx.ModelProto) -> dict[str, int]:
    """Output height of every Conv node, from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    heights: dict[str, int] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].HasField("dim_value"):
            heights[info.name] = dims[2].dim_value
    return {
        n.name: heights[n.output[0]] for n in index.nodes if n.op_type == "Conv" and n.output[0] in heights
    }


def _ancestors(index: GraphIndex, tensor: str) -> set[str]:
    """Names of all nodes that `tensor` depends on."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        node = index.producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(i for i in node.input if i)
    return seen


def yolox_node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Split a YOLOX ONNX graph into stem, dark2..dark5, neck and one head per stride.

    Exported YOLOX node names carry no module path (`Conv_41`), so the split is structural: the
    per-stride head branches are the inputs of the last multi-input Concat before the output (each
    branch's exclusive ancestors form its head); the backbone is every node before the lateral conv
    that feeds the first Resize (top-down FPN path), split into stages by output resolution; the
    rest is the neck.
    """
    index = GraphIndex(model)
    order = {n.name: i for i, n in enumerate(index.nodes)}
    tensor = model.graph.output[0].name
    node = index.producer.get(tensor)
    while node is not None and not (node.op_type == "Concat" and len(node.input) >= 2):
        node = index.producer.get(node.input[0])
    if node is None:
        raise UserError("no multi-input Concat before the output: not a YOLOX-style head")
    branches = list(node.input)
    ancestry = {b: _ancestors(index, b) for b in branches}
    heights = _conv_resolution(index, model)
    exclusive = {}
    for branch in branches:
        others = set().union(*(ancestry[b] for b in branches if b != branch))
        exclusive[branch] = sorted(ancestry[branch] - others, key=order.__getitem__)
    # Heads per stride are identical; a branch's exclusive part longer than the shortest one also
    # holds neck nodes only that stride uses (the last bottom-up block), which belong to the neck.
    head_size = min(len(nodes) for nodes in exclusive.values())
    input_height = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value or 0
    groups: dict[str, list[str]] = {}
    head_nodes: set[str] = set()
    for position, branch in enumerate(branches):
        own = exclusive[branch][-head_size:]
        conv_heights = sorted({heights[n] for n in own if n in heights})
        stride = input_height // conv_heights[0] if conv_heights and input_height else position
        groups[f"head_s{stride}"] = own
        head_nodes |= set(own)
    first_resize = next((n for n in index.nodes if n.op_type == "Resize"), None)
    if first_resize is None:
        raise UserError("no Resize node: cannot find the FPN neck of this YOLOX graph")
    lateral = index.producer.get(first_resize.input[0])
    while lateral is not None and lateral.op_type != "Conv":
        lateral = index.producer.get(lateral.input[0])
    neck_start = order[lateral.name] if lateral is not None else order[first_resize.name]
    backbone: dict[int, list[str]] = {}
    stage_height = next(heights[n.name] for n in index.nodes if n.name in heights)  # pre-conv ops: stem
    for n in index.nodes:
        if order[n.name] >= neck_start:
            break
        if n.name in heights:
            stage_height = heights[n.name]
        backbone.setdefault(stage_height, []).append(n.name)
    named: dict[str, list[str]] = {}
    for rank, height in enumerate(sorted(backbone, reverse=True)):
        named["stem" if rank == 0 else f"dark{rank + 1}"] = backbone[height]
    in_backbone = {n for nodes in named.values() for n in nodes}
    named["neck"] = [n.name for n in index.nodes if n.name not in in_backbone and n.name not in head_nodes]
    named.update(dict(sorted(groups.items(), key=lambda kv: int(kv[0].removeprefix("head_s")))))
    return named
