"""Marking ONNX tensors as graph outputs, typed: the one way rtq exposes intermediate tensors.

A graph output is what a runner can return (layer-wise comparison, quantizer localisation) and,
for TensorRT, a fusion barrier (the fusion-bug fix). Backends, surgery and debugging all import
this module, so it imports nothing of rtq but errors.
"""

from __future__ import annotations

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
