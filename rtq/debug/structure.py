"""Where in a Q/DQ graph a fusion bug can hide, found from the graph's structure alone.

The localiser needs candidate tensors (places where marking an extra output can stop a TensorRT
fusion) and the fault simulator needs "fusion clusters" (projections that read one quantized
tensor). Both are derived here from op types and edges, never from a list of names, so the same
code works on RT-DETR, YOLOX or a toy graph.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import onnx

# Ops that only move or re-type data: a DQ behind them still feeds the consumer.
PASS_THROUGH_OPS = frozenset({"Cast", "Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
QUANTIZED_COMPUTE_OPS = frozenset({"MatMul", "Conv", "Gemm", "ConvTranspose"})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
_LAYER_INDEX = re.compile(r"layers[./_](\d+)")


@dataclass(frozen=True)
class Candidate:
    """A tensor that may be marked as an extra output, with why it was picked."""

    tensor: str
    node: str
    kind: str  # "quantized_compute" | "bias_add" | "concat"


@dataclass
class FusionCluster:
    """Projections (DQ -> MatMul/Conv -> bias Add) that read one quantized source tensor.

    TensorRT may merge such siblings into one layer; marking any tensor inside the cluster keeps
    them apart, so every member tensor is an equally good fix.
    """

    source: str
    nodes: list[str] = field(default_factory=list)  # Q/DQ/Cast on the activation path, compute, bias Add
    tensors: list[str] = field(default_factory=list)  # outputs of `nodes` (internal + boundary)
    outputs: list[str] = field(default_factory=list)  # last tensor of each branch (bias Add or compute)
    compute_nodes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Common prefix of the compute nodes' names: readable in reports."""
        names = self.compute_nodes
        prefix = names[0]
        for other in names[1:]:
            while not other.startswith(prefix):
                prefix = prefix[:-1]
        return (prefix.rstrip("/_.") or self.source) + f" [{', '.join(n.split('/')[-2] for n in names)}]"

    @property
    def layer_index(self) -> int | None:
        """Index of the repeated block (`layers.K`) the cluster sits in, if its names say so."""
        found = {m.group(1) for n in self.compute_nodes for m in [_LAYER_INDEX.search(n)] if m}
        return int(found.pop()) if len(found) == 1 else None


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


def find_candidates(model: onnx.ModelProto, include: str | None = None) -> list[Candidate]:
    """Tensors where an extra output can break a fusion, in topological order.

    Picks the outputs of MatMul/Conv/Gemm nodes that read a dequantized input, the constant bias
    Adds right after them, and float Concat points. `include` (a regex) keeps only tensors or node
    names that match it.
    """
    index = GraphIndex(model)
    pattern = re.compile(include) if include else None
    found: list[Candidate] = []
    seen: set[str] = set()

    def add(tensor: str, node: onnx.NodeProto, kind: str) -> None:
        if tensor in seen or tensor in index.graph_outputs:
            return
        if pattern and not (pattern.search(tensor) or pattern.search(node.name)):
            return
        seen.add(tensor)
        found.append(Candidate(tensor, node.name, kind))

    for node in index.nodes:
        if node.op_type in QUANTIZED_COMPUTE_OPS and any(
            index.reaches_dequantize(i) for i in node.input[:2] if i
        ):
            add(node.output[0], node, "quantized_compute")
            bias = index.bias_add_after(node.output[0])
            if bias is not None:
                add(bias.output[0], bias, "bias_add")
        elif (
            node.op_type == "Concat" and index.is_float(node.output[0]) and node.output[0] in index.elem_type
        ):
            add(node.output[0], node, "concat")
    return found


def find_fusion_clusters(
    model: onnx.ModelProto, min_branches: int = 2, ops: frozenset[str] = frozenset({"MatMul", "Gemm"})
) -> list[FusionCluster]:
    """Groups of >= `min_branches` quantized projections (`ops`) that read one source tensor."""
    index = GraphIndex(model)
    by_source: dict[str, FusionCluster] = {}
    for node in index.nodes:
        if node.op_type not in ops or not index.reaches_dequantize(node.input[0]):
            continue
        source, path = index.activation_path(node.input[0])
        cluster = by_source.setdefault(source, FusionCluster(source=source))
        cluster.compute_nodes.append(node.name)
        branch_nodes = [*path, node.name]
        last = node.output[0]
        bias = index.bias_add_after(last)
        if bias is not None:
            branch_nodes.append(bias.name)
            last = bias.output[0]
        for name in branch_nodes:
            if name not in cluster.nodes:
                cluster.nodes.append(name)
        cluster.outputs.append(last)
    by_name = {n.name: n for n in index.nodes}
    clusters = [c for c in by_source.values() if len(c.compute_nodes) >= min_branches]
    for cluster in clusters:
        cluster.tensors = [t for name in cluster.nodes for t in by_name[name].output]
    return clusters


def select_clusters(
    clusters: list[FusionCluster], name_regex: str | None = None, layers: list[int] | None = None
) -> list[FusionCluster]:
    """Clusters whose compute nodes match `name_regex` and whose layer index is in `layers`."""
    pattern = re.compile(name_regex) if name_regex else None
    chosen = []
    for cluster in clusters:
        if pattern and not any(pattern.search(n) for n in cluster.compute_nodes):
            continue
        if layers is not None and cluster.layer_index not in layers:
            continue
        chosen.append(cluster)
    return chosen
