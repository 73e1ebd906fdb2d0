"""Finding the decoder cross-attention projection pairs by graph structure.

Each RT-DETRv2 decoder layer has two Linear layers, ``sampling_offsets`` and ``attention_weights``,
that read the same query. In an exported graph a Linear is ``MatMul(x, W^T) -> Add(bias)`` where
``W`` is a constant (FP32) or comes from a DequantizeLinear of int8 values (Q/DQ graph, possibly
through a Transpose). Node names are only a hint: the pair is found because both branches read one
tensor; the names (or the 2:1 output width of RT-DETRv2) say which is which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from rtq.surgery.base import Unmatched

HINTS = ("sampling_offsets", "attention_weights")


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """Values of a constant tensor: an initializer or a Constant node output, through Identity nodes
    (the PyTorch exporter routes parameters shared by several layers through Identity)."""
    while len(tensor.inputs) == 1 and tensor.inputs[0].op == "Identity":
        tensor = tensor.inputs[0].inputs[0]
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        if value is not None:
            return np.asarray(getattr(value, "values", value))
    return None


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) == 1 else None


def skip_casts(tensor: gs.Tensor) -> gs.Tensor:
    """Follow Cast nodes upwards: modelopt exports identity Casts before each input quantizer."""
    node = producer(tensor)
    while node is not None and node.op == "Cast":
        tensor = node.inputs[0]
        node = producer(tensor)
    return tensor


def layer_prefix(name: str) -> str:
    """'/model/decoder/decoder/layers.1/cross_attn/sampling_offsets/MatMul' -> '.../layers.1/cross_attn'."""
    for hint in (*HINTS, "fused_attn_offset_prediction"):
        idx = name.find(hint)
        if idx >= 0:
            return name[:idx].rstrip("/.") or name
    return name.rsplit("/", 1)[0] or name


def hint_of(name: str) -> str | None:
    for hint in HINTS:
        if hint in name:
            return hint
    return None


@dataclass
class LinearBranch:
    """One ``MatMul -> Add(bias)`` whose weight path ends in a constant."""

    matmul: gs.Node
    add: gs.Node
    output: gs.Variable  # the Add output
    root: gs.Tensor  # the float tensor the branch reads (before its input Q/DQ and Casts)
    out_features: int

    @property
    def name(self) -> str:
        return self.matmul.name or self.output.name


def weight_source(matmul: gs.Node) -> tuple[gs.Node | None, bool]:
    """The node that produces the MatMul weight, skipping one Transpose; (node, transposed)."""
    node = producer(matmul.inputs[1])
    transposed = False
    if node is not None and node.op == "Transpose":
        perm = list(node.attrs.get("perm", [1, 0]))
        if perm != [1, 0]:
            return None, False
        transposed = True
        node = producer(node.inputs[0])
    return node, transposed


def analyse_linear(matmul: gs.Node) -> LinearBranch | str:
    """A `LinearBranch`, or why this MatMul is not a Linear layer with a bias."""
    who = f"MatMul '{matmul.name}'"
    consumers = matmul.outputs[0].outputs
    if len(consumers) != 1 or consumers[0].op != "Add":
        return f"{who} output does not feed exactly one Add (the bias)"
    add = consumers[0]
    others = [t for t in add.inputs if t is not matmul.outputs[0]]
    bias = const_value(others[0]) if len(others) == 1 else None
    if bias is None:
        return f"{who}: Add '{add.name}' has no constant bias input"
    w_const = const_value(matmul.inputs[1])
    src, transposed = weight_source(matmul)
    if w_const is not None:
        shape = w_const.shape
    elif src is not None and src.op == "DequantizeLinear":
        w_in = const_value(src.inputs[0])
        if w_in is None:
            q = producer(src.inputs[0])
            w_in = const_value(q.inputs[0]) if q is not None and q.op == "QuantizeLinear" else None
        if w_in is None:
            return f"{who}: weight DequantizeLinear '{src.name}' does not read a constant"
        shape = w_in.shape
    elif src is not None and (w := const_value(src.outputs[0]) if src.op == "Constant" else None) is not None:
        shape = w.shape
    else:
        kind = "nothing" if src is None else f"a {src.op}"
        return f"{who} input 1 is not a DequantizeLinear or constant weight (it is produced by {kind})"
    if len(shape) != 2:
        return f"{who} weight has rank {len(shape)}, not 2"
    out_features = int(shape[0] if transposed else shape[1])
    if int(np.asarray(bias).size) != out_features:
        return f"{who}: bias has {np.asarray(bias).size} values for {out_features} output channels"
    x = matmul.inputs[0]
    dq = producer(x)
    if dq is not None and dq.op == "DequantizeLinear":
        q = producer(dq.inputs[0])
        if q is not None and q.op == "QuantizeLinear":
            x = q.inputs[0]
    return LinearBranch(matmul, add, add.outputs[0], skip_casts(x), out_features)


@dataclass
class ProjectionPair:
    """The two projections of one decoder layer's cross attention."""

    layer: str
    sampling_offsets: LinearBranch
    attention_weights: LinearBranch

    @property
    def branches(self) -> tuple[LinearBranch, LinearBranch]:
        return self.sampling_offsets, self.attention_weights


@dataclass
class PairSearch:
    pairs: list[ProjectionPair] = field(default_factory=list)
    unmatched: list[Unmatched] = field(default_factory=list)


def find_projection_pairs(graph: gs.Graph, layer_filter: str | None = None) -> PairSearch:
    """All (sampling_offsets, attention_weights) pairs, in topological order, plus why others failed.

    A pair is two Linear branches reading one tensor whose names carry the two hints, or, for unnamed
    graphs, exactly two branches reading one tensor with a 2:1 output width.
    """
    graph.toposort()
    result = PairSearch()
    groups: dict[int, list[LinearBranch]] = {}
    hinted_failures: list[tuple[gs.Node, str]] = []
    for node in graph.nodes:
        if node.op != "MatMul":
            continue
        branch = analyse_linear(node)
        if isinstance(branch, str):
            if hint_of(node.name):
                hinted_failures.append((node, branch))
            continue
        groups.setdefault(id(branch.root), []).append(branch)
    for node, reason in hinted_failures:
        result.unmatched.append(Unmatched(layer_prefix(node.name), reason))

    for branches in groups.values():
        so = [b for b in branches if hint_of(b.name) == "sampling_offsets"]
        aw = [b for b in branches if hint_of(b.name) == "attention_weights"]
        pair: tuple[LinearBranch, LinearBranch] | None = None
        if len(so) == 1 and len(aw) == 1:
            pair = (so[0], aw[0])
        elif len(so) + len(aw) == 1:
            lone = (so + aw)[0]
            result.unmatched.append(Unmatched(layer_prefix(lone.name), (
                f"MatMul '{lone.name}' ({hint_of(lone.name)}) has no partner projection reading the "
                f"same tensor '{lone.root.name}'")))
        elif len(branches) == 2 and not so and not aw:
            a, b = sorted(branches, key=lambda br: -br.out_features)
            if a.out_features == 2 * b.out_features:
                pair = (a, b)
        if pair is not None:
            layer = layer_prefix(pair[0].name) if hint_of(pair[0].name) else _common_prefix(pair)
            if layer_filter is None or re.search(layer_filter, layer):
                result.pairs.append(ProjectionPair(layer, *pair))
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    result.pairs.sort(key=lambda p: order[id(p.sampling_offsets.matmul)])
    return result


def _common_prefix(pair: tuple[LinearBranch, LinearBranch]) -> str:
    a, b = pair[0].name, pair[1].name
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    prefix = a[:i].rstrip("/._")
    return prefix or f"{a}+{b}"
