"""Pass ``decompose_grid_sample``: replace each ``GridSample`` by gathers and arithmetic.

Why: deformable attention exports to ``GridSample``, which TensorRT has been seen to miscompile
(NVIDIA/TensorRT #4813: 6,269 ONNX Runtime detections against 1,481 on TensorRT); the usual fix is
to sample with plain gathers instead. The replacement uses only Shape, Slice, Floor, Clip, Cast,
Reshape, Expand, GatherElements and elementwise ops, with every size read from the graph at run time,
so a dynamic batch stays dynamic.

Options:
  ``mode``: ``bilinear`` (default; the same values as ``GridSample(mode=bilinear, padding_mode=zeros,
  align_corners=0)`` up to float rounding: four gathered corners, each weighted and zeroed outside the
  map) or ``discrete`` (one gathered cell, ``floor(loc * size + 0.5)`` clamped to the map, with
  ``loc = (grid + 1) / 2``: RT-DETRv2's ``discrete`` sampling, which changes the model's output and is
  meant for checkpoints trained or evaluated with it).
Other GridSample settings (nearest/cubic, border/reflection padding, align_corners=1, 5-D) are reported
as unmatched and left in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from rtq.surgery.base import PassReport, Unmatched, register_pass

PASS_NAME = "decompose_grid_sample"
MODES = ("bilinear", "discrete")
_BILINEAR = {"bilinear", "linear"}  # opset 16 name, opset 20 name


class _Builder:
    """Appends nodes named after the replaced GridSample to the graph."""

    def __init__(self, graph: gs.Graph, prefix: str) -> None:
        self.graph, self.prefix, self.count = graph, prefix, 0

    def __call__(
        self, op: str, inputs: list[Any], attrs: dict[str, Any] | None = None, dtype: Any = np.float32
    ) -> Any:
        self.count += 1
        name = f"{self.prefix}/{op}_{self.count}"
        out = gs.Variable(f"{name}_out", dtype=dtype)
        self.graph.nodes.append(gs.Node(op, name=name, attrs=attrs or {}, inputs=inputs, outputs=[out]))
        return out

    def const(self, value: Any, dtype: Any) -> gs.Constant:
        self.count += 1
        return gs.Constant(f"{self.prefix}/const_{self.count}", np.asarray(value, dtype=dtype))


def _unsupported(node: gs.Node) -> str | None:
    mode = str(node.attrs.get("mode", "bilinear"))
    if mode not in _BILINEAR:
        return f"mode={mode!r}"
    if str(node.attrs.get("padding_mode", "zeros")) != "zeros":
        return f"padding_mode={node.attrs.get('padding_mode')!r}"
    if int(node.attrs.get("align_corners", 0)) != 0:
        return "align_corners=1"
    x = node.inputs[0]
    if x.shape is not None and len(x.shape) != 4:
        return f"a {len(x.shape)}-D input"
    return None


def _replace(graph: gs.Graph, node: gs.Node, mode: str) -> None:
    """X [N, C, H, W], grid [N, Hg, Wg, 2] -> Y [N, C, Hg, Wg] without GridSample."""
    b = _Builder(graph, node.name or PASS_NAME)
    x, grid = node.inputs[0], node.inputs[1]
    i64, f32 = np.int64, np.float32

    def part(tensor: Any, start: int, end: int, axis: int, dtype: Any = i64) -> Any:
        ends = b.const([end], i64)
        return b("Slice", [tensor, b.const([start], i64), ends, b.const([axis], i64)], dtype=dtype)

    shape_x = b("Shape", [x], dtype=i64)
    n_c = part(shape_x, 0, 2, 0)
    height, width = part(shape_x, 2, 3, 0), part(shape_x, 3, 4, 0)  # [1] int64
    hf, wf = b("Cast", [height], {"to": 1}), b("Cast", [width], {"to": 1})
    gx = b("Squeeze", [part(grid, 0, 1, 3, f32), b.const([3], i64)])  # [N, Hg, Wg]
    gy = b("Squeeze", [part(grid, 1, 2, 3, f32), b.const([3], i64)])
    one, half = b.const(1.0, f32), b.const(0.5, f32)
    # Pixel coordinates, align_corners=0: ((g + 1) * size - 1) / 2.
    ix = b("Mul", [b("Sub", [b("Mul", [b("Add", [gx, one]), wf]), one]), half])
    iy = b("Mul", [b("Sub", [b("Mul", [b("Add", [gy, one]), hf]), one]), half])
    w_max = b("Sub", [wf, one])
    h_max = b("Sub", [hf, one])
    zero = b.const(0.0, f32)

    def concat(*parts: Any) -> Any:
        return b("Concat", list(parts), {"axis": 0}, dtype=i64)

    flat = b("Reshape", [x, concat(n_c, b.const([-1], i64))])  # [N, C, H*W]
    grid_shape = b("Shape", [gx], dtype=i64)  # [N, Hg, Wg]
    out_shape = concat(n_c, part(grid_shape, 1, 3, 0))  # [N, C, Hg, Wg]
    index_shape = concat(part(grid_shape, 0, 1, 0), b.const([1, -1], i64))  # [N, 1, Hg*Wg]
    points = part(b("Shape", [b("Reshape", [gx, index_shape])], dtype=i64), 2, 3, 0)
    expand_shape = concat(n_c, points)  # [N, C, Hg*Wg]

    def gather(col: Any, row: Any) -> Any:
        """Values at integer (col, row) already inside the map, as [N, C, Hg, Wg]."""
        index = b("Cast", [b("Add", [b("Mul", [row, wf]), col])], {"to": 7}, dtype=i64)
        index = b("Expand", [b("Reshape", [index, index_shape], dtype=i64), expand_shape], dtype=i64)
        return b("Reshape", [b("GatherElements", [flat, index], {"axis": 2}), out_shape])

    def all_of(a: Any, b_: Any) -> Any:
        return b("And", [a, b_], dtype=np.bool_)

    def within(coordinate: Any, top: Any) -> Any:
        """0 <= coordinate <= top (a corner inside the map; outside ones count as zero padding)."""
        low = b("GreaterOrEqual", [coordinate, zero], dtype=np.bool_)
        return all_of(low, b("LessOrEqual", [coordinate, top], dtype=np.bool_))

    def weighted(value: Any, weight: Any) -> Any:
        return b("Mul", [value, b("Unsqueeze", [weight, b.const([1], i64)])])

    if mode == "discrete":
        col = b("Floor", [b("Add", [b("Mul", [b("Mul", [b("Add", [gx, one]), half]), wf]), half])])
        row = b("Floor", [b("Add", [b("Mul", [b("Mul", [b("Add", [gy, one]), half]), hf]), half])])
        out = gather(b("Clip", [col, zero, w_max]), b("Clip", [row, zero, h_max]))
    else:
        x0, y0 = b("Floor", [ix]), b("Floor", [iy])
        x1, y1 = b("Add", [x0, one]), b("Add", [y0, one])
        wx1, wy1 = b("Sub", [ix, x0]), b("Sub", [iy, y0])
        wx0, wy0 = b("Sub", [one, wx1]), b("Sub", [one, wy1])
        terms = []
        for cx, wx in ((x0, wx0), (x1, wx1)):
            for cy, wy in ((y0, wy0), (y1, wy1)):
                inside = b("Cast", [all_of(within(cx, w_max), within(cy, h_max))], {"to": 1})
                value = gather(b("Clip", [cx, zero, w_max]), b("Clip", [cy, zero, h_max]))
                terms.append(weighted(value, b("Mul", [b("Mul", [wx, wy]), inside])))
        out = b("Add", [b("Add", [terms[0], terms[1]]), b("Add", [terms[2], terms[3]])])
    # The last node writes the GridSample's own output tensor, so consumers and names stay.
    result = node.outputs[0]
    node.outputs.clear()
    node.inputs.clear()
    last = graph.nodes[-1]
    assert last.outputs[0] is out
    last.outputs.clear()
    last.outputs.append(result)


@register_pass(PASS_NAME)
def decompose_grid_sample(graph: Any, options: Mapping[str, Any]) -> PassReport:
    """Replace every supported GridSample node with the gather form of `options['mode']`."""
    report = PassReport(name=PASS_NAME)
    unknown = set(options) - {"mode"}
    mode = str(options.get("mode", "bilinear"))
    if unknown or mode not in MODES:
        reason = f"unknown options {sorted(unknown)}" if unknown else f"mode={mode!r}"
        report.unmatched.append(Unmatched("options", f"{reason}; known: mode in {list(MODES)}"))
        return report
    nodes = [n for n in graph.nodes if n.op == "GridSample"]
    if not nodes:
        report.unmatched.append(Unmatched("graph", "no GridSample node"))
        return report
    for node in nodes:
        why = _unsupported(node)
        if why is not None:
            report.unmatched.append(Unmatched(node.name, f"GridSample with {why} is not decomposed"))
            continue
        _replace(graph, node, mode)
        report.changed.append(f"{node.name}: GridSample -> {mode} gathers")
    return report
