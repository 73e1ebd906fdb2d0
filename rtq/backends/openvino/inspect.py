"""OpenVINO's runtime model as rtq's layer schema, its fusion list, and a readable report.

`CompiledModel.get_runtime_model()` lists every layer the CPU plugin executes; each carries
`rt_info` with `layerType`, `runtimePrecision`, `outputPrecisions`, `originalLayersNames` (the
graph nodes it fused, comma-separated) and, with `PERF_COUNT`, `execTimeMcs`. OpenVINO names the
nodes after the ONNX nodes, adding suffixes for what its transformations create
(`.../MatMul/DequantizationMultiply`, `.../Conv/WithoutBiases`), so each name is mapped back to
the longest ONNX node name it extends. A fusion is a layer covering more than one compute node
(Q/DQ, constants and identities do not count: they are how INT8 is spelled, not work).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rtq.backends.layers import EngineLayer

NON_COMPUTE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Constant", "Identity"})
_SKIPPED_LAYER_TYPES = frozenset({"Const", "Input", "Output"})


def _proto(onnx_model: Any) -> Any:
    import onnx

    if isinstance(onnx_model, str | Path):
        return onnx.load(str(onnx_model), load_external_data=False)
    return onnx_model


def onnx_op_types(onnx_model: Any) -> dict[str, str]:
    """ONNX node name -> op type, from a path or a loaded `onnx.ModelProto`."""
    return {node.name: node.op_type for node in _proto(onnx_model).graph.node if node.name}


def onnx_node_of(name: str, known: Mapping[str, str] | frozenset[str]) -> str | None:
    """The ONNX node an OpenVINO node name stands for: itself, its longest `/` prefix, or the node it
    was cloned from (OpenVINO appends `_<n>` to copies, e.g. a FakeQuantize moved onto each input)."""
    candidate = name
    while candidate:
        if candidate in known:
            return candidate
        clone = re.fullmatch(r"(.+)_\d+", candidate)
        if clone and clone.group(1) in known:
            return clone.group(1)
        if "/" not in candidate.strip("/"):
            return None
        candidate = candidate.rsplit("/", 1)[0]
    return None


def _text(rt_info: Any, key: str) -> str:
    return str(rt_info[key].astype(str)) if key in rt_info else ""


def _time_us(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "not_executed": folded into a neighbour, or profiling was off


def runtime_layers(compiled: Any, onnx_model: Any) -> list[EngineLayer]:
    """Executed layers of a compiled model, in execution order, mapped to ONNX nodes."""
    proto = _proto(onnx_model)
    op_types = onnx_op_types(proto)
    # a layer may carry the name of the tensor it writes (an Eltwise feeding a graph output)
    writer_of = {tensor: node.name for node in proto.graph.node for tensor in node.output}
    runtime = compiled.get_runtime_model()
    precision_of_node: dict[str, list[str]] = {}
    layers: list[EngineLayer] = []
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        outputs = [p for p in _text(info, "outputPrecisions").split(",") if p]
        precision_of_node[op.get_friendly_name()] = outputs
        layer_type = _text(info, "layerType")
        if layer_type in _SKIPPED_LAYER_TYPES:
            continue
        inputs = []
        for value in op.inputs():
            producer = value.get_source_output()
            produced = precision_of_node.get(producer.get_node().get_friendly_name(), [])
            index = producer.get_index()
            inputs.append(produced[index] if index < len(produced) else "")
        nodes: list[str] = []
        for original in _text(info, "originalLayersNames").split(","):
            node = onnx_node_of(original.strip(), op_types)
            if node is not None and node not in nodes:
                nodes.append(node)
        if not nodes and op.get_friendly_name() in writer_of:
            nodes.append(writer_of[op.get_friendly_name()])
        layers.append(
            EngineLayer(
                name=op.get_friendly_name(),
                type=layer_type,
                tactic=_text(info, "primitiveType"),
                input_precisions=tuple(inputs),
                output_precisions=tuple(outputs),
                onnx_nodes=tuple(nodes),
                precision=_text(info, "runtimePrecision"),
                time_us=_time_us(_text(info, "execTimeMcs")),
            )
        )
    return layers


def compute_nodes(layer: EngineLayer, op_types: Mapping[str, str]) -> list[str]:
    """The layer's ONNX nodes that do work (not Q/DQ, constants, identities)."""
    return [n for n in layer.onnx_nodes if op_types.get(n, "") not in NON_COMPUTE_OPS]


def fusions(layers: Iterable[EngineLayer], op_types: Mapping[str, str]) -> list[EngineLayer]:
    """Layers whose provenance spans more than one compute node."""
    return [layer for layer in layers if len(compute_nodes(layer, op_types)) > 1]


def layers_touching(layers: Iterable[EngineLayer], onnx_name: str) -> list[EngineLayer]:
    """Layers that cover an ONNX node whose name contains `onnx_name`."""
    return [layer for layer in layers if any(onnx_name in node for node in layer.onnx_nodes)]


def _cell(text: str, limit: int = 100) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nodes_cell(layer: EngineLayer, op_types: Mapping[str, str], limit: int = 4) -> str:
    nodes = compute_nodes(layer, op_types) or list(layer.onnx_nodes)
    shown = ", ".join(f"{n} ({op_types.get(n, '?')})" for n in nodes[:limit])
    return _cell(shown + (f", +{len(nodes) - limit}" if len(nodes) > limit else ""), 220)


def inspection_markdown(
    layers: Sequence[EngineLayer],
    op_types: Mapping[str, str],
    title: str = "OpenVINO compiled model",
    top: int = 15,
    touching: Sequence[str] = (),
) -> str:
    """Per type x precision counts, top-N layers by time, the fusion list, and layers touching names."""
    lines = [f"# {title}", "", f"{len(layers)} executed layers.", ""]
    counts = Counter((layer.type, layer.precision) for layer in layers)
    timed = [layer for layer in layers if layer.time_us is not None]
    total = sum(layer.time_us or 0.0 for layer in timed)
    time_by: dict[tuple[str, str], float] = defaultdict(float)
    for layer in timed:
        time_by[(layer.type, layer.precision)] += layer.time_us or 0.0
    lines += ["## Layers by type and precision", "", "| type | precision | layers | time (us) | share |"]
    lines.append("| --- | --- | ---: | ---: | ---: |")
    for (kind, precision), count in sorted(counts.items(), key=lambda kv: (-time_by[kv[0]], -kv[1])):
        spent = time_by[(kind, precision)]
        share = f"{100 * spent / total:.1f} %" if total else ""
        lines.append(f"| {kind} | {precision} | {count} | {spent:.0f} | {share} |")
    if timed:
        lines += ["", f"## Top {top} layers by time (total {total / 1000:.2f} ms per inference)", ""]
        lines += ["| layer | type | precision | time (us) | ONNX compute nodes |"]
        lines += ["| --- | --- | --- | ---: | --- |"]
        for layer in sorted(timed, key=lambda x: -(x.time_us or 0.0))[:top]:
            lines.append(
                f"| {_cell(layer.name, 70)} | {layer.type} | {layer.precision} | {layer.time_us:.0f} | "
                f"{_nodes_cell(layer, op_types)} |"
            )
    fused = fusions(layers, op_types)
    lines += ["", f"## Fusions ({len(fused)} layers cover more than one compute node)", ""]
    lines += ["| layer | type | precision | ONNX compute nodes |", "| --- | --- | --- | --- |"]
    for layer in fused:
        nodes = _nodes_cell(layer, op_types, 6)
        lines.append(f"| {_cell(layer.name, 70)} | {layer.type} | {layer.precision} | {nodes} |")
    for name in touching:
        hits = layers_touching(layers, name)
        lines += ["", f"## Layers touching `{name}` ({len(hits)})", ""]
        for layer in hits:
            nodes = _nodes_cell(layer, op_types, 8)
            lines.append(f"- `{_cell(layer.name, 90)}` {layer.type} {layer.precision}: {nodes}")
    return "\n".join(lines) + "\n"
