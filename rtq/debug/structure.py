"""Where in a Q/DQ graph a fusion bug can hide, found from the graph's structure alone.

The localiser needs candidate tensors (places where marking an extra output can stop a TensorRT
fusion) and the fault simulator needs "fusion clusters" (projections that read one quantized
tensor). Both are derived here from op types and edges, never from a list of names, so the same
code works on RT-DETR, YOLOX or a toy graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import onnx

from rtq.onnx_graph import GraphIndex

QUANTIZED_COMPUTE_OPS = frozenset({"MatMul", "Conv", "Gemm", "ConvTranspose"})
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
