"""Graph pass: append YOLOX box decoding and class-wise NMS to the network (ONNX or TensorRT's plugin).

With decoding and NMS inside the graph, the engine hands back at most `top_k` final detections per
image (`num_dets` int32, `det_boxes`, `det_scores`, `det_classes` int32, zero past `num_dets`: the
TensorRT End2End convention) and the host only undoes the letterbox. By default only standard ONNX
ops are used (NonMaxSuppression, ScatterND, TopK, GatherElements), all of which ONNX Runtime and
TensorRT's ONNX parser support, and every shape is computed from the batch at run time, so a
symbolic batch `N` stays symbolic.

`nms: efficient_nms_trt` writes TensorRT's `EfficientNMS_TRT` plugin node instead of the ONNX ops
(the TensorRT End2End form; on CPU it runs through `plugins/efficient_nms_trt`'s reference op). Its
rules differ from the ONNX form only at the margins: scores `>=` and IoU `>=` the thresholds, and
only the best 5000 (box, class) candidates of an image enter NMS.

Class-wise NMS falls out of ONNX NonMaxSuppression itself, which runs per score column (class).
Selected (image, class, anchor) triples are scattered back into a zero score map and the best
`top_k` of each image are taken with TopK, which sorts by score and pads with zeros. This follows
`rtq.models.adapters.yolox.YoloxIO` (multi-label scores `objectness * class`, strict `>` score
and IoU thresholds) so host and graph give the same detections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rtq.models.adapters.yolox import anchor_grid
from rtq.surgery.base import PassReport, Unmatched, register_pass

PASS_NAME = "end2end_nms"
DEFAULTS: dict[str, Any] = {
    "output": "output",  # the raw head output [N, A, 5 + C]
    "strides": [8, 16, 32],
    "top_k": 100,
    "iou_threshold": 0.65,
    "score_threshold": 0.001,
    "nms": "onnx",  # onnx: standard ONNX ops | efficient_nms_trt: TensorRT's EfficientNMS_TRT plugin
}
NMS_FORMS = ("onnx", "efficient_nms_trt")


@register_pass(PASS_NAME)
def end2end_nms(graph: Any, options: Mapping[str, Any]) -> PassReport:
    """Replace the raw YOLOX output with `num_dets`/`det_boxes`/`det_scores`/`det_classes`."""
    import onnx_graphsurgeon as gs

    unknown = set(options) - set(DEFAULTS)
    report = PassReport(name=PASS_NAME)
    if unknown:
        report.unmatched.append(
            Unmatched("options", f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        )
        return report
    opts = {**DEFAULTS, **options}
    if opts["nms"] not in NMS_FORMS:
        report.unmatched.append(Unmatched("options", f"nms={opts['nms']!r}; choose one of {list(NMS_FORMS)}"))
        return report
    raw = next((t for t in graph.outputs if t.name == opts["output"]), None)
    if raw is None:
        names = [t.name for t in graph.outputs]
        report.unmatched.append(
            Unmatched("graph", f"no graph output named {opts['output']!r} (outputs: {names})")
        )
        return report
    image = graph.inputs[0]
    if raw.shape is None or len(raw.shape) != 3 or not isinstance(raw.shape[2], int) or raw.shape[2] <= 5:
        report.unmatched.append(Unmatched(raw.name, f"expected shape [N, A, 5 + C], got {raw.shape}"))
        return report
    if image.shape is None or not isinstance(image.shape[-1], int):
        report.unmatched.append(Unmatched(image.name, f"needs a static square input size, got {image.shape}"))
        return report
    if graph.opset is None or graph.opset < 11:
        report.unmatched.append(
            Unmatched(
                "graph",
                f"opset {graph.opset} < 11 has no NonMaxSuppression with "
                "these inputs; re-export with opset 11 or later",
            )
        )
        return report
    input_size = int(image.shape[-1])
    strides = [int(s) for s in opts["strides"]]
    grid, stride = anchor_grid(input_size, strides)
    num_anchors, num_classes = grid.shape[0], int(raw.shape[2]) - 5
    if isinstance(raw.shape[1], int) and raw.shape[1] != num_anchors:
        report.unmatched.append(
            Unmatched(
                raw.name,
                f"{raw.shape[1]} anchors, but input {input_size} with strides {strides} gives {num_anchors}",
            )
        )
        return report
    top_k = int(opts["top_k"])
    report.matched.append(
        f"{raw.name} {raw.shape}: {num_anchors} anchors, {num_classes} classes, input {input_size}"
    )

    counter = iter(range(10_000))

    def op(
        op_type: str,
        inputs: list[Any],
        attrs: dict[str, Any] | None = None,
        dtype: Any = np.float32,
        out: Any = None,
    ) -> Any:
        """Add one node named after the pass and return its (single) output tensor."""
        name = f"{PASS_NAME}/{op_type}_{next(counter)}"
        if out is None:
            out = gs.Variable(f"{name}_out", dtype=dtype)
        graph.nodes.append(gs.Node(op_type, name=name, attrs=attrs or {}, inputs=inputs, outputs=[out]))
        return out

    constants: dict[str, Any] = {}

    def const(name: str, value: np.ndarray) -> Any:
        if name not in constants:
            constants[name] = gs.Constant(f"{PASS_NAME}/{name}", np.asarray(value))
        return constants[name]

    i64 = np.int64

    def part(start: int, end: int) -> Any:
        return op(
            "Slice",
            [
                raw,
                const(f"start{start}", np.array([start], i64)),
                const(f"end{end}", np.array([end], i64)),
                const("axis2", np.array([2], i64)),
            ],
        )

    # Decode: centre = (p + grid) * stride, size = exp(p) * stride, corners = centre -/+ size / 2.
    centre = op("Mul", [op("Add", [part(0, 2), const("grid", grid[None])]), const("stride", stride[None])])
    size = op("Mul", [op("Exp", [part(2, 4)]), const("stride2", stride[None])])
    half = op("Mul", [size, const("half", np.array(0.5, np.float32))])
    boxes = op("Concat", [op("Sub", [centre, half]), op("Add", [centre, half])], {"axis": 2})
    scores = op("Mul", [part(4, 5), part(5, 5 + num_classes)])  # [N, A, C]
    if opts["nms"] == "efficient_nms_trt":
        _efficient_nms_node(graph, boxes, scores, raw.shape[0], top_k, opts, report)
        return report
    class_scores = op("Transpose", [scores], {"perm": [0, 2, 1]})  # [N, C, A]

    selected = op(
        "NonMaxSuppression",
        [
            boxes,
            class_scores,
            const("max_per_class", np.array([top_k], i64)),
            const("iou_threshold", np.array([float(opts["iou_threshold"])], np.float32)),
            const("score_threshold", np.array([float(opts["score_threshold"])], np.float32)),
        ],
        {"center_point_box": 0},
        dtype=i64,
    )  # [K, 3] (image, class, anchor)

    # Dense map of the kept scores, zero elsewhere, then the best top_k per image.
    kept_scores = op("GatherND", [class_scores, selected])
    zeros = op("Mul", [class_scores, const("zero", np.array(0.0, np.float32))])  # scores are finite
    dense = op("ScatterND", [zeros, selected, kept_scores])
    flat = op("Reshape", [dense, const("flat_shape", np.array([0, -1], i64))])
    det_scores = gs.Variable("det_scores", dtype=np.float32, shape=[raw.shape[0], top_k])
    flat_index = gs.Variable(f"{PASS_NAME}/topk_index", dtype=i64)
    graph.nodes.append(
        gs.Node(
            "TopK",
            name=f"{PASS_NAME}/TopK",
            attrs={"axis": 1, "largest": 1, "sorted": 1},
            inputs=[flat, const("k", np.array([top_k], i64))],
            outputs=[det_scores, flat_index],
        )
    )
    anchor_count = const("anchors", np.array(num_anchors, i64))
    class_index = op("Div", [flat_index, anchor_count], dtype=i64)
    anchor_index = op("Mod", [flat_index, anchor_count], dtype=i64)

    valid = op("Greater", [det_scores, const("score_zero", np.array(0.0, np.float32))], dtype=np.bool_)
    # Axes became an input in opset 13; older graphs (YOLOX is opset 11) take them as an attribute.
    axes_as_input = graph.opset is not None and graph.opset >= 13

    def with_axes(op_type: str, x: Any, axis: int, attrs: dict[str, Any], dtype: Any, out: Any = None) -> Any:
        if axes_as_input:
            return op(op_type, [x, const(f"axes{op_type}{axis}", np.array([axis], i64))], attrs, dtype, out)
        return op(op_type, [x], {**attrs, "axes": [axis]}, dtype, out)

    num_dets = with_axes(
        "ReduceSum",
        op("Cast", [valid], {"to": 6}, dtype=np.int32),
        1,
        {"keepdims": 1},
        np.int32,
        out=gs.Variable("num_dets", dtype=np.int32, shape=[raw.shape[0], 1]),
    )
    # int32 classes, 0 past num_dets: the End2End convention of TensorRT's EfficientNMS_TRT, so both
    # NMS forms of this pass give the same outputs.
    det_classes = op(
        "Cast",
        [op("Mul", [class_index, op("Cast", [valid], {"to": 7}, dtype=i64)], dtype=i64)],
        {"to": 6},
        dtype=np.int32,
        out=gs.Variable("det_classes", dtype=np.int32, shape=[raw.shape[0], top_k]),
    )
    gather_index = op(
        "Expand",
        [with_axes("Unsqueeze", anchor_index, 2, {}, i64), const("expand4", np.array([1, 1, 4], i64))],
        dtype=i64,
    )
    picked = op("GatherElements", [boxes, gather_index], {"axis": 1})
    keep = op("Cast", [with_axes("Unsqueeze", valid, 2, {}, np.bool_)], {"to": 1})
    det_boxes = op(
        "Mul", [picked, keep], out=gs.Variable("det_boxes", dtype=np.float32, shape=[raw.shape[0], top_k, 4])
    )

    graph.outputs = [num_dets, det_boxes, det_scores, det_classes]
    report.changed.append(f"decoded {raw.name} into xyxy boxes and objectness * class scores")
    report.changed.append(
        f"added NonMaxSuppression (class-wise, IoU > {opts['iou_threshold']}, "
        f"score > {opts['score_threshold']}) and TopK {top_k}"
    )
    report.changed.append(
        "outputs are now num_dets [N,1] int32, det_boxes [N,K,4], det_scores [N,K], "
        "det_classes [N,K] int32 (boxes in network pixels, zero padding)"
    )
    return report


def _efficient_nms_node(
    graph: Any, boxes: Any, scores: Any, batch: Any, top_k: int, opts: Mapping[str, Any], report: PassReport
) -> None:
    """boxes [N, A, 4] xyxy and scores [N, A, C] -> one EfficientNMS_TRT node and the End2End outputs."""
    import onnx_graphsurgeon as gs

    from plugins.efficient_nms_trt.reference import OP_TYPE, EfficientNmsAttributes

    attrs = EfficientNmsAttributes(
        score_threshold=float(opts["score_threshold"]),
        iou_threshold=float(opts["iou_threshold"]),
        max_output_boxes=top_k,
    )
    outputs = [
        gs.Variable("num_dets", dtype=np.int32, shape=[batch, 1]),
        gs.Variable("det_boxes", dtype=np.float32, shape=[batch, top_k, 4]),
        gs.Variable("det_scores", dtype=np.float32, shape=[batch, top_k]),
        gs.Variable("det_classes", dtype=np.int32, shape=[batch, top_k]),
    ]
    node = gs.Node(
        OP_TYPE,
        name=f"{PASS_NAME}/{OP_TYPE}",
        attrs=attrs.node_attributes(),
        inputs=[boxes, scores],
        outputs=outputs,
    )
    graph.nodes.append(node)
    graph.outputs = outputs
    report.changed.append("decoded the raw output into xyxy boxes and objectness * class scores")
    report.changed.append(
        f"added {OP_TYPE} (class-wise, IoU >= {attrs.iou_threshold}, score >= {attrs.score_threshold}, "
        f"top {top_k}; TensorRT plugin, reference op plugins/efficient_nms_trt for CPU)"
    )
    report.changed.append(
        "outputs are now num_dets [N,1] int32, det_boxes [N,K,4], det_scores [N,K], det_classes [N,K] int32 "
        "(boxes in network pixels, zero padding)"
    )
