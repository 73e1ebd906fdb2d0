"""ONNX graph utilities shared across rtq: structure maps and typed output marking.

`GraphIndex` gives a graph's producer/consumer maps and tensor types, for code that walks graphs by
structure (fusion clusters, localisation, the adapters' structural node groups). `mark_outputs` is
the one way rtq exposes intermediate tensors as graph outputs: what a runner can return
(layer-wise comparison, quantizer localisation) and, for TensorRT, a fusion barrier. Backends,
surgery, models and debugging all import this module, so it imports nothing of rtq.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import onnx
from onnx import TensorProto, helper

ONNX_TYPE_UNDEFINED = 0


def tensor_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Tensor name -> type: declared inputs, outputs and value_info, completed by shape inference.

    Inference is best effort (custom ops or odd graphs can stop it); the declared types remain.
    Computing this once saves an inference per marking when one model is marked often.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - any failure only means fewer known types
        inferred = model
    types = {init.name: helper.make_tensor_type_proto(init.data_type, list(init.dims))
             for init in model.graph.initializer}
    for graph in (model.graph, inferred.graph):
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type
    return types


def batch_symbol(model: onnx.ModelProto) -> str:
    """The name of the graph inputs' symbolic batch dimension ("N" when none has one)."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            return dims[0].dim_param
    return "N"


def _output_info(name: str, types: Mapping[str, onnx.TypeProto], producers: Mapping[str, onnx.NodeProto],
                 batch: str, guess: bool) -> onnx.ValueInfoProto:
    """Value info of `name`: its known type; else, with `guess`, its producer's input type and rank."""
    known = types.get(name)
    elem = known.tensor_type.elem_type if known is not None else ONNX_TYPE_UNDEFINED
    dims: list[int | str] | None = None
    if known is not None and known.tensor_type.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{name}_dim{i}")
                for i, d in enumerate(known.tensor_type.shape.dim)]
    producer = producers.get(name)
    inputs = [types[i].tensor_type for i in (producer.input if producer else []) if i in types]
    if not elem and guess:
        elem = next((t.elem_type for t in inputs if t.elem_type), TensorProto.FLOAT)
    if dims is None and guess:
        rank = max((len(t.shape.dim) for t in inputs if t.HasField("shape")), default=0)
        dims = [f"{name}_dim{i}" for i in range(rank)] if rank else None
    if not elem:
        return helper.make_empty_tensor_value_info(name)
    if dims and (dims[0] == 0 or (isinstance(dims[0], str) and dims[0].startswith("unk__"))):
        dims[0] = batch
    return helper.make_tensor_value_info(name, elem, dims)


def mark_outputs(model: onnx.ModelProto, tensors: Iterable[str],
                 types: Mapping[str, onnx.TypeProto] | None = None, guess: bool = True) -> onnx.ModelProto:
    """Copy of `model` with `tensors` appended to its outputs (the originals first, untouched).

    Each new output gets its type and shape from `types` (default: `tensor_types(model)`), its
    batch dimension named like the inputs'. A tensor nothing typed gets, with `guess`, its
    producer's input type and rank (float32 at worst), as TensorRT and graphsurgeon want a type;
    without `guess` it stays untyped, which ONNX Runtime accepts and can never get wrong.
    """
    marked = onnx.ModelProto()
    marked.CopyFrom(model)
    types = tensor_types(model) if types is None else types
    producers = {out: node for node in model.graph.node for out in node.output}
    batch = batch_symbol(model)
    present = {o.name for o in marked.graph.output}
    for name in dict.fromkeys(tensors):
        if name not in present:
            marked.graph.output.append(_output_info(name, types, producers, batch, guess))
    return marked


def computed_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor a node computes (Constant nodes aside), in node order."""
    return [out for node in model.graph.node if node.op_type != "Constant" for out in node.output if out]


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
