"""Where the batch lives in a static batch-`b` ONNX graph, and the constants that must follow it.

A graph traced at a fixed batch has that batch folded into shape constants, often merged with
other factors (`[4, 17, -1, 16]` is batch x 4 windows; `[2, 16, 8, 8]` batch x 2 heads). PyTorch
keeps the batch as the *major* factor of whichever axis holds it, so it can be followed through
the graph: a Reshape moves it to the output axis whose preceding dims hold as many elements as
those before it in the input (a prefix-product match on the static shapes). `track_batch_axis`
walks the graph once and rewrites what the trace baked in: each Reshape target infers that axis
(-1, every other entry explicit; 0 where the batch axis is copied unchanged), batch-free tensors
(constants expanded to batch 1 at export, such as a class token) are tiled by N where they meet
batched ones, a Slice end on the batch axis is opened, and a ScatterND that overwrote a whole
batch-1 tensor becomes its updates. Tile repeats stay: they are the model's own counts (`repeat`
at batch N). Operators it cannot follow raise, naming the node; callers then prove the result by
running it (`rtq.models.onnx_source.check_dynamic_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ops whose batch axis follows their inputs by broadcasting
ELEMENTWISE = frozenset(
    """Add Sub Mul Div Pow Where Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor Max Min Mod PRelu
    Sum Mean Relu Sigmoid Tanh Exp Log Sqrt Erf Sin Cos Neg Abs Not Cast CastLike Floor Ceil Round Reciprocal
    Identity Dropout Clip Softplus LeakyRelu Elu HardSigmoid HardSwish Gelu Sign IsNaN IsInf QuantizeLinear
    DequantizeLinear Selu Mish Celu""".split()
)
# ops that need the batch on axis 0 of their data input
CHANNEL_FIRST = frozenset(
    """Conv ConvTranspose MaxPool AveragePool GlobalAveragePool GlobalMaxPool LRN BatchNormalization
    InstanceNormalization GroupNormalization DepthToSpace SpaceToDepth""".split()
)
AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "ArgMax", "ArgMin", "TopK", "CumSum", "Split", "Concat"}
REDUCE = {"ReduceMax", "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2"}
SHAPE = -1  # marker: the tensor is a shape vector computed from a batched tensor (runtime value)


class BatchAxisError(ValueError):
    """The batch cannot be followed through a node; the message names it."""


@dataclass
class BatchAxes:
    """What `track_batch_axis` found and changed."""

    reshapes: list[str] = field(default_factory=list)  # Reshape nodes whose target now infers the batch
    tiled: list[str] = field(default_factory=list)  # batch-free tensors tiled by N where batch meets them
    slices: list[str] = field(default_factory=list)  # Slice nodes whose batch-axis end became open
    scatters: list[str] = field(default_factory=list)  # whole-tensor ScatterND nodes made Identity
    dropped: list[str] = field(default_factory=list)  # empty constants removed from Concat inputs


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


class _Tracker:
    def __init__(self, model: onnx.ModelProto, batch: int, report: BatchAxes) -> None:
        self.model, self.batch, self.report = model, batch, report
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.shapes: dict[str, list[int]] = {}
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            dims = info.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[info.name] = [d.dim_value for d in dims]
        self.consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and _attr(node, "value") is not None:
                self.consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
        for name, value in self.consts.items():
            self.shapes.setdefault(name, list(value.shape))
        self.pos: dict[str, int | None] = {name: None for name in self.consts}
        self.pos[model.graph.input[0].name] = 0
        self.new_nodes: dict[int, list[onnx.NodeProto]] = {}
        self.count = 0
        self.batch_vector: str | None = None
        self.replaced: set[str] = set()  # constants this rewrite stopped using (dropped when orphaned)

    def rank(self, name: str) -> int:
        if name not in self.shapes:
            raise BatchAxisError(f"tensor {name!r} has no static shape in the batch-{self.batch} graph")
        return len(self.shapes[name])

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        return self.consts.get(node.input[index]) if len(node.input) > index and node.input[index] else None

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_dynbatch{self.count}"

    def add_const(self, value: np.ndarray, stem: str) -> str:
        name = self.fresh(stem)
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        self.consts[name] = value
        return name

    def tile_by_batch(self, at: int, tensor: str, axis: int) -> str:
        """`tensor` repeated N times along `axis` (batch-major: every batch element gets the same copy)."""
        nodes = self.new_nodes.setdefault(at, [])
        if self.batch_vector is None:
            shape, self.batch_vector = self.fresh("input_shape"), self.fresh("batch")
            index = self.add_const(np.array([0], np.int64), "zero")
            nodes += [
                helper.make_node("Shape", [self.model.graph.input[0].name], [shape]),
                helper.make_node("Gather", [shape, index], [self.batch_vector], axis=0),
            ]
        rank = self.rank(tensor)
        pieces = []
        if axis > 0:
            pieces.append(self.add_const(np.ones(axis, np.int64), "ones"))
        pieces.append(self.batch_vector)
        if axis < rank - 1:
            pieces.append(self.add_const(np.ones(rank - axis - 1, np.int64), "ones"))
        repeats, out = self.fresh(f"{tensor}_repeats"), self.fresh(tensor)
        nodes += [
            helper.make_node("Concat", pieces, [repeats], axis=0),
            helper.make_node("Tile", [tensor, repeats], [out]),
        ]
        self.shapes[out], self.pos[out] = list(self.shapes[tensor]), axis
        self.report.tiled.append(tensor)
        return out

    def align(self, at: int, node: onnx.NodeProto, out_rank: int, force: bool = False) -> int | None:
        """Batch inputs agree on one output axis; batch-free ones are tiled where broadcasting cannot
        stretch them (or always, with `force`, for ops that do not broadcast: Concat, GridSample)."""
        axes = {n: self.pos.get(n) for n in node.input if n}
        found = {a + out_rank - self.rank(n) for n, a in axes.items() if a is not None and a != SHAPE}
        if len(found) > 1:
            raise BatchAxisError(f"{node.op_type} node {node.name!r} mixes the batch on axes {sorted(found)}")
        if not found:
            return None
        axis = found.pop()
        for i, name in enumerate(node.input):
            if not name or self.pos.get(name) is not None:
                continue
            shape = self.shapes.get(name, [])
            local = axis - (out_rank - len(shape))
            if 0 <= local < len(shape) and (shape[local] != 1 or force and len(shape) == out_rank):
                node.input[i] = self.tile_by_batch(at, name, local)
        return axis

    def reshape(self, node: onnx.NodeProto, p: int) -> int:
        src, dst = self.shapes[node.input[0]], self.shapes[node.output[0]]
        before = int(np.prod(src[:p]))
        fits = (q for q in range(len(dst)) if int(np.prod(dst[:q])) == before and dst[q] % self.batch == 0)
        q = next(fits, None)
        if q is None:
            raise BatchAxisError(f"Reshape node {node.name!r} splits the batch ({src} -> {dst})")
        target = self.const(node, 1)
        if target is None:
            return q
        new = np.asarray(dst, np.int64)
        if not _attr(node, "allowzero", 0) and p == q and src[p] == dst[q] and target[q] in (0, self.batch):
            new = target.copy()  # copy the batch from the input: the form older exports already use
            new[q] = 0
        else:
            new[q] = -1
        if not np.array_equal(new, target):
            self.replaced.add(node.input[1])
            node.input[1] = self.add_const(new, node.input[1])
            self.report.reshapes.append(node.name)
        return q

    def slice_batch(self, node: onnx.NodeProto, p: int) -> None:
        starts, ends, axes = self.const(node, 1), self.const(node, 2), self.const(node, 3)
        if starts is None or ends is None:
            raise BatchAxisError(f"Slice node {node.name!r} has computed bounds")
        rank = self.rank(node.input[0])
        axes = np.arange(len(starts)) if axes is None else (axes + rank) % rank
        hit = np.nonzero(axes == p)[0]
        if len(hit) == 0:
            return
        k = int(hit[0])
        steps = self.const(node, 4)
        if starts[k] != 0 or (steps is not None and steps[k] != 1) or ends[k] < self.batch:
            raise BatchAxisError(f"Slice node {node.name!r} cuts the batch axis")
        if ends[k] < np.iinfo(np.int64).max:
            new = ends.copy()
            new[k] = np.iinfo(np.int64).max
            self.replaced.add(node.input[2])
            node.input[2] = self.add_const(new, node.input[2])
            self.report.slices.append(node.name)

    def visit(self, at: int, node: onnx.NodeProto) -> None:
        op = node.op_type
        batched = [n for n in node.input if n and self.pos.get(n) is not None]
        if op == "Constant" or not batched:
            for out in node.output:
                self.pos.setdefault(out, None)
            return
        data = node.input[0]
        p = self.pos.get(data)
        makes_batch = op in ("ConstantOfShape", "Range") or op in ("Reshape", "Expand", "Tile") and p is None
        if op in ("Shape", "Size") or all(self.pos[n] == SHAPE for n in batched) and not makes_batch:
            for out in node.output:  # arithmetic on shape vectors: correct at run time, left alone
                self.pos[out] = SHAPE
            return
        out_rank = self.rank(node.output[0])
        axis: int | None
        if op in ELEMENTWISE:
            axis = self.align(at, node, out_rank)
        elif op in CHANNEL_FIRST or op in ("GridSample", "Resize"):
            if op == "Resize" and self.const(node, 3) is not None:
                raise BatchAxisError(f"Resize node {node.name!r} has fixed output sizes")
            axis = self.align(at, node, out_rank, force=True) if op == "GridSample" else p
            if axis != 0:
                raise BatchAxisError(f"{op} node {node.name!r} needs the batch on axis 0, not {axis}")
        elif makes_batch:
            axis = 0  # batch-free data given a run-time (batch-carrying) shape: batch-major
        elif op in ("Transpose", "Reshape", "Expand", "Tile", "Squeeze", "Unsqueeze", "Flatten", "Slice"):
            if p is None or p == SHAPE:
                raise BatchAxisError(f"{op} node {node.name!r} gets the batch only through a side input")
            axis = self.data_led(node, p, out_rank)
        elif op in AXIS_OPS or op in REDUCE or op in ("LayerNormalization", "Gather", "GatherElements"):
            axis = self.axis_op(at, node, out_rank)
        elif op == "MatMul":
            axis = self.matmul(at, node, out_rank)
        elif op == "ScatterND":
            axis = self.full_scatter(node)
        elif op == "Gemm" and p == 0 and not _attr(node, "transA", 0):
            axis = 0
        else:
            raise BatchAxisError(f"cannot follow the batch through {op} node {node.name!r}")
        for out in node.output:
            self.pos[out] = axis

    def data_led(self, node: onnx.NodeProto, p: int, out_rank: int) -> int:
        """Ops whose output batch axis follows from their data input's axis `p` alone."""
        op, data = node.op_type, node.input[0]
        if op == "Transpose":
            return list(_attr(node, "perm") or range(out_rank)[::-1]).index(p)
        if op == "Reshape":
            return self.reshape(node, p)
        if op in ("Expand", "Tile"):
            axis = p + out_rank - self.rank(data)
            if op == "Expand" and self.shapes[node.output[0]][axis] != self.shapes[data][p]:
                raise BatchAxisError(f"Expand node {node.name!r} broadcasts the batch axis")
            return axis
        if op == "Slice":
            self.slice_batch(node, p)
            return p
        if op == "Flatten":
            cut = int(_attr(node, "axis", 1)) % max(self.rank(data), 1)
            shape = self.shapes[data]
            if int(np.prod(shape[:p] if p < cut else shape[cut:p])) != 1:
                raise BatchAxisError(f"Flatten node {node.name!r} makes the batch a minor factor")
            return 0 if p < cut else 1
        raw = self.const(node, 1) if len(node.input) > 1 else _attr(node, "axes")
        rank = out_rank if op == "Unsqueeze" else self.rank(data)
        axes = sorted(int(a) % rank for a in np.asarray(raw).reshape(-1))
        if op == "Squeeze":
            if p in axes:
                raise BatchAxisError(f"Squeeze node {node.name!r} removes the batch axis")
            return p - sum(a < p for a in axes)
        axis = p
        for a in axes:
            axis += a <= axis
        return axis

    def full_scatter(self, node: onnx.NodeProto) -> int | None:
        """A ScatterND that overwrites every element (a slice assignment covering the whole tensor,
        whose indices name batch 0) is its updates: it becomes an Identity of them."""
        indices, data, updates = self.const(node, 1), node.input[0], node.input[2]
        shape = self.shapes[data]
        plain = _attr(node, "reduction", b"none") == b"none"
        if indices is not None and self.shapes.get(updates) == shape and plain:
            grid = np.indices(shape[: indices.shape[-1]]).reshape(indices.shape[-1], -1).T
            if np.array_equal(indices.reshape(-1, indices.shape[-1]), grid):
                node.op_type = "Identity"
                self.replaced.update(node.input[:2])
                del node.input[:], node.attribute[:]
                node.input.append(updates)
                self.report.scatters.append(node.name)
                return self.pos.get(updates)
        raise BatchAxisError(f"ScatterND node {node.name!r} writes part of a batch-1 tensor")

    def matmul(self, at: int, node: onnx.NodeProto, out_rank: int) -> int:
        """Batch on a broadcast (leading) axis of either side, or on the rows of the left side."""
        left, right = (self.pos.get(n) for n in node.input)
        ranks = [self.rank(n) for n in node.input]
        if left is not None and left == ranks[0] - 2 and right is None:
            return out_rank - 2
        if (left is None or left < ranks[0] - 2) and (right is None or right < ranks[1] - 2):
            found = self.align(at, node, out_rank)
            if found is not None:
                return found
        raise BatchAxisError(f"MatMul node {node.name!r} contracts over the batch")

    def axis_op(self, at: int, node: onnx.NodeProto, out_rank: int) -> int | None:
        op, data = node.op_type, node.input[0]
        rank = self.rank(data)
        default = -1 if op in ("Softmax", "LogSoftmax", "Hardmax", "LayerNormalization") else 0
        axis = int(_attr(node, "axis", default)) % rank
        if op in REDUCE:
            raw = self.const(node, 1) if len(node.input) > 1 and node.input[1] else _attr(node, "axes")
            axes = list(range(rank)) if raw is None else [int(a) % rank for a in np.asarray(raw).reshape(-1)]
            p = self.pos[data]
            if p is None or p == SHAPE or p in axes:
                raise BatchAxisError(f"{op} node {node.name!r} reduces over the batch")
            return p if _attr(node, "keepdims", 1) else p - sum(a < p for a in axes)
        if op == "Gather":
            p, q = self.pos.get(data), self.pos.get(node.input[1])
            if p is not None and p != SHAPE and q is None and p != axis:
                return p if p < axis else p + self.rank(node.input[1]) - 1
            if p is None and q is not None and q != SHAPE:
                return axis + q
            raise BatchAxisError(f"Gather node {node.name!r} indexes along the batch")
        if op == "Concat":  # empty batch-free pieces add nothing, and tiling them confuses compilers
            empty = [n for n in node.input if self.pos.get(n) is None and 0 in self.shapes.get(n, [1])]
            for name in empty[: len(node.input) - 1]:
                node.input.remove(name)
                self.replaced.add(name)
                self.report.dropped.append(name)
        found = self.align(at, node, out_rank, force=op in ("Concat", "GatherElements"))
        if found is None or found == axis or op == "LayerNormalization" and found >= axis:
            raise BatchAxisError(f"{op} node {node.name!r} works along the batch axis")
        return found

    def run(self) -> BatchAxes:
        graph = self.model.graph
        for at, node in enumerate(graph.node):
            self.visit(at, node)
        for info in graph.output:
            if self.pos.get(info.name) != 0:
                raise BatchAxisError(f"graph output {info.name!r} does not carry the batch on axis 0")
        nodes = []
        for at, node in enumerate(graph.node):
            nodes += [*self.new_nodes.get(at, []), node]
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [init for init in graph.initializer if init.name in used or init.name not in self.replaced]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        return self.report


def track_batch_axis(model: onnx.ModelProto, batch: int, report: BatchAxes | None = None) -> BatchAxes:
    """Rewrite `model` in place so its constants follow a batch of any size (see the module docstring);
    what changed is added to `report` (a new one by default)."""
    return _Tracker(model, batch, BatchAxes() if report is None else report).run()


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every constant subgraph (shape arithmetic on static shapes included) folded.

    TorchScript exports compute many shapes at run time (`Shape -> Gather -> Concat`); at a static
    batch those are constants, and folding them (ONNX Runtime's basic level: standard ONNX ops
    only) leaves the plain constants `track_batch_axis` can follow.
    """
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3  # folding leaves unused constants, and ORT warns about each
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "folded.onnx")
        # MatMul + Add stay as they are (the fusion to Gemm would wrap every one in two Reshapes)
        ort.InferenceSession(
            model.SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=["MatMulAddFusion"],
        )
        return onnx.load(options.optimized_model_filepath)
