"""An ONNX graph's producer/consumer maps and tensor types, for code that walks graphs by structure.

Shared by the debugging tools (fusion clusters, localisation) and the model adapters (structural
node groups), so neither has to import the other.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

# Ops that only move or re-type data: a DQ behind them still feeds the consumer.
PASS_THROUGH_OPS = frozenset({"Cast", "Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


class GraphIndex:
    """Producer/consumer maps and tensor element types of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self.initializers = {init.name for init in graph.initializer}
        self.graph_outputs = {out.name for out in graph.output}
        self.elem_type: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
                self.elem_type[info.name] = info.type.tensor_type.elem_type
        except Exception:  # noqa: BLE001 - inference is a help for typing, not a requirement
            pass

    def is_constant(self, tensor: str) -> bool:
        """True for initializers and Constant outputs, also behind Identity/Cast (deduplicated weights)."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in {"Identity", "Cast"}:
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor in self.initializers or (node is not None and node.op_type == "Constant")

    def reaches_dequantize(self, tensor: str) -> bool:
        """True when `tensor` is a DequantizeLinear output, possibly behind layout/cast ops."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in PASS_THROUGH_OPS:
            node = self.producer.get(node.input[0])
        return node is not None and node.op_type == "DequantizeLinear"

    def activation_path(self, tensor: str) -> tuple[str, list[str]]:
        """Follow an activation input back through DQ, Q and casts to the float tensor that was quantized.

        Returns (source tensor, names of the nodes passed on the way). Layout ops are crossed only
        between the DQ and the consumer, so the source is the tensor the quantizer read.
        """
        passed: list[str] = []
        current = tensor
        stage = 0  # 0: before DQ, 1: expecting Q, 2: behind Q (casts only)
        while True:
            node = self.producer.get(current)
            if node is None:
                return current, passed
            if stage == 0 and node.op_type in PASS_THROUGH_OPS:
                pass
            elif stage == 0 and node.op_type == "DequantizeLinear":
                stage = 1
            elif stage == 1 and node.op_type == "QuantizeLinear":
                stage = 2
            elif stage == 2 and node.op_type in {"Cast", "Identity"}:
                pass
            else:
                return current, passed
            passed.append(node.name)
            current = node.input[0]

    def is_float(self, tensor: str) -> bool:
        """Element type is floating point (unknown types count as float for compute ops)."""
        return self.elem_type.get(tensor, onnx.TensorProto.FLOAT) in FLOAT_TYPES

    def bias_add_after(self, tensor: str) -> onnx.NodeProto | None:
        """The Add that adds a constant bias to `tensor`, when it is the tensor's only consumer."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        add = users[0]
        other = [i for i in add.input if i != tensor]
        return add if other and all(self.is_constant(i) for i in other) else None
