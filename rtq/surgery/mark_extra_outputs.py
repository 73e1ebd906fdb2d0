"""Pass ``mark_extra_outputs``: make chosen intermediate tensors graph outputs.

A graph output is a fusion barrier for TensorRT: marking the ``sampling_offsets`` and
``attention_weights`` Add outputs of every decoder layer keeps TensorRT from fusing the two INT8
projections into the layer that loses accuracy. The same pass serves debugging (expose tensors by
name or regex to compare them).

Options (any combination; at least one):
  ``names``: list of tensor names; ``regex``: one pattern or a list (``re.search`` on tensor names);
  ``preset``: ``sampling_offsets`` | ``attention_weights`` | ``both`` (the projection outputs of every
  decoder layer, found by graph structure, also after ``fuse_attn_offset_prediction``).
The original outputs stay first, in their order and with their types.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from plugins.fused_attn_offset_prediction.reference import OP_TYPE
from rtq.errors import UserError
from rtq.onnx_graph import mark_outputs
from rtq.surgery.base import PassReport, Unmatched, register_pass
from rtq.surgery.patterns import find_projection_pairs, layer_prefix

PASS_NAME = "mark_extra_outputs"
PRESETS = {"sampling_offsets": (0,), "attention_weights": (1,), "both": (0, 1)}


def projection_outputs(graph: gs.Graph, which: tuple[int, ...]) -> tuple[list[gs.Variable], list[Unmatched]]:
    """The projection output tensors (0 = sampling_offsets, 1 = attention_weights) of every layer."""
    found: list[gs.Variable] = []
    search = find_projection_pairs(graph)
    for pair in search.pairs:
        found += [pair.branches[i].output for i in which]
    for node in graph.nodes:
        if node.op == OP_TYPE and len(node.outputs) == 2:
            found += [node.outputs[i] for i in which]
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    found.sort(key=lambda t: order.get(id(t.inputs[0]), 0) if t.inputs else 0)
    return found, search.unmatched


def _take_type(tensor: gs.Variable, info: onnx.ValueInfoProto) -> None:
    """Give a graphsurgeon output the dtype and shape `mark_outputs` found, where it had none."""
    t = info.type.tensor_type
    if tensor.dtype is None and t.elem_type:
        tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
    first = tensor.shape[0] if tensor.shape else ""
    unknown_batch = first in (None, 0) or (isinstance(first, str) and first.startswith("unk__"))
    if (tensor.shape is None or unknown_batch) and t.HasField("shape"):
        tensor.shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    if tensor.shape is None:
        raise UserError(f"cannot tell the rank of tensor {tensor.name!r} to mark it as an output; "
                        "run shape inference on the model first")


@register_pass(PASS_NAME)
def mark_extra_outputs(graph: gs.Graph, options: Mapping[str, Any]) -> PassReport:
    """Append the selected tensors to the graph outputs (originals first)."""
    report = PassReport(PASS_NAME)
    names = list(options.get("names") or [])
    regexes = options.get("regex") or []
    regexes = [regexes] if isinstance(regexes, str) else list(regexes)
    preset = options.get("preset")
    if not names and not regexes and not preset:
        raise UserError(f"pass {PASS_NAME!r} needs options 'names', 'regex' or 'preset' "
                        f"(one of {sorted(PRESETS)})")
    tensors = graph.tensors()
    chosen: list[gs.Variable] = []

    for name in names:
        t = tensors.get(name)
        if t is None or isinstance(t, gs.Constant):
            report.unmatched.append(Unmatched(name, "no computed tensor of this name in the graph"))
        else:
            chosen.append(t)
    for pattern in regexes:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise UserError(f"pass {PASS_NAME!r}: bad regex {pattern!r}: {err}") from None
        hits = [t for t in tensors.values() if isinstance(t, gs.Variable) and t.inputs and rx.search(t.name)]
        if not hits:
            report.unmatched.append(Unmatched(pattern, "regex matches no computed tensor"))
        chosen += hits
    if preset:
        if preset not in PRESETS:
            raise UserError(f"pass {PASS_NAME!r}: unknown preset {preset!r}; use one of {sorted(PRESETS)}")
        hits, failures = projection_outputs(graph, PRESETS[preset])
        report.unmatched += failures
        if not hits:
            report.unmatched.append(Unmatched(graph.name or "graph", (
                "no sampling_offsets / attention_weights projection pairs found; "
                "is this an RT-DETRv2 decoder?")))
        for t in hits:
            report.matched.append(f"{layer_prefix(t.inputs[0].name)}: {t.name}")
        chosen += hits

    existing = {id(t) for t in graph.outputs}
    new: list[gs.Variable] = []
    for t in chosen:
        if id(t) in existing:
            report.notes.append(f"'{t.name}' is already a graph output")
            continue
        new.append(t)
        existing.add(id(t))
    if new:
        marked = mark_outputs(gs.export_onnx(graph, do_type_check=False), [t.name for t in new])
        infos = {o.name: o for o in marked.graph.output}
        for t in new:
            _take_type(t, infos[t.name])
            graph.outputs.append(t)
            report.changed.append(f"marked '{t.name}' ({np.dtype(t.dtype).name}, shape {list(t.shape)})")
    return report
